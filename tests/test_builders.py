"""The test builder directories load with the real TFDS reader and with our layout reader."""

from __future__ import annotations

from builders import make_builder_dir, make_records

from clipa_data.core import layout


def test_builder_dir_loads_with_tfds(tmp_path):
    import tensorflow_datasets as tfds

    shards = [make_records(3), make_records(2, start=3)]
    builder = make_builder_dir(tmp_path, shards)
    loaded = tfds.builder_from_directory(str(builder))
    assert loaded.info.splits["train"].shard_lengths == [3, 2]
    keys = sorted(ex["key"].decode() for ex in tfds.as_numpy(loaded.as_dataset(split="train")))
    assert keys == [f"{i:09d}" for i in range(5)]
    split = layout.read_split(builder, "train")
    assert [s.num_records for s in split.shards] == [3, 2]
    assert all(__import__("os").path.exists(s.path) for s in split.shards)
