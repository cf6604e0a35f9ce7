"""Benchmark: ``clipa-data convert`` against the reference flow of CLIPA's original scripts.

Data: img2dataset-style tfrecord shards (``00000.tfrecord`` + ``00000_stats.json``) generated
once into ``benchmarks/work/convert/src`` (git-ignored): real JPEGs of about 21 KB, captions and
every metadata column img2dataset writes, ~20 KB per record, just over 1 GB in all.

Reference flow (CLIPA ``data/laion400m``): ``compute_split_info.py`` counts every record with
``tf.data.TFRecordDataset(shard).reduce(0, +1)`` in a ``multiprocessing.Pool``,
``rename_tfds.py`` moves every shard to its TFDS name (here a hardlink: the same metadata-only
cost as ``mv`` on a local filesystem, and it leaves SRC intact for our run), and
``generate_metadata.py`` calls ``tfds.folder_dataset.write_metadata`` (default
``check_data=True``: it reads one example back).

Ours: ``clipa_data.prepare.convert.convert`` with default options (header-walk count, every record's
schema checked, hardlinks, TFDS metadata, verification of every shard's first example).

Fairness: both sides use the same number of worker processes; TensorFlow and TFDS are imported
in this process before anything is timed (no interpreter or import start-up on either side);
every file is read once before timing, so both sides read from a warm page cache (1 GB fits in
RAM; a cold cache would favour the header walk further, since it skips the image bytes). The
counting phase alone is timed on pre-started pools (pool start-up excluded on both sides); the
whole flows include their own pool start-up. Runs alternate ours/reference; medians reported.

    .venv/bin/python -m benchmarks.bench_convert            # full run (writes results/convert.json)
    .venv/bin/python -m benchmarks.bench_convert --quick    # small data, nothing written
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import command_run, print_table, write_result
from clipa_data.core import layout, tfrecord
from clipa_data.core.example import encode_example
from clipa_data.demo.synthetic_captions import laion_like_captions
from clipa_data.prepare import tfds_metadata
from clipa_data.prepare.runner import default_workers

WORK = Path(__file__).resolve().parent / "work" / "convert"
NAME, SPLIT = "laion400m", "full"  # CLIPA's names
PACKAGES = ["tensorflow-cpu", "tensorflow-datasets", "protobuf", "google-crc32c", "numpy"]


# --- data --------------------------------------------------------------------------------------


def jpeg_pool(count: int = 64) -> list[bytes]:
    """Distinct real JPEGs of about 21 KB (256x256 photos-like: smooth colour + grain)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(count):
        base = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize((256, 256), Image.BILINEAR))
        grain = rng.normal(0, 1.5, smooth.shape)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        pool.append(buffer.getvalue())
    return pool


def record(shard: int, index: int, jpeg: bytes, text: str | None = None) -> bytes:
    """One record with img2dataset's tfrecord feature layout (LAION-400M recipe columns);
    ``text`` its caption (default: a short template)."""
    key = f"{shard:05d}{index:04d}"
    text = text or f"a photo of item {index} from shard {shard}, stock image, free download"
    caption = text.encode()
    return encode_example(
        {
            "key": ("bytes", [key.encode()]),
            "jpg": ("bytes", [jpeg]),
            "txt": ("bytes", [caption]),
            "url": ("bytes", [f"https://example.com/images/{key}.jpg".encode()]),
            "caption": ("bytes", [caption]),
            "NSFW": ("bytes", [b"UNLIKELY"]),
            "similarity": ("float", [0.3 + (index % 50) / 1000]),
            "LICENSE": ("bytes", [b"?"]),
            "status": ("bytes", [b"success"]),
            "error_message": ("bytes", [b""]),
            "width": ("int64", [256]),
            "height": ("int64", [256]),
            "original_width": ("int64", [640]),
            "original_height": ("int64", [480]),
            "exif": ("bytes", [b"{}"]),
            "sha256": ("bytes", [f"{shard:032d}{index:032d}".encode()]),
        }
    )


def generate(src: Path, shards: int, per_shard: int, laion_captions: bool = False) -> None:
    """Write the source shards and stats files (skipped when already there); with
    ``laion_captions``, LAION-like captions (what a tagger's speed depends on)."""
    marker = src / "_clipa_bench.json"
    wanted = {"shards": shards, "records_per_shard": per_shard, "format": 1}
    if laion_captions:
        wanted["captions"] = "laion_like"
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    pool = jpeg_pool()
    texts = laion_like_captions(shards * per_shard, seed=5) if laion_captions else None
    for shard in range(shards):
        with open(src / f"{shard:05d}.tfrecord", "wb") as handle:
            tfrecord.write_records(
                handle,
                (
                    record(
                        shard,
                        i,
                        pool[(shard * 7 + i) % len(pool)],
                        texts and texts[shard * per_shard + i],
                    )
                    for i in range(per_shard)
                ),
            )
        stats = {
            "count": per_shard,
            "successes": per_shard,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": 1.0,
            "start_time": 0.0,
            "end_time": 1.0,
            "status_dict": {"success": per_shard},
        }
        (src / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))
    marker.write_text(json.dumps(wanted))


