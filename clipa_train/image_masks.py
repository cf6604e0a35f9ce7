"""Image masks: which patches of the image's ``g x g`` grid the model keeps.

This registry (``IMAGE_MASK_STRATEGIES``) is the only list of image-mask names: the loader's
``PatchMasker``, the synthetic batches, option validation and help texts all read its keys.
Adding a mask means adding one class here (and its test).

Patches are numbered row by row: patch ``(r, c)`` is ``r * g + c``. A mask is the sorted
``int16`` indices of the patches to keep; the model gathers them after adding positional
embeddings and always keeps its class token. Strategies (``N = g * g``):

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
these definitions are ours. All draws come from the caller's seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Protocol

import numpy as np


class ImageMaskStrategy(Protocol):
    """One mask at one (grid, ratio): K and a draw."""

    keep: int | None
    """Patches kept per image (K), or None when the mask keeps every patch."""
    uses_ratio: ClassVar[bool]
    """Whether ``--mask-ratio`` sets how many patches it keeps."""

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """Sorted kept patch indices, ``int16[K]`` (None without a mask)."""


def random_target(grid: int, ratio: float) -> int:
    """Patches kept by ``random`` (and the area ``block`` aims at): ``max(1, int(N(1-ratio)))``."""
    return max(1, int(grid * grid * (1 - ratio)))


def block_shape(grid: int, target: int) -> tuple[int, int]:
    """(rows, columns) of the kept block: near-square, area about ``target`` patches."""
    rows = min(grid, max(1, round(math.sqrt(target))))
    return rows, min(grid, max(1, round(target / rows)))


class ResizeMask:
    """``resize``: no mask (``keep`` is None, ``draw`` gives None)."""

    uses_ratio = False

    def __init__(self, grid: int, ratio: float) -> None:
        self.keep: int | None = None

    def draw(self, rng: np.random.Generator) -> None:
        return None


class RandomMask:
    """``random``: K patches drawn uniformly without replacement."""

    uses_ratio = True

    def __init__(self, grid: int, ratio: float) -> None:
        self.patches = grid * grid
        self.keep = random_target(grid, ratio)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.permutation(self.patches)[: self.keep]).astype(np.int16)


class GridMask:
    """``grid``: one random patch in every 2x2 window (ratio is ignored)."""

    uses_ratio = False

    def __init__(self, grid: int, ratio: float) -> None:
        self.grid = grid
        half = math.ceil(grid / 2)
        self.keep = half * half
        corners = np.arange(0, grid, 2)
        self._rows = np.repeat(corners, half)
        self._cols = np.tile(corners, half)
        # Windows in the last row/column of an odd grid are 1 patch high/wide.
        self._heights = np.minimum(2, grid - self._rows)
        self._widths = np.minimum(2, grid - self._cols)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        draws = rng.random((2, len(self._rows)))
        rows = self._rows + (draws[0] * self._heights).astype(np.int64)
        cols = self._cols + (draws[1] * self._widths).astype(np.int64)
        return np.sort(rows * self.grid + cols).astype(np.int16)


class BlockMask:
    """``block``: one contiguous near-square rectangle at a random position."""

    uses_ratio = True

    def __init__(self, grid: int, ratio: float) -> None:
        self.grid = grid
        self.shape = block_shape(grid, random_target(grid, ratio))
        self.keep = self.shape[0] * self.shape[1]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        (h, w), grid = self.shape, self.grid
        top = int(rng.integers(0, grid - h + 1))
        left = int(rng.integers(0, grid - w + 1))
        rows = np.arange(top, top + h)[:, None] * grid
        return (rows + np.arange(left, left + w)[None, :]).reshape(-1).astype(np.int16)


IMAGE_MASK_STRATEGIES: dict[str, Callable[[int, float], ImageMaskStrategy]] = {
    "resize": ResizeMask,
    "random": RandomMask,
    "grid": GridMask,
    "block": BlockMask,
}
"""Image-mask name -> strategy, built per (grid, ratio); ``keep`` is K (None: no mask) and
``draw(rng)`` gives the sorted ``int16[K]`` kept patch indices."""

IMAGE_MASKS: tuple[str, ...] = tuple(IMAGE_MASK_STRATEGIES)
"""The image-mask names, in the order help texts list them."""

RATIO_MASKS: tuple[str, ...] = tuple(
    name for name, strategy in IMAGE_MASK_STRATEGIES.items() if strategy.uses_ratio
)
"""The masks ``--mask-ratio`` sets (resize keeps every patch, grid always 1 in 4)."""
