"""The CLIPA-v1 recipes (8×A100, LAION-400M) as data: pre-training and fine-tuning settings.

Values come from the CLIPA PyTorch scripts (``clipa_torch/scripts/exp/gpu/**``, summarised in
``shared/reference/clipa-spec.md`` §5.5). Learning rates follow the paper's rules, checked in
the tests: pre-training ``8e-6 × global_batch / 256``, fine-tuning ``8e-7 × global_batch / 256``.
Warm-up is ~51.2M samples in pre-training and ~25.6M in fine-tuning. A recipe fixes every field
below; a command-line flag that contradicts one is an error, flags it does not set are free.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PRETRAIN_LR_PER_256 = 8e-6
FINETUNE_LR_PER_256 = 8e-7
LAION_400M_SAMPLES = 407_332_084  # 41,408 shards of LAION-400M as CLIPA counted them
L_JITTER = (0.32, 0.32, 0.32, 0.08)


@dataclass(frozen=True)
class StageRecipe:
    """The settings of one training stage; field names match the command-line options."""

    model: str
    """Model preset (``clipa_train/model/presets``)."""
    image_size: int
    """Training image size in pixels (fewer patches = fewer image tokens)."""
    text_length: int
    """Text context length L (SOT + L-2 tokens + EOT)."""
    text_mask: str
    """Text reduction strategy: a name of ``text_reduction.TEXT_MASKS``."""
    global_batch: int
    """Samples per optimiser step over all devices."""
    lr: float
    """Peak learning rate."""
    warmup_steps: int
    """Linear warm-up steps before the cosine decay."""
    pos_embed: str
    """Image positional embedding: a name of ``pos_embed.POS_EMBEDS``."""
    epochs: float | None = None
    """Passes over the data (pre-training); exclusive with ``samples``."""
    samples: int | None = None
    """Samples seen in the stage (fine-tuning); exclusive with ``epochs``."""
    image_mask: str = "resize"
    """Image reduction: a name of ``image_masks.IMAGE_MASKS`` (resize: no mask)."""
    mask_ratio: float = 0.0
    """Share of patches dropped by the random/block masks."""
    precision: str = "bf16"
    """bf16 autocast with fp32 master weights (the GPU scripts' amp_bf16)."""
    grad_checkpointing: bool = True
    """Recompute activations per block in the backward pass."""
    crop_scale_min: float = 0.4
    """RandomResizedCrop minimum area share."""
    color_jitter: tuple[float, float, float, float] | None = None
    """Brightness, contrast, saturation, hue jitter (the L/16 recipes), else none."""
    color_jitter_prob: float = 0.0
    """Probability of applying the colour jitter."""
    grayscale_prob: float = 0.0
    """Probability of converting to grayscale."""

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.samples is None):
            raise ValueError(f"{self.model}: give exactly one of epochs or samples")

    def as_options(self) -> dict[str, object]:
        """The stage as ``{option name: value}`` for merging with command-line flags."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


@dataclass(frozen=True)
class Recipe:
    """A two-stage CLIPA recipe and what the paper reports for it."""

    name: str
    """Recipe name used with ``--recipe``."""
    description: str
    """One line for ``--help`` and the README."""
    pretrain: StageRecipe
    """Pre-training with reduced image and text token lengths."""
    finetune: StageRecipe
    """Short fine-tuning at full length."""
    reported_top1: tuple[float, float]
    """Zero-shot ImageNet-1K top-1 (%) reported after pre-training and after fine-tuning."""


def _l16_aug() -> dict:
    return {"color_jitter": L_JITTER, "color_jitter_prob": 0.8, "grayscale_prob": 0.2}


def _recipes() -> dict[str, Recipe]:
    recipes = [
        Recipe(
            name="clipa-b16-i50-t16",
            description="ViT-B/16, 112 px (50 image tokens), 16 text tokens (truncate); ~2 days",
            pretrain=StageRecipe(
                model="ViT-B-16-CL16", image_size=112, text_length=16, text_mask="truncate",
                global_batch=65_536, lr=2.048e-3, warmup_steps=782, epochs=6,
                pos_embed="sin_cos_2d",
            ),
            finetune=StageRecipe(
                model="ViT-B-16-CL16", image_size=224, text_length=16, text_mask="truncate",
                global_batch=8_192, lr=2.56e-5, warmup_steps=3_072, samples=131_072_000,
                pos_embed="learnable",
            ),
            reported_top1=(59.7, 63.2),
        ),
        Recipe(
            name="clipa-l16-i17-t16",
            description="ViT-L/16, 64 px (17 image tokens), 16 text tokens (syntax); ~3 days",
            pretrain=StageRecipe(
                model="ViT-L-16-CL16-Syntax-GAP", image_size=64, text_length=16,
                text_mask="syntax", global_batch=32_768, lr=1.024e-3, warmup_steps=1_563,
                epochs=6, pos_embed="sin_cos_2d", **_l16_aug(),
            ),
            finetune=StageRecipe(
                model="ViT-L-16-CL16-Syntax-GAP", image_size=224, text_length=16,
                text_mask="truncate", global_batch=7_168, lr=2.24e-5, warmup_steps=3_571,
                samples=131_072_000, pos_embed="learnable", **_l16_aug(),
            ),
            reported_top1=(60.3, 67.8),
        ),
        Recipe(
            name="clipa-l16-i37-t8",
            description="ViT-L/16, 96 px (37 image tokens), 8 text tokens (syntax); ~4 days",
            pretrain=StageRecipe(
                model="ViT-L-16-CL8-Syntax-GAP", image_size=96, text_length=8,
                text_mask="syntax", global_batch=32_768, lr=1.024e-3, warmup_steps=1_563,
                epochs=6, pos_embed="sin_cos_2d", **_l16_aug(),
            ),
            finetune=StageRecipe(
                model="ViT-L-16-CL32-GAP", image_size=224, text_length=32, text_mask="truncate",
                global_batch=7_168, lr=2.24e-5, warmup_steps=3_571, samples=131_072_000,
                pos_embed="learnable", **_l16_aug(),
            ),
            reported_top1=(57.9, 69.3),
        ),
    ]  # fmt: skip
    return {recipe.name: recipe for recipe in recipes}


RECIPE_NAMES: tuple[str, ...] = tuple(_recipes())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; raises ``KeyError`` listing the known names."""
    recipes = _recipes()
    if name not in recipes:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(recipes)}")
    return recipes[name]
