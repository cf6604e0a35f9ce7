"""Read a builder directory's tfrecord shards and their Arrow sidecars, without TensorFlow.

``open_split`` runs every check that can run before training starts (split and shard files
present, sidecars present, made with our vocabulary and text field, one row per record) and
returns a ``ShardReader``, a small picklable object that worker processes use to read records.

``ShardReader.records(shard, start)`` yields exactly one item per declared record from
``start`` on: a ``Record``, or an ``Unreadable`` for a record that cannot be read (a truncated
file, a checksum mismatch with ``check_crc``, a message that does not parse, no image). The
stream counts those and keeps going; positions never shift, so a resumed stream stays exact.
A sidecar row whose key differs from its record's key is an error naming both.

Paths may be local or fsspec URLs (``gs://``, ``s3://``, ``file://``).
"""

from __future__ import annotations

import functools
import posixpath
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from clipa_data.core import layout, sidecar, tfrecord
from clipa_data.core.errors import ClipaError, CorruptShardError
from clipa_data.core.example import bytes_value, parse_message
from clipa_data.core.tokenizer import CLIP_BPE, load_tokenizer

TextSource = Literal["auto", "sidecar", "caption"]
TEXT_SOURCES: tuple[str, ...] = ("auto", "sidecar", "caption")
SIDECAR_CACHE = 4
"""Sidecars a worker keeps loaded (the shuffle buffer can hold records of a few shards)."""


@dataclass(frozen=True)
class Fields:
    """Which ``tf.train.Example`` features hold the key, the image and the caption."""

    key: str = "key"
    """The record's unique key (img2dataset's ``key``)."""
    image: str = "jpg"
    """The encoded image bytes."""
    text: str = "txt"
    """The caption."""

    def __post_init__(self) -> None:
        for name in ("key", "image", "text"):
            if not getattr(self, name):
                raise ClipaError(f"the {name} field name must not be empty")


