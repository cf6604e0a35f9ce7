"""The training loop: receives built objects, runs steps, logs, checkpoints, stops gracefully.

Per step: lr from the schedule → batch to the device (normalised there) → forward under
autocast → loss → backward → gradient sync → optional clip → AdamW → clamp logit scale → step
boundary (XLA: one graph). Nothing reads device values inside the step; logged scalars are
fetched only at log steps, after the boundary, so XLA keeps one graph per stage.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from clipa_data.core.atomic import write_json
from clipa_data.core.errors import ClipaError
from clipa_train import checkpoint as ckpt
from clipa_train.accumulation import accumulate_forward_backward, fewest_micro_batches
from clipa_train.backend import Backend
from clipa_train.loggers import LoggerConfig, Loggers, open_loggers
from clipa_train.optim import (
    OptimConfig,
    check_optimizer_device,
    clamp_logit_scale,
    learning_rate,
    set_learning_rate,
)
from clipa_train.run_dir import move_aside
from clipa_train.signal_relay import RelayedSignals
from clipa_train.stop_signal import ENDING, FINAL_EVALUATION, TRAINING, StopNow, StopSignal

Evaluate = Callable[[nn.Module, int], dict[str, float]]


class BatchSource(Protocol):
    """What the loop consumes: an iterable of contract batches that can save its position."""

    def __iter__(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, evaluate and save."""

    log_every: int = 10
    """Steps between metrics records (and progress-line updates)."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 saves only at the end (and on a stop signal)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept in ``<run>/checkpoints``; 0 keeps all."""
    eval_every: int = 0
    """Steps between calls of the evaluation hook; 0: only at the end (if a hook is given)."""
    grad_checkpointing: bool = False
    """Recompute each transformer block in the backward pass (less memory, ~30 % more compute)."""
    stop_check_every: int = 1
    """Steps between checks whether any rank got SIGTERM/SIGINT (a collective when distributed)."""
    progress: bool = True
    """Show a rich progress line on rank 0."""
    accum_steps: int = 1
    """Micro-batches per optimiser step (exact accumulation, ``clipa_train.accumulation``); 1
    runs each batch in one pass."""
    micro_batch: int | None = None
    """If set, replaces ``accum_steps``: the fewest micro-batches of at most this many samples
    that split the batch per rank (``--accum-steps auto``)."""
    loggers: LoggerConfig = field(default_factory=LoggerConfig)
    """Where rank 0's metrics records go (``metrics.jsonl`` always; ``--log``)."""
    overwrite: bool = False
    """``--overwrite``: rank 0 moves an earlier run in the run directory aside
    (``run_dir.move_aside``) just before this run writes its first file, so that a run refused
    by a check before that (weights, data, memory) leaves the earlier run where it was."""

    def __post_init__(self) -> None:
        for name in ("log_every", "stop_check_every", "accum_steps"):
            if getattr(self, name) < 1:
                raise ClipaError(f"{name} must be at least 1")
        for name in ("checkpoint_every", "keep_checkpoints", "eval_every"):
            if getattr(self, name) < 0:
                raise ClipaError(f"{name} must be ≥ 0")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ClipaError("micro_batch must be at least 1")

    def micro_batches(self, rows: int) -> int:
        """Micro-batches per step for a batch of ``rows`` samples per rank."""
        if self.micro_batch is None:
            return self.accum_steps
        return fewest_micro_batches(rows, self.micro_batch)


