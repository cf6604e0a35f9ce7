"""The feature schema of img2dataset records, inferred from the records themselves.

img2dataset's tfrecord writer picks each feature's kind from the Python value it is given, so a
column can change kind between records: a missing float (``None``) is written as ``b""``, a
``bytes_list``. TFDS declares one kind per feature and fails mid-epoch on the odd record, so
every record is checked here before anything is written.

Checking a record costs one parse of a *skeleton* message: ``tf.train.Example`` with the value
lists declared empty, so the values (the image bytes) are skipped as unknown fields, dropped,
and what is left serialises to a few hundred bytes naming every column and its kind. Records
share one skeleton almost always, so only the first record of each distinct skeleton (and the
first ``FULL_PARSE_RECORDS`` of a shard, for value counts) is decoded in full in Python.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from clipa_data.core.errors import ClipaError
from clipa_data.core.example import Kind, example_class, parse_message

FULL_PARSE_RECORDS = 100
"""Records at the start of every shard decoded in full (value counts: scalar or list)."""

IMAGE_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
"""img2dataset names the image feature after ``encode_format``; the value is the image format."""

_KIND_OF_FIELD: dict[str, Kind] = {
    "bytes_list": "bytes",
    "float_list": "float",
    "int64_list": "int64",
}


def image_format(column: str) -> str | None:
    """``jpeg``/``png``/``webp`` when ``column`` is img2dataset's image feature, else None."""
    return IMAGE_FORMATS.get(column)


@functools.cache
def _skeleton_class() -> type:
    """``tf.train.Example`` whose value lists declare no fields: parsing it skips every value."""
    fdp = descriptor_pb2.FileDescriptorProto()
    example_class().DESCRIPTOR.file.CopyToProto(fdp)
    for message in fdp.message_type:
        if message.name in ("BytesList", "FloatList", "Int64List"):
            del message.field[:]  # values become unknown fields, discarded in skeleton()
    pool = descriptor_pool.DescriptorPool()  # private: the names never clash with TensorFlow's
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def skeleton(raw: bytes) -> bytes:
    """The column names and kinds of a serialized Example, as canonical bytes (values dropped)."""
    message = _skeleton_class().FromString(raw)
    message.DiscardUnknownFields()
    return message.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class Sighting:
    """The first record of a shard where a column was seen in some state."""

    record: int
    """Record index within the shard (0-based)."""
    key: str
    """The record's ``key`` feature ('' when it has none)."""
    value: str
    """A short repr of the column's values there ('' for a missing column)."""

    def where(self, shard: str) -> str:
        """``00003.tfrecord record 17 (key 000030017)``."""
        key = f" (key {self.key})" if self.key else ""
        return f"{shard} record {self.record}{key}"


@dataclass
class ColumnFacts:
    """What one shard's records say about one column."""

    kinds: dict[str, Sighting] = field(default_factory=dict)
    """Each kind seen, with the first record that had it."""
    counts: dict[int, Sighting] = field(default_factory=dict)
    """Each number of values seen in the fully decoded records, with the first record."""
    missing: Sighting | None = None
    """The first record that lacks the column, if any."""


@dataclass
class ShardSchema:
    """Everything the inspected records of one shard say about its columns."""

    records: int = 0
    """Records inspected."""
    columns: dict[str, ColumnFacts] = field(default_factory=dict)
    """Facts per column name."""
    first_key: str | None = None
    """The ``key`` of record 0 (convert checks TFDS reads it back)."""


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bytes) and len(value) > 40:
        return repr(value[:40])  # never repr a whole image
    return repr(value)


def _short(values: list) -> str:
    shown = [_show(v) for v in values[:4]]
    text = shown[0] if len(shown) == 1 else f"[{', '.join(shown)}]"
    return text if len(text) <= 40 else text[:37] + "..."


class SchemaObserver:
    """Feed records of one shard in order; ``result`` holds the facts."""

    def __init__(self) -> None:
        self.result = ShardSchema()
        self._skeletons: dict[bytes, frozenset[str]] = {}
        self._first_of_layout: list[tuple[frozenset[str], Sighting]] = []

    def add(self, raw: bytes) -> None:
        """Inspect the next record of the shard."""
        index = self.result.records
        self.result.records += 1
        layout = skeleton(raw)
        if layout in self._skeletons and index >= FULL_PARSE_RECORDS:
            return
        self._observe_in_full(
            index, raw, is_new_layout=layout not in self._skeletons, layout=layout
        )

    def _observe_in_full(self, index: int, raw: bytes, *, is_new_layout: bool, layout: bytes):
        message = parse_message(raw)
        features = message.features.feature
        key_values = features["key"].bytes_list.value if "key" in features else []
        key = key_values[0].decode("utf-8", "replace") if key_values else ""
        if index == 0:
            self.result.first_key = key if "key" in features else None
        columns = self.result.columns
        names = frozenset(features.keys())
        here = Sighting(index, key, "")
        for name, feature in features.items():
            which = feature.WhichOneof("kind")
            kind: Kind = _KIND_OF_FIELD[which] if which else "bytes"
            values = list(getattr(feature, which).value) if which else []
            facts = columns.get(name)
            if facts is None:
                facts = columns[name] = ColumnFacts()
                lacking = next((s for cols, s in self._first_of_layout if name not in cols), None)
                facts.missing = lacking
            if kind not in facts.kinds or len(values) not in facts.counts:
                sighting = Sighting(index, key, _short(values))
                facts.kinds.setdefault(kind, sighting)
                facts.counts.setdefault(len(values), sighting)
        if is_new_layout:
            for name, facts in columns.items():
                if name not in names and facts.missing is None:
                    facts.missing = here
            self._skeletons[layout] = names
            self._first_of_layout.append((names, here))


