"""Every registered source format on a real img2dataset shard: count, iterate, place; lookups."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from img2dataset_shards import make_samples, source_records, write_shard

from clipa_data.core import layout, tfrecord
from clipa_data.core.errors import ClipaError
from clipa_data.core.example import decode_example
from clipa_data.prepare.download import OUTPUT_FORMATS
from clipa_data.prepare.placement import ENCODE, FILE_METHODS, PlaceTask, is_placed, place_shard
from clipa_data.prepare.source_format import (
    SOURCE_FORMATS,
    format_of_shard,
    source_format,
)

SAMPLES = make_samples(3, 7, failures=2)  # 5 records


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The records img2dataset's own tfrecord writer makes of SAMPLES."""
    shard = write_shard(tmp_path_factory.mktemp("reference"), 3, SAMPLES)
    return source_records(shard)


def methods() -> list[tuple[str, str]]:
    return [(name, m) for name, f in SOURCE_FORMATS.items() for m in f.placement_methods]


@pytest.mark.parametrize("name", list(SOURCE_FORMATS))
def test_count_and_examples_match_img2dataset(name, tmp_path, reference):
    shard_format = SOURCE_FORMATS[name]
    shard = write_shard(tmp_path, 3, SAMPLES, output_format=name)
    assert shard.name == f"00003{shard_format.suffix}"
    assert format_of_shard(shard) is shard_format
    assert shard_format.count(shard, check_data_crc=True) == 5
    examples = shard_format.examples(shard, check_data_crc=True)
    assert [decode_example(raw) for raw in examples] == reference


@pytest.mark.parametrize(("name", "method"), methods())
def test_placed_shard_is_the_same_tfrecord(name, method, tmp_path, reference):
    shard_format = SOURCE_FORMATS[name]
    shard = write_shard(tmp_path / "raw", 3, SAMPLES, output_format=name)
    target = tmp_path / "out" / layout.shard_filename("demo", "train", 0, 1)
    target.parent.mkdir()
    task = PlaceTask(
        source=str(shard),
        target=str(target),
        method=method,
        source_format=shard_format,
        records=5,
        num_bytes=shard.stat().st_size,
    )
    assert not is_placed(task)
    placed = place_shard(task)
    assert not placed.reused and placed.num_bytes == target.stat().st_size
    assert [decode_example(raw) for raw in tfrecord.read_records(target)] == reference
    assert is_placed(task) and place_shard(task).reused
    assert shard.exists() == (method != "move")


def test_placement_methods_follow_the_format(tmp_path):
    assert SOURCE_FORMATS["tfrecord"].placement_methods == FILE_METHODS
    assert SOURCE_FORMATS["tfrecord"].placement_method("copy", tmp_path, tmp_path) == "copy"
    assert SOURCE_FORMATS["webdataset"].placement_method("auto", tmp_path, tmp_path) == ENCODE
    with pytest.raises(ClipaError, match="re-encoded to tfrecord, so --mode move"):
        SOURCE_FORMATS["webdataset"].placement_method("move", tmp_path, tmp_path)


def test_one_list_of_names_and_the_tar_spelling():
    assert OUTPUT_FORMATS == tuple(SOURCE_FORMATS) == ("tfrecord", "webdataset")
    assert source_format("tar") is source_format("webdataset") is SOURCE_FORMATS["webdataset"]
    assert format_of_shard("00012.tar") is SOURCE_FORMATS["webdataset"]
    assert format_of_shard("00012.parquet") is None
    for shard_format in SOURCE_FORMATS.values():  # layout's shard-name rule knows every suffix
        name = f"00012{shard_format.suffix}"
        assert layout.raw_shard_id(name) == 12
        assert source_format(layout.raw_shard_format(name)) is shard_format


def test_unknown_format_is_one_clear_line():
    with pytest.raises(ClipaError) as raised:
        source_format("parquet")
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        "unknown source format 'parquet'; choose one of tfrecord, webdataset "
        "(or a shard suffix: .tfrecord, .tar)"
    )


def test_formats_survive_a_process_pool():
    """Tasks carry their format into worker processes (pickled by class)."""
    for shard_format in SOURCE_FORMATS.values():
        assert pickle.loads(pickle.dumps(shard_format)) == shard_format


def test_re_encoding_is_byte_identical_across_processes(tmp_path):
    """A resumed webdataset conversion re-encodes in new processes: same bytes every time."""
    tar = write_shard(tmp_path, 3, SAMPLES, output_format="webdataset")
    script = (
        "import hashlib, sys\n"
        "from clipa_data.prepare.source_format import SOURCE_FORMATS\n"
        "examples = SOURCE_FORMATS['webdataset'].examples(sys.argv[1])\n"
        "print(hashlib.sha256(b''.join(examples)).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script, str(tar)], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(digests) == 1, digests
