"""CLIP BPE tokenizer: hand-checked ids, cleaning, decoding, the fast path's identity."""

from __future__ import annotations

import hashlib
import html
import platform
import random
import sys
from pathlib import Path

import ftfy
import pytest

from clipa_data.core.tokenizer import (
    EOT,
    SOT,
    VOCAB_SIZE,
    WHITESPACE,
    ClipTokenizer,
    clean_text,
    vocab_sha256,
)
from clipa_data.demo import synthetic_captions

SHARED_VOCAB = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "bpe_simple_vocab_16e6.txt.gz"
)


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def reference():
    return ClipTokenizer(backend="python")


# How these ids were checked by hand, against the vocabulary file itself:
# - ids 0-255 are the 256 byte symbols in GPT-2/CLIP order: printable bytes 33-126 first (byte b
#   -> id b-33), then 161-172 (-> 94 + b-161), then 174-255 (-> 106 + b-174), then the
#   unprintable bytes 0-32, 127-160, 173 (-> 188, 189, ...); ids 256-511 are the same symbols
#   with "</w>" (end of word), i.e. +256;
# - id 510 + n is the merge on line n of `zcat bpe_simple_vocab_16e6.txt.gz` (line 1 is the
#   "#version" header); each line below was read with `zcat ... | sed -n 'Np'`.
# A piece that is a single vocabulary entry is one id; the regex splits contractions, letter
# runs, single digits and punctuation runs into separate pieces.
GOLDEN = [
    # "a</w>" = byte 97 -> 97-33 = 64, +256 = 320; "photo</w>" line 615 "pho to</w>" -> 1125;
    # "of</w>" line 29 "o f</w>" -> 539; "cat</w>" line 1858 "c at</w>" -> 2368.
    # (Also OpenAI CLIP's published ids for this prompt.)
    ("a photo of a cat", [320, 1125, 539, 320, 2368]),
    # Lower-cased first; "dog</w>" line 1419 "do g</w>" -> 1929.
    ("A DOG", [320, 1929]),
    # "don" line 337 "d on</w>" -> 847; "'t" line 203 "' t</w>" -> 713;
    # "panic" line 13614 "pan ic</w>" -> 14124; "!</w>" byte 33 -> 0 + 256 = 256.
    ("Don't panic!", [847, 713, 14124, 256]),
    # Digits are single pieces: "2</w>" byte 50 -> 17 + 256 = 273, "0</w>" -> 271, "4</w>" -> 275.
    ("2024", [273, 271, 273, 275]),
    # html.unescape: "&amp;" -> "&" (byte 38 -> 5 + 256 = 261); "tom" line 1925 "to m</w>" ->
    # 2435; "jerry" line 8654 "jer ry</w>" -> 9164.
    ("Tom &amp; Jerry", [2435, 261, 9164]),
    # ftfy straightens curly quotes: '"</w>' byte 34 -> 1 + 256 = 257; "hi" line 1373 "h i</w>"
    # -> 1883.
    ("\u201cHi\u201d", [257, 1883, 257]),
    # UTF-8 é = c3 a9 -> symbols "Ã©"; "café" line 14794 "caf Ã©</w>" -> 15304.
    ("caf\u00e9", [15304]),
    # U+1F600 = f0 9f 98 80 -> "ðŁĺĢ"; line 6824 "ðŁĺ Ģ</w>" -> 7334.
    ("\U0001f600", [7334]),
    # 猫 = e7 8c ab, no merges apply: e7=231 -> 106+57 = 163; 8c=140 (unprintable) ->
    # 221 + 13 = 234; ab=171 -> 94+10 = 104, +256 = 360.
    ("\u732b", [163, 234, 360]),
    # Whitespace collapses; "hello" line 2796 "h ello</w>" -> 3306; "world" line 492
    # "wor ld</w>" -> 1002.
    ("hello   world\n", [3306, 1002]),
    ("", []),
    ("   ", []),
]


@pytest.mark.parametrize(("text", "ids"), GOLDEN)
@pytest.mark.parametrize("backend", ["auto", "python"])
def test_hand_checked_ids(text, ids, backend, tokenizer, reference):
    chosen = tokenizer if backend == "auto" else reference
    assert chosen.encode(text) == ids


def test_vocabulary(tokenizer):
    assert len(tokenizer.encoder) == VOCAB_SIZE
    assert tokenizer.encoder["<start_of_text>"] == SOT
    assert tokenizer.encoder["<end_of_text>"] == EOT
    assert vocab_sha256() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    if SHARED_VOCAB.exists():
        assert hashlib.sha256(SHARED_VOCAB.read_bytes()).hexdigest() == vocab_sha256()


def test_cleaning_matches_openclip_rules():
    assert clean_text("  Tom &amp;amp; Jerry\n\tFUN ") == "tom & jerry fun"


@pytest.mark.parametrize("backend", ["auto", "python"])
def test_special_token_text_is_plain_text(backend):
    ids = ClipTokenizer(backend).encode("<end_of_text> and <START_OF_TEXT>")
    assert EOT not in ids and SOT not in ids and ids


def test_decode_round_trip(tokenizer):
    assert (
        tokenizer.decode(tokenizer.encode("Red circles, 3 of them!")) == "red circles , 3 of them !"
    )


def test_encode_word_is_cached_encode(tokenizer):
    for word in ["Dog", "&amp;", "caf\u00e9", "n't", ""]:
        assert list(tokenizer.encode_word(word)) == tokenizer.encode(word)
        assert tokenizer.encode_word(word) is tokenizer.encode_word(word)


def test_instant_backend_is_used_where_it_has_wheels(tokenizer):
    if platform.machine() == "x86_64" and sys.version_info < (3, 13):
        assert tokenizer.backend == "instant"


def openclip_clean(text: str) -> str:
    """OpenCLIP's basic_clean + whitespace_clean + lower, with no shortcut."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


def varied_captions() -> list[str]:
    rng = random.Random(11)
    ascii_noise = [
        "".join(chr(rng.randint(0, 127)) for _ in range(rng.randint(0, 40))) for _ in range(2000)
    ]
    long_captions = [
        " ".join(synthetic_captions.laion_like_captions(30, seed)) for seed in range(50)
    ]
    return (
        synthetic_captions.laion_like_captions(10_000, seed=1)
        + synthetic_captions.unicode_heavy_captions(3_000, seed=2)
        + synthetic_captions.random_codepoint_strings(3_000, seed=3)
        + ascii_noise
        + long_captions
        + list(synthetic_captions.hard_captions().values())
    )


def test_fast_path_is_identical_to_the_reference(tokenizer, reference):
    """Shortcut cleaning + instant BPE == ftfy/unescape cleaning + pure-Python BPE, on 18k texts:
    LAION-like captions, unicode-heavy alt-text (entities, emoji, CJK, mojibake, controls),
    random code points from every plane, random ASCII incl. control characters, long captions."""
    captions = varied_captions()
    assert len(captions) >= 18_000
    mismatches = [
        text
        for text in captions
        if clean_text(text) != openclip_clean(text)
        or tokenizer.encode(text) != reference.encode_clean_python(openclip_clean(text))
    ]
    assert mismatches == []