@dataclass
class LoopResult:
    """What a call of :func:`train` did."""

    start_step: int
    """Step the run started (or resumed) at."""
    step: int
    """Optimiser steps completed when it returned."""
    stopped: bool
    """True when a signal stopped it before ``total_steps``."""
    checkpoint: Path | None
    """The last checkpoint written."""
    interrupted: bool = False
    """True when a second signal stopped it at once (exit 130)."""
    signalled: bool = False
    """True when a stop signal arrived at all, also after the last step's check (the run
    finished, but the user asked to stop: a recipe starts no next stage)."""
    failure: str | None = None
    """Why the data stopped it (a loader worker died, too many bad records); it stopped with a
    checkpoint of the last finished step (under several processes: ``rank N: ...``, the same on
    every rank, and the last periodic checkpoint stands), and the stage ends with this as its
    error. Also set when the loss diverged (``diverged``)."""
    diverged: bool = False
    """True when the loss, the logit scale or (checked before each save and evaluation) a weight
    was NaN or infinite: the run stopped there without saving or evaluating the diverged
    weights (the last checkpoint is the one to go on from)."""
    final_eval_cut: bool = False
    """True when a second signal cut the stage's final evaluation short (every step was made
    and the last one's checkpoint saved before it: ``clipa-train eval`` evaluates it)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """The metrics records written (rank 0)."""
    final_loss: float | None = None
    """The last step's loss (the mean over ranks), also when a stop fell between log steps;
    ``None``: no step made, or a second signal under several processes (the last record's)."""


def forward_backward(
    step_model: nn.Module, batch: dict, loss_fn: Callable, backend: Backend
) -> tuple[torch.Tensor, dict]:
    """Forward (autocast) and backward of one device batch; returns (loss, model outputs)."""
    with backend.autocast():
        outputs = step_model(batch["image"], batch["text"], batch["patch_keep"])
    loss = loss_fn(outputs)
    loss.backward()
    return loss, outputs


def apply_update(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: OptimConfig, backend: Backend
) -> None:
    """Sync gradients, clip, step AdamW, clamp the logit scale, clear gradients."""
    backend.sync_gradients(optimizer)
    if config.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], config.grad_clip_norm
        )
    optimizer.step()
    clamp_logit_scale(model)
    optimizer.zero_grad(set_to_none=True)


def _open_run(
    run_dir: Path,
    run_config: dict | None,
    config: LoopConfig,
    backend: Backend,
    step: int,
    notes: Sequence[str] = (),
):
    """Say ``notes``, write ``config.json`` (rank 0) and open the loggers. Called only once
    everything is restored and checked, so a run refused earlier leaves no trace."""
    if backend.is_main and config.overwrite:
        moved = move_aside(run_dir)
        if moved is not None:
            os.write(2, f"--overwrite: moved the earlier run in {run_dir} to {moved}\n".encode())
    for line in notes if backend.is_main else ():
        Console(stderr=True, soft_wrap=True).print(line, markup=False, highlight=False)
    if backend.is_main and run_config is not None:
        write_json(run_dir / "config.json", run_config)
    return open_loggers(
        run_dir, config.loggers, enabled=backend.is_main, hparams=run_config,
        extra=lambda: _memory(backend), start_step=step,
    )  # fmt: skip


def _log_record(record: dict, log, result: LoopResult, bar) -> None:
    """One metrics record to the loggers, the result and the progress line."""
    log.write(record)
    result.records.append(record)
    bar(record["step"], record)


def _needs_final_checkpoint(result: LoopResult, cut: bool, backend: Backend, path: Path) -> bool:
    """Whether the run must end by saving ``path`` (the current step's checkpoint)."""
    if result.diverged:
        return False  # NaN weights would be the checkpoint --resume auto picks
    # After a second signal under several processes the other ranks may be inside a
    # collective: saving (itself collective) could hang, so the last checkpoint stands.
    return not (cut and backend.world > 1) and result.checkpoint != path


