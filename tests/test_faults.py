"""Faults in the middle of a run, through the real ``clipa-train`` command (a subprocess): a
shard damaged or deleted after the run started, a loader worker killed with SIGKILL, the disk
filling up while a checkpoint is written; and the flags that govern bad data
(``--max-bad-fraction``, ``--check-crc``, ``--samples-per-epoch``).

Each fault ends in one line (or a count in the summary), the exit code a user can act on, and
nothing lost: the checkpoints already written are byte-identical afterwards, the run stops with a
checkpoint of its last finished step, and ``--resume auto`` goes on (exactly, where no record
was damaged).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records

PROGRAM = str(Path(sys.executable).parent / "clipa-train")
SHARDS, PER_SHARD, BATCH = 4, 24, 8
STEPS_PER_EPOCH = SHARDS * PER_SHARD // BATCH  # 12
TOTAL = 60  # steps: 5 epochs, so a shard damaged early in the run is read again after it


def options(data: Path, out: Path, *more: object, steps: int | None = TOTAL) -> list[str]:
    """A clipa-tiny run of ``steps`` steps (None: its length from ``more``), a metrics record
    every step, a checkpoint only at the end (and when it stops)."""
    length = [] if steps is None else ["--samples", BATCH * steps]
    return [
        str(arg)
        for arg in (
            "pretrain", "--data", data, "--out", out, "--model", "clipa-tiny", "--image-size",
            32, "--text-length", 8, "--text-mask", "truncate", "--batch-size", BATCH,
            *length, "--workers", 2, "--no-progress", "--log-every", 1, "--checkpoint-every", 0,
            *more,
        )
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}


def run(*args: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child: writes past the limit fail with EFBIG (a full disk)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run(
        [PROGRAM, *args], env=environment(), capture_output=True, text=True, timeout=300,
        preexec_fn=None if limit_file_size is None else limit,
    )  # fmt: skip


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PROGRAM, *args], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def wait_for_step(process: subprocess.Popen, out: Path, step: int) -> None:
    """Wait until the run logged ``step`` (one metrics record per step)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not reach its step in time"
        time.sleep(0.01)


def losses(out: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a resumed run's records replace the ones it redid)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def record_offsets(path: Path) -> list[int]:
    """Byte offset of each record of a TFRecord file (from the length in each header)."""
    data, offsets, at = path.read_bytes(), [], 0
    while at < len(data):
        offsets.append(at)
        (length,) = struct.unpack("<Q", data[at : at + 8])
        at += 8 + 4 + length + 4
    return offsets


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    shards = [make_records(PER_SHARD, start=i * PER_SHARD) for i in range(SHARDS)]
    return make_builder_dir(root / "data", shards)


@pytest.fixture
def own_data(data, tmp_path) -> Path:
    """A copy of the data this test may damage."""
    return Path(shutil.copytree(data, tmp_path / "data"))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    done = run(*options(data, out))
    assert done.returncode == 0, done.stderr
    return out


def shard_path(builder: Path, index: int) -> Path:
    return builder / f"demo-train.tfrecord-{index:05d}-of-{SHARDS:05d}"


# --- flags ---------------------------------------------------------------------------------------


def test_samples_per_epoch_and_check_crc_reach_the_loader(own_data, tmp_path):
    # One byte of one caption changed: its framing is intact, only the data checksum tells.
    path = shard_path(own_data, 1)
    content = path.read_bytes()
    caption = b"stock photo 30"
    assert content.count(caption) == 1
    path.write_bytes(content.replace(caption, b"stock phot0 30"))
    # One epoch of 192 samples: 24 steps, two passes over the 96 records (each read twice).
    length = ["--samples-per-epoch", 192, "--epochs", 1]
    plain, checked = tmp_path / "plain", tmp_path / "checked"
    for out, more in ((plain, []), (checked, ["--check-crc"])):
        done = run(*options(own_data, out, *length, *more, steps=None))
        assert done.returncode == 0, done.stderr
    assert summary_of(plain)["total_steps"] == summary_of(plain)["steps"] == 24
    assert summary_of(plain)["stream"]["unreadable"] == 0
    stream = summary_of(checked)["stream"]
    assert stream["unreadable"] == 1, stream  # counted once, whatever the epochs that read it
    assert "record 6 of shard demo-train.tfrecord-00001" in stream["messages"][0], stream
    assert "data checksum mismatch" in stream["messages"][0]
    config = json.loads((checked / "config.json").read_text())["options"]
    assert config["check_crc"] is True and config["samples_per_epoch"] == 192


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        (
            "--max-bad-fraction",
            "1.5",
            "--max-bad-fraction must be at least 0 and below 1 (e.g. 0.01 for 1 %)",
        ),
        ("--samples-per-epoch", "0", "--samples-per-epoch must be at least 1"),
        ("--seed", "-1", "--seed must be ≥ 0 and below 2**63"),
        ("--seed", str(2**70), "--seed must be ≥ 0 and below 2**63"),
        ("--lr", "inf", "--lr must be positive and finite"),
        ("--eps", "nan", "--weight-decay, --beta1, --beta2 and --eps must be finite numbers"),
        ("--grad-clip-norm", "nan", "--grad-clip-norm must be positive and finite"),
        ("--eval-batch-size", "0", "--eval-batch-size must be at least 1, got 0"),
    ],
)
def test_bad_values_of_the_data_flags_are_one_line(flag, value, said, data, tmp_path):
    out = tmp_path / "run"
    done = run(*options(data, out, flag, value))
    assert done.returncode == 2 and errors(done.stderr) == [f"error: {said}"], done.stderr
    assert not out.exists()