# --- the two flows ------------------------------------------------------------------------------


def tf_count(path: str) -> int:
    """compute_split_info.py: count the records of one shard through tf.data."""
    import tensorflow as tf

    return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda count, _: count + 1))


def header_count(path: str) -> int:
    """Ours: walk the record headers (the image bytes are never read)."""
    return tfrecord.scan_shard(path).records


def clipa_features():
    """generate_metadata.py's FeaturesDict for img2dataset's LAION-400M layout."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    text = {
        name: tfds.features.Text()
        for name in (
            "txt",
            "caption",
            "NSFW",
            "sha256",
            "exif",
            "LICENSE",
            "status",
            "url",
            "error_message",
            "key",
        )
    }
    ints = {name: tf.int64 for name in ("height", "width", "original_height", "original_width")}
    return tfds.features.FeaturesDict(
        {"jpg": tfds.features.Image(encoding_format="jpeg"), **text, **ints}
    )


def reference_pool(workers: int):
    """A started, warmed pool for the reference count.

    The original scripts fork (multiprocessing's default on Linux); with TensorFlow 2.21
    imported, forked tf.data workers deadlock here, so the pool spawns workers that import
    TensorFlow up front, outside every timing (which favours the reference).
    """
    pool = multiprocessing.get_context("spawn").Pool(
        workers, initializer=tfds_metadata.import_tensorflow
    )
    pool.map(time.sleep, [0.1] * workers)
    return pool


def reference_flow(pool, shards: list[Path], out: Path) -> dict[str, float]:
    """Count (Pool + tf.data), rename to TFDS names, write_metadata: CLIPA's three scripts."""
    import tensorflow_datasets as tfds

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    lengths = pool.map(tf_count, [str(shard) for shard in shards])
    counted = time.perf_counter()
    for index, shard in enumerate(shards):
        os.link(shard, out / layout.shard_filename(NAME, SPLIT, index, len(shards)))
    renamed = time.perf_counter()
    template = tfds.core.ShardedFileTemplate(
        data_dir=out,
        template=layout.DEFAULT_TEMPLATE,
        dataset_name=NAME,
        split=SPLIT,
        filetype_suffix=layout.FILE_FORMAT,
    )
    split_info = tfds.core.SplitInfo(
        name=SPLIT, shard_lengths=lengths, num_bytes=0, filename_template=template
    )
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=clipa_features(),
        split_infos=[split_info],
        filename_template=template,
        description="400M english image/text pairs",
    )
    finished = time.perf_counter()
    return {
        "count": counted - started,
        "rename": renamed - counted,
        "metadata": finished - renamed,
        "total": finished - started,
        "records": sum(lengths),
    }


def our_flow(src: Path, out: Path, workers: int, **options) -> dict[str, float]:
    """clipa_data.prepare.convert.convert with default options (or ``options``)."""
    from clipa_data.prepare.convert import ConvertConfig, convert

    shutil.rmtree(out, ignore_errors=True)
    config = ConvertConfig(
        src=src, out=out, name=NAME, split=SPLIT, workers=workers, show_progress=False, **options
    )
    started = time.perf_counter()
    result = convert(config)
    total = time.perf_counter() - started
    return {**result.phases, "total": total, "records": result.records}


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def time_counts(pool, function, paths: list[str]) -> tuple[float, list[int]]:
    started = time.perf_counter()
    counts = pool.map(function, paths)
    return time.perf_counter() - started, counts


def count_phase(names: list[str], workers: int, repeats: int, expected: list[int]):
    """Counting alone, on pre-started, warmed pools of the same size; returns the TF pool too."""
    their_pool = reference_pool(workers)
    with multiprocessing.get_context("spawn").Pool(workers) as our_pool:
        our_pool.map(header_count, names[:workers])
        their_pool.map(tf_count, names[:workers])
        ours, theirs = [], []
        for _ in range(repeats):
            seconds, their_counts = time_counts(their_pool, tf_count, names)
            theirs.append(seconds)
            seconds, our_counts = time_counts(our_pool, header_count, names)
            ours.append(seconds)
    assert our_counts == their_counts == expected, (our_counts, their_counts)
    return ours, theirs, their_pool


