"""Positional embeddings: the fixed 2-D sin-cos table and resizing on load.

Resizing follows CLIPA's PyTorch loader: the image table keeps its class row unchanged and
interpolates the square patch grid bicubically with antialiasing (``align_corners=False``); the
text table is interpolated linearly over positions (no antialiasing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipa_data.core.errors import ClipaError


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """MAE-style fixed table ``[grid*grid + 1, width]``; row 0 (class token) is all zeros.

    Channels are [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)], each ``width/4`` wide, with
    ω_d = 1/10000^(d/(width/4)), x the column and y the row of the patch (row-major order, the
    same order as the patch-embedding conv's output).
    """
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
    if table.shape[0] == new_length:
        return table.clone()
    resized = F.interpolate(
        table.float().t().unsqueeze(0), size=new_length, mode="linear", align_corners=False
    )
    return resized.squeeze(0).t().contiguous().to(table.dtype)
