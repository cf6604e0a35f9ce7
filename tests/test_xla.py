"""PyTorch/XLA on the CPU (``make test-xla``: torch 2.9 + torch-xla 2.9, ``PJRT_DEVICE=CPU``).

A tiny model trains for 20 steps on batches of the real streaming loader (a TFDS builder
directory with spaCy sidecars, ``xla_data``), once per pairing of an image reduction (resize,
random, grid, block: fixed-K ``patch_keep``) and a text reduction (truncate, random, block,
syntax), covering every strategy of both. Each run compiles at most 3 graphs, none after the
first steps (warm-up lr, cosine, gradient clipping, metrics every 5 steps, a checkpoint at the
end); the step itself makes no device-to-host transfer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.xla
torch_xla = pytest.importorskip("torch_xla")

from xla_data import write_in_child  # noqa: E402

from clipa_data.core.errors import ClipaError  # noqa: E402
from clipa_data.core.tokenizer import VOCAB_SIZE  # noqa: E402
from clipa_train.backend import BackendConfig, create_backend  # noqa: E402
from clipa_train.image import ImageConfig  # noqa: E402
from clipa_train.loader import Loader  # noqa: E402
from clipa_train.loop import LoopConfig, apply_update, forward_backward, train  # noqa: E402
from clipa_train.loss import build_loss  # noqa: E402
from clipa_train.model import build_model, load_preset  # noqa: E402
from clipa_train.optim import OptimConfig, build_optimizer, learning_rate, set_learning_rate  # noqa: E402
from clipa_train.reduce import PatchMaskConfig, TextReductionConfig  # noqa: E402
from clipa_train.stream import StreamConfig  # noqa: E402
from clipa_train.synthetic import SyntheticBatches  # noqa: E402

STEPS = 20
BATCH = 16
PATCH = 8
OPTIM = OptimConfig(lr=1e-3, total_steps=STEPS, warmup_steps=5, grad_clip_norm=1.0)
CASES = {
    # name: (image mask, image size, text mask, text length, precision, gradient checkpointing)
    "resize-16px+truncate-T16": ("resize", 16, "truncate", 16, "fp32", False),
    "random-0.5+random-T8": ("random", 32, "random", 8, "fp32", False),
    "grid+block-T8-bf16": ("grid", 32, "block", 8, "bf16", True),
    "block-0.5+syntax-T8": ("block", 32, "syntax", 8, "fp32", False),
}
KEEP = {"resize": None, "random": 8, "grid": 4, "block": 9}
"""Patches kept of the 4x4 grid at 32 px (block: a 3x3 rectangle for ratio 0.5)."""


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    """4 shards x 16 records of 48 px JPEGs with real spaCy sidecars (written in a child)."""
    return write_in_child(tmp_path_factory.mktemp("xla-data"))


def transfers_from_device() -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data("TransferFromDeviceTime")
    return int(data[0]) if data else 0


def tiny_model(backend, image_size, text_length, vocab_size, loss="contrastive"):
    torch.manual_seed(0)
    config = load_preset("test-tiny").replace(
        image_size=image_size, context_length=text_length, loss=loss
    )
    config = dataclasses.replace(
        config, text=dataclasses.replace(config.text, vocab_size=vocab_size)
    )
    return build_model(config).to(backend.device)


def setup(image_size, mask, text_length, precision, loss="contrastive"):
    """Backend, model, optimiser and synthetic batches (for the step-level tests)."""
    backend = create_backend(BackendConfig(name="xla", precision=precision))
    model = tiny_model(backend, image_size, text_length, 512, loss)
    batches = SyntheticBatches(
        batch_size=BATCH,
        image_size=image_size,
        text_length=text_length,
        vocab_size=512,
        patch_size=PATCH,
        mask=mask,
        mask_ratio=0.5,
        num_batches=STEPS,
    )
    return backend, model, build_optimizer(model, OPTIM), batches


@pytest.mark.parametrize("case", list(CASES))
def test_twenty_loader_steps_compile_at_most_three_graphs(case, builder, tmp_path):
    image_mask, image_size, text_mask, text_length, precision, checkpointing = CASES[case]
    backend = create_backend(BackendConfig(name="xla", precision=precision))
    assert backend.name == "xla" and backend.device.type == "xla"
    loader = Loader(
        StreamConfig(
            data=str(builder),
            batch_size=BATCH,
            image=ImageConfig(size=image_size),
            patch_mask=PatchMaskConfig(image_mask, PATCH, 0.5),
            text=TextReductionConfig(text_mask, text_length),
            workers=2,
            seed=1,
        )
    )
    assert len(loader) == 4  # 64 records / 16: the 20 steps run 5 epochs
    keep = loader.shapes.patch_keep
    assert (keep and keep[1]) == KEEP[image_mask]
    model = tiny_model(backend, image_size, text_length, VOCAB_SIZE)
    optimizer = build_optimizer(model, OPTIM)
    before = backend.compile_count()
    try:
        result = train(
            model=model,
            optimizer=optimizer,
            optim_config=OPTIM,
            loss_fn=build_loss("contrastive", backend),
            batches=loader,
            backend=backend,
            run_dir=tmp_path,
            config=LoopConfig(log_every=5, progress=False, grad_checkpointing=checkpointing),
        )
    finally:
        loader.close()
    records = result.records
    assert result.step == STEPS and [r["step"] for r in records] == [5, 10, 15, 20]
    compiles = [r["xla_compiles"] for r in records]
    assert all(isinstance(c, int) for c in compiles)
    assert compiles[-1] - before <= 3, compiles
    assert compiles[-1] == compiles[0], "no compilation after the first steps"
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"], [r["loss"] for r in records]
    stats = loader.stats
    assert stats.batches == STEPS and stats.bad_images == stats.unreadable == stats.filled == 0
    payload = torch.load(result.checkpoint, weights_only=False)
    assert all(t.device.type == "cpu" for t in payload["model"].values())
    stream = payload["ranks"][0]["stream"]
    assert (stream["epoch"], stream["step"]) == (5, 0)


def test_the_step_makes_no_host_round_trip():
    backend, model, optimizer, batches = setup(32, "random", 16, "fp32", loss="sigmoid")
    loss_fn = build_loss("sigmoid", backend)
    iterator = iter(batches)

    def step(index):
        set_learning_rate(optimizer, learning_rate(index, OPTIM))
        batch = backend.to_device(next(iterator))
        loss, _ = forward_backward(model, batch, loss_fn, backend)
        apply_update(model, optimizer, OPTIM, backend)
        backend.step_boundary()
        return loss.detach()

    for index in range(3):  # warm-up: compile
        step(index)
    transfers, compiles = transfers_from_device(), backend.compile_count()
    losses = [step(index) for index in range(3, 9)]
    assert transfers_from_device() == transfers
    assert backend.compile_count() == compiles
    values = backend.to_host({str(i): loss for i, loss in enumerate(losses)})
    assert transfers_from_device() > transfers and all(map(math.isfinite, values.values()))


def test_a_tiny_learning_rate_late_in_the_schedule_compiles_no_new_graph():
    """At the end of a cosine schedule lr·weight decay falls below float32's resolution at 1:
    as a host float, AdamW's 1 − lr·wd became the constant 1 and the step a new graph (minutes
    of compilation for a large model, at the end of the run); on a device tensor it is data."""
    optim = dataclasses.replace(OPTIM, lr=1e-6, total_steps=12, warmup_steps=1)
    backend, model, optimizer, batches = setup(32, None, 16, "fp32")
    loss_fn = build_loss("contrastive", backend)
    iterator = iter(batches)
    compiles = []
    for index in range(optim.total_steps):
        set_learning_rate(optimizer, learning_rate(index, optim))
        batch = backend.to_device(next(iterator))
        forward_backward(model, batch, loss_fn, backend)
        apply_update(model, optimizer, optim, backend)
        backend.step_boundary()
        compiles.append(backend.compile_count())
    tiny = [i for i in range(optim.total_steps) if learning_rate(i, optim) * 0.2 < 3e-8]
    assert tiny and tiny[0] > 3, tiny  # the schedule crosses float32's resolution late
    assert compiles[-1] == compiles[2], compiles


def run_loop(name: str, run_dir, resume_from=None) -> list[float]:
    """4 steps of test-tiny on ``name`` (a checkpoint every 2); the losses it logged."""
    backend = create_backend(BackendConfig(name=name))
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny")).to(backend.device)
    optim = dataclasses.replace(OPTIM, total_steps=4, warmup_steps=1)
    result = train(
        model=model,
        optimizer=build_optimizer(model, optim),
        optim_config=optim,
        loss_fn=build_loss("contrastive", backend),
        batches=SyntheticBatches(
            batch_size=BATCH,
            image_size=32,
            text_length=16,
            vocab_size=512,
            patch_size=PATCH,
            mask=None,
            num_batches=4,
        ),
        backend=backend,
        run_dir=run_dir,
        config=LoopConfig(log_every=1, checkpoint_every=2, progress=False),
        resume_from=resume_from,
    )
    return [record["loss"] for record in result.records]


@pytest.mark.parametrize("first, then", [("cpu", "xla"), ("xla", "cpu")])
def test_a_checkpoint_resumes_across_cpu_and_xla(first, then, tmp_path):
    """The optimiser's implementation follows the device, not the checkpoint: a CPU run's fused
    AdamW failed to resume on XLA, an XLA run's capturable one on the CPU."""
    create_backend(BackendConfig(name="xla"))  # before any backward: torch's autograd engine
    # sizes its per-device queues at the first one, and an XLA backward after it fails
    whole = run_loop(first, tmp_path / first)
    halfway = tmp_path / first / "checkpoints" / "step_00000002.pt"
    resumed = run_loop(then, tmp_path / then, resume_from=halfway)
    assert resumed == pytest.approx(whole[2:], rel=1e-4), (whole, resumed)


