"""Analytic training FLOPs of a CLIP sample: one definition for the benchmarks and the reports.

2 FLOPs per multiply-add of every matmul (attention's QKᵀ and AV included, and the patch
embedding, which sees every patch before the mask drops some); a training step is 3 × the
forward (the backward costs two forwards; activation recomputation is not counted). Torch-free:
``clipa-train report`` reads it from ``config.json`` without building a model.
"""

from __future__ import annotations

from clipa_data.core.registry import pick
from clipa_train.image_masks import IMAGE_MASK_STRATEGIES
from clipa_train.model.config import ModelConfig, mlp_width


def tower_macs(width: int, layers: int, tokens: int, mlp_ratio: float) -> float:
    """Multiply-adds of one transformer tower's forward for one sample."""
    per_block = tokens * (4 * width * width + 2 * width * mlp_width(width, mlp_ratio))
    per_block += 2 * tokens * tokens * width  # QKᵀ and AV
    return layers * per_block


def image_forward_flops(config: ModelConfig, kept_patches: int) -> float:
    """Forward FLOPs of the image tower for one image (2 per multiply-add)."""
    vision = config.vision
    macs = vision.num_patches * 3 * vision.patch_size**2 * vision.width  # patch embedding
    macs += tower_macs(vision.width, vision.layers, kept_patches + 1, vision.mlp_ratio)
    return 2 * (macs + vision.width * config.embed_dim)


def text_forward_flops(config: ModelConfig, text_length: int) -> float:
    """Forward FLOPs of the text tower for one caption of ``text_length`` tokens."""
    text = config.text
    macs = tower_macs(text.width, text.layers, text_length, text.mlp_ratio)
    return 2 * (macs + text.width * config.embed_dim)


def train_flops_per_sample(config: ModelConfig, kept_patches: int, text_length: int) -> float:
    """Analytic training FLOPs for one sample (3 × forward, 2 FLOPs per multiply-add)."""
    forward = image_forward_flops(config, kept_patches)
    return 3 * (forward + text_forward_flops(config, text_length))


def kept_patches(config: ModelConfig, image_mask: str, mask_ratio: float) -> int:
    """Patch tokens per image the vision tower runs on under ``image_mask`` (all without one)."""
    strategy = pick(IMAGE_MASK_STRATEGIES, image_mask, "image mask")(config.vision.grid, mask_ratio)
    return config.vision.num_patches if strategy.keep is None else strategy.keep