@dataclass(frozen=True, slots=True)
class Record:
    """One readable record."""

    shard: str
    """File name of the shard it comes from (for messages)."""
    index: int
    """Its position in the shard."""
    key: str
    """The record's key."""
    image: bytes
    """Encoded image bytes, as stored."""
    caption: str
    """The caption (empty if the record has none)."""
    rows: sidecar.SidecarRows | None
    """The shard's sidecar when the stream uses sidecars (row ``index`` is this record's)."""

    def where(self) -> str:
        return f"record {self.index} (key {self.key!r}) of shard {self.shard}"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A declared record that could not be read."""

    shard: str
    """File name of the shard."""
    index: int
    """Its position in the shard."""
    reason: str
    """Why, in one line."""

    def where(self) -> str:
        return f"record {self.index} of shard {self.shard}"


def _skip(stream: BinaryIO, count: int) -> int:
    """Seek past ``count`` records reading only their headers; returns how many were passed.

    Stops early at a header that is truncated or fails its checksum, leaving the stream there.
    """
    for passed in range(count):
        start = stream.tell()
        header = stream.read(tfrecord.HEADER_SIZE)
        if len(header) < tfrecord.HEADER_SIZE:
            stream.seek(start)
            return passed
        length, length_crc = tfrecord.HEADER.unpack(header)
        if tfrecord.masked_crc32c(header[:8]) != length_crc:
            stream.seek(start)
            return passed
        stream.seek(length + tfrecord.FOOTER_SIZE, 1)
    return count


def _skip_to(path: str, stream: BinaryIO, start: int) -> int:
    """``_skip(stream, start)``; on a local file the headers are read unbuffered (two system
    calls a record) and ``stream`` seeks there once: through its 1 MiB buffer the walk read
    every byte before ``start``."""
    if not start or "://" in path:
        return _skip(stream, start)
    try:
        with open(path, "rb", buffering=0) as walker:
            passed = _skip(walker, start)
            stream.seek(walker.tell())
    except OSError:  # ``stream`` has not moved: its own walk meets (and reports) the error
        return _skip(stream, start)
    return passed


def _payloads(
    path: str, declared: int, start: int, check_crc: bool
) -> Iterator[bytes | ClipaError]:
    """Each declared record's bytes from ``start`` on, or the error that makes it unreadable.

    A payload checksum mismatch loses only that record (the framing is intact, reading goes on
    after it); a broken header, a file that ends early or a failed read loses every record from
    there on, and a shard that cannot be opened (deleted or made unreadable during the run)
    loses all of them: each is counted, never fatal by itself (``max_bad_fraction`` decides).
    """
    try:
        stream = tfrecord.open_shard(path)
    except OSError as error:
        lost = ClipaError(f"{path}: cannot be opened ({error.strerror or error})")
        for _ in range(start, declared):
            yield lost
        return
    with stream:
        index = _skip_to(path, stream, start)
        broken: CorruptShardError | None = None
        if index < start:
            broken = CorruptShardError(path, stream.tell(), f"record {index} has a broken header")
            index = start
        while index < declared and broken is None:
            base = stream.tell()
            records = tfrecord.iter_records(stream, name=path, check_data_crc=check_crc)
            try:
                for data in records:
                    index += 1
                    if index == declared:
                        # Checked before the last record is given: a reader takes no more
                        # than that and never comes back to this generator.
                        _check_nothing_after(stream, path, declared)
                        yield data
                        break
                    yield data
                else:
                    broken = CorruptShardError(
                        path, stream.tell(), f"file ends after {index} of {declared} records"
                    )
            except CorruptShardError as error:
                located = CorruptShardError(path, base + error.offset, error.reason)
                if error.reason == "data checksum mismatch":
                    yield located
                    index += 1
                else:
                    broken = located
            except OSError as error:  # an I/O error under the reader: the rest is lost
                broken = CorruptShardError(path, base, f"read failed ({error})")
        if broken is not None:
            for _ in range(index, declared):
                yield broken


def _check_nothing_after(stream, path: str, declared: int) -> None:
    """Raise when ``stream`` (just past the last declared record) holds more bytes."""
    try:
        more = stream.read(1)
    except OSError:  # the declared records are whole: a failed look past them loses none
        return
    if more:
        raise ClipaError(
            f"{path} holds more records than the {declared} its dataset_info.json declares; "
            "re-create the builder directory with clipa-data convert"
        )


@dataclass(frozen=True)
class ShardReader:
    """Reads records of one split of a builder directory (picklable; sent to workers)."""

    builder: str
    """The builder directory (local path or URL)."""
    split: layout.SplitInfo
    """The split's shards and exact record counts."""
    fields: Fields
    """Feature names."""
    check_crc: bool
    """Verify every record's payload checksum (the length checksum is always checked)."""
    use_sidecars: bool
    """Attach each shard's sidecar rows to its records."""
    tokenizer: str = CLIP_BPE
    """``--tokenizer``: the sidecars must hold this tokenizer's ids."""
    _sidecars: OrderedDict = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False, hash=False
    )
    """The last few loaded sidecars of this process, by shard (a cache, not state)."""

    @property
    def lengths(self) -> list[int]:
        """Records per shard, in shard order."""
        return [shard.num_records for shard in self.split.shards]

    def shard_name(self, shard: int) -> str:
        return posixpath.basename(self.split.shards[shard].path)

    def sidecar(self, shard: int) -> sidecar.SidecarRows | None:
        """The shard's sidecar rows (the last few are kept), or None without sidecars."""
        if not self.use_sidecars:
            return None
        rows = self._sidecars.pop(shard, None)
        if rows is None:
            path = layout.sidecar_path(self.builder, self.shard_name(shard))
            rows = sidecar.load_sidecar(path, _expectation(self, shard))
        self._sidecars[shard] = rows
        while len(self._sidecars) > SIDECAR_CACHE:
            self._sidecars.popitem(last=False)
        return rows

    def records(self, shard: int, start: int = 0) -> Iterator[Record | Unreadable]:
        """One item per declared record of ``shard``, from record ``start`` on."""
        info = self.split.shards[shard]
        if start >= info.num_records:
            return
        name = self.shard_name(shard)
        rows = self.sidecar(shard)
        payloads = _payloads(info.path, info.num_records, start, self.check_crc)
        for index, payload in enumerate(payloads, start):
            if isinstance(payload, ClipaError):
                yield Unreadable(name, index, str(payload))
            else:
                yield self._record(payload, name, index, rows)

    def _record(
        self, payload: bytes, name: str, index: int, rows: sidecar.SidecarRows | None
    ) -> Record | Unreadable:
        try:
            message = parse_message(payload)
        except Exception as error:  # protobuf raises its own DecodeError type
            return Unreadable(name, index, f"not a tf.train.Example ({error})")
        image = bytes_value(message, self.fields.image)
        key = (bytes_value(message, self.fields.key) or b"").decode("utf-8", "replace")
        if not image:
            what = "no" if image is None else "an empty"
            return Unreadable(name, index, f"{what} {self.fields.image!r} feature (key {key!r})")
        if rows is not None and rows.keys[index] != key:
            raise ClipaError(
                f"{layout.sidecar_path(self.builder, name)}: row {index} has key "
                f"{rows.keys[index]!r} but record {index} of shard {name} has key {key!r}; "
                "re-create the sidecars with clipa-data tag --overwrite"
            )
        if self.fields.text not in message.features.feature:
            # Not an unreadable record to skip: a builder without captions (downloaded without
            # a caption column) or another caption feature would train on empty captions.
            available = ", ".join(sorted(message.features.feature)) or "none"
            raise ClipaError(
                f"{name}: record {index} (key {key!r}) has no caption feature "
                f"{self.fields.text!r} (it has: {available}); pass the caption feature with "
                "--text-field, or download the data with a caption column"
            )
        caption = (bytes_value(message, self.fields.text) or b"").decode("utf-8", "replace")
        return Record(name, index, key, image, caption, rows)

    def __iter__(self) -> Iterator[Record | Unreadable]:
        """Every record of the split in file order (for checks and tools, not training)."""
        for shard in range(len(self.split.shards)):
            yield from self.records(shard)