class UnparsableRecord(ClipaError):
    """A record whose payload is not a ``tf.train.Example`` (damage under an intact framing)."""

    def __init__(self, source: str, index: int, reason: str) -> None:
        super().__init__(source, index, reason)
        self.source, self.index, self.reason = source, index, reason

    def __str__(self) -> str:
        return (
            f"{self.source}: record {self.index} is not a tf.train.Example ({self.reason}): "
            "the shard is damaged"
        )


def observe(records: Iterable[bytes], source: str = "shard") -> ShardSchema:
    """The schema facts of a shard's records (all of them, or as many as ``records`` yields);
    ``source`` names the shard in the ``UnparsableRecord`` error."""
    observer = SchemaObserver()
    for index, raw in enumerate(records):
        try:
            observer.add(raw)
        except DecodeError as error:  # damaged payload bytes under an intact framing
            raise UnparsableRecord(source, index, str(error)) from None
    return observer.result


@dataclass(frozen=True)
class Column:
    """One declared feature."""

    name: str
    """Feature name as in the records."""
    kind: Kind
    """``bytes``, ``float`` or ``int64``."""
    is_list: bool
    """True when records hold a variable number of values (else exactly one)."""

    def describe(self) -> str:
        """``image (jpeg)``, ``text``, ``int64``, ``float list`` ..."""
        fmt = image_format(self.name) if self.kind == "bytes" and not self.is_list else None
        if fmt == "webp":
            return "encoded image (webp; TFDS cannot decode webp)"
        if fmt:
            return f"image ({fmt})"
        base = "text" if self.kind == "bytes" else self.kind
        return f"{base} list" if self.is_list else base


@dataclass(frozen=True)
class Schema:
    """The features every record of the dataset has, one kind each."""

    columns: tuple[Column, ...]
    """Declared features: key, image, txt first, then the rest by name."""
    dropped: tuple[str, ...] = ()
    """Columns present in the records but left out of the declaration (``--drop-column``)."""

    def to_json(self) -> dict:
        """A JSON-ready description (for the manifest)."""
        return {
            "features": {
                c.name: {"kind": c.kind, "list": c.is_list, "type": c.describe()}
                for c in self.columns
            },
            "dropped": list(self.dropped),
        }


def _order(name: str) -> tuple[int, str]:
    if name == "key":
        return (0, name)
    if image_format(name):
        return (1, name)
    if name == "txt":
        return (2, name)
    return (3, name)


def _kind_conflict(name: str, seen: list[tuple[str, str, Sighting]]) -> ClipaError:
    (shard_a, kind_a, at_a), (shard_b, kind_b, at_b) = seen[:2]
    empty = any(kind == "bytes" and at.value == "b''" for _, kind, at in seen[:2])
    why = " (img2dataset writes a missing number as empty bytes)" if empty else ""
    return ClipaError(
        f"column {name!r} changes type: {kind_a} {at_a.value} in {at_a.where(shard_a)} but "
        f"{kind_b} {at_b.value} in {at_b.where(shard_b)}{why}; "
        f"leave the column out with --drop-column {name}"
    )


def merge(shards: Sequence[tuple[str, ShardSchema]], drop: Collection[str] = ()) -> Schema:
    """One schema for all shards (in order), or a ``ClipaError`` naming shard, record and column.

    ``drop`` names columns to leave out of the declaration (TFDS ignores undeclared features).
    """
    all_names = {name for _, facts in shards for name in facts.columns}
    unknown = sorted(set(drop) - all_names)
    if unknown:
        raise ClipaError(
            f"--drop-column {unknown[0]}: no such column in the records; "
            f"columns are: {', '.join(sorted(all_names))}"
        )
    columns = []
    for name in sorted(all_names - set(drop), key=_order):
        kinds: list[tuple[str, str, Sighting]] = []
        counts: set[int] = set()
        present_in, missing_in = None, None
        for shard, facts in shards:
            column = facts.columns.get(name)
            if column is None:
                missing_in = missing_in or (shard, Sighting(0, facts.first_key or "", ""))
                continue
            present_in = present_in or (shard, min(column.kinds.values(), key=_record))
            if column.missing is not None:
                missing_in = missing_in or (shard, column.missing)
            for kind, sighting in sorted(column.kinds.items(), key=lambda item: item[1].record):
                if kind not in {k for _, k, _ in kinds}:
                    kinds.append((shard, kind, sighting))
            counts.update(column.counts)
        if len(kinds) > 1:
            raise _kind_conflict(name, kinds)
        if missing_in is not None:
            raise ClipaError(
                f"column {name!r} is missing from {missing_in[1].where(missing_in[0])} but "
                f"present in {present_in[1].where(present_in[0])}; TFDS needs every declared "
                f"feature in every record; leave it out with --drop-column {name}"
            )
        columns.append(Column(name=name, kind=kinds[0][1], is_list=counts != {1}))
    if not any(image_format(c.name) and c.kind == "bytes" for c in columns):
        raise ClipaError(
            "the records have no image feature (jpg, png or webp); "
            f"columns are: {', '.join(sorted(all_names))}"
        )
    return Schema(columns=tuple(columns), dropped=tuple(sorted(drop)))


def _record(sighting: Sighting) -> int:
    return sighting.record
