"""Token reduction at load time, with fixed output shapes so XLA compiles once per stage.

Image
-----
The image is cut into a ``g x g`` grid of patches (``g = image_size // patch_size``); a mask
is the sorted ``int16`` indices of the patches to keep. The strategies and their geometry live in
``clipa_train.image_masks`` (its ``IMAGE_MASK_STRATEGIES``); ``PatchMasker`` builds one for a
stage's image size. All draws come from the record's seeded generator.

Text
----
The CLIPA strategies of ``clipa_data.core.text_reduction`` (its ``TEXT_MASK_STRATEGIES``) give
``int64[length]``. Ids come from the shard's sidecar when the stream uses sidecars, else the
caption is tokenised on the fly (not for a strategy that needs words, such as syntax: with
CLIP BPE it needs the POS tags that ``clipa-data tag`` stores in sidecars; a WordPiece tokenizer
ranks a caption's words itself, from its vocabulary's priority table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick
from clipa_data.core.sidecar import MAX_CAPTION_TOKENS, SidecarRows
from clipa_data.core.text_reduction import text_mask
from clipa_data.core.tokenizer import CLIP_BPE, CLIP_FORMAT
from clipa_train.image_masks import IMAGE_MASK_STRATEGIES, ImageMaskStrategy


@dataclass(frozen=True)
class PatchMaskConfig:
    """Which image patches the model sees."""

    strategy: str = "resize"
    """An image mask of ``clipa_train.image_masks`` (``IMAGE_MASKS``; resize: no mask)."""
    patch_size: int = 16
    """The model's patch size in pixels (the image size must be a multiple of it)."""
    ratio: float = 0.5
    """Fraction of patches dropped by ``random`` and ``block``, in [0, 1)."""

    def __post_init__(self) -> None:
        pick(IMAGE_MASK_STRATEGIES, self.strategy, "image mask")
        if self.patch_size < 1:
            raise ClipaError(f"patch size must be positive, got {self.patch_size}")
        if not 0 <= self.ratio < 1:
            raise ClipaError(f"mask ratio must be in [0, 1), got {self.ratio}")


class PatchMasker:
    """Draws ``int16[K]`` patch indices for one (mask config, image size)."""

    def __init__(self, config: PatchMaskConfig, image_size: int) -> None:
        if image_size % config.patch_size:
            nearest = max(1, image_size // config.patch_size) * config.patch_size
            raise ClipaError(
                f"image size {image_size} is not a multiple of the patch size "
                f"{config.patch_size}; use e.g. {nearest}"
            )
        self.config = config
        self.grid = image_size // config.patch_size
        self.patches = self.grid * self.grid
        self.strategy: ImageMaskStrategy = IMAGE_MASK_STRATEGIES[config.strategy](
            self.grid, config.ratio
        )
        self.keep: int | None = self.strategy.keep
        """Patches kept per image (K), or None for ``resize``."""

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """Sorted kept patch indices, ``int16[K]`` (None for ``resize``)."""
        return self.strategy.draw(rng)


@dataclass(frozen=True)
class TextReductionConfig:
    """How captions become fixed-length token rows."""

    mask: str = "truncate"
    """A text mask of ``clipa_data.core.text_reduction`` (``TEXT_MASKS``)."""
    length: int = 32
    """Tokens per row, SOT and EOT included (CLIPA pre-training: 8 or 16; fine-tuning: 32)."""
    tokenizer: str = CLIP_BPE
    """``--tokenizer``: ``clip-bpe`` or a WordPiece vocabulary file (``load_tokenizer``)."""
    reference_exact: bool = False
    """``--reference-exact``: the mask's original procedure (syntax re-tokenises the re-joined
    tagger words even when the caption fits; ``TextMaskStrategy.reducer``)."""

    def __post_init__(self) -> None:
        text_mask(self.mask)  # an unknown name is refused with the list of known ones
        if self.length < 3:
            raise ClipaError(f"text length must be at least 3 (SOT + 1 + EOT), got {self.length}")

    @property
    def needs_sidecars(self) -> bool:
        """Whether the mask needs the tagger's words, which only sidecars hold (CLIP BPE syntax;
        a WordPiece tokenizer ranks words itself)."""
        return text_mask(self.mask).needs_words and self.tokenizer == CLIP_BPE


class TextReducer:
    """Turns a record's caption (sidecar row or raw text) into ``int64[length]``."""

    def __init__(self, config: TextReductionConfig) -> None:
        self.config = config
        self.strategy = text_mask(config.mask)
        self.reduce = self.strategy.reducer(config.reference_exact)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The ``TextTokenizer``, loaded on first use (in the worker process)."""
        if self._tokenizer is None:
            from clipa_data.core.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def caption_ids(self, caption: str) -> np.ndarray:
        """Ids of a raw caption (capped as sidecars cap them)."""
        ids = self.tokenizer.encode(caption)[:MAX_CAPTION_TOKENS]
        return np.asarray(ids, dtype=np.int64)

    def __call__(
        self,
        caption: str,
        rows: SidecarRows | None,
        row: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """``int64[length]`` for the caption of sidecar row ``row`` (or ``caption`` without)."""
        needs_words = self.strategy.needs_words
        if rows is None:
            if self.config.needs_sidecars:
                raise ClipaError(
                    f"the {self.config.mask} text mask needs sidecars: run clipa-data tag"
                )
            ids = self.caption_ids(caption)
            words = self.tokenizer.ranked_words(caption) if needs_words else None
        else:
            ids = rows.caption_ids(row)
            words = rows.ranked_words(row) if needs_words else None
        # CLIP BPE's frame needs no tokenizer: workers that read sidecar ids never build one.
        fmt = CLIP_FORMAT if self.config.tokenizer == CLIP_BPE else self.tokenizer.format
        return self.reduce(ids, self.config.length, rng, words, fmt)
