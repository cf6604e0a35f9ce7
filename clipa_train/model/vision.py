"""The ViT image tower (OpenCLIP ``VisionTransformer`` parameter names)."""

from __future__ import annotations

import torch
from torch import nn

from clipa_data.core.errors import ClipaError
from clipa_train.model.config import VisionConfig
from clipa_train.model.pooling import VISION_POOLS
from clipa_train.model.pos_embed import POS_EMBED_CHOICES
from clipa_train.model.transformer import Transformer


class VisionTransformer(nn.Module):
    """Patchify → class token → positional embedding → keep patches → ln_pre (unless
    ``no_ln_pre``) → blocks → pool and ln_post (in the order ``final_ln_after_pool`` says) → proj.

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
        # Identity without parameters, as OpenCLIP's no_ln_pre: the state dict has no ln_pre.
        self.ln_pre = nn.Identity() if config.no_ln_pre else nn.LayerNorm(width)
        self.transformer = Transformer(
            width,
            config.layers,
            config.heads,
            config.mlp_ratio,
            causal=False,
            gelu_approximate=config.gelu_approximate,
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
        pool = VISION_POOLS[self.config.pool]
        if self.config.final_ln_after_pool:
            return self.ln_post(pool(x)) @ self.proj
        return pool(self.ln_post(x)) @ self.proj
