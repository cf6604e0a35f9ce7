"""CLIP models for CLIPA training: presets, building, OpenCLIP-compatible weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipa_train.model.config import (
    ModelConfig,
    TextTowerConfig,
    VisionConfig,
    load_preset,
    preset_names,
)

if TYPE_CHECKING:
    from clipa_train.model.clip import CLIP

_TORCH_MODULES = {
    "CLIP": "clipa_train.model.clip",
    "load_openclip_weights": "clipa_train.model.weights",
    "read_weights": "clipa_train.model.weights",
}
"""Names imported on first use: the configs and registries of this package (presets, pos-embed
names) are read by option parsing, which must not import torch."""


def __getattr__(name: str) -> Any:
    if name in _TORCH_MODULES:
        import importlib

        return getattr(importlib.import_module(_TORCH_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(config: ModelConfig) -> CLIP:
    """A freshly initialised model (on the CPU, fp32)."""
    from clipa_train.model.clip import CLIP

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
        from clipa_train.model.weights import load_openclip_weights

        load_openclip_weights(model, pretrained)
    return model


__all__ = [
    "CLIP",
    "ModelConfig",
    "TextTowerConfig",
    "VisionConfig",
    "build_model",
    "create_model",
    "load_openclip_weights",
    "load_preset",
    "preset_names",
    "read_weights",
]