def _optimiser_step(
    step_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_config: OptimConfig,
    loss_fn: Callable[[dict], torch.Tensor],
    backend: Backend,
    config: LoopConfig,
    host_batch: dict,
) -> dict[str, torch.Tensor]:
    """One optimiser step on ``host_batch`` (in micro-batches when the config says so); returns
    the watched values (device tensors, fetched only at log steps)."""
    batch = backend.to_device(host_batch)
    accum_steps = config.micro_batches(host_batch["text"].shape[0])
    if accum_steps > 1:
        loss = accumulate_forward_backward(step_model, batch, loss_fn, backend, accum_steps)
    else:
        loss, _ = forward_backward(step_model, batch, loss_fn, backend)
    apply_update(model, optimizer, optim_config, backend)
    watched = _watched(model, backend.mean_over_ranks(loss.detach()))
    backend.step_boundary()
    return watched


def train(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_config: OptimConfig,
    loss_fn: Callable[[dict], torch.Tensor],
    batches: BatchSource,
    backend: Backend,
    run_dir: Path,
    config: LoopConfig = LoopConfig(),
    resume_from: Path | None = None,
    run_config: dict | None = None,
    evaluate: Evaluate | None = None,
    signals: RelayedSignals | None = None,
    notes: Sequence[str] = (),
) -> LoopResult:
    """Train ``model`` until ``optim_config.total_steps`` or a stop signal; returns what happened.

    ``model`` is the bare CLIP (the backend moves it and wraps it for DDP); ``optimizer`` was built
    over its parameters once they were on the device (``build_optimizer``); ``batches`` yields
    contract batches for this rank. Checkpoints go to ``run_dir/checkpoints``, metrics to
    ``run_dir/metrics.jsonl``, ``run_config`` (if given) to ``run_dir/config.json``. ``signals``:
    the stop signals a launching process relays, where this runs off the main thread.
    ``notes``: lines rank 0 says once the run is restored (a refused one says only why).
    """
    parts = _Parts(model, optimizer, optim_config, loss_fn, batches, backend, config, evaluate)
    run = _Run(parts, Path(run_dir), resume_from, run_config, notes)
    model.train()
    with (
        StopSignal(backend.is_main, signals) as stop,
        _progress(config, backend, optim_config.total_steps, run.step) as bar,
    ):
        try:
            run.train_steps(stop, bar)
        except StopNow:
            run.result.stopped = run.cut = True
            model.train()  # an evaluation may have been cut short
        run.finish(stop)
    run.log.close()
    return run.result


