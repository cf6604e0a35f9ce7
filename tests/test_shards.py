"""The shard reader against TFDS, and every broken shard or sidecar it must name."""

from __future__ import annotations

import itertools
import shutil
import struct
from pathlib import Path

import pytest
from builders import jpeg_bytes, make_builder_dir, make_records
from sidecars import write_sidecars

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.core.example import encode_example
from clipa_data.core.tfrecord import HEADER_SIZE, frame
from clipa_train.shards import Record, Unreadable, open_split

CAPTIONS = [
    "Vintage red bicycle leaning on a brick wall",
    "Café au lait & croissant — breakfast in Paris 🥐",
    "",
    "SALE!!! 50% off Men's Leather Wallet (Brown) SKU-1234",
    "a dog",
]


def builder_with(tmp_path, shards):
    return make_builder_dir(tmp_path, shards)


def shard_path(builder, index=0):
    return Path(layout.read_split(builder, "train").shards[index].path)


def three_shards():
    return [
        make_records(5, captions=CAPTIONS),
        make_records(3, start=5),
        make_records(4, start=8, size=40),
    ]


def record_offsets(path):
    """Byte offset of every record in a shard file."""
    data = Path(path).read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        offset += HEADER_SIZE + length + 4
    return offsets


@pytest.mark.parametrize("as_url", [False, True])
def test_reader_matches_tfds(tmp_path, as_url):
    import tensorflow_datasets as tfds

    builder = builder_with(tmp_path, three_shards())
    source = f"file://{builder}" if as_url else str(builder)
    ours = list(open_split(source))
    assert all(isinstance(item, Record) for item in ours)
    dataset = tfds.builder_from_directory(str(builder)).as_dataset(
        split="train", shuffle_files=False, decoders={"jpg": tfds.decode.SkipDecoding()}
    )
    theirs = {
        example["key"].decode(): (example["jpg"], example["txt"].decode())
        for example in tfds.as_numpy(dataset)
    }
    assert len(theirs) == len(ours) == 12
    assert {r.key: (r.image, r.caption) for r in ours} == theirs
    assert [r.key for r in ours] == [f"{i:09d}" for i in range(12)]  # file order
    assert ours[1].caption == CAPTIONS[1]


