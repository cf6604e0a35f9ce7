"""A small real builder directory with Arrow sidecars for the XLA tests, written by a child process.

TensorFlow and torch-xla each link their own copy of LLVM: a process that has loaded TensorFlow
aborts when it then loads torch_xla ("LLVM ERROR: inconsistency in registered CommandLine
options"). So the TFDS metadata (``builders.make_builder_dir``, TFDS's own writer) and the spaCy
sidecars (``sidecars.write_sidecars``, the real ``clipa-data tag`` stage) are written by this
file run as a script with the same interpreter; the test process only reads them with
``clipa_train.loader.Loader``, which never imports TensorFlow.

Each image is a flat colour with some noise and its caption names that colour, so a model can
learn within a few steps (the colour word is an adjective: the syntax mask keeps it at length 8).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SHARDS, PER_SHARD = 4, 16
COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 50, 210),
    "yellow": (230, 220, 40),
    "purple": (130, 40, 160),
    "orange": (240, 140, 20),
    "black": (15, 15, 15),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")


def coloured_jpeg(rgb: tuple[int, int, int], seed: int, size: int = 48) -> bytes:
    """A ``size`` px JPEG of colour ``rgb`` with deterministic noise."""
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(seed).integers(-25, 26, size=(size, size, 3))
    pixels = np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write(root: Path) -> Path:
    """Write the builder directory (and its sidecars) under ``root``; returns it. Imports
    TensorFlow: call it only in a process that will not load torch_xla."""
    from builders import Record, make_builder_dir
    from sidecars import write_sidecars

    names = list(COLOURS)
    shards = []
    for shard in range(SHARDS):
        records = []
        for i in range(shard * PER_SHARD, (shard + 1) * PER_SHARD):
            colour, shape = names[i % len(names)], SHAPES[i % len(SHAPES)]
            caption = f"a {colour} {shape} on a striped background, stock photo {i}"
            jpg = coloured_jpeg(COLOURS[colour], seed=i)
            records.append(Record(key=f"{i:09d}", jpg=jpg, txt=caption))
        shards.append(records)
    builder = make_builder_dir(root, shards)
    write_sidecars(builder)
    return builder


def write_in_child(root: Path) -> Path:
    """Run :func:`write` in a fresh interpreter (this one may hold torch_xla); returns the dir."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"writing the XLA test data failed:\n{done.stdout}\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
