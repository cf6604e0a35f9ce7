"""The CLIP byte-level BPE tokenizer (OpenAI vocabulary), giving OpenCLIP's ids.

Text is cleaned the way OpenCLIP cleans it: ``ftfy.fix_text``, ``html.unescape`` twice, strip,
whitespace collapsed to single spaces, lower-cased. It is then split with the CLIP regex
(contractions, letter runs, single digits, punctuation runs) and every piece is BPE-encoded
over its UTF-8 bytes with the ``</w>`` end-of-word marker. Ids: SOT 49406, EOT 49407, pad 0,
vocabulary 49408.

One deliberate difference: a caption that literally contains ``<start_of_text>`` or
``<end_of_text>`` is encoded as plain text, never as the special ids (OpenCLIP's regex matches
them, which would put a second EOT into the sequence and move the text tower's pooling).

Speed, with ids unchanged (``tests/test_tokenizer.py`` proves identity on >10k varied captions):

- cleaning skips ftfy and ``html.unescape`` for printable ASCII without ``&`` (most captions),
  where both are the identity; everything else takes the full OpenCLIP path;
- BPE of ASCII text runs in ``instant-clip-tokenizer`` (Rust, built from the same vocabulary
  file) when it is installed; other text, or every text without it, runs in the pure-Python
  implementation below, which caches BPE per piece (instant's regex uses other Unicode tables,
  so characters added in later Unicode versions would split differently there);
- ``encode_word`` caches whole words (the tagger's words repeat, Zipf-like).

Every tokenizer (this one, ``clipa_data.core.wordpiece.WordPieceTokenizer``) offers the
``TextTokenizer`` interface; ``load_tokenizer(spec)`` turns ``--tokenizer clip-bpe|PATH`` into
one, and its ``format`` says how kept ids become a fixed-length row (``TextFormat``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol

import regex

SOT = 49406
EOT = 49407
PAD = 0
VOCAB_SIZE = 49408
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # lines 1..48894 of the merges file
WORD_CACHE_LIMIT = 500_000  # web-scale text has millions of surface forms; bound the memory
SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
WHITESPACE = regex.compile(r"\s+")
NEEDS_FTFY = re.compile(r"[^\t\n\r\x20-\x25\x27-\x7e]")
"""Any character outside printable ASCII (+ tab/newline/CR) or an ``&``: ftfy/unescape may act."""
SPECIAL_TEXT = "_of_text>"
"""instant-clip-tokenizer turns ``<start_of_text>``/``<end_of_text>`` into special ids; we don't."""
Backend = Literal["auto", "python", "instant"]
CLIP_BPE = "clip-bpe"
"""``--tokenizer`` name of this tokenizer (anything else is a path to a WordPiece vocabulary)."""


@dataclass(frozen=True)
class TextFormat:
    """How a tokenizer's kept ids become a fixed-length row: start id + ids [+ end id] + pad."""

    start: int
    """First id of every row: CLIP's SOT, BERT's ``[CLS]``."""
    end: int | None
    """Id after the kept ids (CLIP's EOT); None for CLIPA-v2's WordPiece rows (no ``[SEP]``)."""
    pad: int = PAD
    """Id of the padding after them (0 in both formats)."""

    def keep(self, length: int) -> int:
        """How many text ids a row of ``length`` holds: L-2 with an end id, else L-1."""
        return length - 1 - (self.end is not None)


CLIP_FORMAT = TextFormat(start=SOT, end=EOT)
"""OpenCLIP's rows: SOT + at most L-2 BPE ids + EOT, zero-padded."""


class TextTokenizer(Protocol):
    """What the loader, the text masks, the sidecars and the zero-shot prompts need."""

    name: str
    """``clip-bpe`` or ``wordpiece`` (sidecars record it)."""
    format: TextFormat
    """How rows are framed."""
    vocab_size: int
    """Ids are below this (the model's text vocabulary must be at least this large)."""
    source: str
    """Where the vocabulary comes from (``clip-bpe`` or the file), for messages."""

    def sha256(self) -> str:
        """sha256 of the vocabulary file (sidecars record it)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, no special ids."""
        ...

    def encode_word(self, word: str) -> tuple[int, ...]:
        """``encode`` of one tagger word, cached."""
        ...

    def decode(self, ids) -> str:
        """Text of ``ids`` with special and pad ids dropped."""
        ...

    def own_words(self) -> bool:
        """Ready the syntax mask's words without sidecars (False: it needs the sidecars)."""
        ...

    def ranked_words(self, text: str):
        """``text_reduction.RankedWords`` of ``text`` when ``own_words()``, else None."""
        ...


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def clean_text(text: str) -> str:
    """OpenCLIP's cleaning: ftfy, html-unescape twice, collapse whitespace, lower-case."""
    if NEEDS_FTFY.search(text) is None:
        # Printable ASCII without "&": ftfy.fix_text and html.unescape return it unchanged, and
        # str.split() splits on exactly the whitespace such text can hold.
        return " ".join(text.split()).lower()
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


def vocab_bytes() -> bytes:
    """The gzipped merges file shipped with the package."""
    return resources.files("clipa_data.core.assets").joinpath(VOCAB_FILE).read_bytes()


