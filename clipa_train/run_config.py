"""The options of ``clipa-train pretrain`` / ``finetune``: one frozen config, resolved once.

Precedence, lowest first: the stage's defaults < ``--recipe`` < ``--config FILE`` (YAML or
JSON) < flags given on the command line. A recipe fixes the settings the paper used; a file
value or flag that contradicts one of them is an error (the message names both), everything
the recipe leaves open (data, output, workers, backend, evaluation) is free.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from clipa_data.core.errors import ClipaError
from clipa_data.core.text_reduction import TEXT_MASKS
from clipa_train.backend_config import BACKENDS, PRECISIONS
from clipa_train.image_masks import IMAGE_MASKS
from clipa_train.loss import LOSSES
from clipa_train.model.pos_embed import POS_EMBEDS
from clipa_train.recipes import FINETUNE_LR_PER_256, PRETRAIN_LR_PER_256, get_recipe

STAGES = ("pretrain", "finetune")
WARMUP_SAMPLES = {"pretrain": 51_200_000, "finetune": 25_600_000}
"""The recipes' warm-up length in samples; the default warm-up is this or 10 % of the steps."""


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training stage (names match the command-line flags)."""

    stage: str
    """``pretrain`` (reduced tokens) or ``finetune`` (full length, from a checkpoint)."""
    data: str
    """TFDS builder directory written by ``clipa-data convert`` (local path or fsspec URL)."""
    out: str
    """Run directory: config.json, metrics.jsonl, checkpoints/, summary.json."""
    split: str = "train"
    """Split of the builder directory to train on."""
    model: str | None = None
    """Model preset name or JSON path (default: ViT-B-16-CL16; finetune: the checkpoint's)."""
    from_checkpoint: str | None = None
    """Weights to start from (finetune: required); pos-embeds are resized to this stage."""
    recipe: str | None = None
    """A CLIPA recipe that fills in the paper's settings for this stage."""
    image_size: int | None = None
    """Training image side in pixels, a multiple of the patch size (default: the preset's)."""
    image_mask: str = "resize"
    """Image token reduction: resize (no mask), random, grid or block."""
    mask_ratio: float = 0.5
    """Share of patches dropped by the random and block masks (grid always keeps 1 in 4)."""
    text_length: int | None = None
    """Text context length L, SOT + L-2 tokens + EOT (default: the preset's)."""
    text_mask: str | None = None
    """Text reduction: truncate, random, block or syntax (needs clipa-data tag); default: the
    preset's."""
    batch_size: int = 256
    """Global batch: samples per optimiser step over all devices."""
    epochs: float | None = None
    """Passes over the data; exclusive with ``samples`` (default: 1 epoch)."""
    samples: int | None = None
    """Samples to train on in this stage; exclusive with ``epochs``."""
    lr: float | None = None
    """Peak learning rate (default: 8e-6 × batch/256 pre-training, 8e-7 × batch/256 fine-tuning)."""
    warmup_steps: int | None = None
    """Linear warm-up steps (default: the recipes' warm-up in samples, at most 10 % of steps)."""
    weight_decay: float = 0.2
    """AdamW weight decay (not applied to biases, norms, 1-D parameters, logit scale)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    eps: float = 1e-6
    """AdamW ε."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this value (off by default, as in CLIPA)."""
    loss: str = "contrastive"
    """contrastive (CLIP InfoNCE) or sigmoid (SigLIP)."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA/XLA, fp32 on CPU), fp32 or bf16."""
    grad_checkpointing: bool = False
    """Recompute each transformer block in the backward pass (less memory)."""
    pos_embed: str | None = None
    """Image positional embedding: sin_cos_2d (frozen) or learnable (default: the preset's)."""
    crop_scale_min: float = 0.4
    """RandomResizedCrop: smallest crop area share."""
    color_jitter: tuple[float, float, float, float] | None = None
    """Brightness, contrast, saturation, hue jitter strengths, or none."""
    color_jitter_prob: float = 0.8
    """Probability of applying the colour jitter when it is set."""
    grayscale_prob: float = 0.0
    """Probability of turning a training image gray."""
    seed: int = 0
    """Seed of model init, data order, crops and masks."""
    workers: int = 2
    """Data-loading worker processes per device."""
    shuffle_buffer: int = 8192
    """Records each loader worker holds for shuffling."""
    backend: str = "auto"
    """auto (xla if a TPU is configured, else cuda if available, else cpu), cpu, cuda, xla."""
    resume: str | None = None
    """``auto`` (latest checkpoint in the run directory) or a checkpoint path."""
    log_every: int = 10
    """Steps between metrics records (and checks whether any rank got a stop signal)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (0: only at the end and on a stop signal)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept (0: all)."""
    zeroshot: str | None = None
    """Zero-shot set evaluated in the loop: an ImageFolder ``val/`` tree or a TFDS imagenet2012
    builder directory."""
    classnames: str | None = None
    """Class names file for a non-ImageNet zero-shot folder (one per line, sorted folder order)."""
    templates: str | None = None
    """Prompt templates file (one template with ``{}`` per line); default: the 80 CLIP ones."""
    eval_every: int = 0
    """Steps between in-loop zero-shot evaluations (0: only at the end of the stage)."""
    eval_batch_size: int = 256
    """Images per zero-shot evaluation batch."""
    progress: bool = True
    """Show a progress line."""

    def __post_init__(self) -> None:
        checks = [
            (self.stage in STAGES, f"stage must be one of {STAGES}"),
            (
                self.image_mask in IMAGE_MASKS,
                f"--image-mask must be one of {', '.join(IMAGE_MASKS)}",
            ),
            (self.text_mask in (None, *TEXT_MASKS), f"--text-mask must be one of {TEXT_MASKS}"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}"),
            (self.pos_embed in (None, *POS_EMBEDS), "--pos-embed must be sin_cos_2d or learnable"),
            (0 <= self.mask_ratio < 1, f"--mask-ratio must be in [0, 1), got {self.mask_ratio}"),
            (self.image_size is None or self.image_size > 0, "--image-size must be positive"),
            (self.text_length is None or self.text_length >= 3, "--text-length must be ≥ 3"),
            (self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}"),
            (self.epochs is None or self.samples is None, "give --epochs or --samples, not both"),
            (self.epochs is None or self.epochs > 0, "--epochs must be positive"),
            (self.samples is None or self.samples > 0, "--samples must be positive"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "--warmup-steps must be ≥ 0"),
            (self.workers >= 0, "--workers must be ≥ 0"),
            (self.eval_every >= 0 and self.checkpoint_every >= 0, "step intervals must be ≥ 0"),
            (self.log_every >= 1, "--log-every must be at least 1"),
            (self.stage == "pretrain" or self.from_checkpoint, "finetune needs --from CHECKPOINT"),
            (not (self.classnames and not self.zeroshot), "--classnames needs --zeroshot DIR"),
        ]
        for ok, message in checks:
            if not ok:
                raise ClipaError(message)

    def peak_lr(self) -> float:
        """The given lr, or the paper's rule for this stage and batch size."""
        if self.lr is not None:
            return self.lr
        per_256 = PRETRAIN_LR_PER_256 if self.stage == "pretrain" else FINETUNE_LR_PER_256
        return per_256 * self.batch_size / 256

    def total_steps(self, num_records: int) -> int:
        """Optimiser steps of the stage for a split of ``num_records`` records."""
        samples = self.samples if self.samples is not None else (self.epochs or 1) * num_records
        return max(1, int(samples // self.batch_size))

    def warmup(self, total_steps: int) -> int:
        """The given warm-up, or the recipes' warm-up in samples capped at 10 % of the steps."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return min(round(WARMUP_SAMPLES[self.stage] / self.batch_size), total_steps // 10)

    def to_json(self) -> dict[str, Any]:
        """The options as JSON values."""
        return dataclasses.asdict(self)


STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {},
    "finetune": {
        "image_size": 224,
        "image_mask": "resize",
        "text_length": 32,
        "text_mask": "truncate",
        "pos_embed": "learnable",
    },
}
"""Defaults that differ per stage (fine-tuning: 224 px, no mask, text 32 truncate)."""

RECIPE_RENAMES = {"global_batch": "batch_size"}
"""Recipe fields whose option name differs."""

OPTION_NAMES = frozenset(f.name for f in fields(TrainConfig)) - {"stage"}


def option_flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size`` (``from_checkpoint`` is ``--from``)."""
    return "--from" if name == "from_checkpoint" else "--" + name.replace("_", "-")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or JSON file (keys with - or _); unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise ClipaError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise ClipaError(f"{path}: cannot parse config file ({error})") from None
    except Exception as error:  # yaml.YAMLError has no common base we can import lazily
        raise ClipaError(f"{path}: cannot parse config file ({error})") from None
    if not isinstance(values, dict):
        raise ClipaError(f"{path}: a config file must hold a mapping of option: value")
    options = {str(key).replace("-", "_"): value for key, value in values.items()}
    options = {("from_checkpoint" if k == "from" else k): v for k, v in options.items()}
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise ClipaError(f"{path}: unknown option(s) {', '.join(unknown)}")
    if isinstance(options.get("color_jitter"), list):
        options["color_jitter"] = tuple(options["color_jitter"])
    return options


def recipe_options(name: str, stage: str) -> dict[str, Any]:
    """The settings a recipe fixes for ``stage``, keyed by option name."""
    try:
        recipe = get_recipe(name)
    except KeyError as error:
        raise ClipaError(str(error.args[0])) from None
    values = getattr(recipe, stage).as_options()
    options = {RECIPE_RENAMES.get(key, key): value for key, value in values.items()}
    if options.get("color_jitter") is None:
        # The recipe's "no jitter" leaves the jitter probability meaningless; keep the default.
        options.pop("color_jitter_prob", None)
    return options


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def resolve(
    stage: str, flags: dict[str, Any], config_file: str | Path | None = None
) -> TrainConfig:
    """Merge defaults, recipe, config file and the flags given explicitly (non-None)."""
    given = read_config_file(config_file) if config_file else {}
    given.update({key: value for key, value in flags.items() if value is not None})
    values: dict[str, Any] = dict(STAGE_DEFAULTS[stage])
    name = given.get("recipe")
    if name:
        fixed = recipe_options(name, stage)
        for key, value in given.items():
            if key in fixed and not _same(value, fixed[key]):
                raise ClipaError(
                    f"--recipe {name} sets {option_flag(key)} {fixed[key]} for {stage}; "
                    f"drop {option_flag(key)} {value} or the recipe"
                )
        values.update(fixed)
    values.update(given)
    return TrainConfig(stage=stage, **values)
