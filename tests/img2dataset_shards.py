"""img2dataset output written by img2dataset's own writer classes and stats logger.

No HTTP is involved: samples (real JPEG bytes, captions, LAION metadata columns) go straight to
``TFRecordSampleWriter`` / ``WebDatasetSampleWriter`` with the ``meta`` dict img2dataset's
downloader builds (failed samples included, which land in the parquet only), in a shuffled
completion order, and ``img2dataset.logger.write_stats`` writes ``NNNNN_stats.json``.
"""

from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipa_data.core import tfrecord
from clipa_data.core.example import decode_example

ADDITIONAL_COLUMNS = ("NSFW", "similarity", "LICENSE")
WRITERS = {"tfrecord": "TFRecordSampleWriter", "webdataset": "WebDatasetSampleWriter"}
EXTENSIONS = {"tfrecord": "tfrecord", "webdataset": "tar"}


@dataclass(frozen=True)
class Sample:
    """One input row as img2dataset sees it after downloading and resizing."""

    index: int
    """Row index within the shard (the key is computed from it)."""
    caption: str
    url: str
    image: bytes | None
    """Encoded image, or None for a failed download."""
    similarity: float | None
    nsfw: str | None
    license: str | None


def image_bytes(seed: int, size: int = 24, fmt: str = "JPEG") -> bytes:
    """A small deterministic picture, encoded."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def make_samples(
    shard_id: int,
    count: int,
    *,
    failures: int = 0,
    missing_similarity: tuple[int, ...] = (),
    fmt: str = "JPEG",
) -> list[Sample]:
    """``count`` rows, the last ``failures`` of them failed; ``missing_similarity`` rows have
    no similarity value (img2dataset then writes it as empty bytes)."""
    words = ["red", "green", "blue", "circle", "square", "photo", "of", "a", "stock", "image"]
    samples = []
    for index in range(count):
        seed = shard_id * 1000 + index
        rng = random.Random(seed)
        samples.append(
            Sample(
                index=index,
                caption=" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))),
                url=f"http://127.0.0.1:8000/images/{seed}.jpg",
                image=None if index >= count - failures else image_bytes(seed, fmt=fmt),
                similarity=None if index in missing_similarity else round(rng.random(), 4),
                nsfw=rng.choice(["UNLIKELY", "UNSURE", "NSFW"]),
                license=rng.choice(["?", "https://creativecommons.org/licenses/by/4.0/", None]),
            )
        )
    return samples


def _parquet_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("url", pa.string()),
            ("caption", pa.string()),
            ("NSFW", pa.string()),
            ("similarity", pa.float64()),
            ("LICENSE", pa.string()),
            ("key", pa.string()),
            ("status", pa.string()),
            ("error_message", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("original_width", pa.int32()),
            ("original_height", pa.int32()),
            ("exif", pa.string()),
            ("sha256", pa.string()),
        ]
    )


def write_shard(
    folder: Path,
    shard_id: int,
    samples: list[Sample],
    *,
    output_format: str = "tfrecord",
    encode_format: str = "jpg",
    stats: bool = True,
    number_sample_per_shard: int = 1000,
) -> Path:
    """Write one shard the way img2dataset's downloader does; returns the shard file."""
    import hashlib
    import math

    from img2dataset import writer as writers
    from img2dataset.downloader import compute_key
    from img2dataset.logger import CappedCounter, write_stats

    folder.mkdir(parents=True, exist_ok=True)
    writer_class = getattr(writers, WRITERS[output_format])
    sample_writer = writer_class(shard_id, str(folder), True, 5, _parquet_schema(), encode_format)
    oom_sample_per_shard = math.ceil(math.log10(number_sample_per_shard))
    status_dict = CappedCounter()
    order = list(samples)
    random.Random(shard_id).shuffle(order)  # imap_unordered: completion order, not input order
    successes = 0
    start = time.time()
    for sample in order:
        key = compute_key(sample.index, shard_id, oom_sample_per_shard, 5)
        meta = {
            "url": sample.url,
            "caption": sample.caption,
            "NSFW": sample.nsfw,
            "similarity": sample.similarity,
            "LICENSE": sample.license,
            "key": key,
            "status": "success" if sample.image else "failed_to_download",
            "error_message": None if sample.image else "<urlopen error [Errno 111]>",
            "width": 24 if sample.image else None,
            "height": 24 if sample.image else None,
            "original_width": 48 if sample.image else None,
            "original_height": 36 if sample.image else None,
            "exif": "{}" if sample.image else None,
            "sha256": hashlib.sha256(sample.image).hexdigest() if sample.image else None,
        }
        status_dict.increment(meta["status"] if sample.image else meta["error_message"])
        successes += sample.image is not None
        sample_writer.write(sample.image, key, sample.caption, meta)
    sample_writer.close()
    if stats:
        write_stats(
            str(folder),
            shard_id,
            len(samples),
            successes,
            len(samples) - successes,
            0,
            start,
            time.time(),
            status_dict,
            5,
        )
    return folder / f"{shard_id:05d}.{EXTENSIONS[output_format]}"


def write_source(
    folder: Path,
    layout: dict[int, int],
    *,
    output_format: str = "tfrecord",
    failures: int = 1,
) -> Path:
    """A whole img2dataset output folder: ``{shard_id: rows}`` (gaps allowed)."""
    for shard_id, rows in layout.items():
        samples = make_samples(shard_id, rows, failures=min(failures, rows))
        write_shard(folder, shard_id, samples, output_format=output_format)
    return folder


def source_records(shard: Path) -> list[dict]:
    """Every record of a source tfrecord shard as ``{feature: (kind, values)}``."""
    return [decode_example(raw) for raw in tfrecord.read_records(shard)]
