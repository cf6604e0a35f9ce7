"""BERT WordPiece text, as CLIPA-v2 tokenises it, through the HuggingFace ``tokenizers`` library.

The vocabulary is a local file, never downloaded: a ``tokenizer.json`` (any WordPiece model
``tokenizers`` saved, its normaliser and pre-tokeniser included) or a BERT ``vocab.txt`` (one
token per line, id = line number; read with BERT's uncased normaliser — lower-case, accents
stripped, CJK characters split — and BERT's basic pre-tokeniser: whitespace and every
punctuation character split words). ``--tokenizer PATH`` takes either file or the folder
holding one.

Rows follow the JAX original (``clipa_jax/transforms/bert_ops.py``): ``[CLS]`` + at most L-1
wordpieces, zero-padded, **no** ``[SEP]`` (OpenCLIP's ``strip_sep_token``); the CLIPA-v2 models
use ``bert-base-uncased``'s vocabulary (30,522 entries) in a 32,000-row embedding.

The v2 syntax mask (the original's ``noun_tokenize``) needs no sidecars: a caption's words are
BERT basic words, and a word's priority is the out-of-context POS priority of its **first**
wordpiece, looked up in a per-vocabulary table (``priorities``). The table is computed once
with the POS tagger (NLTK when its data is installed, as the original, else spaCy: the
original's rule is ``pos_tag(word_tokenize(entry))``, take the last tag, nothing tagged -> 4)
and cached beside the vocabulary as ``<file>.clipa-priorities.json`` (with the vocabulary's
sha256 and the tagger that made it); later runs, workers included, only read it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from clipa_data.core.atomic import write_json
from clipa_data.core.errors import ClipaError
from clipa_data.core.tokenizer import PAD, TextFormat

WORDPIECE = "wordpiece"
"""The tokenizer name sidecars and messages use."""
FILES = ("tokenizer.json", "vocab.txt")
"""What ``--tokenizer FOLDER`` looks for, in this order."""
PRIORITY_SUFFIX = ".clipa-priorities.json"
"""The cached POS-priority table, beside the vocabulary file."""
OTHER = 4
"""Priority of an entry the tagger gives nothing (``[PAD]`` in the original: the tag of ``]``)."""
WHERE = (
    "put a WordPiece tokenizer.json or vocab.txt there (e.g. bert-base-uncased's vocab.txt; "
    "nothing is downloaded), or pass --tokenizer clip-bpe"
)


def locate(spec: str | Path) -> Path:
    """The vocabulary file ``--tokenizer`` names (a file, or a folder holding one)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in FILES:
            if (path / name).is_file():
                return path / name
        raise ClipaError(f"--tokenizer {path}: the folder holds no {' or '.join(FILES)}; {WHERE}")
    if not path.is_file():
        raise ClipaError(f"--tokenizer {path}: no such file; {WHERE}")
    return path


def _not_a_tokenizer(path: Path, why: str) -> ClipaError:
    return ClipaError(f"--tokenizer {path}: not a WordPiece vocabulary ({why}); {WHERE}")


