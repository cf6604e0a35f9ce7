"""One training stage end to end: resolve and check everything, train, summarise.

``run_stage`` resolves the options once (``resolved_stage.resolve_stage``: every bad input
becomes one clear line before any device or worker process starts; the run-directory contract
is ``run_dir``'s) and runs ``stage_worker`` once per device (PyTorch/XLA spawns one process per
device; torchrun has already made one process per GPU).

Run directory::

    RUN_DIR/config.json      the resolved options, derived values, model and data
    RUN_DIR/metrics.jsonl    one record per log step (and per evaluation)
    RUN_DIR/checkpoints/     step_NNNNNNN.pt (model, optimiser, stream state, RNG, config)
    RUN_DIR/summary.json     what the stage did (rank 0, at the end)
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clipa_data.core.atomic import write_json
from clipa_data.core.errors import AgreedError
from clipa_train.resolved_stage import ResolvedStage, resolve_stage
from clipa_train.run_config import TrainConfig
from clipa_train.run_dir import checkpoint_step
from clipa_train.run_records import throughput

if TYPE_CHECKING:
    from clipa_train.loader import StreamStats


def run_stage(config: TrainConfig) -> dict | None:
    """Resolve and check, move an old run aside (``--overwrite``), train on every local device;
    returns ``summary.json`` (None: the resumed run had already made all its steps)."""
    from clipa_train.backend import launch
    from clipa_train.epoch_plan import steps_per_epoch
    from clipa_train.preflight import check_memory
    from clipa_train.run_dir import check_resume_step, writing
    from clipa_train.sharding import is_first_rank, said_once_per_host, torchrun_world

    run_dir = Path(config.run.out)
    first_rank = is_first_rank()
    with said_once_per_host():
        stage = resolve_stage(config)
        if check_resume_step(stage.resume_from, stage.optim.total_steps):
            if first_rank:
                _note(
                    f"{run_dir}: the run already finished its {stage.optim.total_steps} steps "
                    f"({stage.resume_from}); nothing to do (for more steps give a larger "
                    "--samples or --epochs with --resume)"
                )
            return None
        world, epoch = torchrun_world(), config.run.samples_per_epoch
        own_device = stage.backend.name == "cuda"  # a process's own GPU may be busy alone
        if not own_device:
            check_memory(stage, world)  # a run that cannot fit is refused at once
        steps = steps_per_epoch(stage.num_records, config.optim.batch_size, world, epoch)
    if own_device:
        check_memory(stage, world)  # each process says its own GPU's line
    warnings = _start_notes(stage, world, steps) if first_rank else []
    # config.json is written (and with --overwrite the earlier run moved aside) by the loop once
    # the model, optimiser and stream are restored: a run that fails a check in the worker
    # (weights, resume checkpoint, data) leaves no trace and the earlier run in place.
    with writing(run_dir) if first_rank else contextlib.nullcontext():
        for line in warnings:  # once the directory is this stage's (a refused one says only why)
            _note(line)
        launch(stage_worker, config.optim.backend, (stage,))
    return json.loads((run_dir / "summary.json").read_text())


def _run_config(stage: ResolvedStage, per_rank: int) -> dict:
    """``config.json``: the stage's, and the micro-batches each optimiser step runs (known only
    once the backend says how many processes share the batch)."""
    run_config = stage.to_json()
    micro_batches = stage.loop.micro_batches(per_rank)
    run_config["derived"].update(accum_steps=micro_batches, micro_batch=per_rank // micro_batches)
    return run_config


def _accumulation_notes(stage: ResolvedStage, per_rank: int) -> tuple[str, ...]:
    """What ``--accum-steps auto`` picked (said once the run is restored and starts)."""
    if stage.loop.micro_batch is None:
        return ()
    micro_batches = stage.loop.micro_batches(per_rank)
    return (
        f"--accum-steps auto: {micro_batches} micro-batch(es) of {per_rank // micro_batches} "
        f"samples per process and step (at most --micro-batch {stage.loop.micro_batch})",
    )


def _start_notes(stage: ResolvedStage, world: int, steps_per_epoch: int) -> list[str]:
    """What rank 0 says before training: too little data, a sample count that is not whole
    batches, the warm-up, ranks or loader workers left idle, upsampled images, a tagger unlike
    the reference's, a resume that changes the stage's length."""
    from clipa_train.preflight import (
        idle_workers_notes,
        reference_tagger_notes,
        samples_warnings,
        small_data_warnings,
        uneven_ranks_warnings,
        upsampling_notes,
        warmup_warnings,
    )
    from clipa_train.run_dir import resume_length_notes

    run, optim, total = stage.config.run, stage.config.optim, stage.optim.total_steps
    in_epochs = optim.samples is None
    return [
        *small_data_warnings(stage.num_records, optim.batch_size, in_epochs, run.samples_per_epoch),
        *samples_warnings(_own_samples(stage.config), optim.batch_size, total),
        *warmup_warnings(optim.warmup_steps, total),
        *uneven_ranks_warnings(stage.shard_lengths, world, steps_per_epoch, run.seed),
        *idle_workers_notes(stage.shard_lengths, world, run.workers, run.seed),
        *upsampling_notes(stage.builder, run.split, stage.image.size),
        *reference_tagger_notes(stage.builder, run.split, stage.text),
        *resume_length_notes(stage.resume_from, stage.to_json()),
    ]


def _note(message: str) -> None:
    """One console line on stderr (never wrapped), as the progress line is."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(message, markup=False, highlight=False)


