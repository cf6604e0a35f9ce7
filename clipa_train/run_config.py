"""The options of ``clipa-train pretrain`` / ``finetune``: one frozen config, merged once.

Precedence, lowest first: the stage's defaults < ``--recipe`` < ``--config FILE`` (YAML or
JSON) < flags given on the command line. A recipe fixes the settings the paper used; a file
value or flag that contradicts one of them is an error (the message names both), everything
the recipe leaves open (data, output, workers, backend, evaluation) is free.

Options are flat on the command line and in config files (``--batch-size``, ``batch_size:``)
and nested in :class:`TrainConfig` (``config.optim.batch_size``); :data:`OPTIONS` is the one
table between the two. A ``None`` left after merging means "the model's" or "derived";
``clipa_train.resolved_stage`` fills those in, once, into a ``ResolvedStage``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from clipa_data.core.config_fields import Choices, Doc, field_specs
from clipa_data.core.errors import ClipaError, parse_error_line
from clipa_data.core.layout import DEFAULT_TEXT_FIELD
from clipa_data.core.text_reduction import TEXT_MASKS
from clipa_data.core.tokenizer import CLIP_BPE
from clipa_train.backend_config import BACKEND_CHOICES, IMAGE_NORMS, PRECISION_CHOICES
from clipa_train.compile import COMPILE_CHOICES
from clipa_train.image_masks import IMAGE_MASKS, RATIO_MASKS
from clipa_train.loggers import LOGGERS, parse_loggers
from clipa_train.loss import LOSSES
from clipa_train.model.pos_embed import POS_EMBEDS
from clipa_train.recipes import (
    FINETUNE_LR_PER_256,
    PRETRAIN_LR_PER_256,
    RECIPE_NAMES,
    WORDPIECE_VOCAB,
    check_recipe_tokenizer,
    stage_recipe,
)
from clipa_train.sharding import SHARDING_CHOICES
from clipa_train.shards import TEXT_SOURCES

STAGES = ("pretrain", "finetune")


DEFAULT_MODEL = "ViT-B-16-CL16"
"""The preset trained when neither ``--model`` nor a checkpoint with an architecture is given."""


def _require(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ClipaError(message)


@dataclass(frozen=True)
class RunOptions:
    """Data in, run directory out, and how the data is read."""

    data: Annotated[
        str, Doc("TFDS builder directory written by clipa-data convert (local path or fsspec URL).")
    ]
    out: Annotated[
        str, Doc("Run directory: config.json, metrics.jsonl, checkpoints/, summary.json.")
    ]
    split: Annotated[str, Doc("Split of the builder directory to train on.")] = "train"
    workers: Annotated[int, Doc("Data-loading worker processes per device.")] = 2
    shuffle_buffer: Annotated[int, Doc("Records each loader worker holds for shuffling.")] = 8192
    seed: Annotated[int, Doc("Seed of model init, data order, crops and masks.")] = 0
    text_source: Annotated[
        str,
        Doc("Caption ids from the sidecars of clipa-data tag (sidecar), tokenised from the "
            "caption (caption), or auto: sidecars when the builder has them and they hold "
            "this run's tokenizer's ids (CLIP BPE), else the captions (a WordPiece "
            "--tokenizer on a tagged builder)."),
        Choices(TEXT_SOURCES),
    ] = "auto"  # fmt: skip
    text_field: Annotated[
        str,
        Doc("Record feature holding the caption (img2dataset's txt); sidecars must have been "
            "tagged from the same one (clipa-data tag --text-field)."),
    ] = DEFAULT_TEXT_FIELD  # fmt: skip
    samples_per_epoch: Annotated[
        int | None,
        Doc("Samples an epoch draws over all devices (default: the split's record count); "
            "--epochs counts epochs of this size."),
    ] = None  # fmt: skip
    check_crc: Annotated[
        bool,
        Doc("Verify every record's payload checksum while reading (the length checksum is "
            "always checked); a mismatch counts as an unreadable record."),
    ] = False  # fmt: skip
    max_bad_fraction: Annotated[
        float,
        Doc("Stop when a loader worker's unreadable records and undecodable images exceed this "
            "share of the records it read (at least 1000 counted); below it they are skipped "
            "and reported."),
    ] = 0.01  # fmt: skip
    reference_exact: Annotated[
        bool,
        Doc("Do what the original does where clipa takes a faster path (off: the fast paths): "
            "syntax mask re-tokenises re-joined tagger words even when the caption fits, images "
            "decode at full size with Pillow and resize bicubic, the zero-shot classifier is "
            "built in fp32 without autocast."),
    ] = False  # fmt: skip

    def __post_init__(self) -> None:
        _require(
            [
                (self.workers >= 0, "--workers must be ≥ 0"),
                (0 <= self.seed < 2**63, "--seed must be ≥ 0 and below 2**63"),
                (bool(self.text_field.strip()), "--text-field must name a record feature"),
                (
                    self.samples_per_epoch is None or self.samples_per_epoch >= 1,
                    "--samples-per-epoch must be at least 1",
                ),
                (
                    0 <= self.max_bad_fraction < 1,
                    "--max-bad-fraction must be at least 0 and below 1 (e.g. 0.01 for 1 %)",
                ),
            ]
        )


@dataclass(frozen=True)
class ModelOptions:
    """Which model to train and the switches of its architecture."""

    name: Annotated[
        str | None,
        Doc("Model preset name or JSON path (default: ViT-B-16-CL16; finetune: the checkpoint's)."),
    ] = None
    from_checkpoint: Annotated[
        str | None,
        Doc(
            "Weights to start from (finetune: required); pos-embeds are resized to this stage "
            "(a fixed sin-cos table is computed for it)."
        ),
    ] = None
    pos_embed: Annotated[
        str | None,
        Doc("Image positional embedding; default: the preset's (finetune: learnable)."),
        Choices(POS_EMBEDS),
    ] = None
    loss: Annotated[
        str | None,
        Doc("Training loss (contrastive: CLIP InfoNCE; sigmoid: SigLIP); default: the "
            "checkpoint's with --from (a logit_bias means sigmoid), else contrastive."),
        Choices(LOSSES),
    ] = None  # fmt: skip
    grad_checkpointing: Annotated[
        bool, Doc("Recompute each transformer block in the backward pass (less memory).")
    ] = False
    tokenizer: Annotated[
        str,
        Doc("Text tokenizer: clip-bpe, or a local WordPiece tokenizer.json / vocab.txt (or its "
            "folder; nothing is downloaded) for CLIPA-v2 rows: [CLS] + L-1 wordpieces, no [SEP]."),
    ] = CLIP_BPE  # fmt: skip
    image_norm: Annotated[
        str,
        Doc(
            "Input mean/std: openai (CLIP's, CLIPA-v1) or imagenet (the CLIPA-v2 JAX configs); "
            "with --from, the default is the checkpoint's own."
        ),
        Choices(tuple(IMAGE_NORMS)),
    ] = "openai"

    def __post_init__(self) -> None:
        if self.tokenizer != CLIP_BPE:
            from clipa_data.core.tokenizer import load_tokenizer

            load_tokenizer(self.tokenizer)  # a missing or bad vocabulary: one line, first
            # Absolute, as config.json records it: a resume or an evaluation from another
            # folder (or with another spelling of the same file) finds the same vocabulary.
            object.__setattr__(self, "tokenizer", str(Path(self.tokenizer).expanduser().absolute()))


@dataclass(frozen=True)
class ReductionOptions:
    """Image and text token reduction (``None``: the model preset's value)."""

    image_size: Annotated[
        int | None,
        Doc(
            "Training image side in pixels, a multiple of the patch size (default: the preset's; "
            "finetune: 224)."
        ),
    ] = None
    image_mask: Annotated[
        str, Doc("Image token reduction (resize: no mask)."), Choices(IMAGE_MASKS)
    ] = "resize"
    mask_ratio: Annotated[
        float,
        Doc("Share of patches dropped by the random and block masks (grid always keeps 1 in 4)."),
    ] = 0.5
    text_length: Annotated[
        int | None,
        Doc("Text context length L, SOT + L-2 tokens + EOT (default: the preset's; finetune: 32)."),
    ] = None
    text_mask: Annotated[
        str | None,
        Doc(
            "Text reduction (syntax needs clipa-data tag); default: the preset's "
            "(finetune: truncate)."
        ),
        Choices(TEXT_MASKS),
    ] = None

    def __post_init__(self) -> None:
        _require(
            [
                (
                    0 <= self.mask_ratio < 1,
                    f"--mask-ratio must be in [0, 1), got {self.mask_ratio}",
                ),
                (self.image_size is None or self.image_size > 0, "--image-size must be positive"),
                (self.text_length is None or self.text_length >= 3, "--text-length must be ≥ 3"),
            ]
        )


@dataclass(frozen=True)
class AugmentOptions:
    """Training image augmentation."""

    crop_scale_min: Annotated[float, Doc("RandomResizedCrop: smallest crop area share.")] = 0.4
    color_jitter: Annotated[
        tuple[float, float, float, float] | None,
        Doc("Brightness, contrast, saturation, hue jitter strengths, or none."),
    ] = None
    color_jitter_prob: Annotated[
        float, Doc("Probability of applying the colour jitter when it is set.")
    ] = 0.8
    grayscale_prob: Annotated[float, Doc("Probability of turning a training image gray.")] = 0.0


COMPILE_BACKEND_DEFAULT = "inductor"
"""torch.compile's own default backend (generated Triton/C++ kernels)."""


@dataclass(frozen=True)
class OptimOptions:
    """Batch, length of the stage, AdamW and its schedule, and the device it runs on."""

    batch_size: Annotated[
        int, Doc("Global batch: samples per optimiser step over all devices.")
    ] = 256
    epochs: Annotated[
        float | None, Doc("Passes over the data; exclusive with samples (default: 1 epoch).")
    ] = None
    samples: Annotated[
        int | None, Doc("Samples to train on in this stage; exclusive with epochs.")
    ] = None
    lr: Annotated[
        float | None,
        Doc("Peak learning rate (default: 8e-6 × batch/256 pre-training, 8e-7 × batch/256 "
            "fine-tuning)."),
    ] = None  # fmt: skip
    warmup_steps: Annotated[
        int | None,
        Doc("Linear warm-up steps (default: the recipes' warm-up in samples, at most 10 % of "
            "steps)."),
    ] = None  # fmt: skip
    weight_decay: Annotated[
        float,
        Doc("AdamW weight decay (not applied to biases, norms, 1-D parameters, logit scale)."),
    ] = 0.2
    beta1: Annotated[float, Doc("AdamW β1.")] = 0.9
    beta2: Annotated[float, Doc("AdamW β2.")] = 0.95
    eps: Annotated[float, Doc("AdamW ε.")] = 1e-6
    grad_clip_norm: Annotated[
        float | None,
        Doc("Clip the global gradient norm to this value (off by default, as in CLIPA)."),
    ] = None
    precision: Annotated[str, Doc("Number format of the step."), Choices(PRECISION_CHOICES)] = (
        "auto"
    )
    backend: Annotated[
        str,
        Doc("Device to train on."),
        Choices(BACKEND_CHOICES),
    ] = "auto"
    sharding: Annotated[
        str,
        Doc("How the model is spread over the torchrun processes."),
        Choices(SHARDING_CHOICES),
    ] = "ddp"  # fmt: skip
    accum_steps: Annotated[
        int | str,
        Doc("Micro-batches per optimiser step: each device runs batch/(devices × K) samples at "
            "a time; loss and gradients stay those of the whole batch (exact accumulation). "
            "auto: the fewest that keep each micro-batch within --micro-batch."),
    ] = 1  # fmt: skip
    micro_batch: Annotated[
        int | None,
        Doc("With --accum-steps auto: the most samples one device runs at a time (what fits "
            "in its memory)."),
    ] = None  # fmt: skip
    memory_check: Annotated[
        bool,
        Doc("Refuse a run whose estimated peak memory exceeds the device's free memory, "
            "naming a batch size, --grad-checkpointing or a smaller preset that fits."),
    ] = True  # fmt: skip
    compile: Annotated[
        str,
        Doc("torch.compile the step's model forward once per stage."),
        Choices(COMPILE_CHOICES),
    ] = "auto"  # fmt: skip
    compile_backend: Annotated[
        str,
        Doc("torch.compile backend used when compiling (aot_eager or eager: no generated "
            "kernels, for debugging)."),
    ] = COMPILE_BACKEND_DEFAULT  # fmt: skip

    def __post_init__(self) -> None:
        _require(
            [
                (self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}"),
                (
                    self.epochs is None or self.samples is None,
                    "give --epochs or --samples, not both",
                ),
                (
                    self.epochs is None or 0 < self.epochs < math.inf,
                    "--epochs must be positive and finite",
                ),
                (self.samples is None or self.samples > 0, "--samples must be positive"),
                (self.lr is None or 0 < self.lr < math.inf, "--lr must be positive and finite"),
                (
                    all(map(math.isfinite, (self.weight_decay, self.beta1, self.beta2, self.eps))),
                    "--weight-decay, --beta1, --beta2 and --eps must be finite numbers",
                ),
                (
                    self.grad_clip_norm is None or 0 < self.grad_clip_norm < math.inf,
                    "--grad-clip-norm must be positive and finite",
                ),
                (self.warmup_steps is None or self.warmup_steps >= 0, "--warmup-steps must be ≥ 0"),
            ]
        )
        self._check_accumulation()

    def _check_accumulation(self) -> None:
        """``accum_steps``: a positive divisor of the batch, or auto with ``micro_batch``
        (a flag arrives as text: "4" becomes 4)."""
        steps = self.accum_steps
        if isinstance(steps, str) and steps.strip().isdigit():
            steps = int(steps)
            object.__setattr__(self, "accum_steps", steps)  # frozen: normalised once, here
        if steps == "auto":
            _require(
                [
                    (self.micro_batch is not None, "--accum-steps auto needs --micro-batch N"),
                    (
                        self.micro_batch is None or self.micro_batch >= 1,
                        f"--micro-batch must be at least 1, got {self.micro_batch}",
                    ),
                ]
            )
            return
        _require(
            [
                (
                    isinstance(steps, int) and steps >= 1,
                    f"--accum-steps must be a whole number ≥ 1 or auto, got {steps}",
                ),
                (
                    self.micro_batch is None,
                    "--micro-batch is read only with --accum-steps auto; give both or neither",
                ),
            ]
        )
        _require(
            [
                (
                    self.batch_size % steps == 0,
                    f"--accum-steps {steps} does not divide --batch-size {self.batch_size}; use "
                    "a divisor of the batch per device",
                )
            ]
        )


@dataclass(frozen=True)
class EvalOptions:
    """Zero-shot evaluation inside the training loop."""

    zeroshot: Annotated[
        str | None,
        Doc("Zero-shot set evaluated in the loop: an ImageFolder val/ tree or a TFDS imagenet2012 "
            "builder directory."),
    ] = None  # fmt: skip
    classnames: Annotated[
        str | None,
        Doc("Class names file for a non-ImageNet zero-shot folder (one per line, sorted folder "
            "order)."),
    ] = None  # fmt: skip
    templates: Annotated[
        str | None,
        Doc("Prompt templates file (one template with {} per line); default: the 80 CLIP ones."),
    ] = None
    every: Annotated[
        int, Doc("Steps between in-loop zero-shot evaluations (0: only at the end of the stage).")
    ] = 0
    batch_size: Annotated[int, Doc("Images per zero-shot evaluation batch.")] = 256

    def __post_init__(self) -> None:
        _require(
            [
                (self.every >= 0, "--eval-every must be ≥ 0"),
                (
                    self.batch_size >= 1,
                    f"--eval-batch-size must be at least 1, got {self.batch_size}",
                ),
                (not (self.classnames and not self.zeroshot), "--classnames needs --zeroshot DIR"),
                (not (self.templates and not self.zeroshot), "--templates needs --zeroshot DIR"),
                (
                    not (self.every and not self.zeroshot),
                    f"--eval-every {self.every} needs --zeroshot DIR (the set it evaluates on)",
                ),
            ]
        )


@dataclass(frozen=True)
class LoggingOptions:
    """Resuming, metrics, checkpoints and the progress line."""

    resume: Annotated[
        str | None, Doc("auto (latest checkpoint in the run directory) or a checkpoint path.")
    ] = None
    overwrite: Annotated[
        bool,
        Doc("Start over in a run directory that holds a run: the old run is moved to "
            "RUN_DIR.old-<UTC time> (never deleted)."),
    ] = False  # fmt: skip
    log_every: Annotated[
        int, Doc("Steps between metrics records (and checks whether any rank got a stop signal).")
    ] = 10
    checkpoint_every: Annotated[
        int, Doc("Steps between checkpoints (0: only at the end and on a stop signal).")
    ] = 1000
    keep_checkpoints: Annotated[int, Doc("Newest checkpoints kept (0: all).")] = 2
    progress: Annotated[bool, Doc("Show a progress line.")] = True
    log: Annotated[
        str,
        Doc(f"Loggers, comma-separated, from {', '.join(LOGGERS)} (jsonl, metrics.jsonl, is "
            "always on; tensorboard: RUN_DIR/tb; wandb honours WANDB_MODE=offline)."),
    ] = "jsonl"  # fmt: skip
    wandb_project: Annotated[str, Doc("W&B project (--log wandb).")] = "clipa"
    wandb_name: Annotated[str | None, Doc("W&B run name (default: the run directory name).")] = None
    wandb_tags: Annotated[str | None, Doc("W&B tags, comma-separated.")] = None
    wandb_id: Annotated[
        str | None,
        Doc("W&B run id to continue (default: a new W&B run; under --resume, the run's own)."),
    ] = None

    def __post_init__(self) -> None:
        loggers = parse_loggers(self.log)  # an unknown name is refused before anything starts
        wandb_given = [
            f"--wandb-{name}" for name in ("name", "tags", "id") if getattr(self, f"wandb_{name}")
        ]
        _require(
            [
                (
                    "wandb" in loggers or not wandb_given,
                    f"{', '.join(wandb_given)} without --log wandb would be ignored; add "
                    "--log wandb (or --log tensorboard,wandb)",
                ),
                (self.checkpoint_every >= 0, "--checkpoint-every must be ≥ 0"),
                (self.log_every >= 1, "--log-every must be at least 1"),
                (self.keep_checkpoints >= 0, "--keep-checkpoints must be ≥ 0 (0 keeps all)"),
                (
                    not (self.overwrite and self.resume),
                    "--overwrite starts the run over and --resume continues it; give one of them",
                ),
            ]
        )


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training stage, in groups (``OPTIONS`` maps the flat names onto them)."""

    stage: Annotated[
        str, Doc("pretrain (reduced tokens) or finetune (full length, from a checkpoint)."),
        Choices(STAGES),
    ]  # fmt: skip
    run: Annotated[RunOptions, Doc("Data, run directory, data loading.")]
    recipe: Annotated[
        str | None,
        Doc(
            "A CLIPA recipe that fills in the paper's settings for this stage: NAME (its first "
            "stage of this kind), NAME:STAGE, or a recipe .json/.yaml file."
        ),
        Choices(RECIPE_NAMES),
    ] = None
    model: Annotated[ModelOptions, Doc("Model choice.")] = field(default_factory=ModelOptions)
    reduction: Annotated[ReductionOptions, Doc("Token reduction.")] = field(
        default_factory=ReductionOptions
    )
    augment: Annotated[AugmentOptions, Doc("Augmentation.")] = field(default_factory=AugmentOptions)
    optim: Annotated[OptimOptions, Doc("Optimisation.")] = field(default_factory=OptimOptions)
    evaluation: Annotated[EvalOptions, Doc("Evaluation.")] = field(default_factory=EvalOptions)
    logging: Annotated[LoggingOptions, Doc("Logging and checkpoints.")] = field(
        default_factory=LoggingOptions
    )

    def __post_init__(self) -> None:
        _require([(self.stage in STAGES, f"stage must be one of {STAGES}")])
        for name in OPTIONS:
            choices = option_spec(name).choices
            value = self.value(name)
            if choices and name != "recipe" and value is not None and value not in choices:
                raise ClipaError(f"{option_flag(name)} must be one of {', '.join(choices)}")
        _require(
            [
                (
                    self.stage == "pretrain" or self.model.from_checkpoint,
                    "finetune needs --from CHECKPOINT",
                )
            ]
        )

    @classmethod
    def from_options(cls, stage: str, options: dict[str, Any]) -> TrainConfig:
        """The config from flat ``{option name: value}`` (the names of flags and config files)."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ClipaError(f"unknown option(s) {', '.join(unknown)}")
        groups: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            group, _, attr = OPTIONS[name].rpartition(".")
            groups.setdefault(group, {})[attr] = value
        top = groups.pop("", {})
        specs = field_specs(cls)
        nested = {group: specs[group].kind(**values) for group, values in groups.items()}
        return cls(stage=stage, **top, **nested)

    def value(self, name: str) -> Any:
        """The value of the flat option ``name`` (``batch_size`` -> ``self.optim.batch_size``)."""
        value: Any = self
        for attr in OPTIONS[name].split("."):
            value = getattr(value, attr)
        return value

    @property
    def defaults(self) -> StageDefaults:
        """This stage's defaults."""
        return STAGE_DEFAULTS[self.stage]

    def peak_lr(self) -> float:
        """The given lr, or the paper's rule for this stage and batch size."""
        if self.optim.lr is not None:
            return self.optim.lr
        return self.defaults.lr_per_256 * self.optim.batch_size / 256

    def total_steps(self, num_records: int) -> int:
        """Optimiser steps of the stage for a split of ``num_records`` records."""
        optim = self.optim
        if optim.samples is not None:
            return max(1, optim.samples // optim.batch_size)
        # An epoch is the loader's: whole global batches of the epoch's samples (the remainder
        # is not drawn), so E epochs end where the loader's epoch E ends.
        epoch_steps = (self.run.samples_per_epoch or num_records) // optim.batch_size
        return max(1, int((optim.epochs or 1) * epoch_steps))

    def warmup(self, total_steps: int) -> int:
        """The given warm-up, or the recipes' warm-up in samples capped at 10 % of the steps."""
        if self.optim.warmup_steps is not None:
            return min(self.optim.warmup_steps, total_steps)
        warmup = round(self.defaults.warmup_samples / self.optim.batch_size)
        return min(warmup, total_steps // 10)

    def to_json(self) -> dict[str, Any]:
        """The options as flat JSON values (``config.json``'s ``options``)."""
        return {"stage": self.stage, **{name: self.value(name) for name in OPTIONS}}


RENAMED_OPTIONS = {
    "model.name": "model",
    "evaluation.every": "eval_every",
    "evaluation.batch_size": "eval_batch_size",
}
"""The fields whose flat option name is not their own (``--name`` or ``--every`` would not say
of what)."""


def _flat_options() -> dict[str, str]:
    """Every field of every ``TrainConfig`` group, in order, by its flat name (and the top-level
    ``recipe``; ``stage`` is the command itself)."""
    options: dict[str, str] = {}
    for group, spec in field_specs(TrainConfig).items():
        fields = field_specs(spec.kind) if dataclasses.is_dataclass(spec.kind) else {"": None}
        for attr in fields:
            path = f"{group}.{attr}" if attr else group
            name = RENAMED_OPTIONS.get(path, attr or group)
            if name in options:
                raise AssertionError(f"two training options are named {name!r}")
            options[name] = path
    del options["stage"]
    return options


OPTIONS: dict[str, str] = _flat_options()
"""Every option, by its flat name (flag ``--batch-size``, config-file key ``batch_size``), and
the field of :class:`TrainConfig` that holds it (``group.field``; ``recipe`` is top-level)."""

OPTION_NAMES = frozenset(OPTIONS)


def option_flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size`` (``from_checkpoint`` is ``--from``)."""
    return "--from" if name == "from_checkpoint" else "--" + name.replace("_", "-")


def option_owner(name: str) -> tuple[type, str]:
    """The dataclass that holds the flat option ``name``, and its field's name there."""
    group, _, attr = OPTIONS[name].rpartition(".")
    return (field_specs(TrainConfig)[group].kind if group else TrainConfig), attr


def option_spec(name: str):
    """The ``FieldSpec`` (type, help, choices, default) of the flat option ``name``."""
    owner, attr = option_owner(name)
    return field_specs(owner)[attr]


@dataclass(frozen=True)
class StageDefaults:
    """What a stage uses for the options nobody gave: the one place stage defaults live."""

    options: dict[str, Any]
    """Option values that differ from the fields' defaults, by flat option name."""
    lr_per_256: float
    """The paper's peak-lr rule: this × global batch / 256."""
    warmup_samples: int
    """The recipes' warm-up in samples; the default warm-up is this or 10 % of the steps."""

    def describe(self) -> str:
        """One line for ``--help``: the defaults that differ, and the lr rule."""
        o = self.options
        parts = [f"{o['image_size']} px"] if "image_size" in o else []
        if o.get("image_mask") == "resize":
            parts.append("no image mask")
        if "text_length" in o:
            parts.append(f"text {o['text_length']} {o.get('text_mask', '')}".strip())
        if "pos_embed" in o:
            parts.append(f"{o['pos_embed']} positional embeddings (resized from the checkpoint on "
                         "load)")  # fmt: skip
        parts.append(f"lr {self.lr_per_256:.0e} × batch/256".replace("e-0", "e-"))
        return "Defaults: " + ", ".join(parts)


STAGE_DEFAULTS: dict[str, StageDefaults] = {
    "pretrain": StageDefaults(
        options={}, lr_per_256=PRETRAIN_LR_PER_256, warmup_samples=51_200_000
    ),
    "finetune": StageDefaults(
        options={
            "image_size": 224,
            "image_mask": "resize",
            "text_length": 32,
            "text_mask": "truncate",
            "pos_embed": "learnable",
        },
        lr_per_256=FINETUNE_LR_PER_256,
        warmup_samples=25_600_000,
    ),
}
"""Defaults that differ per stage (fine-tuning: 224 px, no mask, text 32 truncate, learnable
positional embeddings; the lr rule and warm-up length)."""

LENGTH_OPTIONS = frozenset({"epochs", "samples"})
"""The two ways to give a stage's length (one at most): a flag for one replaces a config
file's value of either (``--samples`` over a file's ``epochs:`` was "give --epochs or --samples,
not both")."""

RECIPE_RENAMES = {"global_batch": "batch_size"}
"""Recipe fields whose option name differs."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or JSON file (keys with - or _); unknown keys are an error."""
    path = Path(path)
    if path.is_dir():
        raise ClipaError(f"{path} is a folder; --config takes a YAML or JSON file")
    if not path.is_file():
        raise ClipaError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text, object_pairs_hook=_mapping_once)
        else:
            values = _yaml_once(text)
    except ClipaError:
        raise
    except Exception as error:  # yaml.YAMLError has no common base we can import lazily
        raise ClipaError(f"{path}: cannot parse config file ({parse_error_line(error)})") from None
    if not isinstance(values, dict):
        raise ClipaError(f"{path}: a config file must hold a mapping of option: value")
    keys: dict[str, str] = {}
    for key in map(str, values):
        name = key.replace("-", "_")
        name = "from_checkpoint" if name == "from" else name
        if name in keys:
            raise ClipaError(f"{path}: {keys[name]} and {key} are the same option: keep one")
        keys[name] = key
    unknown = sorted(set(keys) - OPTION_NAMES)
    if unknown:
        raise ClipaError(f"{path}: unknown option(s) {', '.join(unknown)}")
    options = {}
    for name, key in keys.items():
        try:
            options[name] = coerce_option(name, values[key])
        except (KeyError, TypeError, ValueError):
            raise ClipaError(
                f"{path}: {key} must be {expected_type(name)}, got {values[key]!r}"
            ) from None
    return options


def _mapping_once(pairs: list[tuple[Any, Any]]) -> dict:
    """A mapping from ``pairs``; a key given twice is an error, not silently the last value."""
    keys = [key for key, _ in pairs]
    repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    return dict(pairs)


def _yaml_once(text: str) -> Any:
    """``yaml.safe_load`` refusing a mapping key given twice (PyYAML keeps the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        merge = "tag:yaml.org,2002:merge"  # `<<: *base` then a key of its own overrides
        pairs = [(loader.construct_object(key), None) for key, _ in node.value if key.tag != merge]
        _mapping_once(pairs)
        return loader.construct_mapping(node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no Python objects


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _tuple_length(name: str) -> int | None:
    """How many items the tuple option ``name`` holds (``None``: any number)."""
    owner, attr = option_owner(name)
    hint = typing.get_type_hints(owner)[attr]
    for arg in (hint, *typing.get_args(hint)):
        items = typing.get_args(arg) if typing.get_origin(arg) is tuple else ()
        if items and Ellipsis not in items:
            return len(items)
    return None


def expected_type(name: str) -> str:
    """What the option ``name`` takes, in words (for the config-file error)."""
    spec = option_spec(name)
    if spec.kind is tuple:
        length = _tuple_length(name)
        what = f"a list of {length} numbers" if length else "a list of numbers"
    else:
        what = _KIND_WORDS.get(spec.kind, "text")
    return what + (" or null" if spec.optional else "")


def coerce_option(name: str, value: Any) -> Any:
    """A config-file value as the type of option ``name``: YAML reads ``1e-3`` as text, JSON
    may quote numbers, lists stand for tuples. Raises ``ValueError`` (or ``KeyError``,
    ``TypeError``) when it cannot be."""
    spec = option_spec(name)
    if value is None or (spec.kind is tuple and str(value).lower() == "none"):
        if spec.optional:
            return None
        raise ValueError(name)
    if isinstance(value, bool) != (spec.kind is bool) and not isinstance(value, str):
        raise ValueError(name)  # True is an int to Python, never a number to a user
    if spec.kind is bool:
        return value if isinstance(value, bool) else _BOOL_WORDS[value.lower()]
    if spec.kind is int:
        number = value if isinstance(value, int) else float(value)
        if not float(number).is_integer():
            raise ValueError(name)
        return int(number)
    if spec.kind is float:
        return float(value)
    if spec.kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        length = _tuple_length(name)
        if not isinstance(items, list | tuple) or (length and len(items) != length):
            raise ValueError(name)
        if any(isinstance(item, bool) for item in items):
            raise ValueError(name)
        return tuple(float(item) for item in items)
    if isinstance(value, int | float):
        return str(value)  # accum_steps: 4 is read by its own check; split: 2019 is a name
    if not isinstance(value, str):
        raise ValueError(name)
    # A shell expands ~ only in an unquoted word of its own: a config file's value and a
    # recipe's --set STAGE.OPTION=~/x reach us unexpanded and would make a folder named "~".
    return os.path.expanduser(value) if value.startswith("~") else value


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def recipe_options(name: str, stage: str) -> dict[str, Any]:
    """The settings recipe ``name`` (``NAME[:STAGE]``) fixes for ``stage``, by option name."""
    chosen = stage_recipe(name, stage)
    options = {RECIPE_RENAMES.get(key, key): value for key, value in chosen.as_options().items()}
    if chosen.tokenizer != WORDPIECE_VOCAB:
        options["tokenizer"] = chosen.tokenizer  # a WordPiece path is the user's (checked)
    if options.get("color_jitter") is None:
        # The recipe's "no jitter" leaves the jitter probability meaningless; keep the default.
        options.pop("color_jitter_prob", None)
    return options


def recipe_setting(fixed: dict[str, Any], key: str) -> str:
    """``sets --image-size 112``; for a setting the recipe leaves unset, what it does instead
    (``sets the stage's length with --epochs 6`` where ``--samples`` was given) or
    ``sets no --color-jitter``."""
    other = {"samples": "epochs", "epochs": "samples"}.get(key)
    if fixed[key] is None and other and fixed.get(other) is not None:
        return f"sets the stage's length with {option_flag(other)} {_as_given(fixed[other])}"
    if fixed[key] is None:
        return f"sets no {option_flag(key)}"
    return f"sets {option_flag(key)} {_as_given(fixed[key])}"


def _as_given(value: Any) -> str:
    """A value as a flag takes it: ``0.4,0.4,0.4,0.1`` for a tuple."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def same_value(a: Any, b: Any) -> bool:
    """Whether two option values are the same (1 and 1.0, a list and a tuple are)."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def resolve(
    stage: str,
    flags: dict[str, Any],
    config_file: str | Path | None = None,
    without_tokenizer: bool = False,
) -> TrainConfig:
    """Merge defaults, recipe, config file and the flags given explicitly (non-None).
    ``without_tokenizer``: a recipe stage that reads WordPiece and has no ``--tokenizer`` yet is
    resolved with CLIP's (``clipa-train recipe --plan`` says what the run still needs)."""
    given = read_config_file(config_file) if config_file else {}
    flagged = {key: value for key, value in flags.items() if value is not None}
    if flagged.keys() & LENGTH_OPTIONS:  # a length on the command line replaces the file's
        given = {key: value for key, value in given.items() if key not in LENGTH_OPTIONS}
    given.update(flagged)
    for key, value in given.items():
        if isinstance(value, str) and not value.strip():
            # `--resume "$(ls ... | tail -1)"` with nothing found: not "no option given"
            # (it would train from scratch), nor "." (--out "" would write into this folder).
            raise ClipaError(f"{option_flag(key)} is empty; give a value or leave it out")
    values: dict[str, Any] = dict(STAGE_DEFAULTS[stage].options)
    name = given.get("recipe")
    if name:
        fixed = recipe_options(name, stage)
        if not without_tokenizer:
            check_recipe_tokenizer(name, stage_recipe(name, stage), given.get("tokenizer"))
        for key, value in given.items():
            if key in fixed and not same_value(value, fixed[key]):
                raise ClipaError(
                    f"--recipe {name} {recipe_setting(fixed, key)} for {stage}; "
                    f"drop {option_flag(key)} {_as_given(value)} or the recipe"
                )
        values.update(fixed)
    values.update(given)
    chosen = given.keys() | (fixed.keys() if name else set())
    if values.get("from_checkpoint") and "image_norm" not in chosen:
        # The --from weights' own mean/std: features of other inputs would be fine-tuned
        # otherwise, and nothing would say so.
        from clipa_train.eval_stage import trained_image_norm

        values["image_norm"] = trained_image_norm(values["from_checkpoint"])
    config = TrainConfig.from_options(stage, values)
    _refuse_ignored(stage, given, fixed if name else {}, config, flagged.keys())
    return config


IGNORED_UNLESS: tuple[tuple[str, Any, str, str], ...] = (
    ("mask_ratio", lambda c: c.reduction.image_mask in RATIO_MASKS, "image_mask",
     f"--image-mask {' or '.join(RATIO_MASKS)}"),
    ("color_jitter_prob", lambda c: c.augment.color_jitter is not None, "color_jitter",
     "--color-jitter"),
    ("compile_backend", lambda c: c.optim.compile != "off", "compile", "--compile on"),
    ("eval_batch_size", lambda c: c.evaluation.zeroshot is not None, "zeroshot",
     "--zeroshot DIR"),
    ("wandb_project", lambda c: "wandb" in parse_loggers(c.logging.log), "log", "--log wandb"),
)  # fmt: skip
"""Options that mean something only beside another (option, whether it applies, the other
option, what it needs): given alone they would be ignored."""


def without_ignored_defaults(from_file: dict[str, Any]) -> dict[str, Any]:
    """A config file's options less those that would be ignored and only repeat their default
    (a saved run's whole options hold them): where the file's options become flags (``clipa-train
    recipe``), a flag with its default's value is refused as one typed would be."""
    ignorable = {name for name, *_ in IGNORED_UNLESS}
    return {
        name: value
        for name, value in from_file.items()
        if not (name in ignorable and same_value(value, option_spec(name).default))
    }


def _refuse_ignored(
    stage: str,
    given: dict[str, Any],
    fixed: dict[str, Any],
    config: TrainConfig,
    flagged: typing.AbstractSet[str],
) -> None:
    """One line for an option given explicitly (flag or config file) that would be ignored.
    One that repeats the recipe's value passes, and so does a config file's repeating the
    default (a file of a run's whole options holds them all); a flag typed with the default's
    value does not (``--mask-ratio 0.5`` alone trained unmasked, silently)."""
    for name, applies, other, needs in IGNORED_UNLESS:
        if name not in given or applies(config):
            continue
        if name in fixed and same_value(given[name], fixed[name]):
            continue
        default = STAGE_DEFAULTS[stage].options.get(name, option_spec(name).default)
        if name not in flagged and same_value(given[name], default):
            continue
        fix = (
            f"drop {option_flag(name)} (--recipe {given['recipe']} fixes {option_flag(other)})"
            if other in fixed
            else f"add it, or drop {option_flag(name)}"
        )
        raise ClipaError(
            f"{option_flag(name)} {_as_given(given[name])} would be ignored without {needs}; {fix}"
        )
