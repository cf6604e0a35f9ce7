"""TFRecord framing: our writer/reader/counter against TensorFlow's own, and corruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipa_data.core import tfrecord
from clipa_data.core.errors import CorruptShardError


def write(path: Path, payloads: list[bytes]) -> Path:
    with open(path, "wb") as handle:
        tfrecord.write_records(handle, payloads)
    return path


PAYLOADS = [b"", b"a", os.urandom(1000), b"x" * 70_000, os.urandom(3)]


def test_round_trip_and_count(tmp_path):
    shard = write(tmp_path / "s.tfrecord", PAYLOADS)
    assert list(tfrecord.read_records(shard, check_data_crc=True)) == PAYLOADS
    scan = tfrecord.scan_shard(shard, check_data_crc=True)
    assert scan.records == len(PAYLOADS)
    assert scan.size == shard.stat().st_size


def test_empty_file_has_zero_records(tmp_path):
    shard = write(tmp_path / "empty.tfrecord", [])
    assert tfrecord.scan_shard(shard).records == 0
    assert list(tfrecord.read_records(shard)) == []


def test_tensorflow_reads_our_records_and_we_read_theirs(tmp_path):
    tf = pytest.importorskip("tensorflow")
    ours = write(tmp_path / "ours.tfrecord", PAYLOADS)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == PAYLOADS
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for payload in PAYLOADS:
            writer.write(payload)
    assert theirs.read_bytes() == ours.read_bytes()


def test_truncated_payload_names_the_offset(tmp_path):
    shard = write(tmp_path / "t.tfrecord", PAYLOADS)
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    last_offset = len(data) - (12 + len(PAYLOADS[-1]) + 4)
    with pytest.raises(CorruptShardError) as caught:
        tfrecord.scan_shard(shard)
    assert caught.value.offset == last_offset
    assert str(shard) in str(caught.value) and f"byte {last_offset}" in str(caught.value)
    with pytest.raises(CorruptShardError):
        list(tfrecord.read_records(shard))


def test_truncated_header(tmp_path):
    shard = write(tmp_path / "h.tfrecord", PAYLOADS[:2])
    size = shard.stat().st_size
    with open(shard, "ab") as handle:
        handle.write(b"\x01\x02\x03")
    with pytest.raises(CorruptShardError, match="truncated record header") as caught:
        tfrecord.scan_shard(shard)
    assert caught.value.offset == size


def test_data_crc_checked_only_when_asked(tmp_path):
    shard = write(tmp_path / "c.tfrecord", PAYLOADS)
    data = bytearray(shard.read_bytes())
    second_record = 12 + len(PAYLOADS[0]) + 4
    data[second_record + 12] ^= 0xFF  # flip the payload byte of record 1
    shard.write_bytes(bytes(data))
    assert tfrecord.scan_shard(shard).records == len(PAYLOADS)
    with pytest.raises(CorruptShardError, match="data checksum") as caught:
        tfrecord.scan_shard(shard, check_data_crc=True)
    assert caught.value.offset == second_record
    with pytest.raises(CorruptShardError, match="data checksum"):
        list(tfrecord.read_records(shard, check_data_crc=True))


def test_length_crc_always_checked(tmp_path):
    shard = write(tmp_path / "l.tfrecord", PAYLOADS[:2])
    data = bytearray(shard.read_bytes())
    data[0] ^= 0x01  # corrupt the first length
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="length checksum") as caught:
        tfrecord.scan_shard(shard)
    assert caught.value.offset == 0


def test_corrupt_shard_error_pickles():
    import pickle

    error = CorruptShardError("/x/00001.tfrecord", 42, "length checksum mismatch")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.offset, again.reason) == (error.path, error.offset, error.reason)
    assert str(again) == str(error)