@dataclass(frozen=True)
class _Parts:
    """What :func:`train` was given to train with."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    optim_config: OptimConfig
    loss_fn: Callable[[dict], torch.Tensor]
    batches: BatchSource
    backend: Backend
    config: LoopConfig
    evaluate: Evaluate | None


class _Run:
    """One call of :func:`train`: the state its steps share, and what it does between steps
    (each action returns whether the run stops there).

    Under several processes a rank whose data fails cannot leave: the others would wait in the
    step's collectives. It steps on its last batch (``faulted``) until the ranks next agree
    (log, evaluation and checkpoint steps), and those steps are not saved.
    """

    def __init__(
        self,
        parts: _Parts,
        run_dir: Path,
        resume_from: Path | None,
        run_config: dict | None,
        notes: Sequence[str],
    ) -> None:
        self.parts, self.run_config = parts, run_config
        self.directory = run_dir / "checkpoints"
        self.step_model, self.step = _start(
            parts.model, parts.optimizer, parts.batches, parts.backend, parts.config,
            self.directory, resume_from,
        )  # fmt: skip
        self.log = _open_run(run_dir, run_config, parts.config, parts.backend, self.step, notes)
        self.result = LoopResult(
            start_step=self.step, step=self.step, stopped=False, checkpoint=None
        )
        self.window = _Window(self.step)
        self.evaluated_at, self.cut = -1, False
        self.watched: dict[str, torch.Tensor] | None = None
        self.host_batch: dict | None = None
        self.faulted = False

    def save(self) -> Path:
        """This step's checkpoint (weights, optimiser, the loader's position, the run config)."""
        parts = self.parts
        return ckpt.save_checkpoint(
            self.directory, step=self.step, model=parts.model, optimizer=parts.optimizer,
            backend=parts.backend, stream_state=parts.batches.state_dict(),
            run_config=self.run_config, keep=parts.config.keep_checkpoints,
        )  # fmt: skip

    def train_steps(self, stop: StopSignal, bar) -> None:
        """Steps until the last one, a stop signal or a data fault (agreed over ranks)."""
        parts, total = self.parts, self.parts.optim_config.total_steps
        stop.next_check = _next_check(self.step, parts.config, parts.backend)
        stop.last_step = total
        iterator = iter(parts.batches)
        while self.step < total:
            if not self._fetch(iterator, stop):
                return
            lr = learning_rate(self.step, parts.optim_config)
            set_learning_rate(parts.optimizer, lr)
            self.watched = _optimiser_step(
                self.step_model, parts.model, parts.optimizer, parts.optim_config,
                parts.loss_fn, parts.backend, parts.config, self.host_batch,
            )  # fmt: skip
            self.step += 1
            self.window.samples += self.host_batch["text"].shape[0] * parts.backend.world
            if (
                self._log_step(lr, bar)
                or self._evaluate_step(stop)
                or self._check_stop(stop)
                or self._checkpoint_step()
            ):
                return
        # The last step made: a fault since the last agreement is agreed on here.
        _agree_on_fault(self.faulted, self.result, parts.backend)

    def _fetch(self, iterator, stop: StopSignal) -> bool:
        """Take the next batch (a faulted rank keeps its last); False: the run stops here."""
        backend, result = self.parts.backend, self.result
        fetched = None if self.faulted else _next_batch(iterator, stop, self.window, result)
        if fetched is None and backend.world == 1:
            return False
        self.faulted = fetched is None
        if self.faulted and result.failure is None:
            result.failure = f"its data ended after step {self.step}"
        if not self.faulted:
            self.host_batch = fetched
        # A rank without a first batch has none to step on.
        first = self.step == result.start_step
        return not (first and _agree_on_fault(self.faulted, result, backend))

    def _log_step(self, lr: float, bar) -> bool:
        """A metrics record at log steps and the last step; stops on a diverged loss."""
        step, backend = self.step, self.parts.backend
        if step % self.parts.config.log_every and step != self.parts.optim_config.total_steps:
            return False
        values = backend.to_host(self.watched)
        record = self.window.record(step, lr, values, _compiles(backend))
        _log_record(record, self.log, self.result, bar)
        return _diverged(record, step, self.result)

    def _evaluate_step(self, stop: StopSignal) -> bool:
        """The in-loop evaluation at its steps. The last step is evaluated after its checkpoint
        is saved (``finish``), so a signal that cuts that evaluation short loses no training."""
        parts, step = self.parts, self.step
        every = parts.config.eval_every
        if (
            not every
            or parts.evaluate is None
            or step % every
            or step >= parts.optim_config.total_steps
        ):
            return False
        if _agree_on_fault(self.faulted, self.result, parts.backend) or _weights_diverged(
            parts.model, step, self.result, parts.backend
        ):
            return True
        with stop.interruptible(), self.window.excluded():
            self.evaluated_at = _evaluate(
                parts.evaluate, parts.model, step, self.log, self.result, parts.backend
            )
        return False

    def _check_stop(self, stop: StopSignal) -> bool:
        """Whether any rank got a stop signal (or a data fault) by this step's check."""
        parts = self.parts
        if self.step == stop.next_check:
            if parts.backend.any_rank(stop.requested or self.faulted):
                _agree_on_fault(self.faulted, self.result, parts.backend)  # else a signal
                self.result.stopped = True
                return True
            stop.next_check = _next_check(self.step, parts.config, parts.backend)
        # Past the last step's check a signal stops nothing: it ends or cuts the evaluation short.
        if self.step == parts.optim_config.total_steps:
            stop.phase = ENDING if parts.evaluate is None else FINAL_EVALUATION
        return False

    def _checkpoint_step(self) -> bool:
        """The periodic checkpoint, unless a fault or diverged values stop the run first."""
        every = self.parts.config.checkpoint_every
        if not every or self.step % every:
            return False
        parts, result = self.parts, self.result
        if (
            _agree_on_fault(self.faulted, result, parts.backend)
            or _diverged(parts.backend.to_host(self.watched), self.step, result)
            or _weights_diverged(parts.model, self.step, result, parts.backend)
        ):
            return True
        self.result.checkpoint = self.save()
        return False

    def finish(self, stop: StopSignal) -> None:
        """After the steps: the last step's checkpoint, then the final evaluation (a signal that
        cuts it short, minutes on ImageNet, loses no training), then the result's last fields."""
        parts, result, backend = self.parts, self.result, self.parts.backend
        stop.next_check = self.step  # a first signal from now on: the run ends after this step
        # A data fault: one process saves its last whole step; under several, the failing rank
        # stepped on its last batch until the ranks agreed, so the last checkpoint stands.
        self.cut = self.cut or result.failure is not None
        evaluates = (
            parts.evaluate is not None and not result.stopped and self.evaluated_at != self.step
        )
        if stop.phase != TRAINING:
            stop.phase = FINAL_EVALUATION if evaluates else ENDING
        final = ckpt.checkpoint_path(self.directory, self.step)
        if _needs_final_checkpoint(result, self.cut, backend, final) and _finite(
            parts.model, self.watched, self.step, result, backend
        ):
            result.checkpoint = self.save()
        if (
            evaluates
            and not result.stopped
            and not _weights_diverged(parts.model, self.step, result, backend)
        ):
            self._final_evaluation(stop)
        if stop.phase != TRAINING:  # relayed signals are read from here on (off the main thread)
            stop.phase = ENDING
        result.interrupted = stop.now
        result.signalled = _signalled(stop, self.cut, backend)
        # Not after a second signal under several processes: the fetch would wait on the
        # step's collectives, which a rank cut short may never join.
        if self.watched is not None and not (self.cut and backend.world > 1):
            result.final_loss = backend.to_host(self.watched)["loss"]
        result.step = self.step

    def _final_evaluation(self, stop: StopSignal) -> None:
        """The stage's last evaluation; a second signal cuts it short (the step is saved)."""
        parts = self.parts
        try:
            with stop.interruptible():
                _evaluate(
                    parts.evaluate, parts.model, self.step, self.log, self.result, parts.backend
                )
        except StopNow:
            self.result.final_eval_cut = self.cut = True
            parts.model.train()


