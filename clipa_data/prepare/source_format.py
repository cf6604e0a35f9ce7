"""The formats of img2dataset's shards that ``clipa-data convert`` reads, behind one interface.

A ``SourceFormat`` knows what convert needs from a shard file and nothing else: its name (the
``--output-format`` of ``clipa-data download`` and ``source.format`` in the convert manifest),
the file suffix img2dataset gives it, an exact record count, the records as serialized
``tf.train.Example`` bytes, the intact part of a damaged shard (``intact_part``: the whole
records before the damage, which ``--skip-bad-shards`` salvages), and how a shard reaches its
TFDS name (``placement_method``: the bytes of a tfrecord shard already are TFDS's, so they are
linked, copied or moved; any other format is re-encoded).

``SOURCE_FORMATS`` is the only list of format names: download's output formats, convert's
detection of a folder's shards, inspection and placement all read it. Adding a format is one
class here (plus its reader) and its test.

Spellings: img2dataset names webdataset shards ``00000.tar``, and convert finds a shard's format
by that suffix (``format_of_shard``); ``source_format`` accepts the suffix spelling (``tar``)
as well as the registry name, so the ``tar`` spelling used so far keeps working.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from clipa_data.core import tfrecord
from clipa_data.core.errors import ClipaError, CorruptShardError
from clipa_data.prepare import webdataset
from clipa_data.prepare.placement import ENCODE, FILE_METHODS, resolve_mode


@dataclass(frozen=True)
class IntactPart:
    """The whole records of a damaged shard before its damage."""

    records: int
    """How many."""
    end: int
    """Byte offset where they end: reading stops there (``examples(..., end=end)``)."""


class SourceFormat(ABC):
    """One kind of img2dataset shard file, as convert reads it."""

    name: ClassVar[str]
    """Registry name: ``clipa-data download --output-format`` and the manifest's format."""
    suffix: ClassVar[str]
    """Suffix of img2dataset's shard files (``.tfrecord``)."""
    data_checksums: ClassVar[bool]
    """Whether records carry a data checksum that ``check_data_crc`` can check."""
    placement_methods: ClassVar[tuple[str, ...]]
    """The ways a shard of this format can reach its TFDS name (``placement`` methods)."""

    @abstractmethod
    def count(self, path: str | Path, *, check_data_crc: bool = False) -> int:
        """Exact number of records, without decoding them; raises ``CorruptShardError``."""

    @abstractmethod
    def examples(
        self, path: str | Path, *, check_data_crc: bool = False, end: int | None = None
    ) -> Iterator[bytes]:
        """Every record as serialized ``tf.train.Example`` bytes, in file order; with ``end``
        (an ``IntactPart.end``) only those before that byte offset."""

    @abstractmethod
    def intact_part(self, path: str | Path, damage: CorruptShardError) -> IntactPart:
        """The whole records before ``damage`` (an error this format raised for ``path``)."""

    @abstractmethod
    def record_damage(self, path: str | Path, index: int, reason: str) -> CorruptShardError:
        """The damage of record ``index`` whose example does not parse, at its byte offset (so
        that ``intact_part`` keeps the records before it)."""

    @abstractmethod
    def placement_method(self, mode: str, src: Path, out: Path) -> str:
        """The placement method for ``--mode`` (one of ``placement_methods``)."""


