"""CLIP BPE tokenizer: known OpenAI CLIP ids, cleaning, decoding, the shipped vocabulary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clipa_data.tokenizer import EOT, SOT, VOCAB_SIZE, ClipTokenizer, clean_text, vocab_sha256

SHARED_VOCAB = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "bpe_simple_vocab_16e6.txt.gz"
)


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("a photo of a cat", [320, 1125, 539, 320, 2368]),
        ("a diagram", [320, 22697]),
        ("a dog", [320, 1929]),
        ("A DOG", [320, 1929]),
        ("", []),
        ("   ", []),
    ],
)
def test_known_ids(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids


def test_vocabulary(tokenizer):
    assert len(tokenizer.encoder) == VOCAB_SIZE
    assert tokenizer.encoder["<start_of_text>"] == SOT
    assert tokenizer.encoder["<end_of_text>"] == EOT
    assert vocab_sha256() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    if SHARED_VOCAB.exists():
        assert hashlib.sha256(SHARED_VOCAB.read_bytes()).hexdigest() == vocab_sha256()


def test_cleaning_matches_openclip_rules():
    assert clean_text("  Tom &amp;amp; Jerry\n\tFUN ") == "tom & jerry fun"


def test_special_token_text_is_plain_text(tokenizer):
    ids = tokenizer.encode("<end_of_text>")
    assert EOT not in ids and SOT not in ids and ids


def test_decode_round_trip(tokenizer):
    assert (
        tokenizer.decode(tokenizer.encode("Red circles, 3 of them!")) == "red circles , 3 of them !"
    )
