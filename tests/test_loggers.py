"""``--log tensorboard,wandb``: real 10-step CPU runs through ``clipa-train pretrain`` whose
TensorBoard event files (read with TensorBoard's own reader) and W&B offline run (its ``.wandb``
transaction log, parsed with W&B's own protobuf) hold the scalars of ``metrics.jsonl``; a logger
that cannot start is one warning and the run completes; an unknown logger name is one error."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from typer.testing import CliRunner

from clipa_data.demo import write_demo_validation

pytest.importorskip("tensorboard")

STEPS, LOG_EVERY, BATCH = 10, 2, 4
TRAIN_TAGS = {"loss", "logit_scale", "lr", "samples_per_s", "data_wait_share"}
EVAL_TAGS = {"eval/top1", "eval/top5"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loggers")
    builder = make_builder_dir(root / "data", [make_records(STEPS * BATCH)])
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    return {"builder": builder, "eval": val.root, "classnames": val.classnames_path}


def _options(data: dict[str, Path], out: Path, *more: object) -> list[str]:
    options = [
        "pretrain", "--data", data["builder"], "--out", out, "--model", "clipa-tiny",
        "--image-size", 32, "--text-length", 8, "--text-mask", "truncate",
        "--batch-size", BATCH, "--samples", STEPS * BATCH, "--log-every", LOG_EVERY,
        "--workers", 1, "--no-progress", *more,
    ]  # fmt: skip
    return [str(option) for option in options]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
    }


def _clipa_train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "clipa-train"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _jsonl_scalars(run: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {tag: {step: value}} (numeric fields only, but a window's step count,
    which is the rate's bookkeeping, not a curve)."""
    scalars: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert "window_steps" in record or "loss" not in record, record
        for key, value in record.items():
            if key not in ("step", "time", "window_steps") and isinstance(value, int | float):
                scalars.setdefault(key, {})[record["step"]] = float(value)
    return scalars


def _tensorboard_scalars(directory: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0}).Reload()
    return {
        tag: {event.step: event.value for event in events.Scalars(tag)}
        for tag in events.Tags()["scalars"]
    }