def stage_worker(index: int, stage: ResolvedStage, signals=None) -> None:
    """Train on this process's device: build backend, model, loader, optimiser; run the loop.
    The backend is closed (process group destroyed) when the stage ends, also on an error.
    ``signals``: the stop signals the launcher relays (``launch`` passes them to a stage it runs
    off the main thread)."""
    from clipa_train.backend import create_backend

    backend = create_backend(stage.backend)
    try:
        _train_on(stage, backend, signals)
    finally:
        backend.close()
        if signals is not None:
            signals.leave_if_launcher_gone()


def _train_on(stage: ResolvedStage, backend, signals) -> None:
    import torch

    from clipa_train.loader import StreamStats
    from clipa_train.loop import train
    from clipa_train.loss import build_loss
    from clipa_train.model import build_model, load_openclip_weights
    from clipa_train.optim import build_optimizer

    config, run_dir = stage.config, Path(stage.config.run.out)
    started = time.perf_counter()
    torch.manual_seed(config.run.seed)  # the same initial weights on every rank
    model = build_model(stage.model)
    if config.model.from_checkpoint and stage.resume_from is None:
        said = _note if backend.is_main else None
        load_openclip_weights(model, config.model.from_checkpoint, report=said)
    per_rank = backend.per_rank_batch(config.optim.batch_size)
    loader = build_loader(stage, per_rank, backend)
    model = backend.shard_model(model)  # to the device; FSDP: before the optimiser sees it
    try:
        result = train(
            model=model,
            optimizer=build_optimizer(model, stage.optim),
            optim_config=stage.optim,
            loss_fn=build_loss(stage.loss, backend),
            batches=loader,
            backend=backend,
            run_dir=run_dir,
            config=stage.loop,
            resume_from=None if stage.resume_from is None else Path(stage.resume_from),
            run_config=_run_config(stage, per_rank),
            notes=_accumulation_notes(stage, per_rank),
            evaluate=zeroshot_hook(stage, backend) if config.evaluation.zeroshot else None,
            signals=signals,
        )
    finally:
        loader.close()
    stream = StreamStats.over_ranks(backend.gather_objects(loader.stats))  # every rank's part
    if backend.is_main:
        write_json(run_dir / "summary.json", summarise(stage, result, stream, started))
    if result.diverged:  # every rank agreed on these: rank 0 says them
        raise AgreedError(_divergence_line(result, stage.resume_from), backend.is_main)
    if result.failure is not None:  # the data stopped it: one error line, the way to go on
        raise AgreedError(_failure_line(result, stage.resume_from), backend.is_main)
    backend.barrier()  # every rank's run_stage reads summary.json: wait until rank 0 wrote it


def _failure_line(result, resume_from: str | None) -> str:
    """The error of a run the data stopped: where it stopped and how to go on."""
    stopped = f"{result.failure}; the run stopped after step {result.step}"
    last = result.checkpoint or resume_from
    if last is None:
        return f"{stopped} before its first checkpoint: start it again with --overwrite"
    if result.checkpoint is not None and checkpoint_step(last) == result.step:
        return f"{stopped} with checkpoint {last}: continue it with --resume auto"
    return f"{stopped}; the last checkpoint is {last}: continue it with --resume auto"


def _divergence_line(result, resume_from: str | None) -> str:
    """The error of a run whose loss went NaN/inf: where it stands and how to go on."""
    last = result.checkpoint or resume_from
    start = (
        f"go on from the last checkpoint ({last}) with --resume auto"
        if last is not None
        else "no checkpoint was saved: start again with --overwrite"
    )
    return (
        f"{result.failure}: training diverged and stopped (the diverged weights are not "
        f"saved); {start} and a lower --lr, a --grad-clip-norm (e.g. 1.0) or more "
        "--warmup-steps"
    )


def build_loader(stage: ResolvedStage, per_rank_batch: int, backend):
    """The stage's streaming loader for this rank."""
    from clipa_train.loader import Loader
    from clipa_train.shards import Fields
    from clipa_train.stream import StreamConfig

    run = stage.config.run
    stream = StreamConfig(
        data=stage.builder,
        batch_size=per_rank_batch,
        image=stage.image,
        patch_mask=stage.patch_mask,
        text=stage.text,
        split=run.split,
        seed=run.seed,
        workers=run.workers,
        shuffle_buffer=run.shuffle_buffer,
        text_source=run.text_source,
        fields=Fields(text=run.text_field),
        samples_per_epoch=run.samples_per_epoch,
        check_crc=run.check_crc,
        max_bad_fraction=run.max_bad_fraction,
    )
    return Loader(stream, rank=backend.rank, world=backend.world)