# --- a shard damaged or deleted after the run started -------------------------------------------


def test_a_shard_truncated_mid_run_is_counted_and_the_run_goes_on(own_data, tmp_path):
    out = tmp_path / "run"
    process = start(*options(own_data, out, "--max-bad-fraction", "0.5"))
    wait_for_step(process, out, 3)
    path = shard_path(own_data, 2)
    cut = record_offsets(path)[PER_SHARD // 2] + 100  # records 12.. lose their end
    os.truncate(path, cut)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    summary = summary_of(out)
    assert summary["steps"] == TOTAL and not summary["stopped"], summary
    # The 12 records past the cut, each once (every later epoch read them again).
    assert summary["stream"]["unreadable"] == PER_SHARD // 2, summary
    assert "of shard demo-train.tfrecord-00002-of-00004" in stdout, stdout  # the first ones named
    assert "(and 12 unreadable records)" in stdout and "Traceback" not in stderr


def test_a_shard_deleted_mid_run_stops_above_the_limit_with_a_checkpoint(own_data, tmp_path):
    out = tmp_path / "run"
    process = start(*options(own_data, out))  # default --max-bad-fraction 0.01
    wait_for_step(process, out, 3)
    path = shard_path(own_data, 1)
    saved = path.read_bytes()
    path.unlink()
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 2, stderr
    (line,) = errors(stderr)
    assert "are unusable: more than --max-bad-fraction 0.01 allows" in line, line
    assert "demo-train.tfrecord-00001-of-00004: cannot be opened (No such file" in line, line
    assert "Traceback" not in stderr
    summary = summary_of(out)
    step = summary["steps"]
    assert summary["stopped"] and 3 <= step < TOTAL and summary["failure"], summary
    checkpoint = out / "checkpoints" / f"step_{step:08d}.pt"
    assert summary["checkpoint"] == str(checkpoint) and checkpoint.is_file()
    assert f"the run stopped after step {step} with checkpoint {checkpoint}" in line
    assert sorted(losses(out)) == list(range(1, step + 1))  # every finished step is logged
    path.write_bytes(saved)  # the shard restored, the run goes on from where it stopped
    resumed = run(*options(own_data, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert summary_of(out)["start_step"] == step and summary_of(out)["steps"] == TOTAL


# --- a loader worker killed ---------------------------------------------------------------------


def test_a_killed_loader_worker_stops_with_a_checkpoint_and_resumes_exactly(
    data, uninterrupted, tmp_path
):
    out = tmp_path / "run"
    process = start(*options(data, out))
    wait_for_step(process, out, 5)
    workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr, stderr
    (line,) = errors(stderr)
    assert f"(pid {workers[1]}) was killed by SIGKILL" in line, line
    summary = summary_of(out)
    step = summary["steps"]
    assert summary["stopped"] and 5 <= step < TOTAL, summary
    assert f"the run stopped after step {step} with checkpoint" in line
    assert Path(summary["checkpoint"]).name == f"step_{step:08d}.pt"
    resumed = run(*options(data, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert summary_of(out)["steps"] == TOTAL
    assert losses(out) == losses(uninterrupted)  # every step's loss, bit for bit


# --- a data fault on one rank of a torchrun run ----------------------------------------------


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def rank_process(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank`` (found by the RANK in its environment)."""
    for pid in children(launcher):
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environment:
            return pid
    raise AssertionError(f"no rank {rank} under torchrun {launcher}")


def test_a_data_fault_on_one_rank_stops_every_rank_with_one_line_and_a_summary(data, tmp_path):
    """The failing rank goes on stepping on its last batch until the ranks' next agreement (a log
    step): the other one, inside a collective, died with a gloo traceback and no summary."""
    out = tmp_path / "run"
    args = options(data, out, "--log-every", 4, "--checkpoint-every", 8)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         PROGRAM, *args],
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # step 8 saved
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no log record in time"
        time.sleep(0.05)
    worker = children(rank_process(process.pid, 1))[0]
    os.kill(worker, signal.SIGKILL)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode != 0, stderr
    assert "gloo" not in stderr.lower() and "Connection closed" not in stderr, stderr[-3000:]
    (line,) = errors(stderr)  # rank 0 says it, for both
    assert "error: rank 1: loader worker " in line, line
    assert f"(pid {worker}) was killed by SIGKILL" in line, line
    summary = summary_of(out)
    step, saved = summary["steps"], summary["checkpoint"]
    assert summary["stopped"] and summary["failure"] in line, summary
    assert step % 4 == 0 and 8 <= step < TOTAL, summary
    # The failing rank repeated its last batch after the fault: those steps are not saved.
    assert saved is not None and Path(saved).is_file(), summary
    saved_step = int(Path(saved).stem.split("_")[1])
    assert saved_step % 8 == 0 and saved_step <= step, summary
    assert f"the last checkpoint is {saved}" in line and "--resume auto" in line, line


# --- the disk filling up while a checkpoint is written ------------------------------------------


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(data, tmp_path):
    out = tmp_path / "run"
    first = run(*options(data, out, steps=6))
    assert first.returncode == 0, first.stderr
    before = snapshot(out / "checkpoints")
    assert list(before) == ["step_00000006.pt"]
    # Files may grow to 4 MiB: metrics and config are written, the ~100 MB checkpoint is not.
    more = ["--checkpoint-every", 3, "--resume", "auto"]
    full = run(*options(data, out, *more, steps=12), limit_file_size=4 << 20)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr, full.stderr
    (line,) = errors(full.stderr)
    target = out / "checkpoints" / "step_00000009.pt"
    assert line.startswith(f"error: could not write checkpoint {target} ("), line
    assert "is the disk full?" in line and "step_00000006.pt" in line, line
    assert snapshot(out / "checkpoints") == before  # no partial file, the previous one intact
    resumed = run(*options(data, out, *more, steps=12))
    assert resumed.returncode == 0, resumed.stderr
    assert summary_of(out)["start_step"] == 6 and summary_of(out)["steps"] == 12


def test_a_full_disk_under_torchrun_is_one_line_for_every_rank(data, tmp_path):
    """Rank 0 writes the checkpoint; the other rank waited for it in a barrier and died with
    gloo's traceback when rank 0 left with its error. Now the ranks agree on the outcome."""
    out = tmp_path / "run"

    def limit() -> None:  # every rank inherits it; only rank 0 writes checkpoints
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         PROGRAM, *options(data, out, "--checkpoint-every", 3, steps=6)],
        env=environment(), capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )  # fmt: skip
    assert done.returncode != 0, done.stderr
    assert "gloo" not in done.stderr.lower(), done.stderr[-3000:]
    (line,) = errors(done.stderr)
    target = out / "checkpoints" / "step_00000003.pt"
    assert line.startswith(f"error: could not write checkpoint {target} ("), line
    assert not target.exists()


# --- soak: long runs interrupted at random steps --------------------------------------------------

SOAK_STEPS = 200
SOAK_HOWS = ("SIGINT", "SIGTERM", "worker")
SOAK_STOPS = dict(
    zip(SOAK_HOWS, random.Random(16).sample(range(10, SOAK_STEPS - 10), 3), strict=True)
)
"""Each way of stopping a run, and the (seeded, random) step after which it happens."""


@pytest.fixture(scope="module")
def soak_baseline(data, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("soak") / "whole"
    done = run(*options(data, out, steps=SOAK_STEPS))
    assert done.returncode == 0, done.stderr
    return losses(out)


def interrupt(process: subprocess.Popen, how: str) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM to the
    command (as ``kill`` and schedulers), or SIGKILL to one loader worker."""
    if how == "SIGINT":
        os.killpg(process.pid, signal.SIGINT)
    elif how == "SIGTERM":
        os.kill(process.pid, signal.SIGTERM)
    else:
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        os.kill(int(workers[0]), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("how", list(SOAK_STOPS))
def test_soak_a_run_stopped_at_a_random_step_resumes_to_the_same_losses(
    how, data, soak_baseline, tmp_path
):
    out = tmp_path / "run"
    process = start(*options(data, out, steps=SOAK_STEPS))
    wait_for_step(process, out, SOAK_STOPS[how])
    interrupt(process, how)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == (2 if how == "worker" else 130), stderr
    assert "Traceback" not in stderr, stderr
    stopped = summary_of(out)
    assert stopped["stopped"] and SOAK_STOPS[how] <= stopped["steps"] < SOAK_STEPS, stopped
    resumed = run(*options(data, out, "--resume", "auto", steps=SOAK_STEPS))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {stopped['steps']}" in resumed.stderr
    assert summary_of(out)["steps"] == SOAK_STEPS
    assert losses(out) == soak_baseline  # all 200 steps, bit for bit
