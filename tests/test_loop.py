"""The loop on CPU: metrics, checkpoints, a real SIGTERM stop and an exact resume, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from forward_sizes import assert_micro_batches, model_batch_sizes

from clipa_data.core.errors import ClipaError
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    restore_checkpoint,
    save_checkpoint,
)
from clipa_train.loop import LoopConfig, train
from clipa_train.loss import build_loss
from clipa_train.model import build_model, load_preset
from clipa_train.optim import OptimConfig, build_optimizer
from clipa_train.synthetic import SyntheticBatches

STEPS = 12
QUIET = LoopConfig(log_every=1, progress=False)
OPTIM = OptimConfig(lr=2e-3, total_steps=STEPS, warmup_steps=3, grad_clip_norm=1.0)


class SignalAfter(SyntheticBatches):
    """Sends this process SIGTERM while yielding batch ``at`` (as a preempted VM would)."""

    def __init__(self, at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at = at

    def batch(self, index: int) -> dict:
        if index == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().batch(index)


def source(cls=SyntheticBatches, **extra):
    return cls(
        batch_size=8,
        image_size=32,
        text_length=16,
        vocab_size=512,
        patch_size=8,
        mask="random",
        mask_ratio=0.5,
        seed=3,
        **extra,
    )


def run(run_dir, batches, *, seed=0, resume=None, config=QUIET, **kw):
    torch.manual_seed(seed)
    model = build_model(load_preset("test-tiny"))
    backend = create_backend(BackendConfig(name="cpu"))
    optimizer = build_optimizer(model, OPTIM)
    result = train(
        model=model,
        optimizer=optimizer,
        optim_config=OPTIM,
        loss_fn=build_loss("contrastive"),
        batches=batches,
        backend=backend,
        run_dir=run_dir,
        config=config,
        resume_from=resume,
        run_config={"preset": "test-tiny", "seed": seed},
        **kw,
    )
    return result, model


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("accum_steps", [1, 4])
def test_stopped_by_sigterm_and_resumed_equals_an_uninterrupted_run(tmp_path, accum_steps):
    """Also with 4 accumulated micro-batches per step: steps, stream and checkpoints count
    optimiser steps, so the resumed run is bit-identical too."""
    config = LoopConfig(log_every=1, progress=False, accum_steps=accum_steps)
    full, full_model = run(tmp_path / "full", source(), config=config)
    assert full.step == STEPS and not full.stopped and not full.signalled

    previous = signal.getsignal(signal.SIGTERM)
    first, _ = run(tmp_path / "split", source(SignalAfter, at=5), config=config)
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert first.stopped and first.step == 6  # the batch in flight is finished, then it stops
    assert first.signalled
    assert first.checkpoint == latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert first.checkpoint.name == "step_00000006.pt"

    resume = resolve_resume("auto", tmp_path / "split" / "checkpoints")
    with model_batch_sizes() as sizes:
        second, resumed_model = run(
            tmp_path / "split", source(), seed=99, resume=resume, config=config
        )
    assert (second.start_step, second.step, second.stopped) == (6, STEPS, False)
    assert_micro_batches(sizes, steps=STEPS - 6, per_rank_batch=8, accum=accum_steps)

    uninterrupted = [
        (r["step"], r["loss"], r["logit_scale"], r["lr"]) for r in read_metrics(tmp_path / "full")
    ]
    split = [
        (r["step"], r["loss"], r["logit_scale"], r["lr"]) for r in read_metrics(tmp_path / "split")
    ]
    assert [s for s, *_ in split] == list(range(1, STEPS + 1))
    assert split == uninterrupted  # bit-identical losses on the CPU
    for (name, a), b in zip(
        full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_stop_between_log_steps_reports_the_last_steps_loss(tmp_path):
    """summary.json's final loss was the last logged step's (step 4 here), not the step the run
    stopped and saved at (6)."""
    run(tmp_path / "full", source())
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    sparse = LoopConfig(log_every=4, progress=False)
    stopped, _ = run(tmp_path / "stopped", source(SignalAfter, at=5), config=sparse)
    assert stopped.step == 6 and [r["step"] for r in stopped.records] == [4]
    assert stopped.final_loss == losses[6] != losses[4]
    finished, _ = run(tmp_path / "finished", source(), config=sparse)
    assert finished.final_loss == losses[STEPS] == finished.records[-1]["loss"]


def test_a_signal_during_the_last_step_finishes_the_run_and_says_it_was_signalled(tmp_path):
    """The run is complete (a recipe's stage is finished), but the user asked to stop: the
    result says so, and ``clipa-train recipe`` then starts no next stage."""
    last, _ = run(tmp_path / "run", source(SignalAfter, at=STEPS - 1))
    assert last.step == STEPS and last.signalled
    assert last.checkpoint.name == f"step_{STEPS:08d}.pt"


def test_a_signal_while_the_last_step_is_saved_lets_the_final_evaluation_run_and_says_so(
    tmp_path, monkeypatch, capfd
):
    """SIGINT during the last step's own checkpoint (``checkpoint_every`` divides the steps):
    training has finished, so the final evaluation runs, and the line says that (it said
    "stopping after step 13", a step that never comes)."""
    from clipa_train import checkpoint

    real_save, evaluated = checkpoint.save_checkpoint, []

    def save(directory, step, **kw):
        if step == STEPS:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(directory, step=step, **kw)

    def evaluate(model, step):
        evaluated.append(step)
        return {"top1": 0.5}

    monkeypatch.setattr("clipa_train.loop.ckpt.save_checkpoint", save)
    config = LoopConfig(log_every=1, progress=False, checkpoint_every=4)
    result, _ = run(tmp_path, source(), config=config, evaluate=evaluate)
    assert evaluated == [STEPS] and result.signalled and not result.stopped
    said = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert said == [
        f"SIGINT: training has finished (step {STEPS}, saved before the final evaluation); the "
        "evaluation goes on, Ctrl-C again to cut it short"
    ]


class RelayedDuringEvaluation:
    """Two signals relayed (as to a stage run off the main thread, under --backend xla) while the
    final evaluation runs, where nothing reads them."""

    def __init__(self) -> None:
        self.count = 0

    def received(self) -> tuple[int, int, int]:
        return self.count, int(signal.SIGTERM), int(signal.SIGTERM)

    def launcher_gone(self) -> bool:
        return False


def test_signals_relayed_during_the_final_evaluation_do_not_claim_to_cut_it(tmp_path, capfd):
    """They are read once it has finished: the lines said the evaluation goes on and was cut
    short, after it had finished whole."""
    import threading

    relayed = RelayedDuringEvaluation()

    def evaluate(model, step):
        relayed.count = 2
        return {"top1": 0.5}

    done = {}
    thread = threading.Thread(
        target=lambda: done.update(
            result=run(tmp_path, source(), evaluate=evaluate, signals=relayed)[0]
        )
    )
    thread.start()
    thread.join()
    assert done["result"].signalled and not done["result"].final_eval_cut
    said = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert said == [
        f"SIGTERM: training has finished (step {STEPS}); the run ends with its checkpoint"
    ]


def test_an_evaluation_is_not_counted_in_the_training_rate(tmp_path, monkeypatch):
    """A window holding an in-loop evaluation (minutes on ImageNet) gave a training rate and a
    data-wait share of training and evaluation together. The loop's clock jumps an hour in
    each evaluation, so a loaded machine's slow steps cannot pass for one left out."""
    config = LoopConfig(log_every=2, progress=False, eval_every=2)
    hours, real = [0.0], time.perf_counter
    monkeypatch.setattr("clipa_train.loop.time.perf_counter", lambda: real() + 3600 * hours[0])

    def evaluate(model, step):
        hours[0] += 1
        return {"top1": 0.5}

    run(tmp_path, source(num_batches=100), config=config, evaluate=evaluate)
    trained = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in trained] == [2, 4, 6, 8, 10, 12]
    for record in trained[1:]:  # each after an evaluation
        seconds = 2 * 8 / record["samples_per_s"]
        assert seconds < 600, (record, seconds)


