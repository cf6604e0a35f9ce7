"""One training stage end to end: check everything, build the objects, train, summarise.

``plan_stage`` runs before any device or worker process starts and turns every bad input
(not a builder directory, syntax mask without sidecars, image size vs patch size, a bad
zero-shot folder, ``--resume auto`` without checkpoints) into one clear line. ``run_stage``
then writes ``config.json`` and runs ``stage_worker`` once per device (PyTorch/XLA spawns one
process per device; torchrun has already made one process per GPU).

Run directory::

    RUN_DIR/config.json      the resolved options, derived values, model and data
    RUN_DIR/metrics.jsonl    one record per log step (and per evaluation)
    RUN_DIR/checkpoints/     step_NNNNNNN.pt (model, optimiser, stream state, RNG, config)
    RUN_DIR/summary.json     what the stage did (rank 0, at the end)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipa_data.core import layout
from clipa_data.core.atomic import write_json
from clipa_data.core.errors import ClipaError
from clipa_data.core.provenance import package_versions
from clipa_train.run_config import TrainConfig

DEFAULT_PRESET = "ViT-B-16-CL16"


@dataclass(frozen=True)
class StagePlan:
    """Everything resolved before training starts (picklable, for spawned XLA processes)."""

    config: TrainConfig
    """The options with every default filled in (model, sizes, masks, lr, warm-up)."""
    model: dict
    """The model architecture (``ModelConfig.to_dict()``)."""
    builder: str
    """The resolved builder directory."""
    num_records: int
    """Records in the training split."""
    total_steps: int
    """Optimiser steps of the stage."""
    resume_from: str | None
    """Checkpoint to resume from (``--resume``), if any."""
    tagger: Any = None
    """TaggerSpec of the sidecars (for syntax-masked zero-shot prompts), if any."""

    def to_json(self) -> dict:
        """``config.json``: resolved options, derived values, model, data and versions."""
        return {
            "options": self.config.to_json(),
            "derived": {
                "total_steps": self.total_steps,
                "warmup_steps": self.config.warmup_steps,
                "lr": self.config.lr,
                "num_records": self.num_records,
                "resume_from": self.resume_from,
            },
            "model": self.model,
            "data": {"builder": self.builder, "split": self.config.split},
            "versions": package_versions(["torch", "numpy", "pyarrow"]),
        }


def _checkpoint_architecture(path: str) -> dict | None:
    """The architecture stored in a clipa checkpoint (None for OpenCLIP/CLIPA weights)."""
    from clipa_train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(Path(path))["architecture"]
    except ClipaError:
        if not Path(path).is_file():
            raise
        return None


def model_for(config: TrainConfig):
    """The stage's ``ModelConfig``: preset (or the checkpoint's architecture) + overrides."""
    from clipa_train.model import ModelConfig, load_preset

    if config.model is not None:
        base = load_preset(config.model)
    elif config.from_checkpoint is not None:
        saved = _checkpoint_architecture(config.from_checkpoint)
        if saved is None:
            raise ClipaError(
                f"{config.from_checkpoint} holds no architecture (OpenCLIP/CLIPA weights); "
                "pass --model PRESET"
            )
        base = ModelConfig.from_dict(saved, source=config.from_checkpoint)
    else:
        base = load_preset(DEFAULT_PRESET)
    model = base.replace(
        image_size=config.image_size,
        context_length=config.text_length,
        pos_embed=config.pos_embed,
        loss=config.loss,
    )
    patch = model.vision.patch_size
    if model.vision.image_size % patch:
        nearest = max(1, model.vision.image_size // patch) * patch
        raise ClipaError(
            f"image size {model.vision.image_size} is not a multiple of the patch size {patch} "
            f"of {config.model or 'the model'}; use e.g. --image-size {nearest}"
        )
    return model


def _sidecar_tagger(reader):
    """The tagger that made the sidecars, as a loadable spec (None if unavailable here)."""
    from clipa_data.core import sidecar
    from clipa_data.core.taggers import resolve_tagger

    path = layout.sidecar_path(reader.builder, reader.split.shards[0].path)
    info, _ = sidecar.read_header(path)
    try:
        return resolve_tagger(info.tagger, spacy_model=info.tagger_model.split()[0])
    except (ClipaError, ValueError):
        return None


def plan_stage(config: TrainConfig) -> StagePlan:
    """Resolve defaults and check every input; raises ``ClipaError`` before anything starts."""
    from clipa_train.checkpoint import resolve_resume
    from clipa_train.evaluate import open_zeroshot_set
    from clipa_train.shards import open_split

    model = model_for(config)
    text_mask = config.text_mask or (
        model.text.text_mask if config.stage == "pretrain" else "truncate"
    )
    reader = open_split(config.data, config.split, need_sidecars=text_mask == "syntax")
    if config.zeroshot:
        open_zeroshot_set(config.zeroshot, config.classnames, config.templates)
    resolved = dataclasses.replace(
        config,
        image_size=model.vision.image_size,
        text_length=model.text.context_length,
        text_mask=text_mask,
        pos_embed=model.vision.pos_embed,
        lr=config.peak_lr(),
    )
    total = resolved.total_steps(reader.split.num_records)
    resolved = dataclasses.replace(resolved, warmup_steps=resolved.warmup(total))
    resume = resolve_resume(config.resume, Path(config.out) / "checkpoints")
    tagger = _sidecar_tagger(reader) if text_mask == "syntax" and config.zeroshot else None
    return StagePlan(
        config=resolved,
        model=model.to_dict(),
        builder=str(reader.builder),
        num_records=reader.split.num_records,
        total_steps=total,
        resume_from=None if resume is None else str(resume),
        tagger=tagger,
    )


def run_stage(config: TrainConfig) -> dict:
    """Plan, write ``config.json``, train on every local device; returns ``summary.json``."""
    from clipa_train.backend import launch

    plan = plan_stage(config)
    run_dir = Path(config.out)
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", plan.to_json())
    launch(stage_worker, plan.config.backend, (plan,))
    return json.loads((run_dir / "summary.json").read_text())


def _precision(config: TrainConfig, backend_name: str) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16" if backend_name in ("cuda", "xla") else "fp32"


def stage_worker(index: int, plan: StagePlan) -> None:
    """Train on this process's device: build backend, model, loader, optimiser; run the loop."""
    import torch

    from clipa_train.backend import BackendConfig, create_backend, resolve_backend
    from clipa_train.loop import LoopConfig, train
    from clipa_train.loss import build_loss
    from clipa_train.model import ModelConfig, build_model, load_openclip_weights
    from clipa_train.optim import OptimConfig, build_optimizer

    config = plan.config
    name = resolve_backend(config.backend)
    backend = create_backend(BackendConfig(name=name, precision=_precision(config, name)))
    started = time.perf_counter()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(ModelConfig.from_dict(plan.model))
    if config.from_checkpoint and plan.resume_from is None:
        load_openclip_weights(model, config.from_checkpoint)
    loader = build_loader(plan, backend.per_rank_batch(config.batch_size), backend)
    model.to(backend.device)
    optim = OptimConfig(
        lr=config.lr,
        total_steps=plan.total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        beta1=config.beta1,
        beta2=config.beta2,
        eps=config.eps,
        grad_clip_norm=config.grad_clip_norm,
    )
    try:
        result = train(
            model=model,
            optimizer=build_optimizer(model, optim),
            optim_config=optim,
            loss_fn=build_loss(config.loss, backend),
            batches=loader,
            backend=backend,
            run_dir=Path(config.out),
            config=LoopConfig(
                log_every=config.log_every,
                checkpoint_every=config.checkpoint_every,
                keep_checkpoints=config.keep_checkpoints,
                eval_every=config.eval_every,
                # Several processes agree to stop with a collective and a host sync; at log
                # steps the loop syncs anyway, so checking there keeps every other step async.
                stop_check_every=config.log_every,
                grad_checkpointing=config.grad_checkpointing,
                progress=config.progress,
            ),
            resume_from=None if plan.resume_from is None else Path(plan.resume_from),
            run_config=plan.to_json(),
            evaluate=zeroshot_hook(plan, backend) if config.zeroshot else None,
        )
    finally:
        loader.close()
    if backend.is_main:
        write_json(Path(config.out) / "summary.json", summarise(plan, result, loader, started))


