"""img2dataset's webdataset shards (``00000.tar``), read with the standard library.

A shard is a plain tar of ``<key>.<ext>`` members: the image (``jpg``, ``png`` or ``webp``, after
img2dataset's ``encode_format``), ``txt`` (the caption) and ``json`` (every metadata column).
``to_example`` re-encodes a sample as the ``tf.train.Example`` that img2dataset's own
``TFRecordSampleWriter`` writes for it: ``key``, the image, ``txt``, then every metadata column
with the writer's type rule (int -> int64, float -> float, list -> by its first element, anything
else -> bytes, ``None`` -> ``b""``).

Python's ``tarfile`` stops silently at a damaged or truncated header, so ``iter_members`` checks
that an archive ends with its end-of-archive blocks and names the byte offset where it does not.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.errors import ClipaError, CorruptShardError
from clipa_data.core.example import Kind, encode_example
from clipa_data.prepare.schema import IMAGE_FORMATS

BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = 2 * BLOCK
"""A closed tar ends with (at least) two zero blocks."""


class CorruptTarError(CorruptShardError):
    """A tar shard that is damaged or cut short at a known byte offset."""

    def __str__(self) -> str:
        return f"{self.path}: corrupt tar archive at byte {self.offset}: {self.reason}"


@dataclass(frozen=True)
class Sample:
    """The members of one key, in archive order."""

    key: str
    """The part of the member names before the first dot."""
    files: dict[str, bytes]
    """Extension (``jpg``, ``txt``, ``json`` ...) -> content."""
    offset: int
    """Byte offset of the sample's first member header (for error messages)."""


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the last component."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, extension if dot else ""


def _check_end(path: str, handle, end: int, size: int) -> None:
    """Raise unless everything from ``end`` to the end of the file is end-of-archive zeros."""
    if size - end < END_OF_ARCHIVE:
        raise CorruptTarError(
            path, end, "tar archive cut short (no end-of-archive blocks; unfinished write?)"
        )
    handle.seek(end)
    while chunk := handle.read(1 << 20):
        if chunk.count(0) != len(chunk):
            raise CorruptTarError(path, end, "unreadable tar header")


def iter_members(
    path: str | Path, *, read_data: bool, end: int | None = None
) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """Yield ``(member, content)`` for every regular file; content is b'' unless ``read_data``.

    Without ``read_data`` only the 512-byte headers are read (the walk seeks past the data).
    ``end`` stops before the header at that byte offset (the intact part of a damaged shard),
    without the end-of-archive check.
    """
    path = str(path)
    size = os.path.getsize(path)
    position = 0  # where the next header starts: the end of the last member's data blocks
    with open(path, "rb") as handle, _open_archive(path, handle) as archive:
        try:
            while (end is None or position < end) and (member := archive.next()) is not None:
                archive.members.clear()  # tarfile would keep every header in memory
                position = member.offset_data + -(-member.size // BLOCK) * BLOCK
                if member.offset_data + member.size > size:
                    raise CorruptTarError(
                        path, member.offset, f"member {member.name} runs past the end of the file"
                    )
                if member.isfile():
                    yield member, archive.extractfile(member).read() if read_data else b""
        except tarfile.ReadError as error:
            raise CorruptTarError(path, position, f"unreadable tar archive ({error})") from None
        if end is None:
            _check_end(path, handle, position, size)


def _open_archive(path: str, handle) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=handle, mode="r:")
    except tarfile.ReadError as error:
        raise CorruptTarError(path, 0, f"not a tar archive ({error})") from None


def iter_samples(path: str | Path, end: int | None = None) -> Iterator[Sample]:
    """Group consecutive members with the same key into samples (up to byte ``end``)."""
    current: Sample | None = None
    for member, data in iter_members(path, read_data=True, end=end):
        key, extension = _split_name(member.name)
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = Sample(key=key, files={}, offset=member.offset)
        current.files[extension] = data
    if current is not None:
        yield current


def count_samples(path: str | Path) -> int:
    """Number of samples (distinct consecutive keys), reading only the tar headers."""
    count, previous = 0, None
    for member, _ in iter_members(path, read_data=False):
        key, _ = _split_name(member.name)
        if key != previous:
            count += 1
            previous = key
    return count


def feature_of(value: object) -> tuple[Kind, list]:
    """The feature img2dataset's ``TFRecordSampleWriter._feature`` writes for a metadata value."""
    if isinstance(value, list):
        if not value:
            return "bytes", []
        if isinstance(value[0], int):
            return "int64", value
        if isinstance(value[0], float):
            return "float", value
        return "bytes", [_as_bytes(item) for item in value]
    if isinstance(value, int):  # bool included, as in img2dataset
        return "int64", [value]
    if isinstance(value, float):
        return "float", [value]
    return "bytes", [_as_bytes(value)]


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()  # a nested JSON value (img2dataset's writer would fail)


def to_example(sample: Sample, path: str | Path) -> bytes:
    """The serialized ``tf.train.Example`` img2dataset's tfrecord writer makes of ``sample``."""
    images = [extension for extension in sample.files if extension in IMAGE_FORMATS]
    if len(images) != 1:
        found = ", ".join(sorted(sample.files)) or "nothing"
        raise CorruptTarError(
            str(path), sample.offset, f"sample {sample.key} has {found} but not one image file"
        )
    features: dict[str, tuple[Kind, list]] = {
        "key": ("bytes", [sample.key.encode()]),
        images[0]: ("bytes", [sample.files[images[0]]]),
    }
    if "txt" in sample.files:
        features["txt"] = ("bytes", [sample.files["txt"]])
    if "json" in sample.files:
        try:
            meta = json.loads(sample.files["json"])
        except ValueError as error:
            raise CorruptTarError(
                str(path), sample.offset, f"sample {sample.key}: bad json ({error})"
            ) from None
        for name, value in meta.items():
            # img2dataset's json repeats the key; a saved column named like a file (txt, jpg)
            # would replace that file's feature, as img2dataset's own tfrecord writer lets it.
            if name in features and name != "key":
                raise ClipaError(
                    f"{path}: sample {sample.key}'s json has a field {name!r}, which would "
                    f"replace the sample's own {name} (a URL-list column saved under that "
                    "name); download again without saving that column"
                )
            features[name] = feature_of(value)
    return encode_example(features)


def iter_examples(path: str | Path, end: int | None = None) -> Iterator[bytes]:
    """Every sample of a webdataset shard as tfrecord Example bytes, in archive order."""
    for sample in iter_samples(path, end):
        yield to_example(sample, path)


def intact_samples(path: str | Path, damage: int) -> tuple[int, int]:
    """``(samples, bytes)`` of the whole samples before the byte offset ``damage``.

    Members are whole when their data ends before ``damage``; a sample is whole when a member
    of another key follows it there, and the last one only when it has the same members as the
    sample before it (img2dataset writes the same members for every sample of a shard): its
    remaining members may have been cut off with the damage.
    """
    groups: list[tuple[str, set[str], int]] = []  # key, extensions, end of its last member
    for member, _ in iter_members(path, read_data=False, end=damage):
        stop = member.offset_data + -(-member.size // BLOCK) * BLOCK
        if stop > damage:
            break
        key, extension = _split_name(member.name)
        if groups and groups[-1][0] == key:
            groups[-1][1].add(extension)
            groups[-1] = (key, groups[-1][1], stop)
        else:
            groups.append((key, {extension}, stop))
    if groups and (len(groups) < 2 or groups[-1][1] != groups[-2][1]):
        groups.pop()
    return len(groups), groups[-1][2] if groups else 0
