"""Pre-LN residual attention blocks with OpenCLIP's parameter names, batch-first.

Names match ``open_clip.transformer.ResidualAttentionBlock`` (``ln_1``, ``attn.in_proj_weight``,
``attn.in_proj_bias``, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``) so OpenCLIP and
CLIPA-v1 state dicts load with ``strict=True``; attention itself is
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from clipa_train.model.config import mlp_width

CheckpointFunction = Callable[..., torch.Tensor]


def _checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch_checkpoint(block, x, use_reentrant=False)


class Attention(nn.Module):
    """Multi-head self-attention, packed q/k/v projection (``nn.MultiheadAttention`` names)."""

    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); GELU exact or tanh (``gelu_approximate``)."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, causal: bool, gelu_approximate: str
    ) -> None:
        super().__init__()
        hidden = mlp_width(width, mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", nn.GELU(approximate=gelu_approximate)),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks (``resblocks.N``) with optional gradient checkpointing per block."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        causal: bool,
        gelu_approximate: str = "none",
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, causal, gelu_approximate)
            for _ in range(layers)
        )
        self.checkpoint_function: CheckpointFunction | None = None

    def set_grad_checkpointing(
        self, enable: bool = True, function: CheckpointFunction | None = None
    ) -> None:
        """Recompute each block in the backward pass; ``function(block, x)`` defaults to
        ``torch.utils.checkpoint`` (the XLA backend passes torch_xla's own)."""
        self.checkpoint_function = (function or _checkpoint_block) if enable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.checkpoint_function is not None and self.training and torch.is_grad_enabled():
                x = self.checkpoint_function(block, x)
            else:
                x = block(x)
        return x

    def init_openclip_text(self) -> None:
        """OpenCLIP's text init: attn std w^-0.5, projections w^-0.5·(2L)^-0.5, fc (2w)^-0.5."""
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
