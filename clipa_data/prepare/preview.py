"""``clipa-data preview``: what the text tower will see for the first captions of a split.

For each of the first N records: the raw caption and, after the chosen reduction at length L,
the ids and their decoded text. Syntax needs the sidecars of ``clipa-data tag``; the other
strategies use a sidecar's ids when there is one and tokenise on the fly otherwise (the same
ids, capped the same way).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from clipa_data.core import layout
from clipa_data.core import text_reduction as tr
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.sidecar import (
    MAX_CAPTION_TOKENS,
    SidecarExpectation,
    SidecarRows,
    compare_keys,
    load_sidecar,
)
from clipa_data.core.tokenizer import CLIP_BPE, TextTokenizer, load_tokenizer, vocab_sha256
from clipa_data.prepare import stores
from clipa_data.prepare.captions import (
    DEFAULT_TEXT_FIELD,
    Caption,
    check_text_feature,
    iter_captions,
)


@dataclass(frozen=True)
class PreviewConfig:
    """What ``clipa-data preview`` shows."""

    builder_dir: Annotated[
        str | Path,
        Doc("TFDS builder directory from clipa-data convert (or a folder holding exactly one)."),
    ]
    text_mask: Annotated[str, Doc("Text reduction strategy."), Choices(tr.TEXT_MASKS)] = "syntax"
    text_length: Annotated[int, Doc("Context length L (SOT + L-2 tokens + EOT).")] = 16
    n: Annotated[int, Doc("How many captions, from the start of the split.")] = 10
    seed: Annotated[int, Doc("Seed of the generator that random and block draw from.")] = 0
    split: Annotated[
        str | None, Doc("Split to read; None (not given) = the only split, or train.")
    ] = None
    text_field: Annotated[str, Doc("Record feature holding the caption.")] = DEFAULT_TEXT_FIELD
    tokenizer: Annotated[
        str,
        Doc("clip-bpe, or a local WordPiece tokenizer.json / vocab.txt (or its folder): CLIPA-v2 "
            "rows, [CLS] + L-1 wordpieces; its syntax mask needs no sidecars."),
    ] = CLIP_BPE  # fmt: skip
    reference_exact: Annotated[
        bool,
        Doc("The original's syntax mask: re-join the tagger's words and re-tokenise even when "
            "the caption fits (default: a fitting caption keeps its own ids)."),
    ] = False  # fmt: skip

    def __post_init__(self) -> None:
        if self.text_mask not in tr.TEXT_MASK_STRATEGIES:
            raise ClipaError(f"--text-mask must be one of {', '.join(tr.TEXT_MASKS)}")
        if self.text_length < 3:
            raise ClipaError(f"--text-length must be at least 3, got {self.text_length}")
        if self.n < 1:
            raise ClipaError(f"--n must be at least 1, got {self.n}")
        if not 0 <= self.seed < 2**63:
            raise ClipaError(f"--seed must be ≥ 0 and below 2**63, got {self.seed}")
        if self.reference_exact and tr.text_mask(self.text_mask).reference is None:
            # Training's --reference-exact also changes the image path; a preview shows text
            # only, so the flag would change nothing the user could see.
            with_one = [name for name, mask in tr.TEXT_MASK_STRATEGIES.items() if mask.reference]
            raise ClipaError(
                f"--reference-exact changes nothing in a preview of the {self.text_mask} mask "
                f"(its procedure already is the original's; only {', '.join(with_one)} has "
                "another): drop --reference-exact"
            )


@dataclass(frozen=True)
class PreviewRow:
    """One caption and what the model sees of it."""

    key: str
    """The record's key."""
    caption: str
    """The raw caption."""
    ids: list[int]
    """The reduced ids, exactly ``text_length`` long (SOT ... EOT, zero-padded)."""
    text: str
    """The decoded text of the kept ids."""
    source: str
    """Where the caption's ids came from: ``sidecar`` or ``tokenizer``."""


def choose_split(builder: str | Path, split: str | None) -> str:
    names = layout.split_names(builder)
    if split is not None:
        return split
    if len(names) == 1:
        return names[0]
    if "train" in names:
        return "train"
    raise ClipaError(f"{builder} has splits {', '.join(names)}; pick one with --split")


def open_sidecar(
    builder: str | Path, shard: layout.ShardInfo, config: PreviewConfig
) -> SidecarRows | None:
    """The shard's checked sidecar; None if absent (an error for the syntax mask)."""
    path = layout.sidecar_path(builder, shard.path)
    if not layout.exists(path):
        if tr.text_mask(config.text_mask).needs_words:
            raise ClipaError(
                f"the {config.text_mask} mask needs sidecars and {path} is missing; create them "
                f"with: {layout.tag_command(builder, config.text_field)}"
            )
        return None
    expected = SidecarExpectation(
        shard=Path(shard.path).name,
        num_records=shard.num_records,
        vocab_sha256=vocab_sha256(),
        text_field=config.text_field,
    )
    return load_sidecar(path, expected)


def reduce(
    config: PreviewConfig,
    caption: Caption,
    rows: SidecarRows | None,
    index: int,
    rng: np.random.Generator,
    tokenizer: TextTokenizer,
) -> np.ndarray:
    """The caption's ids after the configured reduction."""
    strategy = tr.text_mask(config.text_mask)
    if rows is not None:
        ids = rows.caption_ids(index)
    else:
        ids = np.asarray(tokenizer.encode(caption.text)[:MAX_CAPTION_TOKENS])
    words = None
    if strategy.needs_words and rows is not None:
        words = rows.ranked_words(index)
    elif strategy.needs_words:
        words = tokenizer.ranked_words(caption.text)
    reduce_ids = strategy.reducer(config.reference_exact)
    return reduce_ids(ids, config.text_length, rng, words, tokenizer.format)


def preview_rows(config: PreviewConfig) -> Iterator[PreviewRow]:
    """Yield the first ``config.n`` captions of the split with their reduced ids."""
    builder = layout.resolve_builder_dir(stores.output_location(config.builder_dir, "BUILDER_DIR"))
    split = layout.read_split(builder, choose_split(builder, config.split))
    check_text_feature(builder, config.text_field)
    rng = np.random.default_rng(config.seed)
    tokenizer = load_tokenizer(config.tokenizer)
    # Sidecars hold CLIP BPE ids; a tokenizer that ranks its own words (WordPiece) reads captions.
    own_words = tokenizer.own_words()
    left = config.n
    for shard in split.shards:
        if left == 0 or shard.num_records == 0:
            continue
        # Captions first: a --text-field no record has is that error, not advice to tag it.
        captions = list(itertools.islice(iter_captions(shard.path, config.text_field), left))
        rows = None if own_words else open_sidecar(builder, shard, config)
        if rows is not None:
            compare_keys(
                rows.keys[: len(captions)],
                [caption.key for caption in captions],
                str(layout.sidecar_path(builder, shard.path)),
                Path(shard.path).name,
            )
        for index, caption in enumerate(captions):
            ids = reduce(config, caption, rows, index, rng, tokenizer)
            yield PreviewRow(
                key=caption.key,
                caption=caption.text,
                ids=ids.tolist(),
                text=tokenizer.decode(ids),
                source="tokenizer" if rows is None else "sidecar",
            )
        left -= len(captions)


def preview(config: PreviewConfig) -> list[PreviewRow]:
    """The first ``config.n`` captions of the split with what the model sees of them."""
    return list(preview_rows(config))