def test_reading_from_a_record_on_skips_the_ones_before(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    reader = open_split(str(builder))
    every = list(reader.records(0))
    for start in range(6):
        assert [r.key for r in reader.records(0, start)] == [r.key for r in every[start:]]


def test_bad_payload_crc_loses_only_that_record_when_checked(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    path = shard_path(builder)
    data = bytearray(path.read_bytes())
    offset = record_offsets(path)[2]
    (length,) = struct.unpack("<Q", data[offset : offset + 8])
    data[offset + HEADER_SIZE + length // 2] ^= 0xFF  # inside the JPEG bytes
    path.write_bytes(bytes(data))

    checked = list(open_split(str(builder), check_crc=True).records(0))
    assert [type(item) for item in checked] == [Record, Record, Unreadable, Record, Record]
    assert "data checksum mismatch" in checked[2].reason
    assert checked[2].where() == f"record 2 of shard {path.name}"
    unchecked = list(open_split(str(builder), check_crc=False).records(0))
    assert all(isinstance(item, Record) for item in unchecked)


def test_truncated_shard_makes_the_rest_unreadable(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    path = shard_path(builder)
    offsets = record_offsets(path)
    path.write_bytes(path.read_bytes()[: offsets[3] + 30])
    reader = open_split(str(builder))
    items = list(reader.records(0))
    assert [type(item) for item in items] == [Record] * 3 + [Unreadable] * 2
    assert path.name in items[3].reason and "runs past the end" in items[3].reason
    assert [item.index for item in items[3:]] == [3, 4]
    assert [type(item) for item in reader.records(0, 4)] == [Unreadable]
    path.write_bytes(path.read_bytes()[: offsets[3]])  # ends cleanly after 3 records
    assert "file ends after 3 of 5 records" in list(reader.records(0))[4].reason


def test_broken_header_while_skipping(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    path = shard_path(builder)
    data = bytearray(path.read_bytes())
    data[record_offsets(path)[1]] ^= 0x01  # length no longer matches its checksum
    path.write_bytes(bytes(data))
    items = list(open_split(str(builder)).records(0, start=3))
    assert [type(item) for item in items] == [Unreadable, Unreadable]
    assert "broken header" in items[0].reason


def test_records_that_do_not_parse_or_lack_an_image(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    path = shard_path(builder, 1)
    no_image = encode_example({"key": ("bytes", [b"000000006"]), "txt": ("bytes", [b"x"])})
    records = Path(path).read_bytes()
    offsets = record_offsets(path)
    path.write_bytes(records[: offsets[1]] + frame(b"\xff\xff\xff garbage") + frame(no_image))
    items = list(open_split(str(builder)).records(1))
    assert [type(item) for item in items] == [Record, Unreadable, Unreadable]
    assert "not a tf.train.Example" in items[1].reason
    assert "no 'jpg' feature (key '000000006')" in items[2].reason


def test_an_empty_image_is_not_called_a_missing_one(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    path = shard_path(builder, 1)
    empty = encode_example({"key": ("bytes", [b"000000005"]), "jpg": ("bytes", [b""])})
    no_image = encode_example({"key": ("bytes", [b"000000006"]), "txt": ("bytes", [b"x"])})
    records = Path(path).read_bytes()
    path.write_bytes(records[: record_offsets(path)[1]] + frame(empty) + frame(no_image))
    items = list(open_split(str(builder)).records(1))
    assert "an empty 'jpg' feature (key '000000005')" in items[1].reason
    assert "no 'jpg' feature (key '000000006')" in items[2].reason


def test_more_records_than_declared_is_an_error(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    path = shard_path(builder, 2)
    extra = make_records(1, start=99)[0].encode()
    path.write_bytes(path.read_bytes() + frame(extra))
    with pytest.raises(ClipaError, match=rf"{path.name} holds more records than the 4"):
        # as the loader reads: the 4 declared records and no further (it was never raised)
        list(itertools.islice(open_split(str(builder)).records(2), 4))


def test_missing_shard_file_is_named_before_reading(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    shard_path(builder, 1).unlink()
    with pytest.raises(ClipaError, match=r"shard 1 of split 'train' is missing"):
        open_split(str(builder))


def test_sidecar_rows_come_with_their_records(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    write_sidecars(builder)
    reader = open_split(str(builder))
    assert reader.use_sidecars
    record = list(reader.records(0))[1]
    assert record.rows.keys[record.index] == record.key
    assert not open_split(str(builder), text_source="caption").use_sidecars


def test_missing_sidecar_names_it_and_the_command(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    missing = write_sidecars(builder)[1]
    missing.unlink()
    with pytest.raises(ClipaError, match=rf"{missing}: sidecar of shard .* is missing; create "):
        open_split(str(builder))


def test_syntax_without_sidecars_names_the_tag_command(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    with pytest.raises(ClipaError, match=rf"create them with: clipa-data tag {builder}"):
        open_split(str(builder), need_sidecars=True)


def test_sidecar_of_another_shard_is_refused_at_start(tmp_path):
    builder = builder_with(tmp_path, three_shards())
    paths = write_sidecars(builder)
    shutil.copy(paths[0], paths[1])  # 5 rows for a 3-record shard
    with pytest.raises(ClipaError, match=r"sidecar has 5 rows but shard .*00001-of-00003 has 3"):
        open_split(str(builder))


def test_sidecar_keys_not_matching_the_shard_name_the_record(tmp_path):
    shards = [make_records(3), make_records(3, start=3)]
    builder = builder_with(tmp_path, shards)
    paths = write_sidecars(builder)
    shutil.copy(paths[0], paths[1])  # same row count, other keys
    reader = open_split(str(builder))
    with pytest.raises(
        ClipaError, match=r"row 0 has key '000000000' but record 0 of shard .*00001-of-00002"
    ):
        list(reader.records(1))


def test_image_bytes_are_returned_untouched(tmp_path):
    png = jpeg_bytes(20, 10, seed=1, fmt="PNG")
    records = make_records(2)
    records[1] = type(records[1])(key=records[1].key, jpg=png, txt="png in the jpg field")
    builder = builder_with(tmp_path, [records])
    assert list(open_split(str(builder)))[1].image == png


def test_reading_from_a_record_reads_no_bytes_before_it(tmp_path, monkeypatch):
    """A seeded start under --samples-per-epoch and every resume open a shard at a record; the
    header walk to it went through a 1 MiB buffer, which read every byte before the record."""
    import io

    from clipa_data.core import tfrecord

    read = [0]

    class Counting(io.FileIO):
        def readinto(self, buffer):
            count = super().readinto(buffer)
            read[0] += count or 0
            return count

    def counting_open(path, buffer_size=1 << 20):
        return io.BufferedReader(Counting(str(path), "rb"), buffer_size)

    builder = builder_with(tmp_path, [make_records(40, size=200)])
    path = shard_path(builder)
    monkeypatch.setattr(tfrecord, "open_shard", counting_open)
    reader = open_split(str(builder))
    (record,) = itertools.islice(reader.records(0, start=39), 1)
    assert record.index == 39
    assert read[0] <= path.stat().st_size - record_offsets(path)[39]  # the record on, only
