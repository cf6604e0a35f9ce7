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
caption is tokenised on the fly (not for a strategy that needs words, such as syntax: it needs
the POS tags that ``clipa-data tag`` stores in sidecars).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick
from clipa_data.core.sidecar import MAX_CAPTION_TOKENS, SidecarRows
from clipa_data.core.text_reduction import text_mask
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

    def __post_init__(self) -> None:
        text_mask(self.mask)  # an unknown name is refused with the list of known ones
        if self.length < 3:
            raise ClipaError(f"text length must be at least 3 (SOT + 1 + EOT), got {self.length}")

    @property
    def needs_sidecars(self) -> bool:
        """Whether the mask needs the tagger's words, which only sidecars hold (syntax)."""
        return text_mask(self.mask).needs_words


class TextReducer:
    """Turns a record's caption (sidecar row or raw text) into ``int64[length]``."""

    def __init__(self, config: TextReductionConfig) -> None:
        self.config = config
        self.strategy = text_mask(config.mask)
        self._tokenizer = None

    def caption_ids(self, caption: str) -> np.ndarray:
        """BPE ids of a raw caption (capped as sidecars cap them)."""
        if self._tokenizer is None:
            from clipa_data.core.tokenizer import default_tokenizer

            self._tokenizer = default_tokenizer()
        ids = self._tokenizer.encode(caption)[:MAX_CAPTION_TOKENS]
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
            if needs_words:
                raise ClipaError(
                    f"the {self.config.mask} text mask needs sidecars: run clipa-data tag"
                )
            ids, words = self.caption_ids(caption), None
        else:
            ids = rows.caption_ids(row)
            words = rows.ranked_words(row) if needs_words else None
        return self.strategy.reduce(ids, self.config.length, rng, words)