def test_optimizer_built_before_moving_to_xla_is_refused(tmp_path):
    backend, _, _, batches = setup(32, None, 16, "fp32")
    model = build_model(load_preset("test-tiny"))
    optimizer = build_optimizer(model, OPTIM)  # CPU parameters: fused AdamW
    with pytest.raises(ClipaError, match="optimiser was built before the model moved to xla"):
        train(
            model=model,
            optimizer=optimizer,
            optim_config=OPTIM,
            loss_fn=build_loss("contrastive"),
            batches=batches,
            backend=backend,
            run_dir=tmp_path,
        )


STOPS = {
    "SIGTERM": ("SIGTERM: stopping after step", 130),
    "SIGINT": ("SIGINT: stopping after step", 130),
    "SIGKILL": ("the launching process is gone: stopping after step", -9),
}
"""How the test stops the command: the line the training process says, the command's exit."""


@pytest.mark.parametrize("name", list(STOPS))
def test_a_stop_signal_stops_an_xla_run_with_a_checkpoint_and_no_process_left(
    name, builder, tmp_path
):
    """``torch_xla.launch`` trains in a thread of a process it spawns, where Python installs no
    signal handlers: SIGTERM to the command (``kill``, a scheduler, a preempted TPU VM) killed
    it and left the spawned process training alone to the end; Ctrl-C (SIGINT to the whole
    process group) went unheard. Now either stops after the current step with a checkpoint,
    counted once, and every process ends; so does the spawned process when the command is
    killed with SIGKILL (nobody relays signals to it any more)."""
    out = tmp_path / "run"
    process = _start_xla_run(builder, out)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    try:
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no third step in time"
            time.sleep(0.05)
        spawned = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if name == "SIGINT":
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, getattr(signal, name))
        _, stderr = process.communicate(timeout=120)  # the spawned process holds the pipes too
        said, code = STOPS[name]
        assert process.returncode == code, stderr[-3000:]
        assert stderr.count(said) == 1, stderr[-3000:]
        assert "stopping now" not in stderr and "Traceback" not in stderr, stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        step = summary["steps"]
        assert summary["stopped"] and summary["signalled"] and 3 <= step < 1000, summary
        assert Path(summary["checkpoint"]).name == f"step_{step:08d}.pt", summary
        deadline = time.monotonic() + 30  # multiprocessing's resource tracker leaves just after
        while [pid for pid in spawned if Path(f"/proc/{pid}").exists()]:
            assert time.monotonic() < deadline, f"left running: {spawned}"
            time.sleep(0.1)
    finally:  # whatever the outcome, nothing of it keeps running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_in_loop_zero_shot_evaluates_under_xla(builder, tmp_path):
    """``torch_xla.launch`` trains in a spawned process, whose evaluation loader starts its
    workers by spawn too: its lambda collate function could not be pickled, and the first
    evaluation crashed the run (a traceback, no summary)."""
    from clipa_data.demo import write_demo_validation

    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    command = [
        str(Path(sys.executable).parent / "clipa-train"), "pretrain", "--data", str(builder),
        "--out", str(tmp_path / "run"), "--backend", "xla", "--model", "clipa-tiny",
        "--image-size", "32", "--text-length", "8", "--text-mask", "truncate", "--batch-size",
        "8", "--samples", "32", "--workers", "1", "--no-progress", "--zeroshot", val.root,
        "--classnames", val.classnames_path, "--eval-every", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PJRT_DEVICE": "CPU"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["zeroshot"]["n"] == 20, summary


def test_a_compile_backend_under_xla_names_the_one_fix_that_works(builder, tmp_path):
    """It said "add --compile on", which XLA refuses in turn."""
    command = [
        str(Path(sys.executable).parent / "clipa-train"), "pretrain", "--data", str(builder),
        "--out", str(tmp_path / "run"), "--backend", "xla", "--model", "clipa-tiny",
        "--compile-backend", "aot_eager",
    ]  # fmt: skip
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "does not compile on xla; drop --compile-backend" in done.stderr, done.stderr
    assert "--compile on" not in done.stderr and not (tmp_path / "run").exists()


def _start_xla_run(builder: Path, out: Path) -> subprocess.Popen:
    """A long ``clipa-train pretrain --backend xla`` of the tiny model, in its own session."""
    command = [
        str(Path(sys.executable).parent / "clipa-train"), "pretrain", "--data", str(builder),
        "--out", str(out), "--backend", "xla", "--model", "clipa-tiny", "--image-size", "32",
        "--text-length", "8", "--text-mask", "truncate", "--batch-size", "8", "--samples",
        "8000", "--workers", "1", "--no-progress", "--log-every", "1", "--checkpoint-every", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PJRT_DEVICE": "CPU"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        path = Path(f"/proc/{parent}/task/{parent}/children")
        children = [int(c) for c in path.read_text().split()] if path.exists() else []
        found += children
        queue += children
    return found


def test_a_third_stop_signal_kills_an_xla_run_that_has_not_reached_a_step(builder, tmp_path):
    """Under xla the signals reach the training only at its step boundaries; before the first
    one (start-up, the first compile: minutes for a large model on a TPU) nothing stopped the
    run but finding the spawned process and killing it by hand. A third signal makes the command
    kill what it spawned at once and exit 130 with one line saying what was lost."""
    out = tmp_path / "run"
    process = _start_xla_run(builder, out)
    deadline = time.monotonic() + 120
    try:
        while not _descendants(process.pid):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "nothing spawned in time"
            time.sleep(0.05)
        time.sleep(1)  # the spawned process is importing: no step in the next seconds
        assert not (out / "metrics.jsonl").exists()
        spawned = _descendants(process.pid)
        for _ in range(3):
            os.kill(process.pid, signal.SIGTERM)
            time.sleep(0.3)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr[-3000:]
        # The first is said at once (the training would say it at its first step, minutes
        # away in a TPU's first compile: a first Ctrl-C seemed to do nothing).
        assert stderr.count("SIGTERM: passed on to the training, which says at") == 1, stderr
        assert stderr.count("(a third stop signal kills the training at once)") == 1, stderr
        assert stderr.count("the training processes were killed at once") == 1, stderr[-3000:]
        assert "--resume auto" in stderr and "Traceback" not in stderr, stderr[-3000:]
        assert "if the run saved none yet, run the command again without --resume" in stderr
        deadline = time.monotonic() + 30  # a loader worker notices its parent's death itself
        while [pid for pid in spawned if Path(f"/proc/{pid}").exists()]:
            assert time.monotonic() < deadline, f"left running: {spawned}"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_a_training_process_that_dies_is_one_line_naming_the_resume(tmp_path):
    """A spawned process killed (out of host memory, kill -9) or aborted by the XLA runtime
    ended the command in an 81-line concurrent.futures traceback naming neither."""
    (tmp_path / "dies.py").write_text("import os\n\ndef die(index, *args):\n    os._exit(9)\n")
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from dies import die\n"
        "from clipa_data.core.errors import ClipaError\n"
        "from clipa_train.backend import launch\n"
        "try:\n    launch(die, 'xla')\nexcept ClipaError as error:\n    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PJRT_DEVICE": "CPU"},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("the training process on the XLA device ended abruptly")
    assert "--resume auto continues from the last checkpoint" in done.stdout
