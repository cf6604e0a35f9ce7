"""The four text strategies on hand-made id, word and priority lists."""

from __future__ import annotations

import numpy as np
import pytest

from clipa_data.core import text_reduction as tr
from clipa_data.core.errors import ClipaError
from clipa_data.core.tokenizer import EOT, SOT

IDS = np.array([11, 12, 13, 14, 15, 16])


def body(out):
    """Ids between SOT and EOT."""
    assert out[0] == SOT
    end = int(np.where(out == EOT)[0][0])
    assert not out[end + 1 :].any()
    return out[1:end].tolist()


def test_truncate():
    assert tr.truncate(IDS, 6).tolist() == [SOT, 11, 12, 13, 14, EOT]
    assert tr.truncate(IDS, 10).tolist() == [SOT, 11, 12, 13, 14, 15, 16, EOT, 0, 0]


@pytest.mark.parametrize("strategy", ["random", "block"])
def test_random_strategies_keep_order_and_length(strategy):
    rng = np.random.default_rng(0)
    function = tr.random_mask if strategy == "random" else tr.block_mask
    seen = set()
    for _ in range(200):
        kept = body(function(IDS, 6, rng))
        assert len(kept) == 4 and kept == sorted(kept) and set(kept) <= set(IDS.tolist())
        if strategy == "block":
            assert kept == list(range(kept[0], kept[0] + 4))
        seen.add(tuple(kept))
    # random: all C(6,4)=15 subsets appear; block: all 3 start positions appear.
    assert len(seen) == (15 if strategy == "random" else 3)


def test_randomness_only_from_the_generator():
    a = tr.random_mask(IDS, 5, np.random.default_rng(7))
    b = tr.random_mask(IDS, 5, np.random.default_rng(7))
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("strategy", ["truncate", "random", "block", "syntax"])
def test_caption_that_fits_is_unchanged(strategy):
    ids = np.array([5, 6, 7])
    rng = np.random.default_rng(0)
    if strategy == "syntax":
        out = tr.syntax_mask(ids, np.array([7, 6, 5]), np.array([1, 1, 1]), np.array([4, 1, 2]), 5)
    elif strategy == "truncate":
        out = tr.truncate(ids, 5)
    else:
        out = (tr.random_mask if strategy == "random" else tr.block_mask)(ids, 5, rng)
    assert out.tolist() == [SOT, 5, 6, 7, EOT]


def test_syntax_nouns_then_adjectives_then_verbs_stable_ties():
    # words:      two  red  circles  sit  on  green  grass
    priorities = [4, 2, 1, 3, 4, 2, 1]
    word_ids = np.arange(100, 107)
    lengths = np.ones(7, dtype=int)
    caption = np.arange(100, 107)
    assert body(tr.syntax_mask(caption, word_ids, lengths, priorities, 4)) == [102, 106]
    assert body(tr.syntax_mask(caption, word_ids, lengths, priorities, 5)) == [101, 102, 106]
    # Ties: the earlier adjective wins over the later one.
    assert body(tr.syntax_mask(caption, word_ids, lengths, priorities, 6)) == [101, 102, 105, 106]
    assert body(tr.syntax_mask(caption, word_ids, lengths, priorities, 7)) == [
        101,
        102,
        103,
        105,
        106,
    ]


def test_syntax_multi_token_words_are_cut_after_joining():
    # word 0 (prio 1) has 3 ids, word 1 (prio 4) 1 id, word 2 (prio 1) 2 ids; keep 3 ids.
    word_ids = np.array([1, 2, 3, 4, 5, 6])
    lengths = np.array([3, 1, 2])
    caption = np.array([9] * 6)
    out = tr.syntax_mask(caption, word_ids, lengths, np.array([1, 4, 1]), 5)
    assert body(out) == [1, 2, 3]


def test_priority_table():
    assert [tr.priority_of_tag(t) for t in ["NN", "NNS", "NNP", "JJR", "VBD", "IN", "."]] == [
        1,
        1,
        1,
        2,
        3,
        4,
        4,
    ]