def _wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file. W&B 0.31 no longer ships a Python reader
    (``wandb.sdk.internal.datastore`` is gone), so this undoes its LevelDB-log framing: a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks (crc32, length, type: full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunk, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _finished_wandb_file(run_folder: Path) -> Path:
    """The ``.wandb`` file of an offline run once W&B has written its exit record: ``finish()``
    in this process can return before W&B's service has written the file (it is read here
    right away; a command's own file is complete once the command has exited)."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + 60
    while True:
        files = list(run_folder.glob("run-*.wandb"))
        try:  # a file still being written may end mid-record, or hold no header yet
            kinds = [r.WhichOneof("record_type") for r in _wandb_records(files[0])]
        except (IndexError, AssertionError, struct.error, DecodeError):
            kinds = []
        if "exit" in kinds:
            return files[0]
        assert time.monotonic() < deadline, f"W&B wrote no exit record in {run_folder}: {kinds}"
        time.sleep(0.1)


def _wandb_scalars(path: Path) -> tuple[dict[str, dict[int, float]], object]:
    """({tag: {step: value}} of the history records, the run record)."""
    scalars: dict[str, dict[int, float]] = {}
    run = None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        if kind != "history":
            continue
        items = {  # W&B stores "eval/top1" as the nested key ("eval", "top1")
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in record.history.item
        }
        for key, value in items.items():
            if not key.startswith("_"):
                scalars.setdefault(key, {})[items["_step"]] = float(value)
    return scalars, run


def test_tensorboard_and_wandb_offline_hold_the_metrics_of_metrics_jsonl(tmp_path, data):
    run = tmp_path / "run"
    more = ["--zeroshot", data["eval"], "--classnames", data["classnames"]]
    more += ["--log", "tensorboard,wandb", "--wandb-tags", "tiny,test"]
    done = _clipa_train(_options(data, run, *more), _env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    expected = _jsonl_scalars(run)
    assert set(expected) >= TRAIN_TAGS | EVAL_TAGS
    assert sorted(expected["loss"]) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))

    board = _tensorboard_scalars(run / "tb")
    assert set(board) == set(expected)  # compile counts are None on CPU: in neither
    for tag, values in expected.items():
        assert board[tag] == pytest.approx(values, rel=1e-6), tag  # event files hold float32

    folders = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    logged, wandb_run = _wandb_scalars(next(folders[0].glob("run-*.wandb")))
    assert logged == expected  # JSON in the history: exact
    assert wandb_run.display_name == "run" and list(wandb_run.tags) == ["tiny", "test"]
    assert wandb_run.project == "clipa"
    assert {item.key for item in wandb_run.config.update} >= {"options", "model"}


def test_unknown_logger_name_is_one_error_line(tmp_path, data):
    result = CliRunner().invoke(app, _options(data, tmp_path / "run", "--log", "tensorboard,mlfow"))
    assert_one_line_error(result, "--log", "unknown logger mlfow", "jsonl, tensorboard, wandb")
    assert not (tmp_path / "run").exists()


def test_unwritable_tensorboard_directory_is_one_warning_and_the_run_completes(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    # A file where the directory goes: not writable as a directory even for root (tests may
    # run as root, where a read-only mode bit stops nothing).
    (run / "tb").write_text("in the way")
    done = _clipa_train(_options(data, run, "--log", "tensorboard"), _env(tmp_path))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, done.stderr
    assert "--log tensorboard" in warnings[0] and str(run / "tb") in warnings[0]
    assert "not writable" in warnings[0]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == STEPS // LOG_EVERY


def test_wandb_not_installed_is_one_warning_with_the_install_command(tmp_path, data):
    run = tmp_path / "run"
    # sys.modules[name] = None makes `import wandb` raise ImportError, as if it were absent.
    script = (
        "import sys; sys.modules['wandb'] = None; sys.argv[0] = 'clipa-train'; "
        "from clipa_cli.train_app import main; main()"
    )
    command = [sys.executable, "-c", script, *_options(data, run, "--log", "wandb")]
    done = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, done.stderr
    assert "wandb is not installed" in warnings[0] and "pip install wandb" in warnings[0]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == STEPS // LOG_EVERY
    assert not (tmp_path / "wandb-dir").exists()


def test_wandb_without_an_api_key_is_one_warning_and_the_command_exits(tmp_path, data):
    """wandb keeps the failed ``wandb.init``'s exception, whose frames held the training loop's
    loader: its worker processes were never stopped, and the command, after its summary, waited
    for them forever at exit (they ignore the SIGTERM Python's exit sends them)."""
    run, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    env = {**_env(tmp_path), "HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config")}
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        env.pop(name, None)
    clipa_train = str(Path(sys.executable).parent / "clipa-train")
    command = [clipa_train, *_options(data, run, "--log", "wandb")]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as timeout:
        raise AssertionError(f"no exit after the run: {timeout.stderr}") from None
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "--log wandb is off" in warnings[0], done.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS


def test_a_resume_continues_the_run_directorys_own_wandb_run(tmp_path, monkeypatch):
    """Each ``--resume auto --log wandb`` without ``--wandb-id`` started another W&B run, so a
    preempted run's curve was split over as many runs as it had attempts."""
    from clipa_train.loggers import WANDB_ID_FILE, LoggerConfig, WandbLogger

    pytest.importorskip("wandb")
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    config = LoggerConfig(names=("jsonl", "wandb"))

    def attempt(start_step: int, steps: range, config: LoggerConfig = config) -> str:
        # W&B names an offline run's folder by the second it starts: one WANDB_DIR per attempt
        # keeps two attempts within a second apart.
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / f"wandb-{start_step}"))
        logger = WandbLogger(tmp_path / "run", config)
        logger.start({}, start_step=start_step)
        for step in steps:
            logger.log(step, {"step": step, "loss": float(step)})
        logger.close()
        return logger.run.id

    first = attempt(0, range(1, 5))
    assert (tmp_path / "run" / WANDB_ID_FILE).read_text() == f"{first}\n"
    assert attempt(4, range(5, 9)) == first
    for start, steps in ((0, range(1, 5)), (4, range(5, 9))):  # `wandb sync` sends both
        (run,) = (tmp_path / f"wandb-{start}" / "wandb").glob(f"offline-run-*-{first}")
        logged, record = _wandb_scalars(_finished_wandb_file(run))
        assert record.run_id == first and logged["loss"] == {s: float(s) for s in steps}
    fresh = attempt(0, range(1, 3))  # a new run (step 0) in the directory: a new W&B run
    assert fresh != first
    assert attempt(2, range(3, 4), LoggerConfig(names=("wandb",), wandb_id="mine")) == "mine"