def _from_vocab_txt(path: Path):
    """BERT uncased over a ``vocab.txt`` (what ``tensorflow_text.BertTokenizer`` does)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise _not_a_tokenizer(path, "not UTF-8 text") from None
    missing = [token for token in ("[CLS]", "[UNK]") if token not in lines]
    if missing:
        raise _not_a_tokenizer(path, f"no {' or '.join(missing)} line")
    seen: dict[str, int] = {}
    for number, token in enumerate(lines, start=1):
        if token in seen:  # ids are line numbers: a repeat leaves an id with no token
            raise _not_a_tokenizer(path, f"line {number} repeats line {seen[token]}, {token!r}")
        seen[token] = number
    tokenizer = Tokenizer(WordPiece.from_file(str(path), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _from_tokenizer_json(path: Path):
    """A saved ``tokenizers`` WordPiece pipeline; its truncation/padding are switched off."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception for any bad file
        raise _not_a_tokenizer(path, str(error).splitlines()[0][:120]) from None
    if not isinstance(tokenizer.model, WordPiece):
        raise _not_a_tokenizer(path, f"a {type(tokenizer.model).__name__} model")
    if tokenizer.token_to_id("[CLS]") is None:
        raise _not_a_tokenizer(path, "no [CLS] token")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class WordPieceTokenizer:
    """The ``TextTokenizer`` interface over a local WordPiece vocabulary."""

    name = WORDPIECE

    def __init__(self, path: str | Path) -> None:
        path = locate(path)
        self.path = path
        self.source = str(path)
        build = _from_tokenizer_json if path.suffix == ".json" else _from_vocab_txt
        self._tokenizer = build(path)
        self._sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.format = TextFormat(start=self._tokenizer.token_to_id("[CLS]"), end=None)
        self._specials = frozenset(
            i for t in ("[CLS]", "[SEP]", "[PAD]") if (i := self._tokenizer.token_to_id(t))
        ) | {PAD}
        self._word_cache: dict[str, tuple[int, ...]] = {}
        self._priorities: np.ndarray | None = None

    def sha256(self) -> str:
        return self._sha256

    def encode(self, text: str) -> list[int]:
        """Wordpiece ids of ``text``, no ``[CLS]``/``[SEP]``."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_word(self, word: str) -> tuple[int, ...]:
        cached = self._word_cache.get(word)
        if cached is None:
            cached = self._word_cache[word] = tuple(self.encode(word))
        return cached

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids if int(i) not in self._specials])

    def own_words(self) -> bool:
        """The v2 syntax mask ranks words with the vocabulary's priority table (built now)."""
        self.priorities()
        return True

    def ranked_words(self, text: str):
        """(wordpiece ids, rank of each id's basic word) for ``syntax_mask_ranked``."""
        from clipa_data.core.text_reduction import rank_words

        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int64)
        words = np.asarray([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
        first = np.flatnonzero(np.r_[True, words[1:] != words[:-1]]) if len(ids) else ids
        lengths = np.diff(np.r_[first, len(ids)])
        return rank_words(ids, lengths, self.priorities()[ids[first]])

    def priorities(self) -> np.ndarray:
        """Per vocabulary id, the POS priority (1-4) of the entry tagged alone (cached)."""
        if self._priorities is None:
            self._priorities = load_or_build_priorities(self)
        return self._priorities

    def entries(self) -> list[str]:
        """The vocabulary strings in id order ('' for an unused id)."""
        strings = [""] * self.vocab_size
        for token, index in self._tokenizer.get_vocab(with_added_tokens=True).items():
            strings[index] = token
        return strings


def priority_path(tokenizer: WordPieceTokenizer) -> Path:
    return tokenizer.path.with_name(tokenizer.path.name + PRIORITY_SUFFIX)


def compute_priorities(entries: list[str], tagger) -> np.ndarray:
    """The original's table: tag each entry alone, the last tag's priority, nothing -> 4."""
    from clipa_data.core.text_reduction import priority_of_tag

    table = np.full(len(entries), OTHER, dtype=np.uint8)
    present = [index for index, entry in enumerate(entries) if entry.strip()]
    for index, words in zip(present, tagger.tag([entries[i] for i in present]), strict=True):
        if words:
            table[index] = priority_of_tag(words[-1][1])
    return table


def load_or_build_priorities(tokenizer: WordPieceTokenizer) -> np.ndarray:
    """The cached table when it was made for this vocabulary, else computed and cached."""
    path = priority_path(tokenizer)
    try:
        cached = json.loads(path.read_text())
        if cached["vocab_sha256"] == tokenizer.sha256():
            table = np.frombuffer(cached["priorities"].encode(), dtype=np.uint8) - ord("0")
            if len(table) == tokenizer.vocab_size:
                return table
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no table yet, or one for another vocabulary: compute it
    from clipa_data.core.taggers import load_tagger, resolve_tagger

    spec = resolve_tagger("auto")
    table = compute_priorities(tokenizer.entries(), load_tagger(spec))
    payload = {
        "vocab_sha256": tokenizer.sha256(),
        "tagger": f"{spec.name} {spec.version} {spec.model_id}",
        "rule": "per entry: priority of the last tag of the entry tagged alone; NN 1 JJ 2 VB 3",
        "priorities": "".join(map(str, table.tolist())),
    }
    with contextlib.suppress(OSError):  # a read-only folder: use the table, recompute next time
        write_json(path, payload)
    return table


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> WordPieceTokenizer:
    return WordPieceTokenizer(path)


def load_wordpiece(spec: str | Path) -> WordPieceTokenizer:
    """The tokenizer of ``--tokenizer PATH``, built once per process and file version."""
    path = locate(spec).resolve()
    return _load(str(path), path.stat().st_mtime_ns)
