"""Text token reduction: the four CLIPA strategies as pure functions with a fixed output length.

Every function returns ``int64[length]`` = SOT + at most ``length - 2`` kept BPE ids + EOT, then
zero padding. Randomness comes only from the ``numpy.random.Generator`` argument. A caption whose
BPE ids already fit (``len(ids) <= length - 2``) is returned unchanged by every strategy.

Examples with ``length = 6`` (4 kept ids) and a caption of 6 BPE ids ``a b c d e f``::

    truncate   SOT a b c d EOT          the first length-2 ids
    random     SOT a c d f EOT          length-2 ids drawn without replacement, text order kept
    block      SOT c d e f EOT          length-2 consecutive ids at a uniformly random start
    syntax     (per word) "two red circles on grass" with priorities 4 2 1 4 1, one id per word,
               length = 5 (3 kept): nouns first (circles, grass), then adjectives (red); restored
               to text order -> SOT red circles grass EOT

Syntax follows CLIPA/OpenCLIP's ``syntax_mask_tokenize``: per tagger word a priority NN*=1,
JJ*=2, VB*=3, other=4; a *stable* sort keeps the ``length - 2`` best words (earlier words win
ties, where the original's unstable ``np.argsort`` is numpy-version dependent); the kept words
are restored to text order, their BPE ids concatenated, cut to ``length - 2`` and wrapped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from clipa_data.core.tokenizer import EOT, PAD, SOT

TextMask = Literal["truncate", "random", "block", "syntax"]
TEXT_MASKS: tuple[str, ...] = ("truncate", "random", "block", "syntax")


def priority_of_tag(tag: str) -> int:
    """Penn Treebank tag -> keep priority: nouns 1, adjectives 2, verbs 3, everything else 4."""
    if tag.startswith("NN"):
        return 1
    if tag.startswith("JJ"):
        return 2
    if tag.startswith("VB"):
        return 3
    return 4


def check_length(length: int) -> int:
    """The context length must leave room for at least one token between SOT and EOT."""
    if length < 3:
        raise ValueError(f"text length must be at least 3 (SOT + 1 token + EOT), got {length}")
    return length


def wrap(body: np.ndarray, length: int) -> np.ndarray:
    """SOT + body (at most length-2 ids) + EOT, zero-padded to ``length``."""
    kept = body[: length - 2]
    out = np.full(length, PAD, dtype=np.int64)
    out[0] = SOT
    out[1 : 1 + len(kept)] = kept
    out[1 + len(kept)] = EOT
    return out


def truncate(ids: np.ndarray, length: int) -> np.ndarray:
    """SOT + the first ``length - 2`` ids + EOT (OpenCLIP's default tokenization)."""
    return wrap(np.asarray(ids), length)


def random_mask(ids: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Keep ``length - 2`` ids drawn uniformly without replacement, in their original order."""
    ids = np.asarray(ids)
    keep = length - 2
    if len(ids) <= keep:
        return wrap(ids, length)
    chosen = np.sort(rng.permutation(len(ids))[:keep])
    return wrap(ids[chosen], length)


def block_mask(ids: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Keep ``length - 2`` consecutive ids starting at a uniformly random position."""
    ids = np.asarray(ids)
    keep = length - 2
    if len(ids) <= keep:
        return wrap(ids, length)
    start = int(rng.integers(0, len(ids) - keep + 1))
    return wrap(ids[start : start + keep], length)


def syntax_mask(
    caption_ids: np.ndarray,
    word_ids: np.ndarray,
    word_lengths: np.ndarray,
    priorities: np.ndarray,
    length: int,
) -> np.ndarray:
    """Keep the best ``length - 2`` words by POS priority (stable), in text order; deterministic.

    ``caption_ids`` are the BPE ids of the whole caption (used unchanged when they fit);
    ``word_ids`` the concatenated BPE ids of the tagger's words, ``word_lengths[i]`` how many of
    them belong to word i, ``priorities[i]`` its priority (see ``priority_of_tag``).
    """
    caption_ids = np.asarray(caption_ids)
    keep = length - 2
    if len(caption_ids) <= keep:
        return wrap(caption_ids, length)
    word_ids = np.asarray(word_ids)
    priorities = np.asarray(priorities)
    if len(priorities) <= keep:
        return wrap(word_ids, length)
    kept_words = np.zeros(len(priorities), dtype=bool)
    kept_words[np.argsort(priorities, kind="stable")[:keep]] = True
    return wrap(word_ids[np.repeat(kept_words, word_lengths)], length)


def stable_ranks(priorities: np.ndarray, row_starts: np.ndarray) -> np.ndarray:
    """Per word, its position in its row's stable priority order (0 = kept first).

    ``priorities`` holds the words of many rows back to back; row r is
    ``priorities[row_starts[r]:row_starts[r + 1]]`` (``row_starts`` has rows + 1 entries).
    Word w of a row is kept by the syntax mask at length L iff ``rank[w] < L - 2``.
    """
    priorities = np.asarray(priorities)
    counts = np.diff(row_starts)
    row_of_word = np.repeat(np.arange(len(counts)), counts)
    # Sort by row, then priority, then position: the stable order inside every row at once.
    order = np.lexsort((np.arange(len(priorities)), priorities, row_of_word))
    ranks = np.empty(len(priorities), dtype=np.int32)
    ranks[order] = np.arange(len(priorities)) - np.asarray(row_starts)[row_of_word[order]]
    return ranks


def syntax_mask_ranked(
    caption_ids: np.ndarray, word_ids: np.ndarray, id_ranks: np.ndarray, length: int
) -> np.ndarray:
    """``syntax_mask`` with the ranks precomputed (``SidecarRows.ranked_words``): same output.

    ``id_ranks[j]`` is the stable rank (``stable_ranks``) of the word that ``word_ids[j]``
    belongs to; keeping the ids whose word ranks below ``length - 2`` keeps the best words in
    text order.
    """
    keep = length - 2
    if len(caption_ids) <= keep:
        return wrap(caption_ids, length)
    return wrap(word_ids[id_ranks < keep], length)
