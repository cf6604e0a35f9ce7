"""Issue 2 end to end: local HTTP server -> real img2dataset -> convert -> real TFDS reader.

Every record TFDS reads back must equal the record img2dataset wrote, feature by feature (key,
image bytes, caption and every metadata column img2dataset saved: NSFW, similarity, LICENSE,
width, height, status, ...), shard by shard along the convert manifest's source -> target map.
Each target shard is read as its own sub-split, which TFDS slices by the declared lengths, so a
wrong length or a shard holding another source's records fails. The source shards are read with
TensorFlow's own TFRecord reader and ``tf.train.Example`` parser (tfrecord output) or the
standard library's ``tarfile`` + ``json`` (webdataset output), never with clipa's readers.
Both img2dataset output formats are covered; gaps and empty shards are covered by convert's own
tests.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clipa_data.core import layout
from clipa_data.demo import serve_demo_images, write_demo_metadata
from clipa_data.prepare.convert import ConvertConfig, convert
from clipa_data.prepare.download import DownloadConfig, download

ROWS = 30
PER_SHARD = 12  # 3 shards: 12 + 12 + 6 rows, minus the 5 planted failures
IMAGE = "jpg"


def _as_bytes(value) -> bytes:
    """img2dataset's TFRecordSampleWriter rule for a non-number: None -> b'', str -> utf-8."""
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def _json_feature(value) -> list:
    """The values img2dataset's tfrecord writer stores for a metadata value (its ``_feature``)."""
    if isinstance(value, list):
        if value and isinstance(value[0], float):
            return [float(np.float32(item)) for item in value]
        if value and isinstance(value[0], int):
            return [int(item) for item in value]
        return [_as_bytes(item) for item in value]
    if isinstance(value, int):  # bool included, as in img2dataset
        return [int(value)]
    if isinstance(value, float):
        return [float(np.float32(value))]  # tf.train.FloatList holds float32
    return [_as_bytes(value)]


def read_tfrecord_source(shard: Path) -> list[dict[str, list]]:
    """Every record of an img2dataset tfrecord shard, parsed by TensorFlow itself."""
    import tensorflow as tf

    records = []
    for raw in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator():
        example = tf.train.Example.FromString(raw)
        record = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value)
            if kind == "float_list":
                values = [float(np.float32(value)) for value in values]
            record[name] = values
        records.append(record)
    return records


def read_webdataset_source(shard: Path) -> list[dict[str, list]]:
    """Every sample of an img2dataset tar, as the Example its tfrecord writer would make of it.

    That writer stores ``key``, the image and ``txt``, then every entry of the sample's metadata
    (the tar's ``.json`` member) over them.
    """
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():  # archive order, which convert keeps
            stem, _, extension = member.name.partition(".")
            samples.setdefault(stem, {})[extension] = tar.extractfile(member).read()
    records = []
    for stem, files in samples.items():
        assert set(files) == {IMAGE, "txt", "json"}, (shard, stem, sorted(files))
        record = {"key": [stem.encode()], IMAGE: [files[IMAGE]], "txt": [files["txt"]]}
        for name, value in json.loads(files["json"]).items():
            record[name] = _json_feature(value)
        records.append(record)
    return records


def source_shards(raw_dir: Path, output_format: str) -> dict[str, list[dict[str, list]]]:
    """{source shard file name: its records in file order} for everything img2dataset wrote."""
    if output_format == "tfrecord":
        return {p.name: read_tfrecord_source(p) for p in sorted(raw_dir.glob("*.tfrecord"))}
    return {p.name: read_webdataset_source(p) for p in sorted(raw_dir.glob("*.tar"))}


def _loaded_values(value) -> list:
    """A value as TFDS hands it out (bytes, numpy scalar or array) as a list of Python values."""
    items = list(value) if isinstance(value, np.ndarray) and value.ndim == 1 else [value]
    out = []
    for item in items:
        if isinstance(item, np.floating):
            out.append(float(item))
        elif isinstance(item, np.integer):
            out.append(int(item))
        else:
            assert isinstance(item, bytes), type(item)
            out.append(item)
    return out


def read_target_shard(loaded, index: int) -> list[dict[str, list]]:
    """Shard ``index`` of the train split, read by TFDS as its own sub-split, in file order."""
    import tensorflow_datasets as tfds

    lengths = loaded.info.splits["train"].shard_lengths
    start = sum(lengths[:index])
    dataset = loaded.as_dataset(
        split=f"train[{start}:{start + lengths[index]}]",
        shuffle_files=False,
        decoders={IMAGE: tfds.decode.SkipDecoding()},  # the stored bytes, to compare exactly
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    return [
        {name: _loaded_values(value) for name, value in row.items()}
        for row in tfds.as_numpy(dataset)
    ]


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
    sources = source_shards(tmp_path / "raw", output_format)
    assert len(sources) == 3
    assert sum(map(len, sources.values())) == summary.successes
    columns = set(next(iter(sources.values()))[0])
    # The LAION recipe's saved columns and img2dataset's own ones all reach the records.
    assert {"key", IMAGE, "txt", "NSFW", "similarity", "LICENSE", "width", "height"} <= columns
    assert {"original_width", "original_height", "status", "url", "caption"} <= columns

    result = convert(ConvertConfig(src=tmp_path / "raw", out=tmp_path / "out", name="demo"))
    builder = layout.builder_dir(tmp_path / "out", "demo", "1.0.0")
    assert result.builder_dir == builder and result.records == summary.successes

    manifest = json.loads((builder / layout.CONVERT_MANIFEST).read_text())
    mapped = [shard["source"] for shard in manifest["shards"]]
    # Every source shard is either mapped to a target or dropped because it is empty.
    assert sorted(mapped + manifest["dropped_empty"]) == sorted(sources)
    assert all(not sources[name] for name in manifest["dropped_empty"])
    assert manifest["skipped_bad"] == []

    loaded = tfds.builder_from_directory(str(builder))
    split = loaded.info.splits["train"]
    assert split.num_examples == result.records
    assert split.shard_lengths == [len(sources[name]) for name in mapped]
    assert [path.name for path in split.filepaths] == [s["target"] for s in manifest["shards"]]
    assert set(loaded.info.features.keys()) == columns

    for index, shard in enumerate(manifest["shards"]):
        assert shard["index"] == index and shard["records"] == len(sources[shard["source"]])
        expected = sources[shard["source"]]
        got = read_target_shard(loaded, index)
        assert len(got) == len(expected), shard
        for position, (row, want) in enumerate(zip(got, expected, strict=True)):
            assert row == want, f"{shard['target']} record {position} != {shard['source']}"
