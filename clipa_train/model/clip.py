"""CLIP: the ViT image tower and a text transformer, with OpenCLIP's parameter names.

The text modules sit at the top level as in OpenCLIP's ``CLIP`` class (``token_embedding``,
``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``), the image tower
under ``visual``, then ``logit_scale`` (and ``logit_bias`` for the sigmoid loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipa_data.core.errors import ClipaError
from clipa_train.model.config import ModelConfig
from clipa_train.model.pooling import TEXT_POOLS
from clipa_train.model.transformer import CheckpointFunction, Transformer
from clipa_train.model.vision import VisionTransformer


class CLIP(nn.Module):
    """Two towers projecting into one normalised embedding space."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        text = config.text
        self.visual = VisionTransformer(config.vision, config.embed_dim)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.transformer = Transformer(
            text.width,
            text.layers,
            text.heads,
            text.mlp_ratio,
            causal=not text.no_causal_mask,
            gelu_approximate=text.gelu_approximate,
        )
        self.ln_final = nn.LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.init_logit_bias)))
            if config.init_logit_bias is not None
            else None
        )
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=text.width**-0.5)
        self.transformer.init_openclip_text()

    def set_grad_checkpointing(
        self, enable: bool = True, function: CheckpointFunction | None = None
    ) -> None:
        """Checkpoint every block of both towers (see ``Transformer.set_grad_checkpointing``)."""
        self.visual.transformer.set_grad_checkpointing(enable, function)
        self.transformer.set_grad_checkpointing(enable, function)

    def encode_image(
        self, images: torch.Tensor, patch_keep: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Float ``[B, 3, S, S]`` images (+ optional ``[B, K]`` kept patches) → ``[B, embed]``."""
        features = self.visual(images, patch_keep)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token ids ``[B, L]`` (SOT … EOT, zero-padded; L ≤ context length) → ``[B, embed]``.

        Pools as ``text.pool`` says: at the EOT position (the argmax of the ids, EOT being the
        largest id) or at the batch's last position.
        """
        length = text.shape[1]
        if length > self.config.text.context_length:
            raise ClipaError(
                f"text batches have {length} tokens but the model's context length is "
                f"{self.config.text.context_length}; build the model with the stage's text length"
            )
        x = self.token_embedding(text) + self.positional_embedding[:length].to(
            self.token_embedding.weight.dtype
        )
        x = self.ln_final(self.transformer(x))
        pooled = TEXT_POOLS[self.config.text.pool](x, text)
        features = pooled @ self.text_projection
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, patch_keep: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Normalised features of both towers plus the (log) logit scale and the logit bias.

        The scale and bias go through ``forward`` so a DDP-wrapped model sees them used.
        """
        return {
            "image_features": self.encode_image(images, patch_keep),
            "text_features": self.encode_text(text),
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
        }
