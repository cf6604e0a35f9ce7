"""Small real TFDS builder directories for tests.

Shards are written with ``clipa_data.core.tfrecord`` in img2dataset's feature layout (``key``,
``jpg``, ``txt`` + optional extras) and the metadata with TFDS's own ``write_metadata``, so
``tfds.builder_from_directory`` reads them exactly like a ``clipa-data convert`` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipa_data.core import layout
from clipa_data.core.example import encode_example
from clipa_data.core.tfrecord import write_records


@dataclass(frozen=True)
class Record:
    """One image-text record."""

    key: str
    jpg: bytes
    txt: str | None
    """The caption; None: no ``txt`` feature (img2dataset without a caption column)."""
    extra: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        features = {"key": ("bytes", [self.key.encode()]), "jpg": ("bytes", [self.jpg])}
        if self.txt is not None:
            features["txt"] = ("bytes", [self.txt.encode()])
        features.update(self.extra)
        return encode_example(features)


def jpeg_bytes(
    width: int, height: int, seed: int, mode: str = "RGB", fmt: str = "JPEG", quality: int = 90
) -> bytes:
    """A deterministic smooth-noise image encoded as JPEG (or another PIL format)."""
    import io

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


def make_records(count: int, start: int = 0, size: int = 64, captions=None) -> list[Record]:
    """``count`` records with keys ``000000<start+i>`` and simple varied captions."""
    colours = ["red", "green", "blue", "yellow"]
    shapes = ["circle", "square", "triangle"]
    records = []
    for i in range(start, start + count):
        caption = (
            captions[i - start]
            if captions is not None
            else f"A {colours[i % 4]} {shapes[i % 3]} on a striped background, stock photo {i}"
        )
        records.append(Record(key=f"{i:09d}", jpg=jpeg_bytes(size, size, seed=i), txt=caption))
    return records


def make_builder_dir(
    root: Path,
    shards: list[list[Record]],
    name: str = "demo",
    split: str = "train",
    version: str = "1.0.0",
) -> Path:
    """Write ``shards`` as a TFDS builder directory ``root/<name>/<version>``; returns it."""
    import tensorflow_datasets as tfds

    builder = layout.builder_dir(root, name, version)
    builder.mkdir(parents=True, exist_ok=True)
    for index, records in enumerate(shards):
        path = builder / layout.shard_filename(name, split, index, len(shards))
        with open(path, "wb") as handle:
            write_records(handle, (record.encode() for record in records))
    features = tfds.features.FeaturesDict(
        {
            "key": tfds.features.Text(),
            "jpg": tfds.features.Image(encoding_format="jpeg"),
            "txt": tfds.features.Text(),
        }
    )
    split_info = tfds.core.SplitInfo(
        name=split,
        shard_lengths=[len(records) for records in shards],
        num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=builder,
            template=layout.DEFAULT_TEMPLATE,
            dataset_name=name,
            split=split,
            filetype_suffix=layout.FILE_FORMAT,
        ),
    )
    tfds.folder_dataset.write_metadata(
        data_dir=builder, features=features, split_infos=[split_info], check_data=False
    )
    return builder