def test_the_shared_lookup_reduces_like_the_functions():
    """``reduce_text`` (loader, preview and prompts) gives what each strategy's function gives."""
    caption, word_ids, lengths, priorities = (
        IDS,
        np.array([11, 12, 13, 14, 15, 16]),
        [2, 1, 3],
        [
            4,
            1,
            2,
        ],
    )
    direct = {
        "truncate": lambda rng: tr.truncate(caption, 5),
        "random": lambda rng: tr.random_mask(caption, 5, rng),
        "block": lambda rng: tr.block_mask(caption, 5, rng),
        "syntax": lambda rng: tr.syntax_mask(caption, word_ids, lengths, priorities, 5),
    }
    assert set(tr.TEXT_MASKS) == set(direct)
    words = tr.rank_words(word_ids, lengths, priorities)
    for name in tr.TEXT_MASKS:
        out = tr.reduce_text(name, caption, 5, np.random.default_rng(3), words)
        assert out.tolist() == direct[name](np.random.default_rng(3)).tolist()


def test_the_lookup_refuses_unknown_names_and_syntax_without_words():
    with pytest.raises(ClipaError, match="unknown text mask 'shuffle'; choose one of truncate"):
        tr.reduce_text("shuffle", IDS, 5)
    with pytest.raises(ClipaError, match="syntax text mask needs POS tags"):
        tr.reduce_text("syntax", IDS, 5)


def ranked(priorities, lengths):
    """Per-id ranks for one row, as SidecarRows.ranked_words computes them."""
    ranks = tr.stable_ranks(np.asarray(priorities), np.array([0, len(priorities)]))
    return np.repeat(ranks, lengths)


@pytest.mark.parametrize(
    ("priorities", "lengths", "length", "kept"),
    [
        # two red circles sit on green grass (one id per word): nouns, then adjectives, ...
        ([4, 2, 1, 3, 4, 2, 1], [1] * 7, 4, [102, 106]),
        ([4, 2, 1, 3, 4, 2, 1], [1] * 7, 6, [101, 102, 105, 106]),
        # All ties: the earliest words win (a stable sort), in text order.
        ([4, 4, 4, 4, 4, 4, 4], [1] * 7, 5, [100, 101, 102]),
        # A word that cleans to nothing (0 ids) still takes a word slot, like the original.
        ([1, 1, 2, 4, 4, 4, 4], [1, 0, 1, 1, 1, 1, 1], 5, [100, 101]),
        # Fewer words than slots but more ids: every word kept, ids cut to L-2.
        ([1, 2], [4, 3], 5, [100, 101, 102]),
        # Multi-id words: the 3 best words (0, 1, 3; not 2) are joined, then cut to 3 ids.
        ([3, 1, 4, 1], [1, 2, 1, 3], 5, [100, 101, 102]),
    ],
)
def test_syntax_on_hand_made_words(priorities, lengths, length, kept):
    word_ids = np.arange(100, 100 + sum(lengths))
    caption = np.arange(200, 200 + len(word_ids) + 3)  # never fits, so words are used
    assert body(tr.syntax_mask(caption, word_ids, lengths, priorities, length)) == kept
    ranks = ranked(priorities, lengths)
    assert body(tr.syntax_mask_ranked(caption, word_ids, ranks, length)) == kept


def test_syntax_ranked_caption_that_fits_is_unchanged():
    caption = np.array([5, 6, 7])
    out = tr.syntax_mask_ranked(caption, np.array([7, 6, 5]), np.array([2, 0, 1]), 5)
    assert out.tolist() == [SOT, 5, 6, 7, EOT]


def test_every_strategy_on_an_empty_caption():
    empty = np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(0)
    outputs = [
        tr.truncate(empty, 4),
        tr.random_mask(empty, 4, rng),
        tr.block_mask(empty, 4, rng),
        tr.syntax_mask(empty, empty, empty, empty, 4),
        tr.syntax_mask_ranked(empty, empty, empty, 4),
    ]
    assert all(out.tolist() == [SOT, EOT, 0, 0] for out in outputs)