def _diverged(values: dict[str, Any], step: int, result: LoopResult) -> bool:
    """Whether the step's loss (the mean over ranks: every rank agrees) or the logit scale after
    its update is NaN or infinite; if so, ``result`` says so and the loop stops before another
    step or a checkpoint. Checked at log steps and before each save (fetching the watched
    values is a device sync, which a checkpoint costs anyway)."""
    for name, label in (("loss", "the loss"), ("logit_scale", "the logit scale")):
        if not math.isfinite(values[name]):
            result.stopped = result.diverged = True
            result.failure = f"{label} is {values[name]} at step {step}"
            return True
    return False


def _finite(
    model: nn.Module, watched: dict | None, step: int, result: LoopResult, backend: Backend
) -> bool:
    """Whether the last step's watched values (None: no step ran) and the weights are finite,
    for the final save after a stop between log steps."""
    if result.diverged:
        return False
    return watched is None or not (
        _diverged(backend.to_host(watched), step, result)
        or _weights_diverged(model, step, result, backend)
    )


def _weights_diverged(model: nn.Module, step: int, result: LoopResult, backend: Backend) -> bool:
    """Whether any weight is NaN or infinite after the step's update (a finite loss is the loss
    *before* the update, so it cannot vouch for the weights a checkpoint or an evaluation
    would use). One reduction over this rank's parameters (its shards under FSDP), agreed over
    ranks; run only before saves and evaluations."""
    locals_ = [getattr(p, "to_local", lambda p=p: p)().detach() for p in model.parameters()]
    total = torch.stack([p.float().abs().sum() for p in locals_ if p.numel()]).sum()
    value = backend.to_host({"weights": backend.mean_over_ranks(total)})["weights"]
    if math.isfinite(value):
        return False
    result.stopped = result.diverged = True
    result.failure = f"the weights hold NaN or infinite values after step {step}"
    return True


