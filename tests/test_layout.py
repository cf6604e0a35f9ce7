"""Names and paths: TFDS naming rules, builder discovery, split reading without TensorFlow."""

from __future__ import annotations

import json

import pytest

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError


def test_shard_filename_padding_follows_tfds():
    assert layout.shard_filename("laion400m", "train", 3, 12) == (
        "laion400m-train.tfrecord-00003-of-00012"
    )
    assert layout.shard_filename("x", "full", 7, 123456) == "x-full.tfrecord-000007-of-123456"


@pytest.mark.parametrize("bad", ["laion-400m", "4laion", "la ion", ""])
def test_dataset_names_tfds_rejects(bad):
    with pytest.raises(ClipaError, match="--name"):
        layout.check_dataset_name(bad)


def test_raw_shard_names():
    assert layout.raw_shard_id("/x/00012.tfrecord") == 12
    assert layout.raw_shard_format("00012.tar") == "tar"
    assert layout.raw_shard_id("00012.parquet") is None
    assert layout.raw_shard_id("dataset_info.json") is None


def test_download_summary_stays_out_of_img2dataset_glob(tmp_path):
    path = layout.download_summary_path(tmp_path)
    assert path.parent != tmp_path and path.suffix == ".json"


def write_info(folder, lengths, template=None):
    folder.mkdir(parents=True)
    split = {"name": "train", "shardLengths": [str(n) for n in lengths]}
    if template:
        split["filepathTemplate"] = template
    (folder / "dataset_info.json").write_text(
        json.dumps({"name": "demo", "fileFormat": "tfrecord", "splits": [split]})
    )


def test_read_split_and_resolution(tmp_path):
    builder = tmp_path / "out" / "demo" / "1.0.0"
    write_info(builder, [3, 0, 2])
    assert layout.resolve_builder_dir(tmp_path / "out") == builder
    assert layout.resolve_builder_dir(builder) == builder
    split = layout.read_split(builder, "train")
    assert split.num_records == 5
    assert [s.path.rsplit("/", 1)[1] for s in split.shards] == [
        "demo-train.tfrecord-00000-of-00003",
        "demo-train.tfrecord-00001-of-00003",
        "demo-train.tfrecord-00002-of-00003",
    ]
    with pytest.raises(ClipaError, match="no split 'validation'; available: train"):
        layout.read_split(builder, "validation")


def test_custom_template(tmp_path):
    write_info(tmp_path / "b", [1], template="{SHARD_INDEX}.tfrecord")
    (shard,) = layout.read_split(tmp_path / "b", "train").shards
    assert shard.path.endswith("/00000.tfrecord")


def test_not_a_builder_dir(tmp_path):
    with pytest.raises(ClipaError, match=r"not a builder directory.*clipa-data convert"):
        layout.resolve_builder_dir(tmp_path)
    with pytest.raises(ClipaError, match="does not exist"):
        layout.resolve_builder_dir(tmp_path / "nope")
    (tmp_path / "raw").mkdir()  # the download's folder given where the builder goes
    (tmp_path / "raw" / "00000.tfrecord").write_bytes(b"")
    with pytest.raises(ClipaError, match=r"raw holds img2dataset shards, not a builder directory"):
        layout.resolve_builder_dir(tmp_path / "raw")
    with pytest.raises(ClipaError, match=r"00000.tfrecord is not a builder directory"):
        layout.resolve_builder_dir(tmp_path / "raw" / "00000.tfrecord")  # a file


@pytest.mark.parametrize(
    "info",
    [
        {"splits": {"train": {"name": "train", "num_examples": 3}}, "dataset_name": "hf"},
        [],
        None,
        {"name": "x", "splits": ["train"]},
    ],
)
def test_a_dataset_info_that_is_not_tfds_is_one_line(tmp_path, info):
    """A Hugging Face datasets folder also has a dataset_info.json, of another shape: one line
    saying so, not a TypeError from deep inside (info, tag, preview and training read it)."""
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(ClipaError, match=r"not a TFDS dataset_info.json .*clipa-data convert"):
        layout.split_names(tmp_path)


def test_ambiguous_builder_dirs(tmp_path):
    write_info(tmp_path / "a" / "1.0.0", [1])
    write_info(tmp_path / "b" / "1.0.0", [1])
    with pytest.raises(ClipaError, match="several builder directories"):
        layout.resolve_builder_dir(tmp_path)


def test_sidecar_paths(tmp_path):
    path = layout.sidecar_path(tmp_path, "/x/demo-train.tfrecord-00000-of-00001")
    assert path == tmp_path / "sidecars" / "demo-train.tfrecord-00000-of-00001.arrow"
    url = layout.sidecar_path("gs://b/demo/1.0.0", "demo-train.tfrecord-00000-of-00001")
    assert url == "gs://b/demo/1.0.0/sidecars/demo-train.tfrecord-00000-of-00001.arrow"
