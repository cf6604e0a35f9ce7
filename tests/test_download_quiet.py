"""``clipa-data download`` through the real command (a subprocess, as a user runs it) against
the real img2dataset and the local demo server: one progress bar on the console (img2dataset's
own lines in ``_clipa/img2dataset.log``), and Ctrl-C/SIGTERM that finish the shards in flight
(first signal) or stop at once (second), exit 130, leave no half-written shard and resume to the
same bytes as an uninterrupted download.

One thread per process makes img2dataset's record order (completion order) deterministic, so
shards compare record by record: every feature of every record, in order, and img2dataset's
per-shard parquet byte for byte (tf.train.Example bytes are not compared: protobuf serialises
the feature map in an order that varies between processes; ``_stats.json`` holds times).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipa_data.core import layout
from clipa_data.core.example import decode_example
from clipa_data.core.tfrecord import read_records
from clipa_data.demo import serve_demo_images, write_demo_metadata
from clipa_data.prepare.interrupts import FIRST_SIGNAL_LINE

DATA = str(Path(sys.executable).parent / "clipa-data")
ROWS, PER_SHARD = 40, 8  # 5 shards
IMG2DATASET_LINES = (
    "Starting the downloading",
    "Sharding file number",
    "bwm-ng",
    "worker  - success",
    "total   - success",
)
"""What img2dataset prints itself (its progress, bandwidth hint and per-worker lines)."""
TENSORFLOW_NOISE = ("oneDNN", "undefined symbol", "tensorflow_io", "absl::", "UserWarning")
"""TensorFlow / tensorflow_io start-up lines img2dataset's tfrecord writer triggers."""


def command(metadata: Path, output: Path) -> list[str]:
    return [
        DATA, "download", str(metadata), str(output), "--image-size", "32", "--processes", "1",
        "--threads", "1", "--samples-per-shard", str(PER_SHARD), "--timeout", "2",
    ]  # fmt: skip


