"""A training stage with every default filled in, resolved once before anything starts.

``resolve_stage`` takes the merged options (``run_config.TrainConfig``, where ``None`` means
"the model's" or "derived") and fills every gap in one place: the model preset (or the
checkpoint's architecture) gives the image size, text length, text mask and positional
embedding; the training split gives the step count; the stage's defaults give the lr and the
warm-up. It also turns every bad input (not a builder directory, syntax mask without sidecars,
image size vs patch size, a bad zero-shot folder, ``--resume auto`` without checkpoints, an
``--out`` that holds a run without ``--resume``/``--overwrite``: ``run_dir``) into
one clear line before any device or worker process starts. The result, a ``ResolvedStage``,
holds the component configs the workers build from (picklable, for spawned XLA processes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipa_data.core.errors import ClipaError
from clipa_data.core.provenance import package_versions
from clipa_data.core.taggers import TaggerSpec
from clipa_data.core.text_reduction import text_mask as text_mask_strategy
from clipa_train.backend_config import BackendConfig
from clipa_train.run_config import (
    COMPILE_BACKEND_DEFAULT,
    DEFAULT_MODEL,
    LoggingOptions,
    TrainConfig,
)

if TYPE_CHECKING:
    from clipa_train.image import ImageConfig
    from clipa_train.loggers import LoggerConfig
    from clipa_train.loop import LoopConfig
    from clipa_train.model import ModelConfig
    from clipa_train.optim import OptimConfig
    from clipa_train.reduce import PatchMaskConfig, TextReductionConfig

OFF_WHEN_NONE = frozenset({"resume_from", "tagger"})
"""``ResolvedStage`` fields where None means "off" (start fresh, prompts truncated), not unset."""


def needs_sidecars(text_mask: str) -> bool:
    """Whether a text mask reads the POS tags of ``clipa-data tag`` sidecars."""
    return text_mask_strategy(text_mask).needs_words


@dataclass(frozen=True)
class ResolvedStage:
    """Everything a training stage builds from, with no option left to resolve."""

    config: TrainConfig
    """The merged options as given (defaults < recipe < file < flags); what they left as None is
    resolved in the fields below, which the workers read."""
    model: ModelConfig
    """The architecture: preset (or the checkpoint's) with this stage's sizes and switches."""
    image: ImageConfig
    """Training image size, crop and augmentation."""
    patch_mask: PatchMaskConfig
    """Image token reduction, at the model's patch size."""
    text: TextReductionConfig
    """Text token reduction and length."""
    optim: OptimConfig
    """Peak lr, step count, warm-up and AdamW settings."""
    loop: LoopConfig
    """Logging, checkpoint and evaluation intervals."""
    backend: BackendConfig
    """Device, precision, sharding and compilation, resolved (no auto left)."""
    builder: str
    """The resolved builder directory."""
    num_records: int
    """Records in the training split."""
    shard_lengths: tuple[int, ...]
    """Records of each shard of the training split (how the ranks' shares fall)."""
    resume_from: str | None
    """Checkpoint to resume from (``--resume``); None starts fresh."""
    tagger: TaggerSpec | None
    """The tagger of the sidecars (syntax-masked zero-shot prompts); None truncates prompts."""

    @property
    def loss(self) -> str:
        """The loss trained: ``--loss``, else the one the model (the checkpoint's) was built for."""
        from clipa_train.loss import loss_of

        return self.config.model.loss or loss_of(self.model.init_logit_bias is not None)

    def to_json(self) -> dict:
        """``config.json``: resolved options, derived values, model, data and versions."""
        from clipa_data.core.tokenizer import load_tokenizer

        resolved = {
            "image_size": self.image.size,
            "text_length": self.text.length,
            "text_mask": self.text.mask,
            "pos_embed": self.model.vision.pos_embed,
            "loss": self.loss,
            "lr": self.optim.lr,
            "warmup_steps": self.optim.warmup_steps,
        }
        origin = self.config.model.from_checkpoint
        if origin:  # absolute: clipa-train report chains the runs from any folder
            resolved["from_checkpoint"] = str(Path(origin).resolve())
        given = self.config.to_json()
        return {
            "options": {**given, **resolved},
            # What those options were before their defaults were worked out (a recipe's warm-up
            # capped at the stage's steps, say): a re-run compares what it is given with these.
            "given": {name: given.get(name) for name in resolved},
            "derived": {
                "total_steps": self.optim.total_steps,
                "warmup_steps": self.optim.warmup_steps,
                "lr": self.optim.lr,
                "num_records": self.num_records,
                "resume_from": self.resume_from,
                "compile": self.backend.compile,
                # The vocabulary itself: eval refuses another one of the same size
                "tokenizer_sha256": load_tokenizer(self.text.tokenizer).sha256(),
            },
            "model": self.model.to_dict(),
            "data": {"builder": self.builder, "split": self.config.run.split},
            "versions": package_versions(["torch", "numpy", "pyarrow"]),
        }


def stage_model(config: TrainConfig, resume: Path | None = None) -> ModelConfig:
    """The stage's architecture: preset (or the checkpoint's) + this stage's overrides. A run
    resumed from ``resume`` takes it from there, not from ``--from`` (whose weights the resume
    replaces, so the file need not exist any more)."""
    from clipa_train.checkpoint import base_architecture

    model = config.model
    weights = model.from_checkpoint and (str(resume) if resume else model.from_checkpoint)
    base = base_architecture(model.name, weights, default=DEFAULT_MODEL)
    return base.replace(
        image_size=config.reduction.image_size,
        context_length=config.reduction.text_length,
        pos_embed=model.pos_embed,
        loss=model.loss,
    )


def _sidecar_tagger(reader):
    """The tagger that made the sidecars, as a loadable spec (None if unavailable here)."""
    from clipa_data.core import layout, sidecar
    from clipa_data.core.taggers import resolve_tagger

    path = layout.sidecar_path(reader.builder, reader.split.shards[0].path)
    info, _ = sidecar.read_header(path)
    try:
        return resolve_tagger(info.tagger, spacy_model=info.tagger_model.split()[0])
    except (ClipaError, ValueError):
        return None


def _shared(cls: type, source: object, **given: Any):
    """``cls`` built from ``given`` plus the fields ``source`` has under the same names."""
    names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(source)}
    return cls(**{name: getattr(source, name) for name in names - set(given)}, **given)