def _draws() -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_a_restored_checkpoint_continues_every_random_stream_where_it_was_saved(tmp_path):
    """The resume tests cannot see this: nothing on the CPU path draws from the global RNGs
    (test-tiny has no dropout; masks use counter-based streams). A model with dropout or a
    user's augmentation would."""
    model = build_model(load_preset("test-tiny"))
    optimizer = build_optimizer(model, OPTIM)
    backend = create_backend(BackendConfig(name="cpu"))
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(5)
    path = save_checkpoint(
        tmp_path, step=3, model=model, optimizer=optimizer, stream_state={}, backend=backend
    )
    after_saving = _draws()
    _draws()  # the streams move on
    step, _ = restore_checkpoint(
        load_checkpoint(path), model=model, optimizer=optimizer, backend=backend
    )
    assert step == 3 and _draws() == after_saving


def test_metrics_records_and_checkpoint_contents(tmp_path):
    config = LoopConfig(
        log_every=4, checkpoint_every=4, keep_checkpoints=2, progress=False, eval_every=6
    )
    calls = []

    def evaluate(model, step):
        assert not model.training
        calls.append(step)
        return {"top1": 0.5}

    result, _ = run(tmp_path, source(num_batches=100), config=config, evaluate=evaluate)
    records = read_metrics(tmp_path)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [4, 8, 12]
    for record in train_records:
        assert {
            "loss",
            "lr",
            "logit_scale",
            "samples_per_s",
            "data_wait_share",
            "window_steps",
            "xla_compiles",
        } <= set(record)
        assert record["window_steps"] == 4
        assert record["xla_compiles"] is None and record["samples_per_s"] > 0
        assert 0 <= record["data_wait_share"] < 1
    assert calls == [6, 12]
    evals = [r for r in records if "eval/top1" in r]
    assert [(r["step"], r["eval/top1"]) for r in evals] == [(6, 0.5), (12, 0.5)]
    assert all("xla_compiles" in r for r in evals)  # every metrics record has it
    steps = [step for step, _ in list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [8, 12]  # keep 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    payload = torch.load(result.checkpoint, weights_only=False)
    assert payload["step"] == 12 and payload["config"] == {"preset": "test-tiny", "seed": 0}
    assert payload["ranks"][0]["stream"] == {"index": 12, "seed": 3}
    assert {"python", "numpy", "torch"} <= set(payload["ranks"][0]["rng"])
    assert payload["architecture"]["vision"]["patch_size"] == 8
    assert len(payload["optimizer"]["state"]) > 0


def test_resume_auto_without_a_checkpoint(tmp_path):
    with pytest.raises(
        ClipaError, match=r"--resume auto: no checkpoint in .*start without --resume"
    ):
        resolve_resume("auto", tmp_path / "checkpoints")
    with pytest.raises(ClipaError, match="no such checkpoint file"):
        resolve_resume(tmp_path / "step_00000001.pt", tmp_path)
    assert resolve_resume(None, tmp_path) is None


def test_truncated_checkpoint(tmp_path):
    result, _ = run(tmp_path, source(num_batches=2))
    data = result.checkpoint.read_bytes()
    result.checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipaError, match=r"step_00000002\.pt is truncated or corrupt"):
        run(tmp_path, source(), resume=result.checkpoint)
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ClipaError, match="is not a clipa training checkpoint"):
        run(tmp_path, source(), resume=foreign)
    config = tmp_path / "config.json"  # the run's own config, passed by mistake
    config.write_text('{"steps": 2}')
    with pytest.raises(ClipaError, match=r"config\.json is not a PyTorch checkpoint") as refused:
        run(tmp_path, source(), resume=config)
    assert "delete" not in str(refused.value)
    assert config.read_text() == '{"steps": 2}'


