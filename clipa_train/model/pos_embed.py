"""Positional embeddings: the fixed 2-D sin-cos table and resizing on load.

Resizing follows CLIPA's PyTorch loader: the image table keeps its class row unchanged and
interpolates the square patch grid bicubically with antialiasing (``align_corners=False``); the
text table is interpolated linearly over positions (no antialiasing).

``POS_EMBED_CHOICES`` is the only list of image positional-embedding names (the vision tower,
model presets and options read it). torch is imported inside the functions, so that list stays
readable without torch (``clipa-train --help`` never imports it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipa_data.core.errors import ClipaError

if TYPE_CHECKING:
    import torch


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """MAE-style fixed table ``[grid*grid + 1, width]``; row 0 (class token) is all zeros.

    Channels are [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)], each ``width/4`` wide, with
    ω_d = 1/10000^(d/(width/4)), x the column and y the row of the patch (row-major order, the
    same order as the patch-embedding conv's output).
    """
    import torch

    if width % 4:
        raise ClipaError(f"sin_cos_2d needs a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    x = cols.reshape(-1, 1) * omega
    y = rows.reshape(-1, 1) * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float()


def resize_image_pos_embed(table: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resize ``[1 + g*g, width]`` to ``[1 + new_grid², width]``; the class row is copied as is."""
    import torch
    import torch.nn.functional as F

    old_tokens, width = table.shape
    old_grid = math.isqrt(old_tokens - 1)
    if old_grid * old_grid != old_tokens - 1:
        raise ClipaError(
            f"image positional embedding has {old_tokens} rows, not 1 + a square grid; "
            "cannot resize it"
        )
    if old_grid == new_grid:
        return table.clone()
    cls_row, grid = table[:1], table[1:]
    grid = grid.float().reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, width).to(table.dtype)
    return torch.cat([cls_row, grid])


def resize_text_pos_embed(table: torch.Tensor, new_length: int) -> torch.Tensor:
    """Resize ``[L, width]`` to ``[new_length, width]`` by linear interpolation over positions."""
    import torch.nn.functional as F

    if table.shape[0] == new_length:
        return table.clone()
    resized = F.interpolate(
        table.float().t().unsqueeze(0), size=new_length, mode="linear", align_corners=False
    )
    return resized.squeeze(0).t().contiguous().to(table.dtype)


def learnable_init(width: int, grid: int) -> torch.Tensor:
    """OpenCLIP's initial learnable table ``[grid*grid + 1, width]``: normal, std width^-0.5."""
    import torch

    return width**-0.5 * torch.randn(grid * grid + 1, width)


@dataclass(frozen=True)
class PosEmbedChoice:
    """One image positional embedding."""

    table: Callable[[int, int], torch.Tensor]
    """(width, grid) -> the initial ``[grid*grid + 1, width]`` table (row 0: class token)."""
    trainable: bool
    """Whether the optimiser updates it (a fixed table is still kept in the state dict)."""


POS_EMBED_CHOICES: dict[str, PosEmbedChoice] = {
    "sin_cos_2d": PosEmbedChoice(sincos_2d, trainable=False),
    "learnable": PosEmbedChoice(learnable_init, trainable=True),
}
"""Name -> initial table and trainability: ``sin_cos_2d`` (fixed MAE table, frozen, as CLIPA)
or ``learnable`` (OpenCLIP's)."""

POS_EMBEDS: tuple[str, ...] = tuple(POS_EMBED_CHOICES)
"""The positional-embedding names, in the order help texts list them."""
