"""Issue 2 end to end: local HTTP server -> real img2dataset -> convert -> real TFDS reader.

Every record TFDS reads back must equal the record img2dataset wrote (key, image bytes,
caption), shard by shard, and the declared shard lengths must be exact (each shard is read as
its own sub-split, which TFDS slices by the declared lengths). Both img2dataset output formats
are covered; gaps and empty shards are covered by convert's own tests.
"""

from __future__ import annotations

import tarfile

import pytest

from clipa_data import layout
from clipa_data.convert import ConvertConfig, convert
from clipa_data.demo import serve_demo_images, write_demo_metadata
from clipa_data.download import DownloadConfig, download
from clipa_data.example import decode_example
from clipa_data.tfrecord import read_records

ROWS = 30
PER_SHARD = 12  # 3 shards: 12 + 12 + 6 rows, minus the 5 planted failures


def source_records(raw_dir, output_format):
    """{key: (jpg bytes, caption)} of everything img2dataset wrote, plus per-shard counts."""
    records, counts = {}, {}
    if output_format == "tfrecord":
        for shard in sorted(raw_dir.glob("*.tfrecord")):
            counts[shard.name] = 0
            for raw in read_records(shard):
                features = decode_example(raw)
                key = features["key"][1][0].decode()
                records[key] = (features["jpg"][1][0], features["txt"][1][0].decode())
                counts[shard.name] += 1
    else:
        for shard in sorted(raw_dir.glob("*.tar")):
            counts[shard.name] = 0
            members = {}
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    stem, _, ext = member.name.rpartition(".")
                    members.setdefault(stem, {})[ext] = tar.extractfile(member).read()
            for stem, parts in members.items():
                records[stem] = (parts["jpg"], parts["txt"].decode())
                counts[shard.name] += 1
    return records, counts


@pytest.mark.parametrize("output_format", ["tfrecord", "webdataset"])
def test_download_convert_load(tmp_path, output_format):
    import tensorflow_datasets as tfds

    with serve_demo_images() as base_url:
        meta = write_demo_metadata(tmp_path / "meta.parquet", base_url, count=ROWS, seed=5)
        summary = download(
            DownloadConfig(
                url_list=str(meta.path),
                output_folder=str(tmp_path / "raw"),
                image_size=32,
                processes_count=1,
                thread_count=8,
                number_sample_per_shard=PER_SHARD,
                output_format=output_format,
            )
        )
    assert summary.successes == meta.expected_successes == ROWS - 5
    source, source_counts = source_records(tmp_path / "raw", output_format)
    assert len(source) == summary.successes

    result = convert(ConvertConfig(src=tmp_path / "raw", out=tmp_path / "out", name="demo"))
    builder = layout.builder_dir(tmp_path / "out", "demo", "1.0.0")
    assert result.builder_dir == builder and result.records == len(source)

    loaded = tfds.builder_from_directory(str(builder))
    split = loaded.info.splits["train"]
    assert sorted(split.shard_lengths) == sorted(n for n in source_counts.values() if n)
    assert split.num_examples == len(source)

    # Read every shard separately: per-shard contents must match exactly and nothing repeats.
    seen = {}
    decoders = {"jpg": tfds.decode.SkipDecoding()}
    for index, length in enumerate(split.shard_lengths):
        dataset = loaded.as_dataset(
            split=f"train[{sum(split.shard_lengths[:index])}:"
            f"{sum(split.shard_lengths[: index + 1])}]",
            decoders=decoders,
        )
        rows = list(tfds.as_numpy(dataset))
        assert len(rows) == length
        for row in rows:
            key = row["key"].decode()
            assert key not in seen
            seen[key] = (row["jpg"], row["txt"].decode())
    assert seen == source