def _signalled(stop: StopSignal, cut: bool, backend: Backend) -> bool:
    """Whether a stop signal arrived at all. Every rank agrees (a recipe's next stage starts
    everywhere or nowhere), except after a cut: other ranks may be waiting in a collective."""
    return stop.requested if cut else backend.any_rank(stop.requested)


def _agree_on_fault(faulted: bool, result: LoopResult, backend: Backend) -> bool:
    """Whether any rank's data failed (``faulted`` on that rank); a collective under several
    processes, so every rank calls it at the same step. If so, every rank's ``result`` holds
    the line of the failing rank numbered lowest, and the run stops: a failing rank stepped on
    its last batch since its fault, so the steps after the last checkpoint are not saved."""
    if backend.world == 1 or not backend.any_rank(faulted):
        return False
    failures = backend.gather_objects(result.failure if faulted else None)
    rank = next(rank for rank, failure in enumerate(failures) if failure is not None)
    result.stopped, result.failure = True, f"rank {rank}: {failures[rank]}"
    return True


def _next_batch(iterator, stop: StopSignal, window: _Window, result: LoopResult) -> dict | None:
    """The next host batch (its wait counted), or None at the end of the data or on a data fault
    (recorded in ``result``: it comes between steps, so the last step is whole and is saved)."""
    waited = time.perf_counter()
    try:
        with stop.interruptible():
            batch = next(iterator)
    except StopIteration:
        return None
    except ClipaError as error:
        result.stopped, result.failure = True, str(error)
        return None
    window.wait += time.perf_counter() - waited
    return batch


def _start(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: BatchSource,
    backend: Backend,
    config: LoopConfig,
    directory: Path,
    resume_from: Path | None,
) -> tuple[nn.Module, int]:
    """Clear half-written checkpoints, wrap the model for the backend and restore
    ``resume_from``; returns (the model the step calls, the step to start at)."""
    if backend.is_main:
        ckpt.clean_directory(directory)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True, backend.checkpoint_function())
    step_model = backend.prepare_model(model)
    check_optimizer_device(optimizer, backend.device)
    if resume_from is None:
        return step_model, 0
    payload = ckpt.load_checkpoint(resume_from)
    step, stream = ckpt.restore_checkpoint(
        payload, model=model, optimizer=optimizer, backend=backend, source=str(resume_from)
    )
    batches.load_state_dict(stream)
    if backend.is_main:  # only now: a checkpoint refused above is the one line said
        console = Console(stderr=True, soft_wrap=True)
        console.print(f"resuming from step {step} ({resume_from})", markup=False, highlight=False)
        later, folder = ckpt.supersede_later(directory, step)
        if later:
            steps = ", ".join(map(str, later))
            console.print(
                f"note: the checkpoints of later steps ({steps}) belong to the attempt this "
                f"resume leaves: moved to {folder}, so --resume auto continues this one",
                markup=False,
                highlight=False,
            )
    return step_model, step


