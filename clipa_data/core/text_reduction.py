"""Text token reduction: the four CLIPA strategies as pure functions with a fixed output length.

Every function returns ``int64[length]`` = SOT + at most ``length - 2`` kept BPE ids + EOT, then
zero padding, or in the tokenizer's other format (``fmt``: CLIPA-v2 WordPiece rows are ``[CLS]`` +
at most ``length - 1`` ids, no end id; "``length - 2``" below is then ``length - 1``). Randomness
comes only from the ``numpy.random.Generator`` argument. A caption whose BPE ids already fit
(``len(ids) <= length - 2``) is returned unchanged by every strategy (but the reference-exact
syntax mask, below).

Examples with ``length = 6`` (4 kept ids) and a caption of 6 BPE ids ``a b c d e f``::

    truncate   SOT a b c d EOT          the first length-2 ids
    random     SOT a c d f EOT          length-2 ids drawn without replacement, text order kept
    block      SOT c d e f EOT          length-2 consecutive ids at a uniformly random start
    syntax     (per word) "two red circles on grass" with priorities 4 2 1 4 1, one id per word,
               length = 5 (3 kept): nouns first (circles, grass), then adjectives (red); restored
               to text order -> SOT red circles grass EOT

``TEXT_MASK_STRATEGIES`` at the end is the only list of text-mask names and the one lookup the
loader, ``clipa-data preview`` and zero-shot prompts use (``reduce_text``).

Syntax follows CLIPA/OpenCLIP's ``syntax_mask_tokenize``: per tagger word a priority NN*=1,
JJ*=2, VB*=3, other=4; a *stable* sort keeps the ``length - 2`` best words (earlier words win
ties, where the original's unstable ``np.argsort`` is numpy-version dependent); the kept words
are restored to text order, their BPE ids concatenated, cut to ``length - 2`` and wrapped.
With a WordPiece tokenizer the same selection is CLIPA-v2's ``noun_tokenize``: its words are
BERT basic words ranked by their first wordpiece's out-of-context priority, from the tokenizer
itself (``TextTokenizer.ranked_words``, no sidecars).

Reference-exact (``--reference-exact``, ``TextMaskStrategy.reducer(True)``): the original
re-joins the tagger's words and re-tokenises *every* caption, also one that fits, so a fitting
caption's ids change where the tagger splits it ("don't" -> "do n't", ``"`` -> `````` / ``''``,
"end." -> "end ."). ``syntax_mask_reference`` does that from the sidecar's word ids (each word
encoded alone, which equals encoding the joined words; ``clipa_data.core.sidecar``); by default
a fitting caption keeps its own ids (``syntax_mask``). WordPiece rows need no such path: CLIPA-v2
truncates the caption's own wordpieces when its words fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick
from clipa_data.core.tokenizer import CLIP_FORMAT, TextFormat

RankedWords = tuple[np.ndarray, np.ndarray]
"""A caption's tagger words for the syntax mask: (concatenated word ids, stable rank of the word
each id belongs to), as ``SidecarRows.ranked_words`` and ``rank_words`` give them."""


def priority_of_tag(tag: str) -> int:
    """Penn Treebank tag -> keep priority: nouns 1, adjectives 2, verbs 3, everything else 4."""
    if tag.startswith("NN"):
        return 1
    if tag.startswith("JJ"):
        return 2
    if tag.startswith("VB"):
        return 3
    return 4


def wrap(body: np.ndarray, length: int, fmt: TextFormat = CLIP_FORMAT) -> np.ndarray:
    """SOT + body (at most length-2 ids) + EOT, zero-padded to ``length`` (or ``fmt``'s frame)."""
    kept = body[: fmt.keep(length)]
    out = np.full(length, fmt.pad, dtype=np.int64)
    out[0] = fmt.start
    out[1 : 1 + len(kept)] = kept
    if fmt.end is not None:
        out[1 + len(kept)] = fmt.end
    return out


def truncate(ids: np.ndarray, length: int, fmt: TextFormat = CLIP_FORMAT) -> np.ndarray:
    """SOT + the first ``length - 2`` ids + EOT (OpenCLIP's default tokenization)."""
    return wrap(np.asarray(ids), length, fmt)


def random_mask(
    ids: np.ndarray, length: int, rng: np.random.Generator, fmt: TextFormat = CLIP_FORMAT
) -> np.ndarray:
    """Keep ``length - 2`` ids drawn uniformly without replacement, in their original order."""
    ids = np.asarray(ids)
    keep = fmt.keep(length)
    if len(ids) <= keep:
        return wrap(ids, length, fmt)
    chosen = np.sort(rng.permutation(len(ids))[:keep])
    return wrap(ids[chosen], length, fmt)


def block_mask(
    ids: np.ndarray, length: int, rng: np.random.Generator, fmt: TextFormat = CLIP_FORMAT
) -> np.ndarray:
    """Keep ``length - 2`` consecutive ids starting at a uniformly random position."""
    ids = np.asarray(ids)
    keep = fmt.keep(length)
    if len(ids) <= keep:
        return wrap(ids, length, fmt)
    start = int(rng.integers(0, len(ids) - keep + 1))
    return wrap(ids[start : start + keep], length, fmt)


def syntax_mask(
    caption_ids: np.ndarray,
    word_ids: np.ndarray,
    word_lengths: np.ndarray,
    priorities: np.ndarray,
    length: int,
    fmt: TextFormat = CLIP_FORMAT,
) -> np.ndarray:
    """Keep the best ``length - 2`` words by POS priority (stable), in text order; deterministic.

    ``caption_ids`` are the BPE ids of the whole caption (used unchanged when they fit);
    ``word_ids`` the concatenated BPE ids of the tagger's words, ``word_lengths[i]`` how many of
    them belong to word i, ``priorities[i]`` its priority (see ``priority_of_tag``).
    """
    caption_ids = np.asarray(caption_ids)
    keep = fmt.keep(length)
    if len(caption_ids) <= keep:
        return wrap(caption_ids, length, fmt)
    word_ids = np.asarray(word_ids)
    priorities = np.asarray(priorities)
    if len(priorities) <= keep:
        return wrap(word_ids, length, fmt)
    kept_words = np.zeros(len(priorities), dtype=bool)
    kept_words[np.argsort(priorities, kind="stable")[:keep]] = True
    return wrap(word_ids[np.repeat(kept_words, word_lengths)], length, fmt)


def syntax_mask_reference(
    caption_ids: np.ndarray,
    word_ids: np.ndarray,
    id_ranks: np.ndarray,
    length: int,
    fmt: TextFormat = CLIP_FORMAT,
) -> np.ndarray:
    """``syntax_mask_ranked`` as the original runs it: the kept words are re-joined and
    re-tokenised even when the caption fits (the words' ids replace the caption's own ids).

    Only CLIP BPE rows differ (``fmt`` with an end id); CLIPA-v2's WordPiece rows keep the
    caption's ids when its words fit, as ``syntax_mask_ranked`` does.
    """
    if fmt.end is None:
        return syntax_mask_ranked(caption_ids, word_ids, id_ranks, length, fmt)
    return wrap(np.asarray(word_ids)[np.asarray(id_ranks) < fmt.keep(length)], length, fmt)


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
    caption_ids: np.ndarray,
    word_ids: np.ndarray,
    id_ranks: np.ndarray,
    length: int,
    fmt: TextFormat = CLIP_FORMAT,
) -> np.ndarray:
    """``syntax_mask`` with the ranks precomputed (``SidecarRows.ranked_words``): same output.

    ``id_ranks[j]`` is the stable rank (``stable_ranks``) of the word that ``word_ids[j]``
    belongs to; keeping the ids whose word ranks below ``length - 2`` keeps the best words in
    text order.
    """
    keep = fmt.keep(length)
    if len(caption_ids) <= keep:
        return wrap(caption_ids, length, fmt)
    return wrap(word_ids[id_ranks < keep], length, fmt)


