"""CLIP models for CLIPA training: presets, building, OpenCLIP-compatible weights."""

from __future__ import annotations

from pathlib import Path

from clipa_train.model.clip import CLIP
from clipa_train.model.config import (
    ModelConfig,
    TextConfig,
    VisionConfig,
    load_preset,
    preset_names,
)
from clipa_train.model.weights import load_openclip_weights, read_weights


def build_model(config: ModelConfig) -> CLIP:
    """A freshly initialised model (on the CPU, fp32)."""
    return CLIP(config)


def create_model(
    preset: str | Path,
    *,
    image_size: int | None = None,
    context_length: int | None = None,
    pos_embed: str | None = None,
    loss: str | None = None,
    pretrained: str | Path | None = None,
) -> CLIP:
    """Build ``preset`` (a name or a .json path) with the stage's overrides, optionally loading
    OpenCLIP / CLIPA-v1 / clipa weights (positional embeddings resized to the new sizes)."""
    config = load_preset(preset).replace(
        image_size=image_size, context_length=context_length, pos_embed=pos_embed, loss=loss
    )
    model = build_model(config)
    if pretrained is not None:
        load_openclip_weights(model, pretrained)
    return model


__all__ = [
    "CLIP",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "create_model",
    "load_openclip_weights",
    "load_preset",
    "preset_names",
    "read_weights",
]
