"""A ``clipa-data convert`` run really killed (SIGKILL to its process group) mid-way, then re-run.

The installed console script converts with a pool of two workers and ``--mode copy``; it is
killed once the staging folder holds some, but not all, placed shards (and no final folder
exists). Re-running the same command must finish the conversion from what was left, leave no
temporary file or staging folder behind, and produce exactly the bytes of an uninterrupted
conversion of the same source into another folder (only the run summary's timings, paths and
status may differ). If a run finishes before it can be caught mid-way, the source is made
bigger and the whole test is tried again, never skipped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from img2dataset_shards import make_samples, write_shard
from PIL import Image

from clipa_data.core import layout
from clipa_data.core.atomic import is_temporary

NAME = "demo"
SHARDS = 16
ROWS = 40  # per shard, the last one failed: 16 x 39 records of ~170 KB, ~110 MB in all
ATTEMPTS = 3  # each one with twice the rows per shard of the one before
SUMMARY_FIELDS_THAT_DIFFER = ("builder_dir", "status", "reused_shards", "seconds")
"""Summary fields that name OUT, time the run or tell a resumed run apart (plus options.out)."""


def noise_jpeg(size: int = 384) -> bytes:
    """A JPEG that hardly compresses (~170 KB), so copying a shard takes measurable time."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_big_source(folder: Path, rows: int) -> Path:
    """img2dataset-style shards (its own writer and stats) whose images are all large."""
    image = noise_jpeg()
    for shard_id in range(SHARDS):
        samples = [
            dataclasses.replace(sample, image=image if sample.image else None)
            for sample in make_samples(shard_id, rows, failures=1)
        ]
        write_shard(folder, shard_id, samples)
    return folder


def convert_command(src: Path, out: Path) -> list[str]:
    """The command a user types: the installed console script, two workers, copied shards."""
    script = Path(sys.executable).parent / "clipa-data"
    options = ["--name", NAME, "--workers", "2", "--mode", "copy", "--no-progress"]
    return [str(script), "convert", str(src), str(out), *options]


def run_to_the_end(src: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(convert_command(src, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def placed_shards(staging: Path) -> list[str]:
    """Shards in the staging folder under their final names (temporaries excluded)."""
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return []
    return [e.name for e in entries if e.name.startswith(f"{NAME}-train.tfrecord-")]


def live_members(group: int) -> list[int]:
    """Processes of ``group`` that still run (zombies waiting for a reaper are done)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def kill_mid_way(src: Path, out: Path) -> int | None:
    """Start convert, SIGKILL its process group once 1 <= placed < all shards; None if too late.

    Returns the number of placed shards the killed run left behind.
    """
    staging = layout.staging_dir(out, NAME, "1.0.0")
    final = layout.builder_dir(out, NAME, "1.0.0")
    process = subprocess.Popen(
        convert_command(src, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the workers die with it
    )
    try:
        while process.poll() is None and not placed_shards(staging):
            time.sleep(0.001)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it finished just now
    process.wait()
    deadline = time.monotonic() + 30
    while live_members(process.pid):  # no worker may still be writing when we look
        assert time.monotonic() < deadline, live_members(process.pid)
        time.sleep(0.05)
    placed = len(placed_shards(staging))
    if process.returncode != -signal.SIGKILL or final.exists() or not 1 <= placed < SHARDS:
        return None
    return placed


def builder_files(out: Path) -> dict[str, bytes]:
    builder = layout.builder_dir(out, NAME, "1.0.0")
    return {p.name: p.read_bytes() for p in sorted(builder.iterdir())}


def comparable_summary(data: bytes) -> dict:
    summary = json.loads(data)
    for field in SUMMARY_FIELDS_THAT_DIFFER:
        summary.pop(field)
    summary["options"].pop("out")
    return summary


def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    for attempt in range(ATTEMPTS):
        folder = tmp_path / f"attempt{attempt}"
        src = write_big_source(folder / "raw", ROWS * 2**attempt)
        placed = kill_mid_way(src, folder / "out")
        if placed is not None:
            break
        shutil.rmtree(folder)  # finished (or placed everything) before the kill: more data
    else:
        raise AssertionError(f"convert was never caught mid-way in {ATTEMPTS} attempts")
    out = folder / "out"
    assert not layout.builder_dir(out, NAME, "1.0.0").exists()

    resumed = run_to_the_end(src, out)
    reference = run_to_the_end(src, folder / "reference")
    assert "clipa-data convert: resumed" in resumed.stdout
    assert "clipa-data convert: converted" in reference.stdout

    # Nothing half-written or unfinished remains anywhere under OUT.
    everything = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert not [p for p in everything if is_temporary(Path(p))], everything
    assert not layout.staging_dir(out, NAME, "1.0.0").exists(), everything
    reference_tree = (folder / "reference").rglob("*")
    assert everything == sorted(
        p.relative_to(folder / "reference").as_posix() for p in reference_tree
    )

    got, want = builder_files(out), builder_files(folder / "reference")
    assert sorted(got) == sorted(want)
    shards = [name for name in want if name.startswith(f"{NAME}-train.tfrecord-")]
    assert len(shards) == SHARDS
    for name in want:
        if name != layout.CONVERT_SUMMARY:  # shards, dataset_info, features, manifest
            assert got[name] == want[name], f"{name} differs from the uninterrupted run"
    summary = json.loads(got[layout.CONVERT_SUMMARY])
    assert summary["status"] == "resumed" and summary["reused_shards"] == placed
    assert json.loads(want[layout.CONVERT_SUMMARY])["reused_shards"] == 0
    assert comparable_summary(got[layout.CONVERT_SUMMARY]) == comparable_summary(
        want[layout.CONVERT_SUMMARY]
    )
    shutil.rmtree(folder)  # ~330 MB; pytest keeps the last runs' tmp folders