def test_a_wandb_run_id_that_cannot_be_recorded_is_one_warning_and_the_dashboard_goes_on(
    tmp_path, monkeypatch, capsys
):
    """The id file failing to write (a full disk; here a folder in its place) left the started
    W&B run unfinished and the dashboard off; now the run logs and finishes, and one warning
    names the --wandb-id that continues it."""
    from clipa_train.loggers import WANDB_ID_FILE, LoggerConfig, open_loggers

    pytest.importorskip("wandb")
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "run" / WANDB_ID_FILE).mkdir(parents=True)
    loggers = open_loggers(tmp_path / "run", LoggerConfig(names=("wandb",)), enabled=True)
    (logger,) = loggers.loggers
    loggers.write({"step": 1, "loss": 0.5})
    loggers.close()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert line.startswith(f"warning: could not record the W&B run id in {tmp_path / 'run'}")
    assert line.endswith(f"unless given --wandb-id {logger.run.id}"), line
    (run,) = (tmp_path / "wandb-dir" / "wandb").glob(f"offline-run-*-{logger.run.id}")
    logged, _ = _wandb_scalars(_finished_wandb_file(run))
    assert logged["loss"] == {1: 0.5}


def test_a_resume_after_a_partial_last_record_starts_its_records_on_a_new_line(tmp_path):
    """A killed run can leave metrics.jsonl ending mid-record; the resumed run's first record
    goes on its own line (appended to the partial one, both would be unreadable)."""
    from clipa_train.loggers import JsonlLogger
    from clipa_train.run_records import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    logger = JsonlLogger(tmp_path)
    logger.start({})
    logger.log(2, {"step": 2, "loss": 1.5})
    logger.close()
    records, notes = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2] and records[1]["loss"] == 1.5
    assert len(notes) == 1 and "2" in notes[0]  # the partial line, skipped and named
    again = JsonlLogger(tmp_path)  # a file that ends with a newline gets no empty line
    again.start({})
    again.close()
    assert path.read_text().endswith('"loss": 1.5}\n')


def test_a_resumed_run_replaces_the_stopped_attempts_later_tensorboard_events(tmp_path):
    """Resumed from the checkpoint of step 4 after logging up to step 10: TensorBoard shows
    each step once, the re-run's value from step 5 on (the curves doubled back before)."""
    from clipa_train.loggers import TensorBoardLogger

    first = TensorBoardLogger(tmp_path)
    first.start({})
    for step in range(1, 11):
        first.log(step, {"step": step, "loss": 10.0 + step})
    first.close()
    resumed = TensorBoardLogger(tmp_path)
    resumed.start({}, start_step=4)
    for step in range(5, 9):
        resumed.log(step, {"step": step, "loss": 20.0 + step})
    resumed.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    loss = [(event.step, event.value) for event in events.Scalars("loss")]
    assert loss == [(s, 10.0 + s) for s in range(1, 5)] + [(s, 20.0 + s) for s in range(5, 9)]


def test_tensorboard_starts_without_tensorflows_start_up_lines(tmp_path):
    """TensorBoard imports TensorFlow (installed here for TFDS), which printed its absl and
    CPU-feature lines into the run's console."""
    pytest.importorskip("tensorflow")
    script = (
        "import sys; from pathlib import Path; from clipa_train.loggers import TensorBoardLogger;"
        "logger = TensorBoardLogger(Path(sys.argv[1])); logger.start({}); logger.close()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for startup in ("absl::InitializeLog", "cpu_feature_guard"):
        assert startup not in done.stderr, done.stderr
    assert list((tmp_path / "tb").iterdir())  # it did start: an event file


class _DiskFullAfter:
    """A dashboard whose writes fail from its third record on (a full disk under TensorBoard's
    event file, W&B's service process killed): the interface of clipa_train.loggers.Logger."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.steps: list[int] = []

    def start(self, hparams, start_step=0) -> None:
        pass

    def log(self, step, scalars) -> None:
        if len(self.steps) == 2:
            raise OSError(28, "No space left on device")
        self.steps.append(step)

    def close(self) -> None:
        raise OSError(28, "No space left on device")


def test_a_dashboard_failing_mid_run_is_one_warning_and_the_run_record_goes_on(tmp_path, capsys):
    """It ended training with a traceback, no checkpoint and no summary (only a logger that
    could not start was caught)."""
    from clipa_train.loggers import JsonlLogger, Loggers

    jsonl, dashboard = JsonlLogger(tmp_path), _DiskFullAfter()
    jsonl.start({}, 0)
    loggers = Loggers([jsonl, dashboard], dict)
    for step in range(1, 6):
        loggers.write({"step": step, "loss": 1.0 / step})
    loggers.close()
    assert dashboard.steps == [1, 2]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        "warning: --log tensorboard is off from here: OSError: [Errno 28] No space left on device"
    ]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
    jsonl.handle = open(os.devnull, "rb")  # noqa: SIM115 - the run's own record cannot write
    with pytest.raises(OSError):  # metrics.jsonl failing is the run's failure
        Loggers([jsonl], dict).write({"step": 6, "loss": 1.0})
    jsonl.handle.close()