def user_env() -> dict[str, str]:
    """A user's environment: none of the TensorFlow settings the test suite itself uses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TF_")}


def run(metadata: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(metadata, output), env=user_env(), capture_output=True, text=True, timeout=600
    )


def contents(output: Path) -> dict[str, object]:
    """Every shard file by name: a ``.tfrecord``'s decoded records, a ``.parquet``'s sha256."""
    found: dict[str, object] = {}
    for path in sorted(output.iterdir()):
        if path.suffix == ".tfrecord":
            found[path.name] = [decode_example(record) for record in read_records(path)]
        elif path.suffix == ".parquet":
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_no_half_written_shard(output: Path) -> None:
    finished = {layout.raw_stats_shard_id(p) for p in output.glob("*_stats.json")}
    shard_files = [p for p in output.iterdir() if p.suffix in (".tfrecord", ".parquet")]
    assert all(int(p.stem) in finished for p in shard_files), sorted(output.iterdir())
    assert not (output / "_tmp").exists()


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    with serve_demo_images() as url:
        folder = tmp_path_factory.mktemp("meta")
        yield write_demo_metadata(folder / "demo.parquet", url, count=ROWS, seed=3).path


@pytest.fixture(scope="module")
def uninterrupted(metadata, tmp_path_factory):
    output = tmp_path_factory.mktemp("whole") / "raw"
    return output, run(metadata, output)


def test_the_console_shows_one_progress_bar_and_img2dataset_writes_to_its_log(uninterrupted):
    output, result = uninterrupted
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    for line in (*IMG2DATASET_LINES, *TENSORFLOW_NOISE, "LoggerProcess", "Traceback"):
        assert line not in console, console
    assert "downloading" in result.stderr and "5/5 shards" in result.stderr
    assert "download summary" in result.stdout
    log = layout.download_log_path(output).read_text()
    for line in IMG2DATASET_LINES:
        assert line in log


def test_convert_of_the_download_prints_no_tensorflow_start_up_lines(uninterrupted, tmp_path):
    output, _ = uninterrupted
    result = subprocess.run(
        [DATA, "convert", str(output), str(tmp_path), "--name", "demo", "--no-progress"],
        env=user_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for line in TENSORFLOW_NOISE:
        assert line not in result.stdout + result.stderr


def assert_convert_names_the_unfinished_shard(output: Path, into: Path, why: str) -> None:
    """What a stopped download left converts into nothing: convert names the first shard it
    lacks and why, so a partial download never becomes a smaller dataset without a word."""
    result = subprocess.run(
        [DATA, "convert", str(output), str(into), "--name", "demo", "--no-progress"],
        env=user_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    finished = {layout.raw_stats_shard_id(p) for p in output.glob("*_stats.json")}
    first_missing = min(set(range(ROWS // PER_SHARD)) - finished)
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"{output / f'{first_missing:05d}.tfrecord'}: " in lines[0], lines[0]
    assert why in lines[0] and "re-run the same clipa-data download" in lines[0], lines[0]
    assert not (into / "demo").exists()


def interrupt(metadata: Path, output: Path, signals: list[int]) -> subprocess.CompletedProcess:
    """Start a download, send ``signals`` to its process group (as a terminal does) once the
    first shard has finished; return what it printed and its exit code."""
    process = subprocess.Popen(
        command(metadata, output), env=user_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(output.glob("*_stats.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "no shard finished in 5 minutes"
        time.sleep(0.05)
    for number in signals:
        os.killpg(process.pid, number)
        time.sleep(0.3)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_first_ctrl_c_finishes_the_shards_in_flight_and_a_rerun_resumes(
    metadata, uninterrupted, tmp_path
):
    output = tmp_path / "raw"
    stopped = interrupt(metadata, output, [signal.SIGINT])
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count(FIRST_SIGNAL_LINE) == 1, stopped.stderr
    assert "stopped:" in stopped.stderr and "re-run the same command" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "LoggerProcess" not in stopped.stderr
    finished = sorted(output.glob("*_stats.json"))
    assert 1 <= len(finished) < ROWS // PER_SHARD, "the stop came too late to test anything"
    assert_no_half_written_shard(output)
    assert_convert_names_the_unfinished_shard(output, tmp_path / "tfds", "lists this shard")

    resumed = run(metadata, output)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(finished)} by an earlier run, skipped)" in resumed.stdout
    assert contents(output) == contents(uninterrupted[0])


def test_sigterm_then_ctrl_c_stops_at_once_without_a_half_written_shard(
    metadata, uninterrupted, tmp_path
):
    output = tmp_path / "raw"
    stopped = interrupt(metadata, output, [signal.SIGTERM, signal.SIGINT])
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count(f"SIGTERM: {FIRST_SIGNAL_LINE}") == 1
    assert "stopped at once; re-run the same command to resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "LoggerProcess" not in stopped.stderr
    assert_no_half_written_shard(output)
    assert len(list(output.glob("*_stats.json"))) < ROWS // PER_SHARD
    assert_convert_names_the_unfinished_shard(output, tmp_path / "tfds", "did not finish")

    resumed = run(metadata, output)
    assert resumed.returncode == 0, resumed.stderr
    assert contents(output) == contents(uninterrupted[0])


def worker_of(parent: int) -> int:
    """The pid of the img2dataset child (``download_worker``) of the download ``parent``."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # not a process, or gone
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"download_worker" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no download_worker child of {parent}")


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def wait_gone(pid: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while running(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_download_stops_its_img2dataset_and_keeps_the_folder_locked_meanwhile(
    metadata, uninterrupted, tmp_path
):
    """The terminal closed or the command killed: its img2dataset child (its own session, so no
    terminal signal reaches it) used to download on unwatched, and a re-run started a second
    img2dataset beside it, each deleting the other's _tmp. Now the child stops as on a first
    Ctrl-C (the shards in flight finish), and holds the folder's lock until it exits."""
    output = tmp_path / "raw"
    process = subprocess.Popen(
        command(metadata, output), env=user_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(output.glob("*_stats.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no shard finished"
        time.sleep(0.05)
    child = worker_of(process.pid)
    os.kill(child, signal.SIGSTOP)  # held still, so that it outlives its parent for sure
    try:
        process.kill()
        process.wait()
        beside = run(metadata, output)
    finally:
        os.kill(child, signal.SIGCONT)
    assert beside.returncode == 2, beside.stderr
    assert beside.stderr.strip() == (
        f"error: {output}: another clipa-data download is writing here now; let it finish "
        "(or stop it), then run this again"
    )
    wait_gone(child)
    assert len(list(output.glob("*_stats.json"))) < ROWS // PER_SHARD, "it downloaded on"
    assert_no_half_written_shard(output)
    resumed = run(metadata, output)
    assert resumed.returncode == 0, resumed.stderr
    assert contents(output) == contents(uninterrupted[0])