def test_checkpoint_of_another_architecture(tmp_path):
    result, _ = run(tmp_path, source(num_batches=2))
    torch.manual_seed(0)
    other = build_model(load_preset("test-tiny").replace(pool="tok", context_length=8))
    backend = create_backend(BackendConfig(name="cpu"))
    with pytest.raises(
        ClipaError, match=r"different model \(text.context_length: checkpoint 16, model 8"
    ):
        train(
            model=other,
            optimizer=build_optimizer(other, OPTIM),
            optim_config=OPTIM,
            loss_fn=build_loss("contrastive"),
            batches=source(),
            backend=backend,
            run_dir=tmp_path,
            resume_from=result.checkpoint,
        )


def test_weights_that_went_nan_behind_a_finite_loss_are_neither_saved_nor_evaluated(tmp_path):
    """The loss a step reports is the loss *before* its update: a NaN gradient in one weight
    (here sqrt's at 0, in a term worth 0) leaves the loss and the logit scale finite while
    that weight turns NaN. The check before the save and the evaluation catches it."""
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    poisoned = model.text_projection
    contrastive = build_loss("contrastive")

    def loss_fn(outputs):  # value: the contrastive loss + 0; gradient of the term: NaN
        return contrastive(outputs) + torch.sqrt(poisoned - poisoned).sum()

    calls = []
    no_clip = OptimConfig(lr=2e-3, total_steps=STEPS, warmup_steps=0)  # clipping spreads NaN
    result = train(
        model=model, optimizer=build_optimizer(model, no_clip), optim_config=no_clip,
        loss_fn=loss_fn, batches=source(), backend=create_backend(BackendConfig(name="cpu")),
        run_dir=tmp_path, config=LoopConfig(log_every=5, checkpoint_every=1, eval_every=1,
        progress=False), evaluate=lambda model, step: calls.append(step) or {"top1": 0.0},
    )  # fmt: skip
    assert calls == [] and not list_checkpoints(tmp_path / "checkpoints")
    assert result.diverged and result.step == 1 and result.checkpoint is None
    assert "weights hold NaN or infinite values after step 1" in result.failure
    assert torch.isnan(poisoned).any() and torch.isfinite(model.logit_scale).all()