def _expectation(reader: ShardReader, shard: int) -> sidecar.SidecarExpectation:
    tokenizer = load_tokenizer(reader.tokenizer)
    return sidecar.SidecarExpectation(
        shard=reader.shard_name(shard),
        num_records=reader.split.shards[shard].num_records,
        vocab_sha256=tokenizer.sha256(),
        text_field=reader.fields.text,
        tokenizer=tokenizer.name,
        tokenizer_source=tokenizer.source,
    )


def check_sidecar(reader: ShardReader, shard: int) -> None:
    """Check one sidecar from its header only: present, our vocabulary and field, row count."""
    path = layout.sidecar_path(reader.builder, reader.shard_name(shard))
    expected = _expectation(reader, shard)
    if not layout.exists(path):
        raise ClipaError(
            f"{path}: sidecar of shard {expected.shard} is missing; create sidecars with: "
            f"{layout.tag_command(reader.builder, reader.fields.text)}"
        )
    info, rows = sidecar.read_header(path)
    sidecar.check_info(info, expected, str(path))
    if rows != expected.num_records:
        raise ClipaError(
            f"{path}: sidecar has {rows} rows but shard {expected.shard} has "
            f"{expected.num_records} records; re-create it with clipa-data tag --overwrite"
        )


def _sidecars_tokenizer(builder, split: layout.SplitInfo) -> str | None:
    """The tokenizer whose ids the first record-holding shard's sidecar holds (None: none)."""
    shard = next((shard for shard in split.shards if shard.num_records), None)
    path = shard and layout.sidecar_path(builder, posixpath.basename(shard.path))
    if path is None or not layout.exists(path):
        return None  # check_sidecar names what is missing
    info, _ = sidecar.read_header(path)
    return info.tokenizer


def _check_shard_files(builder: str | object, split: layout.SplitInfo) -> None:
    if layout.is_url(builder):
        fs, root = layout.filesystem(builder)
        present = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    else:
        from pathlib import Path

        present = {p.name for p in Path(builder).iterdir()}
    for shard in split.shards:
        if shard.num_records and posixpath.basename(shard.path) not in present:
            raise ClipaError(
                f"{shard.path}: shard {shard.index} of split {split.name!r} is missing; "
                "re-create the builder directory with clipa-data convert"
            )


def open_split(
    builder: str,
    split: str = "train",
    *,
    fields: Fields = Fields(),
    check_crc: bool = False,
    text_source: TextSource = "auto",
    need_sidecars: bool = False,
    tokenizer: str = CLIP_BPE,
) -> ShardReader:
    """Check a builder directory's split (and its sidecars) and return a reader for it.

    ``text_source``: ``sidecar`` requires sidecars, ``caption`` ignores them, ``auto`` uses them
    when the builder has a sidecar folder whose sidecars hold ``tokenizer``'s ids (else it
    reads the captions). ``need_sidecars`` (the syntax mask) refuses a builder without
    sidecars, naming the command that makes them. Sidecars made by another tokenizer than
    ``tokenizer`` (``--tokenizer``) are refused in one line under ``sidecar``.
    """
    builder = layout.resolve_builder_dir(builder)
    info = layout.read_split(builder, split)
    if info.num_records == 0:
        raise ClipaError(f"{builder}: split {split!r} has no records")
    _check_shard_files(builder, info)
    has_sidecars = layout.exists(layout.sidecar_dir(builder))
    if text_source == "caption" and need_sidecars:
        raise ClipaError("the syntax text mask reads POS tags from sidecars; use text source auto")
    if (text_source == "sidecar" or need_sidecars) and not has_sidecars:
        raise ClipaError(
            f"{builder} has no sidecars, which the "
            f"{'syntax text mask' if need_sidecars else 'sidecar text source'} needs; "
            f"create them with: {layout.tag_command(builder, fields.text)}"
        )
    use_sidecars = text_source != "caption" and has_sidecars
    if use_sidecars and text_source == "auto" and not need_sidecars:
        # CLIP-BPE sidecars under a WordPiece run (CLIPA-v2 on a tagged builder): its ids are
        # not this tokenizer's, so auto reads the captions (--text-source sidecar refuses).
        use_sidecars = _sidecars_tokenizer(builder, info) in (None, load_tokenizer(tokenizer).name)
    reader = ShardReader(str(builder), info, fields, check_crc, use_sidecars, tokenizer)
    if use_sidecars:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(functools.partial(check_sidecar, reader), range(len(info.shards))))
    return reader
