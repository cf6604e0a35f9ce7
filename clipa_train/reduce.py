"""Token reduction at load time, with fixed output shapes so XLA compiles once per stage.

Image
-----
The image is cut into a ``g x g`` grid of patches (``g = image_size // patch_size``),
numbered row by row: patch ``(r, c)`` is ``r * g + c``. A mask is the sorted ``int16`` indices
of the patches to keep; the model gathers them after adding positional embeddings and always
keeps its class token. Strategies (``N = g * g``):

- ``resize``: no mask; the token count is set by the image size (64/96/112 px for CLIPA
  pre-training, 224 px for fine-tuning).
- ``random``: keep ``K = max(1, int(N * (1 - ratio)))`` patches drawn uniformly without
  replacement (the original's patch dropout).
- ``grid``: one patch in every 2x2 window, at a random position inside the window. With an
  odd ``g`` the last row/column of windows is 1 patch high/wide, so ``K = ceil(g/2)**2``
  (``N/4`` for even ``g``). For ``g = 4``::

      window grid       one kept draw (x)
      A A B B           x . . x
      A A B B           . . . .
      C C D D           . x x .
      C C D D           . . . .

- ``block``: one contiguous ``h x w`` rectangle of patches at a uniformly random position.
  ``h x w`` is fixed per stage and as square as the grid allows, with an area of about
  ``T = max(1, int(N * (1 - ratio)))``: ``h = round(sqrt(T))``, ``w = round(T / h)`` (both
  clipped to ``1..g``), so ``K = h * w`` (224 px / 16, ratio 0.5: T = 98 -> 10 x 10 = 100).
  For ``g = 4``, ratio 0.75 (T = 4 -> 2 x 2), one draw::

      . . . .
      . . x x
      . . x x
      . . . .

No original implementation exists for grid and block (CLIPA describes them in prose only);
these definitions are ours. All draws come from the record's seeded generator.

Text
----
The four CLIPA strategies of ``clipa_data.core.text_reduction`` (truncate, random, block, syntax)
give ``int64[length]``. Ids come from the shard's sidecar when the stream uses sidecars, else
the caption is tokenised on the fly (truncate/random/block only: syntax needs the POS tags that
``clipa-data tag`` stores in sidecars).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from clipa_data.core import text_reduction
from clipa_data.core.errors import ClipaError
from clipa_data.core.sidecar import MAX_CAPTION_TOKENS, SidecarRows
from clipa_data.core.text_reduction import TEXT_MASKS, TextMask

ImageMask = Literal["resize", "random", "grid", "block"]
IMAGE_MASKS: tuple[str, ...] = ("resize", "random", "grid", "block")


@dataclass(frozen=True)
class PatchMaskConfig:
    """Which image patches the model sees."""

    strategy: ImageMask = "resize"
    """``resize`` (no mask), ``random``, ``grid`` or ``block`` (see the module docstring)."""
    patch_size: int = 16
    """The model's patch size in pixels (the image size must be a multiple of it)."""
    ratio: float = 0.5
    """Fraction of patches dropped by ``random`` and ``block``, in [0, 1)."""

    def __post_init__(self) -> None:
        if self.strategy not in IMAGE_MASKS:
            raise ClipaError(
                f"unknown image mask {self.strategy!r}; choose one of {', '.join(IMAGE_MASKS)}"
            )
        if self.patch_size < 1:
            raise ClipaError(f"patch size must be positive, got {self.patch_size}")
        if not 0 <= self.ratio < 1:
            raise ClipaError(f"mask ratio must be in [0, 1), got {self.ratio}")


def block_shape(grid: int, target: int) -> tuple[int, int]:
    """(rows, columns) of the kept block: near-square, area about ``target`` patches."""
    rows = min(grid, max(1, round(math.sqrt(target))))
    return rows, min(grid, max(1, round(target / rows)))


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
        self.grid = grid = image_size // config.patch_size
        self.patches = grid * grid
        target = max(1, int(self.patches * (1 - config.ratio)))
        self.block = block_shape(grid, target)
        half = math.ceil(grid / 2)
        self.keep: int | None = {
            "resize": None,
            "random": target,
            "grid": half * half,
            "block": self.block[0] * self.block[1],
        }[config.strategy]
        """Patches kept per image (K), or None for ``resize``."""
        corners = np.arange(0, grid, 2)
        self._window_rows = np.repeat(corners, half)
        self._window_cols = np.tile(corners, half)
        self._window_h = np.minimum(2, grid - self._window_rows)
        self._window_w = np.minimum(2, grid - self._window_cols)

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """Sorted kept patch indices, ``int16[K]`` (None for ``resize``)."""
        strategy = self.config.strategy
        if strategy == "resize":
            return None
        if strategy == "random":
            return np.sort(rng.permutation(self.patches)[: self.keep]).astype(np.int16)
        if strategy == "grid":
            draws = rng.random((2, len(self._window_rows)))
            rows = self._window_rows + (draws[0] * self._window_h).astype(np.int64)
            cols = self._window_cols + (draws[1] * self._window_w).astype(np.int64)
            return np.sort(rows * self.grid + cols).astype(np.int16)
        h, w = self.block
        top = int(rng.integers(0, self.grid - h + 1))
        left = int(rng.integers(0, self.grid - w + 1))
        rows = np.arange(top, top + h)[:, None] * self.grid
        return (rows + np.arange(left, left + w)[None, :]).reshape(-1).astype(np.int16)


@dataclass(frozen=True)
class TextConfig:
    """How captions become fixed-length token rows."""

    mask: TextMask = "truncate"
    """``truncate``, ``random``, ``block`` or ``syntax`` (``clipa_data.core.text_reduction``)."""
    length: int = 32
    """Tokens per row, SOT and EOT included (CLIPA pre-training: 8 or 16; fine-tuning: 32)."""

    def __post_init__(self) -> None:
        if self.mask not in TEXT_MASKS:
            raise ClipaError(
                f"unknown text mask {self.mask!r}; choose one of {', '.join(TEXT_MASKS)}"
            )
        if self.length < 3:
            raise ClipaError(f"text length must be at least 3 (SOT + 1 + EOT), got {self.length}")


class TextReducer:
    """Turns a record's caption (sidecar row or raw text) into ``int64[length]``."""

    def __init__(self, config: TextConfig) -> None:
        self.config = config
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
        mask, length = self.config.mask, self.config.length
        if rows is None:
            if mask == "syntax":
                raise ClipaError("the syntax text mask needs sidecars: run clipa-data tag")
            ids = self.caption_ids(caption)
        else:
            ids = rows.caption_ids(row)
        if mask == "truncate":
            return text_reduction.truncate(ids, length)
        if mask == "random":
            return text_reduction.random_mask(ids, length, rng)
        if mask == "block":
            return text_reduction.block_mask(ids, length, rng)
        return text_reduction.syntax_mask_ranked(ids, *rows.ranked_words(row), length)