def flow_phase(their_pool, src: Path, paths: list[Path], workers: int, repeats: int, records: int):
    """Whole flows, alternating: ours starts its own pool inside convert(); the reference
    reuses the warm TensorFlow pool. Returns the median phases of each variant."""
    our_runs, reference_runs = [], []
    for _ in range(repeats):
        reference_runs.append(reference_flow(their_pool, paths, WORK / "reference"))
        our_runs.append(our_flow(src, WORK / "ours", workers))
    their_pool.close()
    their_pool.join()
    sampled = [our_flow(src, WORK / "ours", workers, schema_records=100) for _ in range(repeats)]
    with_crc = [our_flow(src, WORK / "ours", workers, verify="crc") for _ in range(repeats)]
    for run in our_runs + reference_runs + sampled + with_crc:
        assert run["records"] == records
    return {
        "ours": median_phases(our_runs),
        "ours_schema_records_100": median_phases(sampled),
        "ours_verify_crc": median_phases(with_crc),
        "original": median_phases(reference_runs),
    }


FLOW_PHASES = ["inspect", "count", "import_tensorflow", "place", "rename", "metadata", "verify"]
FLOW_LABELS = {
    "original": "original",
    "ours": "ours",
    "ours_schema_records_100": "ours, schema N=100",
    "ours_verify_crc": "ours, verify crc",
}
NOTES = (
    "Both sides read from a warm page cache. Counting alone: pre-started pools of the "
    "same size, start-up excluded. Whole flows: TensorFlow/TFDS imported beforehand; "
    "the reference reuses its warm TensorFlow pool (its spawn + import excluded, "
    "forked tf.data workers deadlock with TF 2.21), ours starts its own spawn pool "
    "inside convert(). Shared 2-core machine: see load_average_1min."
)


def print_report(records: int, total_bytes: int, workers: int, counts, flows, ratios) -> None:
    """The counting table, the whole-flow table and the ratios."""
    count_ours, count_theirs = counts
    print_table(
        f"counting {records:,} records, {total_bytes / 1e9:.2f} GB, {workers} workers",
        ["", "seconds", "records/s"],
        [
            ["original: tf.data reduce", count_theirs, records / count_theirs],
            ["ours: header walk", count_ours, records / count_ours],
            ["ratio", count_theirs / count_ours, ""],
        ],
    )
    phases = [*FLOW_PHASES, "total"]
    print_table(
        "whole flow (seconds)",
        ["flow", *phases],
        [[label, *(flows[key].get(p, "") for p in phases)] for key, label in FLOW_LABELS.items()],
    )
    print({key: round(value, 2) for key, value in ratios.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data; write no JSON")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shards, per_shard = (4, 300) if args.quick else (24, 2100)
    records = shards * per_shard
    src = WORK / ("src-quick" if args.quick else "src")
    generate(src, shards, per_shard)
    paths = sorted(src.glob("*.tfrecord"))
    total_bytes = sum(p.stat().st_size for p in paths)
    for path in paths:  # warm page cache for both sides
        path.read_bytes()

    load_before = os.getloadavg()
    # Imported up front, so neither side pays it inside the timings.
    import_seconds = tfds_metadata.import_tensorflow()
    names = [str(p) for p in paths]
    ours, theirs, their_pool = count_phase(names, args.workers, args.repeats, [per_shard] * shards)
    flows = flow_phase(their_pool, src, paths, args.workers, args.repeats, records)

    count_ours, count_theirs = statistics.median(ours), statistics.median(theirs)
    figures = {
        "data": {
            "shards": shards,
            "records": records,
            "bytes": total_bytes,
            "bytes_per_record": round(total_bytes / records),
            "page_cache": "warm",
        },
        "count_seconds": {
            "ours": count_ours,
            "original": count_theirs,
            "ours_runs": ours,
            "original_runs": theirs,
        },
        "count_records_per_second": {
            "ours": records / count_ours,
            "original": records / count_theirs,
        },
        "flow_seconds": flows,
        "import_seconds_tensorflow_tfds": import_seconds,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "notes": NOTES,
    }
    ratios = {
        "count_vs_original": count_theirs / count_ours,
        "convert_vs_original": flows["original"]["total"] / flows["ours"]["total"],
        "convert_schema_records_100_vs_original": flows["original"]["total"]
        / flows["ours_schema_records_100"]["total"],
    }
    print_report(records, total_bytes, args.workers, (count_ours, count_theirs), flows, ratios)
    if not args.quick:
        config = {"workers": args.workers, "repeats": args.repeats, "shards": shards}
        config["records_per_shard"] = per_shard
        path = write_result(
            "convert",
            ratios=ratios,
            figures=figures,
            config=config,
            packages=PACKAGES,
            command=command_run("make setup && .venv/bin/python -m benchmarks.bench_convert"),
        )
        print(f"wrote {path}")
    shutil.rmtree(WORK / "ours", ignore_errors=True)
    shutil.rmtree(WORK / "reference", ignore_errors=True)


if __name__ == "__main__":
    main()