@functools.cache
def vocab_sha256() -> str:
    """sha256 of the shipped vocabulary file; sidecars record it to detect a mismatch."""
    return hashlib.sha256(vocab_bytes()).hexdigest()


def load_instant(vocabulary: bytes):
    """An instant-clip-tokenizer ``Tokenizer`` built from ``vocabulary`` (None if not installed)."""
    try:
        import instant_clip_tokenizer
    except ImportError:
        return None
    # Its loader reads a plain-text file; build it from our (gzipped) vocabulary, not its copy.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt"
        path.write_bytes(gzip.decompress(vocabulary))
        return instant_clip_tokenizer.Tokenizer.load(str(path), VOCAB_SIZE)


class ClipTokenizer:
    """Encode text to CLIP BPE ids.

    ``backend``: ``python`` (pure-Python BPE, cached per piece), ``instant``
    (instant-clip-tokenizer; an error if it is missing) or ``auto`` (instant when installed).
    """

    name = CLIP_BPE
    source = CLIP_BPE
    format = CLIP_FORMAT
    vocab_size = VOCAB_SIZE

    def __init__(self, backend: Backend = "auto") -> None:
        vocabulary = vocab_bytes()
        merges_text = gzip.decompress(vocabulary).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in merges_text[1 : NUM_MERGES + 1]]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [symbol + "</w>" for symbol in vocab]
        vocab += ["".join(merge) for merge in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {symbol: index for index, symbol in enumerate(vocab)}
        self.decoder = {index: symbol for symbol, index in self.encoder.items()}
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self._piece_cache: dict[str, tuple[int, ...]] = {}
        self._word_cache: dict[str, tuple[int, ...]] = {}
        if len(self.encoder) != VOCAB_SIZE:
            raise RuntimeError(f"vocabulary has {len(self.encoder)} entries, expected {VOCAB_SIZE}")
        self._fast = None if backend == "python" else load_instant(vocabulary)
        if backend == "instant" and self._fast is None:
            raise RuntimeError("backend='instant' needs the instant-clip-tokenizer package")
        self.backend = "python" if self._fast is None else "instant"

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """BPE-encode one regex piece (already byte-mapped) into ids."""
        word = (*piece[:-1], piece[-1] + "</w>")
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: ranks.get(pair, NUM_MERGES))
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return tuple(self.encoder[symbol] for symbol in word)

    def encode_piece(self, piece: str) -> tuple[int, ...]:
        """Ids of one regex piece of cleaned text (pure-Python BPE, cached)."""
        cached = self._piece_cache.get(piece)
        if cached is None:
            if len(self._piece_cache) >= WORD_CACHE_LIMIT:
                self._piece_cache.clear()
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            cached = self._bpe(mapped)
            self._piece_cache[piece] = cached
        return cached

    def encode_clean_python(self, cleaned: str) -> list[int]:
        """Ids of cleaned text with the pure-Python BPE (the reference implementation)."""
        ids: list[int] = []
        for piece in SPLIT_PATTERN.findall(cleaned):
            ids.extend(self.encode_piece(piece))
        return ids

    def encode_clean(self, cleaned: str) -> list[int]:
        """Ids of text that has already been through ``clean_text``."""
        # instant's regex has its own Unicode tables: letters/digits added in later Unicode
        # versions split differently there, so only ASCII text goes to it.
        if self._fast is not None and cleaned.isascii() and SPECIAL_TEXT not in cleaned:
            return self._fast.encode(cleaned)
        return self.encode_clean_python(cleaned)

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return self.encode_clean(clean_text(text))

    def encode_word(self, word: str) -> tuple[int, ...]:
        """``encode(word)``, cached: for a tagger's words, which repeat across captions."""
        cached = self._word_cache.get(word)
        if cached is None:
            if len(self._word_cache) >= WORD_CACHE_LIMIT:
                self._word_cache.clear()
            cached = tuple(self.encode(word))
            self._word_cache[word] = cached
        return cached

    def decode(self, ids) -> str:
        """Text of ``ids`` (special and pad ids dropped), words separated by spaces."""
        symbols = "".join(self.decoder[int(i)] for i in ids if int(i) not in (PAD, SOT, EOT))
        raw = bytearray(self.byte_decoder[c] for c in symbols)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def sha256(self) -> str:
        """sha256 of the shipped merges file."""
        return vocab_sha256()

    def own_words(self) -> bool:
        """CLIP BPE's syntax mask reads the tagger's words in context from the sidecars."""
        return False

    def ranked_words(self, text: str) -> None:
        return None


@functools.cache
def default_tokenizer() -> ClipTokenizer:
    """A process-wide tokenizer (building one parses the 1.4 MB vocabulary: ~0.3 s)."""
    return ClipTokenizer()


def load_tokenizer(spec: str = CLIP_BPE) -> TextTokenizer:
    """``--tokenizer``: ``clip-bpe``, or a WordPiece ``tokenizer.json`` / ``vocab.txt`` (or the
    folder holding one); a ``ClipaError`` naming where the file should be when it is not there."""
    if spec == CLIP_BPE:
        return default_tokenizer()
    from clipa_data.core.wordpiece import load_wordpiece

    return load_wordpiece(spec)