def rank_words(
    word_ids: np.ndarray, word_lengths: np.ndarray, priorities: np.ndarray
) -> RankedWords:
    """One caption's tagger words (as ``syntax_mask`` takes them) ranked for the lookup."""
    priorities = np.asarray(priorities)
    ranks = stable_ranks(priorities, np.array([0, len(priorities)]))
    return np.asarray(word_ids, dtype=np.int64), np.repeat(ranks, word_lengths)


def _truncate(ids, length, rng, words, fmt=CLIP_FORMAT) -> np.ndarray:
    return truncate(ids, length, fmt)


def _random(ids, length, rng, words, fmt=CLIP_FORMAT) -> np.ndarray:
    return random_mask(ids, length, rng, fmt)


def _block(ids, length, rng, words, fmt=CLIP_FORMAT) -> np.ndarray:
    return block_mask(ids, length, rng, fmt)


def _syntax(ids, length, rng, words, fmt=CLIP_FORMAT) -> np.ndarray:
    if words is None:
        raise ClipaError("the syntax text mask needs POS tags: run clipa-data tag")
    return syntax_mask_ranked(np.asarray(ids), *words, length, fmt)


def _syntax_reference(ids, length, rng, words, fmt=CLIP_FORMAT) -> np.ndarray:
    if words is None:
        raise ClipaError("the syntax text mask needs POS tags: run clipa-data tag")
    return syntax_mask_reference(np.asarray(ids), *words, length, fmt)


