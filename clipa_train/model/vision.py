"""The ViT image tower (OpenCLIP ``VisionTransformer`` parameter names)."""

from __future__ import annotations

import torch
from torch import nn

from clipa_data.core.errors import ClipaError
from clipa_train.model.config import VisionConfig
from clipa_train.model.pos_embed import POS_EMBED_CHOICES
from clipa_train.model.transformer import Transformer


class VisionTransformer(nn.Module):
    """Patchify → class token → positional embedding → keep patches → ln_pre → blocks → pool →
    ln_post → proj.

    ``patch_keep`` (``[B, K]`` patch indices in ``[0, N)``) selects patch tokens *after* the
    positional embedding is added, so every kept patch keeps its own position; the class token is
    always kept. This is CLIPA's order for patch dropout, with the choice of patches made by the
    loader (fixed K, so XLA sees one shape per stage).
    """

    def __init__(self, config: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        width, scale = config.width, config.width**-0.5
        self.conv1 = nn.Conv2d(3, width, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        # A fixed table (sin_cos_2d) is a frozen parameter: kept in the state dict like CLIPA's.
        choice = POS_EMBED_CHOICES[config.pos_embed]
        self.positional_embedding = nn.Parameter(
            choice.table(width, config.grid), requires_grad=choice.trainable
        )
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_ratio, causal=False
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, images: torch.Tensor, patch_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` float ``[B, 3, S, S]`` (normalised) → unnormalised features ``[B, embed]``."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ClipaError(
                f"images are {tuple(images.shape[-2:])} but the model's image size is {size}; "
                "build the model with the stage's image size (positional embeddings are resized "
                "when weights are loaded)"
            )
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [B, N, width], row-major patches
        position = self.positional_embedding.to(x.dtype)
        x = x + position[1:]
        if patch_keep is not None:
            index = patch_keep.long().unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = torch.gather(x, 1, index)
        cls = (self.class_embedding.to(x.dtype) + position[0]).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.transformer(self.ln_pre(x))
        pooled = x.mean(dim=1) if self.config.pool == "gap" else x[:, 0]
        return self.ln_post(pooled) @ self.proj
