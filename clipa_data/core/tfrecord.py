"""TFRecord framing without TensorFlow: count, verify, read and write records.

A TFRecord file is a sequence of records, each framed as::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

Counting walks only the 12-byte headers and seeks past every payload (``os.pread``), so it never
reads image bytes; the length CRC is always checked (it costs nothing and catches most
corruption), the payload CRC only when asked.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from clipa_data.core.errors import CorruptShardError

HEADER = struct.Struct("<QI")
FOOTER = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 12
FOOTER_SIZE = FOOTER.size  # 4
MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's CRC: CRC-32C rotated right by 15 bits plus a constant (mod 2**32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record's bytes as they appear in a TFRecord file."""
    length = struct.pack("<Q", len(data))
    return length + FOOTER.pack(masked_crc32c(length)) + data + FOOTER.pack(masked_crc32c(data))


@dataclass(frozen=True)
class ShardScan:
    """The outcome of walking one TFRecord file."""

    path: str
    """The file that was walked."""
    records: int
    """Number of complete, valid records."""
    size: int
    """File size in bytes."""


def scan_shard(
    path: str | Path, *, check_data_crc: bool = False, end: int | None = None
) -> ShardScan:
    """Count the records of a local TFRecord file by walking its headers.

    Raises ``CorruptShardError`` naming the byte offset of the first bad record: a truncated
    header or payload, a length CRC mismatch, or (with ``check_data_crc``) a data CRC mismatch.
    ``end`` stops the walk at that byte offset (the intact part of a damaged shard).
    """
    path = str(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        records = 0
        stop = size if end is None else min(size, end)
        while offset < stop:
            header = os.pread(fd, HEADER_SIZE, offset)
            if len(header) < HEADER_SIZE:
                raise CorruptShardError(
                    path, offset, f"truncated record header ({size - offset} bytes left)"
                )
            length, length_crc = HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise CorruptShardError(path, offset, "length checksum mismatch")
            record_end = offset + HEADER_SIZE + length + FOOTER_SIZE
            if record_end > size:
                raise CorruptShardError(
                    path, offset, f"record of {length} bytes runs past the end of the file"
                )
            if check_data_crc:
                body = os.pread(fd, length + FOOTER_SIZE, offset + HEADER_SIZE)
                (data_crc,) = FOOTER.unpack(body[length:])
                if masked_crc32c(body[:length]) != data_crc:
                    raise CorruptShardError(path, offset, "data checksum mismatch")
            offset = record_end
            records += 1
        return ShardScan(path=path, records=records, size=size)
    finally:
        os.close(fd)


def iter_records(
    stream: BinaryIO,
    *,
    name: str = "<stream>",
    check_data_crc: bool = False,
    end: int | None = None,
) -> Iterator[bytes]:
    """Yield the data of every record of an open binary stream (local file or fsspec file).

    ``name`` is used in error messages. The length CRC is always checked. ``end`` stops at that
    byte offset (the intact part of a damaged shard: nothing after it is read).
    """
    offset = 0
    while end is None or offset < end:
        header = stream.read(HEADER_SIZE)
        if not header:
            return
        if len(header) < HEADER_SIZE:
            raise CorruptShardError(name, offset, "truncated record header")
        length, length_crc = HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise CorruptShardError(name, offset, "length checksum mismatch")
        body = stream.read(length + FOOTER_SIZE)
        if len(body) < length + FOOTER_SIZE:
            raise CorruptShardError(
                name, offset, f"record of {length} bytes runs past the end of the file"
            )
        data = body[:length]
        if check_data_crc:
            (data_crc,) = FOOTER.unpack(body[length:])
            if masked_crc32c(data) != data_crc:
                raise CorruptShardError(name, offset, "data checksum mismatch")
        offset += HEADER_SIZE + length + FOOTER_SIZE
        yield data


def open_shard(path: str | Path, buffer_size: int = 1 << 20) -> BinaryIO:
    """Open a local path or fsspec URL for sequential record reading."""
    text = str(path)
    if "://" in text:
        import fsspec

        return fsspec.open(text, "rb", block_size=buffer_size).open()
    return open(text, "rb", buffering=buffer_size)


def read_records(
    path: str | Path, *, check_data_crc: bool = False, end: int | None = None
) -> Iterator[bytes]:
    """Yield the data of every record of the TFRecord file at ``path`` (up to byte ``end``)."""
    with open_shard(path) as stream:
        yield from iter_records(stream, name=str(path), check_data_crc=check_data_crc, end=end)


def write_records(stream: BinaryIO, records: Iterable[bytes]) -> int:
    """Write records to an open binary stream in TFRecord framing; returns how many."""
    count = 0
    for data in records:
        stream.write(frame(data))
        count += 1
    return count