@dataclass(frozen=True)
class TextMaskStrategy:
    """One text reduction and what it needs."""

    reduce: Callable[..., np.ndarray]
    """(caption ids, length, generator, ranked words or None[, text format]) ->
    ``int64[length]``."""
    needs_words: bool = False
    """Whether it needs ranked words: CLIP BPE's from the sidecars of ``clipa-data tag``, a
    WordPiece tokenizer's from its vocabulary's priority table (``ranked_words``)."""
    draws: bool = False
    """Whether it draws from the generator (zero-shot prompts then truncate, to stay fixed)."""
    reference: Callable[..., np.ndarray] | None = None
    """The original's exact procedure where it differs from ``reduce`` (same signature), used
    under ``--reference-exact``; None: ``reduce`` already is."""

    def reducer(self, reference_exact: bool = False) -> Callable[..., np.ndarray]:
        """``reduce``, or with ``reference_exact`` the original's procedure (``reference``)."""
        return (self.reference or self.reduce) if reference_exact else self.reduce


TEXT_MASK_STRATEGIES: dict[str, TextMaskStrategy] = {
    "truncate": TextMaskStrategy(_truncate),
    "random": TextMaskStrategy(_random, draws=True),
    "block": TextMaskStrategy(_block, draws=True),
    "syntax": TextMaskStrategy(_syntax, needs_words=True, reference=_syntax_reference),
}
"""Text-mask name -> strategy (see the module docstring for each)."""

TEXT_MASKS: tuple[str, ...] = tuple(TEXT_MASK_STRATEGIES)
"""The text-mask names, in the order help texts list them."""


def text_mask(name: str) -> TextMaskStrategy:
    """The strategy called ``name``; a clear error for an unknown name."""
    return pick(TEXT_MASK_STRATEGIES, name, "text mask")


def reduce_text(
    name: str,
    ids: np.ndarray,
    length: int,
    rng: np.random.Generator | None = None,
    words: RankedWords | None = None,
    fmt: TextFormat = CLIP_FORMAT,
    reference_exact: bool = False,
) -> np.ndarray:
    """``int64[length]`` of a caption's ``ids`` under text mask ``name`` (``words``: syntax;
    ``reference_exact``: the original's procedure, ``TextMaskStrategy.reducer``)."""
    return text_mask(name).reducer(reference_exact)(ids, length, rng, words, fmt)
