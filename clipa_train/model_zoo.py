"""``clipa-train models``: every bundled preset with its sizes, parameters and forward GFLOPs.

Parameters are counted on a model built on the ``meta`` device (no memory, no init), so the
count is the real module's; GFLOPs come from ``clipa_train.flops`` (forward, one sample, 2 FLOPs
per multiply-add, no image mask: OpenCLIP's ``model_profile`` convention; training costs 3 ×).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from clipa_data.core.config_fields import Doc
from clipa_data.core.errors import ClipaError
from clipa_train.flops import image_forward_flops, text_forward_flops
from clipa_train.model.config import ModelConfig, load_preset, preset_names


@dataclass(frozen=True)
class ModelsConfig:
    """Options of ``clipa-train models``."""

    sizes: Annotated[
        str | None,
        Doc(
            "Stage sizes as IMAGE/TEXT pairs, comma-separated (e.g. 84/8,224/32,336/32): one "
            "GFLOPs column each, besides the preset's own size."
        ),
    ] = None

    def stage_sizes(self) -> list[tuple[int, int]]:
        """``sizes`` parsed: (image px, text tokens) pairs, or one clear error."""
        if not self.sizes:
            return []
        pairs = []
        for item in self.sizes.split(","):
            image, _, text = item.strip().partition("/")
            if not (image.isdigit() and text.isdigit() and int(image) > 0 and int(text) > 0):
                raise ClipaError(
                    f"--sizes: {item.strip()!r} is not IMAGE/TEXT (positive integers, e.g. 224/32)"
                )
            pairs.append((int(image), int(text)))
        return pairs


@dataclass(frozen=True)
class ModelRow:
    """One line of the table."""

    name: str
    """Preset name."""
    image_size: int
    """The preset's image side in pixels."""
    patch_size: int
    """Patch side in pixels."""
    context_length: int
    """The preset's text context length."""
    params: int
    """Parameters (both towers, logit scale included) at the preset's own sizes."""
    gflops: float
    """Forward GFLOPs of one sample (image + text) at the preset's own sizes."""
    stage_gflops: tuple[float | None, ...]
    """Forward GFLOPs at each of ``ModelsConfig.sizes``; None where the image size is not a
    multiple of the patch size."""


def forward_gflops(config: ModelConfig) -> float:
    """Forward GFLOPs of one full (unmasked) image and one caption of the context length."""
    image = image_forward_flops(config, config.vision.num_patches)
    return (image + text_forward_flops(config, config.text.context_length)) / 1e9


def parameter_count(config: ModelConfig) -> int:
    """Parameters of the model ``config`` builds, counted on the meta device."""
    import torch

    from clipa_train.model import build_model

    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


def model_rows(options: ModelsConfig) -> list[ModelRow]:
    """A row per bundled preset, in name order."""
    sizes = options.stage_sizes()
    rows = []
    for name in preset_names():
        config = load_preset(name)
        stage = []
        for image, text in sizes:
            try:
                stage.append(forward_gflops(config.replace(image_size=image, context_length=text)))
            except ClipaError:  # not a multiple of this preset's patch size
                stage.append(None)
        rows.append(
            ModelRow(
                name=name,
                image_size=config.vision.image_size,
                patch_size=config.vision.patch_size,
                context_length=config.text.context_length,
                params=parameter_count(config),
                gflops=forward_gflops(config),
                stage_gflops=tuple(stage),
            )
        )
    return rows
