"""Ctrl-C and SIGTERM through the real ``clipa-train`` command (a subprocess in its own process
group, signalled as a terminal signals it: every process of the group, loader workers too).

The first signal prints one line at once and stops at the next step boundary (not the next log
step) with a final checkpoint, and the run resumes exactly; a second one stops at once with exit
130, a checkpoint of the last finished step and no traceback from the loop or its workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records

PROGRAM = str(Path(sys.executable).parent / "clipa-train")
TOTAL = 60  # steps: batch 8, 480 samples


def options(data: Path, out: Path, *more: object) -> list[str]:
    """A clipa-tiny run of TOTAL steps, a checkpoint every 2 (the newest 2 kept: clipa-tiny's are
    ~96 MB each) and one log record at the end."""
    return [
        str(arg)
        for arg in (
            "pretrain", "--data", data, "--out", out, "--model", "clipa-tiny", "--image-size",
            32, "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8, "--samples",
            8 * TOTAL, "--workers", 1, "--no-progress", "--log-every", 1000,
            "--checkpoint-every", 2, "--keep-checkpoints", 2, *more,
        )
    ]  # fmt: skip


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [PROGRAM, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([PROGRAM, *args], env=env, capture_output=True, text=True, timeout=300)


def signal_once_trained(process: subprocess.Popen, out: Path, *signals: signal.Signals):
    """Wait for a first checkpoint, then send ``signals``: SIGINT to the whole process group
    (as a terminal's Ctrl-C), SIGTERM to the command's process (as ``kill`` and torchrun)."""
    deadline = time.monotonic() + 240
    while not any((out / "checkpoints").glob("step_*.pt")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.01)
    for number in signals:
        (os.killpg if number == signal.SIGINT else os.kill)(process.pid, number)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupts")
    return make_builder_dir(
        root / "data", [make_records(8 * TOTAL // 2, start=i * 8 * TOTAL // 2) for i in range(2)]
    )


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "run"
    done = run(*options(data, out))
    assert done.returncode == 0, done.stderr
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_stops_at_the_next_step_and_resumes_exactly(
    number, data, uninterrupted, tmp_path
):
    out = tmp_path / "run"
    code, _, stderr = signal_once_trained(start(*options(data, out)), out, number)
    assert code == 130, stderr  # stopped, not finished: `pretrain && finetune` stops here
    said = [line for line in stderr.splitlines() if "stopping after step" in line]
    assert len(said) == 1 and "Ctrl-C again to stop now" in said[0], stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    # The next step boundary, not the next log step (1000): a few steps past the checkpoint.
    assert summary["stopped"] and 2 <= summary["steps"] < TOTAL, summary
    assert f"stopping after step {summary['steps']}" in said[0]
    assert Path(summary["checkpoint"]).name == f"step_{summary['steps']:08d}.pt"
    resumed = run(*options(data, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"] == TOTAL and again["final_loss"] == uninterrupted["final_loss"]


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(data, uninterrupted, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = signal_once_trained(
        start(*options(data, out)), out, signal.SIGINT, signal.SIGINT
    )
    assert code == 130, stderr
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and summary["steps"] < TOTAL
    assert Path(summary["checkpoint"]).is_file()
    resumed = run(*options(data, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"] == TOTAL and again["final_loss"] == uninterrupted["final_loss"]


def test_a_checkpoint_at_the_end_of_an_epoch_does_not_break_the_next_epoch(tmp_path):
    """Saving the stream's position at an epoch boundary once moved the loader to the next
    epoch under the generator still finishing this one: 'loader workers stopped'."""
    data = make_builder_dir(tmp_path / "data", [make_records(24, start=i * 24) for i in range(2)])
    out = tmp_path / "run"
    more = ["--samples", 96, "--checkpoint-every", 6]  # 6 steps an epoch, 2 epochs
    done = run(*options(data, out, *[str(arg) for arg in more]))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 12


CTRL_C_DURING_IMPORT = """
import builtins, os, signal, sys
real_import = builtins.__import__

def ctrl_c_at_typer(name, *args, **kwargs):  # a real signal, while the app imports typer
    if name == "typer":
        builtins.__import__ = real_import
        os.kill(os.getpid(), signal.{signal_name})
    return real_import(name, *args, **kwargs)

builtins.__import__ = ctrl_c_at_typer
sys.argv = [{program!r}, "--help"]
from clipa_cli.entry import {program}
{program}()
"""


@pytest.mark.parametrize(
    "program, signal_name", [("data", "SIGINT"), ("train", "SIGINT"), ("data", "SIGTERM")]
)
def test_ctrl_c_while_the_command_starts_is_one_line(program, signal_name):
    """The apps take about half a second to import; a Ctrl-C then is one line and exit 130,
    as later, not a KeyboardInterrupt traceback. A data command stops so on SIGTERM too,
    outside the stages that handle it themselves (it ended silently, killed: exit 143)."""
    script = CTRL_C_DURING_IMPORT.format(program=program, signal_name=signal_name)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120,
        # As started from a terminal: a job a shell put in the background (CI run with "&")
        # inherits SIGINT ignored, and a program started so rightly ignores Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n" and not done.stdout


# 2: the last step is also an eval step; 1: an evaluation at step 1 was made, which is not the
# run's result (summary.json gave it as its zero-shot figures)
@pytest.mark.parametrize("eval_every", [None, 2, 1])
def test_a_second_ctrl_c_cuts_the_final_evaluation_short(data, tmp_path, eval_every):
    """The last step's checkpoint is saved before the stage's final zero-shot evaluation (which
    takes minutes on ImageNet); Ctrl-C twice during it stops at once: exit 130, every step made,
    and the summary says what to run to evaluate the checkpoint."""
    from clipa_data.demo import write_demo_validation

    val = write_demo_validation(tmp_path / "eval", per_class=30, seed=0)  # 600 images
    out = tmp_path / "run"
    args = options(data, out, "--zeroshot", val.root, "--classnames", val.classnames_path,
                   "--eval-batch-size", 1)  # fmt: skip
    args[args.index("--samples") + 1] = "16"  # 2 steps
    args[args.index("--checkpoint-every") + 1] = "0"  # the one checkpoint: the final one
    args += ["--eval-every", str(eval_every)] if eval_every else []
    process = start(*args)
    signalled_at = time.monotonic()
    code, stdout, stderr = signal_once_trained(process, out, signal.SIGINT, signal.SIGINT)
    assert time.monotonic() - signalled_at < 60
    assert code == 130, stderr
    assert "Traceback" not in stderr and "stopping" not in stderr, stderr  # training had ended
    said = [line for line in stderr.splitlines() if "SIGINT" in line or "cutting" in line]
    assert said == [
        "SIGINT: training has finished (step 2, saved before the final evaluation); the "
        "evaluation goes on, Ctrl-C again to cut it short",
        "cutting the final evaluation short; step 2 is saved",
    ], stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 2 and not summary["stopped"]
    assert summary["final_eval_cut"] and summary["zeroshot"] is None
    assert summary["checkpoint"].endswith("step_00000002.pt")
    assert Path(summary["checkpoint"]).is_file()
    assert "final evaluation cut short" in " ".join(stdout.split()), stdout
    # The command it names evaluates the same set: with the run's class names.
    assert summary["eval_command"] == (
        f"clipa-train eval --checkpoint {summary['checkpoint']} --imagenet-val {val.root} "
        f"--classnames {val.classnames_path}"
    )


def torchrun_once_logged(data: Path, out: Path) -> subprocess.Popen:
    """Two torchrun ranks training into ``out`` (agreeing on stops at every 4th step, no
    checkpoint before a stop's own), once their first log record is written."""
    args = options(data, out)
    args[args.index("--log-every") + 1] = "4"  # the ranks agree on a stop at log steps
    args[args.index("--checkpoint-every") + 1] = "100"  # none before the stop's own
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         PROGRAM, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no log record in time"
        time.sleep(0.05)
    return process


def test_sigterm_to_torchrun_stops_both_ranks_at_an_agreed_step_with_a_checkpoint(data, tmp_path):
    """torchrun passes SIGTERM on to each rank's whole process group, loader workers too; the
    ranks agree to stop at the next log step, which they reach only if their workers outlive
    the signal (they died of it: no data, no checkpoint, the run lost)."""
    out = tmp_path / "run"
    process = torchrun_once_logged(data, out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and summary["failure"] is None, stderr[-3000:]
    assert summary["steps"] % 4 == 0 and summary["steps"] < TOTAL, summary
    assert Path(summary["checkpoint"]).name == f"step_{summary['steps']:08d}.pt"
    assert "was killed by SIGTERM" not in stderr, stderr[-3000:]


def test_ranks_whose_torchrun_was_killed_stop_with_a_checkpoint(data, tmp_path):
    """torchrun killed with SIGKILL passes nothing on: its ranks (their own sessions) trained
    on alone to the end, holding their devices beside any re-run. They now take the launcher's
    death as a first stop signal: they agree on a step, save it and end."""
    out = tmp_path / "run"
    process = torchrun_once_logged(data, out)
    process.kill()  # the agent only: the ranks run in sessions of their own
    process.wait()
    deadline = time.monotonic() + 180
    while not (out / "summary.json").exists():
        assert time.monotonic() < deadline, "the ranks trained on without their launcher"
        time.sleep(0.1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and summary["steps"] < TOTAL, summary
    assert Path(summary["checkpoint"]).name == f"step_{summary['steps']:08d}.pt"
