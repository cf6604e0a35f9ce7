"""WordPiece text (``--tokenizer PATH``): ids equal the ``tokenizers`` library's own, rows are
CLIPA-v2's ([CLS] + L-1 wordpieces, zero-padded, no [SEP]), the v2 syntax mask is the original's
``noun_tokenize`` over a per-vocabulary priority table cached beside the vocabulary, a tiny model
trains and evaluates with it through the CLI, and every bad input is one line.

The vocabularies are trained here with ``tokenizers``' ``WordPieceTrainer`` on test captions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import make_builder_dir, make_records
from cli_checks import assert_one_line_error
from clipa_cli.data_app import app as data_app
from clipa_cli.train_app import app as train_app
from sidecars import write_sidecars
from typer.testing import CliRunner

from clipa_data.core.errors import ClipaError
from clipa_data.core.sidecar import SidecarInfo
from clipa_data.core.text_reduction import TEXT_MASKS, reduce_text
from clipa_data.core.tokenizer import CLIP_BPE, load_tokenizer
from clipa_data.core.wordpiece import PRIORITY_SUFFIX, WordPieceTokenizer, compute_priorities
from clipa_data.demo import write_demo_validation

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CAPTIONS = [
    "Two red dogs running on the grass in a sunny park, photo 7",
    "A blue circle and a green square on a striped background",
    "Café crème brûlée, served warm!! (with vanilla ice-cream)",
    "an old man walking his dog along the beach at sunset",
    "Close-up of a yellow flower; macro photography, shallow depth of field",
    "people",
    "",
    "   extra   spaces\tand\nnewlines   ",
    "UPPER case AND numbers 12345 and symbols #@%&*",
    "xyzzy qwertyuiop zzzzzzzzzz unseen wordpieces",
    "日本語のキャプション and emoji 🙂",
]
RECORDS = 24


def train_vocabulary(folder: Path, captions: list[str]) -> Path:
    """A small BERT-style WordPiece pipeline trained on ``captions``: tokenizer.json + vocab.txt."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        captions, WordPieceTrainer(vocab_size=300, special_tokens=SPECIALS)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.model.save(str(folder))  # vocab.txt
    return folder


def record_captions() -> list[str]:
    return [record.txt for record in make_records(2 * RECORDS, size=32)]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> dict[str, Path]:
    """tokenizer.json and vocab.txt of one trained vocabulary, each in its own folder."""
    root = tmp_path_factory.mktemp("wordpiece")
    folder = train_vocabulary(root / "trained", CAPTIONS + record_captions())
    (root / "json").mkdir()
    (root / "txt").mkdir()
    shutil.copy(folder / "tokenizer.json", root / "json")
    shutil.copy(folder / "vocab.txt", root / "txt")
    return {"json": root / "json" / "tokenizer.json", "txt": root / "txt" / "vocab.txt"}


def library_tokenizers(vocab: dict[str, Path]) -> dict:
    """The ``tokenizers`` library's own pipelines for both files."""
    from tokenizers import BertWordPieceTokenizer, Tokenizer

    return {
        "json": Tokenizer.from_file(str(vocab["json"])),
        "txt": BertWordPieceTokenizer(str(vocab["txt"]), lowercase=True),
    }


@pytest.mark.parametrize("kind", ["json", "txt"])
def test_ids_equal_the_tokenizers_library(vocab, kind):
    ours = load_tokenizer(str(vocab[kind]))
    theirs = library_tokenizers(vocab)[kind]
    cls, sep = theirs.token_to_id("[CLS]"), theirs.token_to_id("[SEP]")
    assert ours.name == "wordpiece" and ours.format.start == cls and ours.format.end is None
    for caption in CAPTIONS + record_captions():
        ids = ours.encode(caption)
        assert ids == theirs.encode(caption, add_special_tokens=False).ids, caption
        # The library's BERT rows are [CLS] ids [SEP]; CLIPA-v2 drops the [SEP] and zero-pads.
        assert [cls, *ids, sep] == theirs.encode(caption).ids
        for length in (4, 8, 32):
            row = reduce_text("truncate", np.asarray(ids), length, fmt=ours.format).tolist()
            body = ids[: length - 1]
            assert row == [cls, *body] + [0] * (length - 1 - len(body))
            assert sep not in row


def test_a_folder_finds_its_vocabulary_and_clip_bpe_is_unchanged(vocab):
    assert load_tokenizer(str(vocab["txt"].parent)).source == str(vocab["txt"].resolve())
    bpe = load_tokenizer(CLIP_BPE)
    assert bpe.name == CLIP_BPE and bpe.format.end == 49407 and bpe.format.keep(8) == 6