def zeroshot_hook(stage: ResolvedStage, backend):
    """The loop's evaluation hook: zero-shot at the stage's image size and text length."""
    from clipa_train.evaluate import (
        EvalSettings,
        evaluate_zeroshot,
        open_zeroshot_set,
        prompt_encoder,
    )
    from clipa_train.sharding import sharding_choice

    # Under FSDP a forward is a collective: every rank evaluates, rank 0 logs.
    if not backend.is_main and not sharding_choice(backend.config.sharding).gathers_in_forward:
        return lambda model, step: {}
    evaluation = stage.config.evaluation
    zset = open_zeroshot_set(  # checked, and its warnings said, before training
        evaluation.zeroshot, evaluation.classnames, evaluation.templates, warn=False
    )
    # Without the sidecars' tagger here, CLIP BPE syntax prompts are truncated (WordPiece ranks
    # its own words).
    untagged = stage.text.needs_sidecars and stage.tagger is None
    prompt_mask = "truncate" if untagged else stage.text.mask
    encode = prompt_encoder(
        stage.text.length, prompt_mask, stage.tagger, stage.text.tokenizer,
        reference_exact=stage.text.reference_exact,
    )  # fmt: skip
    settings = EvalSettings(
        image_size=stage.image.size,
        text_length=stage.text.length,
        text_mask=prompt_mask,
        batch_size=evaluation.batch_size,
        workers=min(2, stage.config.run.workers),
        reference_exact=stage.image.reference_exact,
    )

    def hook(model, step: int) -> dict:
        result = evaluate_zeroshot(model, backend, zset, settings, encode)
        if backend.is_main:
            _note(
                f"step {step}: zero-shot top-1 {result['top1']:.1%}, top-5 {result['top5']:.1%} "
                f"({result['n']} images, chance {result['chance']:.1%})"
            )
        return result

    return hook


def _own_samples(config: TrainConfig) -> int | None:
    """``--samples`` as the user gave it; None when a recipe fixes it (a recipe's length is
    its authors', rounded to whole batches as theirs was: nothing for the user to change)."""
    from clipa_train.run_config import recipe_options

    if config.recipe and "samples" in recipe_options(config.recipe, config.stage):
        return None
    return config.optim.samples


def _eval_command(stage: ResolvedStage, checkpoint: Path | None) -> str:
    """The ``clipa-train eval`` of the stage's final evaluation (a signal cut it short)."""
    import shlex

    evaluation = stage.config.evaluation
    words = ["clipa-train", "eval", "--checkpoint", str(checkpoint)]
    words += ["--imagenet-val", str(evaluation.zeroshot)]
    for flag, value in (
        ("--classnames", evaluation.classnames),
        ("--templates", evaluation.templates),
    ):
        if value:
            words += [flag, str(value)]
    return shlex.join(words)


def _last_zeroshot(evals: list[dict], final_eval_cut: bool) -> dict | None:
    """The last evaluation's figures and its step (a stopped run's is mid-schedule); None when
    the final one was cut short: the last one made is not the run's result."""
    if not evals or final_eval_cut:
        return None
    return {
        "step": evals[-1]["step"],
        **{k[5:]: v for k, v in evals[-1].items() if k[:5] == "eval/"},
    }


def _final_loss(result, train_records: list[dict]) -> float | None:
    """The last step's loss (a stop between log steps included), else the last record's."""
    if result.final_loss is not None:
        return result.final_loss
    return train_records[-1]["loss"] if train_records else None


def summarise(stage: ResolvedStage, result, stream: StreamStats, started: float) -> dict:
    """``summary.json``: steps, final loss, throughput, zero-shot results, stream problems."""
    train_records = [r for r in result.records if "loss" in r]
    evals = [r for r in result.records if any(k.startswith("eval/") for k in r)]
    return {
        "stage": stage.config.stage,
        "run_dir": stage.config.run.out,
        "steps": result.step,
        "start_step": result.start_step,
        "total_steps": stage.optim.total_steps,
        "stopped": result.stopped,
        "interrupted": result.interrupted,
        "final_eval_cut": result.final_eval_cut,
        "signalled": result.signalled,
        "failure": result.failure,
        "diverged": result.diverged,
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
        "final_loss": _final_loss(result, train_records),
        "eval_command": _eval_command(stage, result.checkpoint) if result.final_eval_cut else None,
        "samples_per_s": throughput(train_records, result.start_step)[0],
        "wall_seconds": time.perf_counter() - started,
        "zeroshot": _last_zeroshot(evals, result.final_eval_cut),
        "stream": {
            "bad_images": stream.bad_images,
            "unreadable": stream.unreadable,
            "messages": stream.messages,
        },
    }