def _reduction(config: TrainConfig, model: ModelConfig):
    """(image, patch mask, text) configs at the model's sizes."""
    from clipa_train.image import ImageConfig
    from clipa_train.reduce import PatchMaskConfig, TextReductionConfig

    augment, reduction = config.augment, config.reduction
    image = ImageConfig(
        size=model.vision.image_size,
        crop="random",
        scale=(augment.crop_scale_min, 1.0),
        color_jitter=augment.color_jitter,
        color_jitter_prob=augment.color_jitter_prob,
        grayscale_prob=augment.grayscale_prob,
        reference_exact=config.run.reference_exact,
    )
    patch_mask = PatchMaskConfig(
        reduction.image_mask, patch_size=model.vision.patch_size, ratio=reduction.mask_ratio
    )
    text = TextReductionConfig(
        reduction.text_mask or model.text.text_mask,
        model.text.context_length,
        tokenizer=config.model.tokenizer,
        reference_exact=config.run.reference_exact,
    )
    return image, patch_mask, text


def _check_tokenizer(text: TextReductionConfig, model: ModelConfig) -> None:
    """``--tokenizer`` loads (a missing file: one line), its ids fit the model's vocabulary,
    and a WordPiece syntax mask has its priority table before workers start."""
    from clipa_data.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(text.tokenizer)
    if tokenizer.vocab_size > model.text.vocab_size:
        raise ClipaError(
            f"--tokenizer {tokenizer.source} has {tokenizer.vocab_size} ids but the model's text "
            f"vocabulary has {model.text.vocab_size}; pass --tokenizer with the model's own "
            "local tokenizer.json / vocab.txt (CLIPA-v2: bert-base-uncased's) or use a model "
            "with a larger vocabulary"
        )
    if text_mask_strategy(text.mask).needs_words and not text.needs_sidecars:
        tokenizer.own_words()


def _backend(config: TrainConfig) -> BackendConfig:
    """The device, precision and ``--compile`` resolved (on with xla is refused here)."""
    from clipa_train.backend_config import IMAGE_NORMS, resolve_backend, resolve_precision
    from clipa_train.compile import check_compiler, resolve_compile

    optim = config.optim
    name = resolve_backend(optim.backend)
    compiled = resolve_compile(optim.compile, name)
    chosen = optim.compile_backend != COMPILE_BACKEND_DEFAULT
    if compiled or chosen:  # an unknown name is refused even where it would be ignored
        check_compiler(optim.compile_backend)
    if not compiled and chosen:
        # XLA compiles its own graphs: --compile on is refused there, so only dropping helps.
        fix = "drop --compile-backend" if name == "xla" else "add --compile on, or drop it"
        raise ClipaError(
            f"--compile-backend {optim.compile_backend} would be ignored: --compile "
            f"{optim.compile} does not compile on {name}; {fix}"
        )
    precision = resolve_precision(optim.precision, name)
    mean, std = IMAGE_NORMS[config.model.image_norm]
    return BackendConfig(
        name=name,
        precision=precision,
        image_mean=mean,
        image_std=std,
        sharding=optim.sharding,
        compile=compiled,
        compiler=optim.compile_backend,
    )