def noun_tokenize(library, table: np.ndarray, caption: str, max_len: int) -> list[int]:
    """The JAX original's ``noun_tokenize`` (clipa-spec §1.3), step by step: ragged words ×
    wordpieces, priorities densified [W, Pmax], a stable sort, column 0, words back in text
    order, flattened, cut to max_len-1, [CLS] in front, zero-padded."""
    encoding = library.encode(caption, add_special_tokens=False)
    words: dict[int, list[int]] = {}
    for piece, word in zip(encoding.ids, encoding.word_ids, strict=True):
        words.setdefault(word, []).append(piece)
    ragged = list(words.values())
    if len(ragged) > max_len - 1:
        dense = np.zeros((len(ragged), max(len(w) for w in ragged)), dtype=np.int64)
        for row, word in enumerate(ragged):
            dense[row, : len(word)] = table[word]
        order = np.argsort(dense, axis=0, kind="stable")[:, 0]
        ragged = [ragged[k] for k in np.sort(order[: max_len - 1])]
    flat = [piece for word in ragged for piece in word][: max_len - 1]
    return [library.token_to_id("[CLS]"), *flat] + [0] * (max_len - 1 - len(flat))


def test_v2_syntax_mask_is_the_originals_noun_tokenize(vocab):
    from clipa_train.reduce import TextReducer, TextReductionConfig

    ours = load_tokenizer(str(vocab["json"]))
    library = library_tokenizers(vocab)["json"]
    table = ours.priorities()
    assert "syntax" in TEXT_MASKS
    rng = np.random.default_rng(0)
    long = CAPTIONS[0]  # 13 words: the selection, not truncation, decides what is kept
    syntax = TextReducer(TextReductionConfig("syntax", 8, tokenizer=str(vocab["json"])))
    assert syntax(long, None, 0, rng).tolist() != noun_tokenize(library, table * 0, long, 8)
    for length in (4, 8, 16):
        reducer = TextReducer(TextReductionConfig("syntax", length, tokenizer=str(vocab["json"])))
        assert not reducer.config.needs_sidecars
        for caption in CAPTIONS + record_captions():
            expected = noun_tokenize(library, table, caption, length)
            assert reducer(caption, None, 0, rng).tolist() == expected, (caption, length)


def test_zero_shot_prompts_use_the_wordpiece_syntax_mask(vocab):
    from clipa_train.evaluate import prompt_encoder

    library = library_tokenizers(vocab)["json"]
    table = load_tokenizer(str(vocab["json"])).priorities()
    prompts = [f"a photo of a {caption}" for caption in CAPTIONS]
    encode = prompt_encoder(8, "syntax", None, tokenizer=str(vocab["json"]))
    expected = [noun_tokenize(library, table, prompt, 8) for prompt in prompts]
    assert encode(prompts).tolist() == expected


def test_priority_table_is_tagged_once_and_cached_beside_the_vocabulary(vocab, tmp_path):
    from clipa_data.core.taggers import load_tagger, resolve_tagger

    path = tmp_path / "vocab.txt"
    shutil.copy(vocab["txt"], path)
    table = WordPieceTokenizer(path).priorities()
    cache = path.with_name("vocab.txt" + PRIORITY_SUFFIX)
    stored = json.loads(cache.read_text())
    assert stored["vocab_sha256"] == WordPieceTokenizer(path).sha256()
    entries = WordPieceTokenizer(path).entries()
    assert table.tolist() == compute_priorities(entries, load_tagger(resolve_tagger())).tolist()
    assert table[entries.index("[PAD]")] == 4  # "[", "PAD", "]": the tag of "]"
    assert table[entries.index("background")] == 1 and set(table.tolist()) <= {1, 2, 3, 4}
    # A later tokenizer reads the cache (here edited: all nouns) instead of tagging again ...
    cache.write_text(json.dumps({**stored, "priorities": "1" * len(table)}))
    assert set(WordPieceTokenizer(path).priorities().tolist()) == {1}
    # ... unless it was made for another vocabulary.
    cache.write_text(json.dumps({**stored, "vocab_sha256": "0" * 64}))
    assert WordPieceTokenizer(path).priorities().tolist() == table.tolist()