@dataclass(frozen=True)
class TFRecordFormat(SourceFormat):
    """img2dataset's ``TFRecordSampleWriter`` output: already what TFDS reads."""

    name: ClassVar[str] = "tfrecord"
    suffix: ClassVar[str] = ".tfrecord"
    data_checksums: ClassVar[bool] = True
    placement_methods: ClassVar[tuple[str, ...]] = FILE_METHODS

    def count(self, path: str | Path, *, check_data_crc: bool = False) -> int:
        return tfrecord.scan_shard(path, check_data_crc=check_data_crc).records

    def examples(
        self, path: str | Path, *, check_data_crc: bool = False, end: int | None = None
    ) -> Iterator[bytes]:
        return tfrecord.read_records(path, check_data_crc=check_data_crc, end=end)

    def intact_part(self, path: str | Path, damage: CorruptShardError) -> IntactPart:
        # The error names the start of the first bad record; every record before it is whole.
        records = tfrecord.scan_shard(path, end=damage.offset).records
        return IntactPart(records=records, end=damage.offset)

    def record_damage(self, path: str | Path, index: int, reason: str) -> CorruptShardError:
        framing = tfrecord.HEADER_SIZE + tfrecord.FOOTER_SIZE
        before = itertools.islice(tfrecord.read_records(path), index)
        offset = sum(framing + len(data) for data in before)
        return CorruptShardError(str(path), offset, f"record {index} is not a tf.train.Example")

    def placement_method(self, mode: str, src: Path, out: Path) -> str:
        return resolve_mode(mode, src, out)


@dataclass(frozen=True)
class WebDatasetFormat(SourceFormat):
    """img2dataset's ``WebDatasetSampleWriter`` output: a tar of ``<key>.<ext>`` members."""

    name: ClassVar[str] = "webdataset"
    suffix: ClassVar[str] = ".tar"
    data_checksums: ClassVar[bool] = False
    placement_methods: ClassVar[tuple[str, ...]] = (ENCODE,)

    def count(self, path: str | Path, *, check_data_crc: bool = False) -> int:
        return webdataset.count_samples(path)  # a tar has no checksums to check

    def examples(
        self, path: str | Path, *, check_data_crc: bool = False, end: int | None = None
    ) -> Iterator[bytes]:
        return webdataset.iter_examples(path, end)

    def intact_part(self, path: str | Path, damage: CorruptShardError) -> IntactPart:
        records, end = webdataset.intact_samples(path, damage.offset)
        return IntactPart(records=records, end=end)

    def record_damage(self, path: str | Path, index: int, reason: str) -> CorruptShardError:
        sample = next(itertools.islice(webdataset.iter_samples(path), index, None))
        return webdataset.CorruptTarError(
            str(path), sample.offset, f"sample {sample.key}: {reason}"
        )

    def placement_method(self, mode: str, src: Path, out: Path) -> str:
        if mode not in ("auto", "copy"):
            raise ClipaError(
                f"webdataset shards are re-encoded to tfrecord, so --mode {mode} does "
                "not apply; leave --mode at auto"
            )
        return ENCODE


SOURCE_FORMATS: Mapping[str, SourceFormat] = MappingProxyType(
    {source.name: source for source in (TFRecordFormat(), WebDatasetFormat())}
)
"""Every source format by name: the only list of format names."""


def source_format(name: str) -> SourceFormat:
    """The format called ``name``, or whose suffix is ``name`` (``tar``); one-line error else."""
    if name in SOURCE_FORMATS:
        return SOURCE_FORMATS[name]
    for candidate in SOURCE_FORMATS.values():
        if candidate.suffix == f".{name}":
            return candidate
    suffixes = ", ".join(candidate.suffix for candidate in SOURCE_FORMATS.values())
    raise ClipaError(
        f"unknown source format {name!r}; choose one of {', '.join(SOURCE_FORMATS)} "
        f"(or a shard suffix: {suffixes})"
    )


def format_of_shard(path: str | Path) -> SourceFormat | None:
    """The format of a shard file by its suffix (``00003.tar`` -> webdataset), else None."""
    name = Path(path).name
    for candidate in SOURCE_FORMATS.values():
        if name.endswith(candidate.suffix):
            return candidate
    return None


def shard_examples() -> str:
    """``00000.tfrecord or 00000.tar``: what a source folder holds, for messages."""
    return " or ".join(f"00000{candidate.suffix}" for candidate in SOURCE_FORMATS.values())
