"""Where rank 0's metrics records go: ``metrics.jsonl`` always, TensorBoard and W&B on request.

Each logger has one interface: ``start(hparams)`` (the resolved config as hyper-parameters),
``log(step, scalars)`` and ``close()``. A logger that cannot start (library missing, directory
not writable), or that fails later (a full disk under TensorBoard's event file, W&B's service
process killed), costs one warning line and is left out; the run goes on with the others,
because losing a dashboard must never lose a training run. ``metrics.jsonl`` is the run's own
record: its failure is the run's failure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clipa_data.core.atomic import atomic_writer
from clipa_data.core.errors import ClipaError

LOGGERS = ("jsonl", "tensorboard", "wandb")
"""Every logger ``--log`` accepts (``jsonl``, the run's ``metrics.jsonl``, is always on)."""


def parse_loggers(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ``("jsonl", "tensorboard", "wandb")``; unknown names refused."""
    if value is None:
        names: list[str] = []
    elif isinstance(value, str):
        names = [name.strip() for name in value.split(",") if name.strip()]
    else:
        names = [str(name).strip() for name in value]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ClipaError(
            f"--log: unknown logger {', '.join(unknown)}; choose from {', '.join(LOGGERS)} "
            "(comma-separated, e.g. --log tensorboard,wandb)"
        )
    return tuple(name for name in LOGGERS if name == "jsonl" or name in names)


@dataclass(frozen=True)
class LoggerConfig:
    """Which loggers rank 0 writes to, and the W&B run they report as."""

    names: tuple[str, ...] = ("jsonl",)
    """Loggers in use (from :data:`LOGGERS`; ``jsonl`` always)."""
    wandb_project: str = "clipa"
    """W&B project the run is logged under."""
    wandb_name: str | None = None
    """W&B run name (``None``: the run directory's name)."""
    wandb_tags: tuple[str, ...] = ()
    """W&B tags of the run."""
    wandb_id: str | None = None
    """W&B run id to continue (``None``: a new W&B run; a resume, the run directory's own)."""


class Logger(Protocol):
    """One destination of the metrics records."""

    name: str
    """Its ``--log`` name (one of ``LOGGERS``)."""

    def start(self, hparams: dict[str, Any], start_step: int = 0) -> None: ...
    def log(self, step: int, scalars: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """Rank 0's ``metrics.jsonl`` (appended, one record per log step, exactly as recorded)."""

    name = "jsonl"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.handle = run_dir, None

    def start(self, hparams: dict[str, Any], start_step: int = 0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        self.handle = open(path, "a")  # noqa: SIM115 - closed in close()
        if _ends_mid_line(path):  # a killed run's partial record: end it, or it eats our first
            self.handle.write("\n")

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        self.handle.write(json.dumps(scalars) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _ends_mid_line(path: Path) -> bool:
    """Whether ``path`` is non-empty and its last byte is not a newline."""
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() == 0:
            return False
        stream.seek(-1, os.SEEK_END)
        return stream.read(1) != b"\n"


def _numeric(scalars: dict[str, Any]) -> dict[str, float]:
    """The plotted fields: numbers, not the step itself, the wall time, a window's step count
    (bookkeeping for the rate) or a ``None`` count."""
    return {
        key: float(value)
        for key, value in scalars.items()
        if key not in ("step", "time", "window_steps")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


class TensorBoardLogger:
    """Event files in ``RUN_DIR/tb`` through ``torch.utils.tensorboard``."""

    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        self.directory, self.writer = run_dir / "tb", None

    def start(self, hparams: dict[str, Any], start_step: int = 0) -> None:
        # TensorBoard imports TensorFlow where it is installed, which prints its start-up lines
        # (absl, CPU features) unless told not to, as clipa's own TensorFlow import does.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch raises this when the tensorboard package is missing
            raise LoggerUnavailable(
                f"tensorboard is not installed ({error}); pip install tensorboard"
            ) from error
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".write-check"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise LoggerUnavailable(
                f"TensorBoard directory {self.directory} is not writable ({error.strerror})"
            ) from error
        # A run resumed from the checkpoint of step S logs S+1 on again: purge the stopped
        # attempt's events from there, or every curve doubles back (metrics.jsonl keeps them,
        # and readers take the re-run's records).
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge)
        self.writer.add_text("config", f"```\n{json.dumps(hparams, indent=2)}\n```", 0)

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        for key, value in _numeric(scalars).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


WANDB_ID_FILE = "wandb_run_id"
"""The run directory's record of its W&B run id (a resume logs to the same W&B run)."""


class WandbLogger:
    """A W&B run (``WANDB_MODE=offline`` keeps it on disk: ``RUN_DIR/wandb``)."""

    name = "wandb"

    def __init__(self, run_dir: Path, config: LoggerConfig) -> None:
        self.run_dir, self.config, self.run = run_dir, config, None

    def start(self, hparams: dict[str, Any], start_step: int = 0) -> None:
        try:
            import wandb
        except ImportError as error:
            raise LoggerUnavailable("wandb is not installed; pip install wandb") from error
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_id = self.config.wandb_id or (self._saved_id() if start_step else None)
        self.run = wandb.init(
            project=self.config.wandb_project,
            name=self.config.wandb_name or self.run_dir.resolve().name,
            tags=list(self.config.wandb_tags) or None,
            id=run_id,
            resume="allow" if run_id else None,
            # WANDB_DIR, when set, wins: the user chose where W&B keeps its files.
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            config=hparams,
        )
        self._save_id()

    def _save_id(self) -> None:
        """Keep the run id beside the run, so a --resume continues this W&B run rather than
        starting one per attempt. Failing that, the dashboard goes on and one warning says how
        a resume continues it (the W&B run stays open, and is finished with the stage)."""
        path = self.run_dir / WANDB_ID_FILE
        try:
            with atomic_writer(path) as handle:
                handle.write(f"{self.run.id}\n".encode())
        except OSError as error:
            print(
                f"warning: could not record the W&B run id in {path} ({error.strerror or error});"
                f" a --resume starts a new W&B run unless given --wandb-id {self.run.id}",
                file=sys.stderr,
            )

    def _saved_id(self) -> str | None:
        """The W&B run id an earlier attempt of this run directory logged to (None: none)."""
        path = self.run_dir / WANDB_ID_FILE
        return (path.read_text().strip() or None) if path.is_file() else None

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        self.run.log(_numeric(scalars), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


class LoggerUnavailable(Exception):
    """A logger cannot start; the message is the one warning line the user sees."""


class Loggers:
    """Every started logger of rank 0; other ranks get an empty set (they log nothing)."""

    def __init__(self, loggers: list[Logger], extra: Callable[[], dict[str, float]]) -> None:
        self.loggers, self.extra = loggers, extra

    def write(self, record: dict[str, Any]) -> None:
        """Send one metrics record (``record["step"]``) to every logger."""
        extra = self.extra() if len(self.loggers) > 1 else {}
        for logger in list(self.loggers):
            # metrics.jsonl stays exactly the loop's record; the dashboards also get memory.
            scalars = record if isinstance(logger, JsonlLogger) else {**record, **extra}
            self._guarded(logger, logger.log, record["step"], scalars)

    def close(self) -> None:
        for logger in list(self.loggers):
            self._guarded(logger, logger.close)

    def _guarded(self, logger: Logger, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)``; a dashboard that fails is dropped with one warning (the run goes
        on); ``metrics.jsonl`` failing is the run's failure."""
        if isinstance(logger, JsonlLogger):
            call(*args)
            return
        try:
            call(*args)
        except Exception as error:
            self.loggers.remove(logger)
            detail = (str(error).strip().splitlines() or [""])[0][:200]
            reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
            print(f"warning: --log {logger.name} is off from here: {reason}", file=sys.stderr)


def _build(name: str, run_dir: Path, config: LoggerConfig) -> Logger:
    """The logger called ``name`` (one of ``LOGGERS``)."""
    if name == "jsonl":
        return JsonlLogger(run_dir)
    if name == "tensorboard":
        return TensorBoardLogger(run_dir)
    return WandbLogger(run_dir, config)


def open_loggers(
    run_dir: Path,
    config: LoggerConfig,
    *,
    enabled: bool,
    hparams: dict[str, Any] | None = None,
    extra: Callable[[], dict[str, float]] = dict,
    start_step: int = 0,
) -> Loggers:
    """Start the loggers of ``config`` (``enabled``: rank 0); a failing one is one warning.
    ``start_step``: the step a resumed run continues from (0: a new run)."""
    if not enabled:
        return Loggers([], extra)
    started: list[Logger] = []
    for name in config.names:
        logger = _build(name, run_dir, config)
        if name == "jsonl":  # the run's own record: its failure is the run's failure
            logger.start(hparams or {}, start_step)
            started.append(logger)
            continue
        try:
            logger.start(hparams or {}, start_step)
        except LoggerUnavailable as error:
            print(f"warning: --log {name} is off: {error}", file=sys.stderr)
            continue
        except Exception as error:  # a dashboard's own failure must not end the run
            print(f"warning: --log {name} is off: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        started.append(logger)
    return Loggers(started, extra)