def test_bad_vocabularies_are_one_line_naming_where_to_put_the_file(vocab, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "vocab.txt").write_bytes(bytes(range(256)))
    (tmp_path / "words.txt").write_text("a\nb\nc\n")
    (tmp_path / "twice.txt").write_text("[PAD]\n[UNK]\n[CLS]\ncat\n##s\ndog\n##s\n")
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    bpe = json.loads(vocab["json"].read_text())
    bpe["model"] = {"type": "BPE", "vocab": {"a": 0}, "merges": []}
    (tmp_path / "bpe.json").write_text(json.dumps(bpe))
    cases = {
        tmp_path / "missing.txt": "no such file",
        tmp_path / "empty": "the folder holds no tokenizer.json or vocab.txt",
        tmp_path / "vocab.txt": "not a WordPiece vocabulary (not UTF-8 text)",
        tmp_path / "words.txt": "not a WordPiece vocabulary (no [CLS] or [UNK] line)",
        tmp_path / "twice.txt": "(line 7 repeats line 5, '##s')",  # an IndexError traceback
        tmp_path / "tokenizer.json": "not a WordPiece vocabulary",
        tmp_path / "bpe.json": "not a WordPiece vocabulary (a BPE model)",
    }
    for path, fragment in cases.items():
        with pytest.raises(ClipaError) as error:
            load_tokenizer(str(path))
        message = str(error.value)
        assert "\n" not in message and fragment in message and str(path) in message, message
        assert "put a WordPiece tokenizer.json or vocab.txt there" in message


def test_old_sidecars_read_as_clip_bpe():
    payload = {
        "tagger": "spacy", "tagger_version": "3", "tagger_model": "m", "vocab_sha256": "0",
        "text_field": "txt", "shard": "s",
    }  # fmt: skip
    info = SidecarInfo.from_metadata({b"clipa": json.dumps(payload).encode()}, "old.arrow")
    assert info.tokenizer == CLIP_BPE
    assert SidecarInfo.from_metadata(info.to_metadata(), "new.arrow") == info


# --- through the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A builder without sidecars, a copy tagged for CLIP BPE, and a 20-class zero-shot folder."""
    root = tmp_path_factory.mktemp("wordpiece-cli")
    records = make_records(2 * RECORDS, size=32)
    plain = make_builder_dir(root / "plain", [records[:RECORDS], records[RECORDS:]])
    tagged = shutil.copytree(plain.parent.parent, root / "tagged") / "demo" / "1.0.0"
    write_sidecars(tagged)
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    return {"plain": plain, "tagged": tagged, "eval": val.root, "classnames": val.classnames_path}


