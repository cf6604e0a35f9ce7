"""The CLIP byte-level BPE tokenizer (OpenAI vocabulary), giving OpenCLIP's ids.

Text is cleaned the way OpenCLIP cleans it: ``ftfy.fix_text``, ``html.unescape`` twice, strip,
whitespace collapsed to single spaces, lower-cased. It is then split with the CLIP regex
(contractions, letter runs, single digits, punctuation runs) and every piece is BPE-encoded
over its UTF-8 bytes with the ``</w>`` end-of-word marker. Ids: SOT 49406, EOT 49407, pad 0,
vocabulary 49408.

One deliberate difference: a caption that literally contains ``<start_of_text>`` or
``<end_of_text>`` is encoded as plain text, never as the special ids (OpenCLIP's regex matches
them, which would put a second EOT into the sequence and move the text tower's pooling).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
from importlib import resources

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
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


def vocab_bytes() -> bytes:
    """The gzipped merges file shipped with the package."""
    return resources.files("clipa_data.assets").joinpath(VOCAB_FILE).read_bytes()


@functools.cache
def vocab_sha256() -> str:
    """sha256 of the shipped vocabulary file; sidecars record it to detect a mismatch."""
    return hashlib.sha256(vocab_bytes()).hexdigest()


class ClipTokenizer:
    """Encode text to CLIP BPE ids; BPE results are cached per word."""

    def __init__(self) -> None:
        merges_text = gzip.decompress(vocab_bytes()).decode("utf-8").split("\n")
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
        self._word_cache: dict[str, tuple[int, ...]] = {}
        if len(self.encoder) != VOCAB_SIZE:
            raise RuntimeError(f"vocabulary has {len(self.encoder)} entries, expected {VOCAB_SIZE}")

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
        """Ids of one regex piece of cleaned text (cached)."""
        cached = self._word_cache.get(piece)
        if cached is None:
            if len(self._word_cache) >= WORD_CACHE_LIMIT:
                self._word_cache.clear()
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            cached = self._bpe(mapped)
            self._word_cache[piece] = cached
        return cached

    def encode_clean(self, cleaned: str) -> list[int]:
        """Ids of text that has already been through ``clean_text``."""
        ids: list[int] = []
        for piece in SPLIT_PATTERN.findall(cleaned):
            ids.extend(self.encode_piece(piece))
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return self.encode_clean(clean_text(text))

    def decode(self, ids) -> str:
        """Text of ``ids`` (special and pad ids dropped), words separated by spaces."""
        symbols = "".join(self.decoder[int(i)] for i in ids if int(i) not in (PAD, SOT, EOT))
        raw = bytearray(self.byte_decoder[c] for c in symbols)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()


@functools.cache
def default_tokenizer() -> ClipTokenizer:
    """A process-wide tokenizer (building one parses the 1.4 MB vocabulary: ~0.3 s)."""
    return ClipTokenizer()