def _next_check(step: int, config: LoopConfig, backend: Backend) -> int:
    """The step boundary after ``step`` at which the loop checks for a stop signal: the next one
    on one process (a free flag read); under several processes, agreeing costs a collective and
    a host sync, so only at the next multiple of ``stop_check_every`` (the log steps)."""
    if backend.world == 1:
        return step + 1
    return (step // config.stop_check_every + 1) * config.stop_check_every


def _watched(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Device scalars logged at log steps (kept every step so XLA sees the same graph outputs)."""
    watched = {"loss": loss, "logit_scale": model.logit_scale.detach().exp()}
    if getattr(model, "logit_bias", None) is not None:
        watched["logit_bias"] = model.logit_bias.detach()
    return watched


class _Window:
    """Throughput and data-wait share since the previous record."""

    def __init__(self, step: int) -> None:
        self.start, self.step, self.samples, self.wait = time.perf_counter(), step, 0, 0.0

    @contextlib.contextmanager
    def excluded(self):
        """Time spent inside (an evaluation) is not the window's: its rate and data-wait share
        are training's alone."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began

    def record(self, step: int, lr: float, values: dict, compiles: dict) -> dict[str, Any]:
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        record = {
            "step": step,
            **values,
            "lr": lr,
            "samples_per_s": self.samples / elapsed,
            "data_wait_share": self.wait / elapsed,
            "window_steps": step - self.step,  # after a resume, not the gap to the last record
            **compiles,
            "time": time.time(),
        }
        self.start, self.step, self.samples, self.wait = now, step, 0, 0.0
        return record


def _compiles(backend: Backend) -> dict[str, int | None]:
    """Graphs compiled so far, in every metrics record: XLA's and torch.compile's (None: that
    compiler is not in use); a count that grows after the first steps is a recompilation, but
    once at the first evaluation and (XLA) the first checkpoint, whose weights check is a graph
    of its own."""
    return {
        "xla_compiles": backend.compile_count(),
        "torch_compiles": backend.torch_compile_count(),
    }


def _memory(backend: Backend) -> dict[str, float]:
    """Peak CUDA memory for the dashboards (metrics.jsonl keeps the loop's record as it was)."""
    if backend.device.type != "cuda":
        return {}
    return {"cuda_max_memory_gib": torch.cuda.max_memory_allocated(backend.device) / 2**30}


def _evaluate(
    evaluate: Evaluate,
    model: nn.Module,
    step: int,
    log: Loggers,
    result: LoopResult,
    backend: Backend,
) -> int:
    """Run the hook in eval mode without gradients, log its values; returns ``step``."""
    model.eval()
    with torch.no_grad():
        values = evaluate(model, step)
    model.train()
    if values:
        record = {"step": step, **{f"eval/{key}": value for key, value in values.items()}}
        record.update(_compiles(backend))  # evaluation compiles graphs too
        log.write(record)
        result.records.append(record)
    return step


@contextlib.contextmanager
def _progress(config: LoopConfig, backend: Backend, total: int, start: int):
    """Yields ``update(step, record)``; a rich progress line on rank 0 when enabled."""
    if not (config.progress and backend.is_main):
        yield lambda step, record: None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _log_lines(console, total)
        return
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("train", total=total, completed=start, status="")

    def update(step: int, record: dict) -> None:
        progress.update(task, completed=step, status=_status(record))

    with progress:
        yield update


def _status(record: dict) -> str:
    """One log record as the progress line shows it."""
    status = (
        f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  scale {record['logit_scale']:.1f}  "
        f"{record['samples_per_s']:,.0f} samples/s  data wait {record['data_wait_share']:.0%}"
    )
    for key in ("xla_compiles", "torch_compiles"):
        if record[key] is not None:
            status += f"  compiles {record[key]}"
    return status


def _log_lines(console: Console, total: int, parts: int = 10) -> Callable[[int, dict], None]:
    """Progress for logs (no terminal: a batch job, CI): a plain line at every tenth of the run."""
    printed = [-1]

    def update(step: int, record: dict) -> None:
        part = step * parts // total
        if part > printed[0]:
            printed[0] = part
            console.print(f"train step {step}/{total}  {_status(record)}", soft_wrap=True)

    return update