def build_loader(plan: StagePlan, per_rank_batch: int, backend):
    """The stage's streaming loader for this rank."""
    from clipa_train.image import ImageConfig
    from clipa_train.loader import Loader
    from clipa_train.reduce import PatchMaskConfig, TextReductionConfig
    from clipa_train.stream import StreamConfig

    config = plan.config
    stream = StreamConfig(
        data=plan.builder,
        batch_size=per_rank_batch,
        image=ImageConfig(
            size=config.image_size,
            crop="random",
            scale=(config.crop_scale_min, 1.0),
            color_jitter=config.color_jitter,
            color_jitter_prob=config.color_jitter_prob,
            grayscale_prob=config.grayscale_prob,
        ),
        patch_mask=PatchMaskConfig(
            config.image_mask,
            patch_size=plan.model["vision"]["patch_size"],
            ratio=config.mask_ratio,
        ),
        text=TextReductionConfig(config.text_mask, config.text_length),
        split=config.split,
        seed=config.seed,
        workers=config.workers,
        shuffle_buffer=config.shuffle_buffer,
    )
    return Loader(stream, rank=backend.rank, world=backend.world)


def zeroshot_hook(plan: StagePlan, backend):
    """The loop's evaluation hook: zero-shot at the stage's image size and text length."""
    from clipa_train.evaluate import (
        EvalSettings,
        evaluate_zeroshot,
        open_zeroshot_set,
        prompt_encoder,
    )

    if not backend.is_main:
        return lambda model, step: {}
    config = plan.config
    zset = open_zeroshot_set(config.zeroshot, config.classnames, config.templates)
    prompt_mask = config.text_mask if plan.tagger is not None else "truncate"
    encode = prompt_encoder(config.text_length, prompt_mask, plan.tagger)
    settings = EvalSettings(
        image_size=config.image_size,
        text_length=config.text_length,
        text_mask=prompt_mask,
        batch_size=config.eval_batch_size,
        workers=min(2, config.workers),
    )

    def hook(model, step: int) -> dict:
        return evaluate_zeroshot(model, backend, zset, settings, encode)

    return hook


def summarise(plan: StagePlan, result, loader, started: float) -> dict:
    """``summary.json``: steps, final loss, throughput, zero-shot results, stream problems."""
    train_records = [r for r in result.records if "loss" in r]
    evals = [r for r in result.records if any(k.startswith("eval/") for k in r)]
    rates = [r["samples_per_s"] for r in train_records]
    return {
        "stage": plan.config.stage,
        "run_dir": plan.config.out,
        "steps": result.step,
        "start_step": result.start_step,
        "total_steps": plan.total_steps,
        "stopped": result.stopped,
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
        "final_loss": train_records[-1]["loss"] if train_records else None,
        "samples_per_s": sum(rates) / len(rates) if rates else None,
        "wall_seconds": time.perf_counter() - started,
        "zeroshot": {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")}
        if evals
        else None,
        "stream": {
            "bad_images": loader.stats.bad_images,
            "unreadable": loader.stats.unreadable,
            "messages": loader.stats.messages,
        },
    }