def invoke(app, *args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def tiny(builder: Path, out: Path, *more: object) -> list[object]:
    return [
        "pretrain", "--data", builder, "--out", out, "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--batch-size", 8, "--samples", 24, "--workers", 1, "--no-progress",
        *more,
    ]  # fmt: skip


def test_the_vocabulary_is_recorded_absolute_so_a_resume_may_spell_it_otherwise(
    data, vocab, tmp_path, monkeypatch
):
    """config.json kept the path as typed: a resume from another folder, or with the same file
    spelt otherwise, was refused as "trained with --tokenizer vocab.txt"."""
    monkeypatch.chdir(vocab["txt"].parent)
    out = tmp_path / "run"
    first = invoke(train_app, *tiny(data["plain"], out, "--tokenizer", vocab["txt"].name,
                                    "--samples", 16))  # fmt: skip
    assert first.exit_code == 0, first.output
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["tokenizer"] == str(vocab["txt"].absolute())
    monkeypatch.chdir(tmp_path)
    again = invoke(train_app, *tiny(data["plain"], out, "--tokenizer", vocab["txt"],
                                    "--resume", "auto"))  # fmt: skip
    assert again.exit_code == 0, again.output


def test_a_tiny_model_trains_and_evaluates_with_wordpiece(data, vocab, tmp_path):
    out = tmp_path / "run"
    folder = vocab["txt"].parent
    result = invoke(train_app, *tiny(data["plain"], out, "--tokenizer", folder,
                                     "--text-mask", "syntax", "--zeroshot", data["eval"],
                                     "--classnames", data["classnames"]))  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zeroshot"]["n"] == 20  # in-loop zero-shot, prompts syntax-masked (v2)
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["tokenizer"] == str(folder) and options["text_mask"] == "syntax"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in steps if "loss" in r)
    # The stage's loader gives CLIPA-v2 rows: [CLS] first, no [SEP], within the vocabulary.
    from clipa_train.loader import Loader
    from clipa_train.reduce import TextReductionConfig
    from clipa_train.stream import StreamConfig

    tokenizer = load_tokenizer(str(folder))
    text = TextReductionConfig("syntax", 8, tokenizer=str(folder))
    loader = Loader(StreamConfig(data=data["plain"], batch_size=8, text=text, workers=0))
    rows = next(iter(loader))["text"].numpy()
    loader.close()
    assert (rows[:, 0] == tokenizer.format.start).all() and rows.max() < tokenizer.vocab_size
    assert not (rows == library_tokenizers(vocab)["txt"].token_to_id("[SEP]")).any()
    # eval builds the prompts with the same tokenizer.
    checkpoint = next((out / "checkpoints").glob("step_*.pt"))
    result = invoke(
        train_app, "eval", "--checkpoint", checkpoint, "--imagenet-val", data["eval"],
        "--classnames", data["classnames"], "--out", tmp_path / "eval.json", "--json",
        "--workers", 1, "--tokenizer", vocab["txt"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 20
    # Another vocabulary of the same size (two lines swapped) read every prompt as other
    # words and scored below chance, silently.
    lines = vocab["txt"].read_text().splitlines()
    lines[-1], lines[-2] = lines[-2], lines[-1]
    other = tmp_path / "other" / "vocab.txt"
    other.parent.mkdir()
    other.write_text("\n".join(lines) + "\n")
    refused = invoke(
        train_app, "eval", "--checkpoint", checkpoint, "--imagenet-val", data["eval"],
        "--classnames", data["classnames"], "--out", tmp_path / "other.json",
        "--workers", 1, "--tokenizer", other,
    )  # fmt: skip
    assert_one_line_error(refused, f"--tokenizer {other} is not the vocabulary", "pass the run's")


def test_sidecars_of_clip_bpe_with_a_wordpiece_model(data, vocab, tmp_path):
    """--text-source auto reads the captions of a tagged builder (the README's CLIPA-v2 recipe
    commands stopped there: every builder of the pipeline is tagged); sidecar refuses them."""
    from clipa_train.loader import Loader
    from clipa_train.reduce import TextReductionConfig
    from clipa_train.stream import StreamConfig

    wordpiece = ["--tokenizer", vocab["txt"], "--samples", 8]
    auto = invoke(train_app, *tiny(data["tagged"], tmp_path / "auto", *wordpiece))
    assert auto.exit_code == 0, auto.output
    loader = Loader(
        StreamConfig(
            data=data["tagged"], batch_size=8, workers=0,
            text=TextReductionConfig("truncate", 8, tokenizer=vocab["txt"]),
        )
    )  # fmt: skip
    assert not loader.reader.use_sidecars
    rows = next(iter(loader))["text"].numpy()
    loader.close()
    assert (rows[:, 0] == load_tokenizer(vocab["txt"]).format.start).all()
    sidecar = [*wordpiece, "--text-source", "sidecar"]
    result = invoke(train_app, *tiny(data["tagged"], tmp_path / "run", *sidecar))
    assert_one_line_error(
        result, "holds clip-bpe ids but this run tokenises with wordpiece", "--text-source caption"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_bad_tokenizer_flag_on_every_command(data, tmp_path, where):
    path = tmp_path / ("nothing.txt" if where == "missing" else "")
    fragment = "no such file" if where == "missing" else "holds no tokenizer.json or vocab.txt"
    commands = {
        "pretrain": (train_app, tiny(data["plain"], tmp_path / "run", "--tokenizer", path)),
        "finetune": (train_app, ["finetune", "--data", data["plain"], "--out", tmp_path / "ft",
                                 "--from", tmp_path / "none.pt", "--model", "clipa-tiny",
                                 "--tokenizer", path]),
        "eval": (train_app, ["eval", "--checkpoint", tmp_path / "none.pt", "--tokenizer", path]),
        "preview": (data_app, ["preview", data["plain"], "--tokenizer", path]),
    }  # fmt: skip
    for name, (app, args) in commands.items():
        line = assert_one_line_error(invoke(app, *args), fragment, "put a WordPiece tokenizer")
        assert str(path) in line, name


def test_preview_shows_v2_syntax_rows(data, vocab):
    result = invoke(data_app, "preview", data["tagged"], "--tokenizer", vocab["json"],
                    "--text-mask", "syntax", "--text-length", 8, "--n", 3, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    library = library_tokenizers(vocab)["json"]
    table = load_tokenizer(str(vocab["json"])).priorities()
    for line in result.stdout.splitlines():
        row = json.loads(line)
        assert row["ids"] == noun_tokenize(library, table, row["caption"], 8)
        assert row["source"] == "tokenizer"