def _check_accumulation_per_rank(optim, world: int) -> None:
    """A fixed ``--accum-steps`` must split each rank's share of the batch: refused here, before
    the run directory is written, rather than at the first step (torchrun's world is known)."""
    from clipa_train.accumulation import micro_batch_size

    if optim.accum_steps != "auto" and world > 1 and optim.batch_size % world == 0:
        micro_batch_size(optim.batch_size // world, optim.accum_steps, world)


def _loggers(logging: LoggingOptions) -> LoggerConfig:
    """``--log`` and the W&B options as the loop's ``LoggerConfig``."""
    from clipa_train.loggers import LoggerConfig, parse_loggers

    tags = tuple(t.strip() for t in (logging.wandb_tags or "").split(",") if t.strip())
    return LoggerConfig(
        names=parse_loggers(logging.log), wandb_project=logging.wandb_project,
        wandb_name=logging.wandb_name, wandb_tags=tags, wandb_id=logging.wandb_id,
    )  # fmt: skip


def resolve_stage(config: TrainConfig) -> ResolvedStage:
    """Fill every default and check every input; raises ``ClipaError`` before anything starts."""
    from clipa_train.checkpoint import resolve_resume
    from clipa_train.evaluate import open_zeroshot_set
    from clipa_train.loop import LoopConfig
    from clipa_train.optim import OptimConfig
    from clipa_train.run_dir import (
        check_resume_options,
        check_resume_settings,
        check_resume_step,
        check_run_dir,
    )
    from clipa_train.sharding import check_sharding, is_first_rank, torchrun_world
    from clipa_train.shards import Fields, open_split

    check_run_dir(config.run.out, config.logging.resume, config.logging.overwrite)
    check_sharding(config.optim.sharding, config.optim.backend, torchrun_world())
    _check_accumulation_per_rank(config.optim, torchrun_world())
    backend = _backend(config)
    resume = resolve_resume(config.logging.resume, Path(config.run.out) / "checkpoints")
    check_resume_settings(resume, config.optim.batch_size, config.model.from_checkpoint)
    model = stage_model(config, resume)
    image, patch_mask, text = _reduction(config, model)
    _check_tokenizer(text, model)
    syntax = text.needs_sidecars
    reader = open_split(
        config.run.data, config.run.split, fields=Fields(text=config.run.text_field),
        text_source=config.run.text_source, need_sidecars=syntax, tokenizer=text.tokenizer,
    )  # fmt: skip
    evaluation = config.evaluation
    if evaluation.zeroshot:
        said = is_first_rank()  # its warnings once, not once per rank
        open_zeroshot_set(
            evaluation.zeroshot, evaluation.classnames, evaluation.templates, warn=said
        )
    total = config.total_steps(reader.split.num_records)
    optim = _shared(
        OptimConfig, config.optim, lr=config.peak_lr(), total_steps=total,
        warmup_steps=config.warmup(total),
    )  # fmt: skip
    loop = _shared(
        LoopConfig, config.logging, eval_every=evaluation.every,
        grad_checkpointing=config.model.grad_checkpointing,
        accum_steps=1 if config.optim.accum_steps == "auto" else config.optim.accum_steps,
        micro_batch=config.optim.micro_batch,
        # Several processes agree to stop with a collective and a host sync; at log steps the
        # loop syncs anyway, so checking there keeps every other step asynchronous.
        stop_check_every=config.logging.log_every, loggers=_loggers(config.logging),
    )  # fmt: skip
    check_resume_step(resume, total)  # past the stage's last step: refused here
    stage = ResolvedStage(
        config=config,
        model=model,
        image=image,
        patch_mask=patch_mask,
        text=text,
        optim=optim,
        loop=loop,
        backend=backend,
        builder=str(reader.builder),
        num_records=reader.split.num_records,
        shard_lengths=tuple(reader.lengths),
        resume_from=None if resume is None else str(resume),
        tagger=_sidecar_tagger(reader) if syntax and evaluation.zeroshot else None,
    )
    check_resume_options(resume, stage.to_json())
    return stage
