"""Finished (or stopped) run directories read back: ``config.json``, ``metrics.jsonl`` and
``summary.json``, with samples seen and analytic training FLOPs at every record.

A run killed mid-write leaves a partial last line in ``metrics.jsonl``: it is skipped and named
once in the run's ``notes`` (a resumed run appends after it, so an unreadable line can sit in the
middle too; it is skipped the same way). The records that a stopped attempt wrote past the
checkpoint a resumed run started from are superseded by the re-run's and left out, with a note.
A directory without ``metrics.jsonl`` or ``config.json`` is one ``ClipaError``. Stages chained
by ``--from`` (a fine-tune of an earlier run's checkpoint, both given) continue that run's
samples and FLOPs, so a recipe's stages draw as one curve. Torch-free.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from clipa_data.core.errors import ClipaError
from clipa_train.flops import kept_patches, train_flops_per_sample
from clipa_train.model.config import ModelConfig


@dataclass(frozen=True)
class RunRecords:
    """One run directory, read."""

    path: Path
    """The run directory (``--out`` of the stage)."""
    config: dict
    """``config.json``: resolved options, derived values and the model."""
    summary: dict | None
    """``summary.json``; None when the run never finished (killed, still running)."""
    train: tuple[dict, ...]
    """Training records (those with a loss), in step order; of a step that a resumed run ran
    again, only the re-run's record."""
    evals: tuple[dict, ...]
    """Zero-shot records (those with ``eval/top1``), in step order, the same way."""
    notes: tuple[str, ...]
    """Problems read past, one line each (a skipped partial record, superseded records)."""
    start_samples: int = 0
    """Samples the chained earlier stage saw before this run started (0 unless chained)."""
    start_flops: float = 0.0
    """Training FLOPs of the chained earlier stage before this run started."""
    inherited_model: str | None = None
    """The preset of the run this one started ``--from`` (a fine-tune without ``--model``
    records none of its own)."""
    label: str = ""
    """How tables and legends name the run: its folder's trailing names, as many as tell it
    from the other runs of the report (``a/pretrain`` beside ``b/pretrain``)."""

    @property
    def name(self) -> str:
        return self.label or self.path.name

    @property
    def options(self) -> dict:
        return self.config["options"]

    @property
    def stage(self) -> str:
        return self.options["stage"]

    @cached_property
    def model(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config["model"], source=f"{self.path}/config.json")

    @property
    def image_tokens(self) -> int:
        """Patch tokens per image the vision tower ran on (after the image mask)."""
        return kept_patches(self.model, self.options["image_mask"], self.options["mask_ratio"])

    @property
    def text_tokens(self) -> int:
        return self.model.text.context_length

    @property
    def family(self) -> str:
        """The model preset, or the architecture when the stage took it from a checkpoint."""
        vision = self.model.vision
        return (
            self.options.get("model")
            or self.inherited_model
            or f"ViT w{vision.width} l{vision.layers}/{vision.patch_size}"
        )

    @cached_property
    def flops_per_sample(self) -> float:
        return train_flops_per_sample(self.model, self.image_tokens, self.text_tokens)

    def samples(self, step: int) -> int:
        """Samples seen by the end of ``step`` (counting a chained earlier stage)."""
        return self.start_samples + step * self.options["batch_size"]

    def flops(self, step: int) -> float:
        """Training FLOPs spent by the end of ``step`` (counting a chained earlier stage)."""
        return self.start_flops + step * self.options["batch_size"] * self.flops_per_sample

    @property
    def last_step(self) -> int:
        """The last step made: the last one logged, or a stopped run's later saved step (a
        stop saves the step it reached, which --log-every may not have logged)."""
        logged = max((r["step"] for r in self.train), default=0)
        saved = (self.summary or {}).get("steps")
        return max(logged, saved) if isinstance(saved, int) else logged

    @property
    def finished(self) -> bool:
        """Whether the run made all its steps: a ``summary.json`` of a run that was not
        stopped, at its last step, and no later record (a resumed attempt still running keeps
        the earlier attempt's summary until it ends)."""
        summary = self.summary or {}
        steps = summary.get("steps")
        return (
            isinstance(steps, int)
            and steps == summary.get("total_steps")
            and not any(summary.get(flag) for flag in ("stopped", "diverged", "failure"))
            and self.last_step <= steps
        )

    @property
    def final_top1(self) -> float | None:
        """The last zero-shot top-1; of a finished run only one made at its last step (when
        its final evaluation was cut short, the last one is mid-schedule)."""
        if not self.evals or self.final_eval_cut:
            return None
        return self.evals[-1]["eval/top1"]

    @property
    def final_eval_cut(self) -> bool:
        """Whether the run finished its steps but its final evaluation was cut short (Ctrl-C):
        its summary says so, or (a summary of an older clipa) its last evaluation is earlier."""
        if not self.finished:
            return False
        if (self.summary or {}).get("final_eval_cut"):
            return True
        return bool(self.evals) and self.evals[-1]["step"] < self.last_step


def _runs_below(path: Path) -> list[Path]:
    """The run directories directly in ``path``, in the order they started."""
    runs = [child for child in path.iterdir() if (child / "config.json").is_file()]
    return sorted(runs, key=lambda run: (run / "config.json").stat().st_mtime)


def read_run(path: Path) -> RunRecords:
    """One run directory; a ClipaError names a missing or unreadable file."""
    path = Path(path)
    if not path.is_dir():
        raise ClipaError(f"{path}: not a directory; give run directories (--out of clipa-train)")
    for needed in ("config.json", "metrics.jsonl"):
        if not (path / needed).is_file():
            runs = _runs_below(path)
            if runs:  # a clipa-train recipe --out: one run directory per stage
                raise ClipaError(
                    f"{path} holds run directories, not a run: pass them (in the order they "
                    f"ran): {' '.join(str(run) for run in runs)}"
                )
            raise ClipaError(
                f"{path}: no {needed}, so not a clipa-train run directory; give the --out "
                "directory of a pretrain or finetune run"
            )
    config = _read_json(path / "config.json")
    _check_run_config(path / "config.json", config)
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else None
    records, notes = read_metrics(path / "metrics.jsonl")
    train, replaced_train = latest_attempt([r for r in records if "loss" in r])
    evals, replaced_evals = latest_attempt([r for r in records if "eval/top1" in r])
    if replaced_train or replaced_evals:
        notes.append(
            f"{path}/metrics.jsonl: {replaced_train + replaced_evals} records of steps that a "
            "resumed run ran again were replaced by the re-run's"
        )
    return RunRecords(
        path=path,
        config=config,
        summary=summary,
        train=tuple(train),
        evals=tuple(evals),
        notes=tuple(notes),
    )


def latest_attempt(records: list[dict]) -> tuple[list[dict], int]:
    """One kind of record (steps rising within an attempt), with the records that a later
    attempt superseded left out, and how many those were.

    A run resumed from a checkpoint at step S appends from step S+1 on, after the records the
    stopped attempt wrote past S: the records past S belong to the abandoned attempt. A training
    record's window starts at S (``window_steps``), so its first record says where S was, also
    when it is logged at a step the abandoned attempt did not reach (another ``--log-every``);
    otherwise a step that does not rise marks the resume.
    """
    kept: list[dict] = []
    replaced = 0
    for record in records:
        start = record["step"] - max(int(record.get("window_steps") or 1), 1)
        while kept and kept[-1]["step"] > start:
            kept.pop()
            replaced += 1
        kept.append(record)
    return kept, replaced


def throughput(records: list[dict], start_step: int = 0) -> tuple[float | None, float | None]:
    """(samples per second, data-wait share) of training records' windows all together, each
    window weighted by its time: a mean of the windows' figures counts the first window (worker
    start-up, the first step's compile) and a short last one like full windows. A window's time
    is its steps over its rate, in units of one batch, which cancel out (one batch size a run).
    Its steps are the record's ``window_steps`` (the first window after a resume starts at the
    checkpoint, which need not be a logged step), else the gap to the previous record.
    """
    steps = seconds = waited = 0.0
    previous = start_step
    for record in records:
        rate = record.get("samples_per_s")
        span = record.get("window_steps", record["step"] - previous)
        previous = record["step"]
        if not rate or span <= 0:
            continue
        window = span / rate
        steps, seconds = steps + span, seconds + window
        waited += record.get("data_wait_share", 0.0) * window
    return (steps / seconds, waited / seconds) if seconds else (None, None)


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """The records of a ``metrics.jsonl`` and one note naming any skipped lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records, skipped = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            skipped.append(number)
    if not skipped:
        return records, []
    where = "the partial last line" if skipped == [len(lines)] else "unreadable lines"
    listed = ", ".join(map(str, skipped))
    return records, [f"{path}: skipped {where} {listed} (a record cut short by a stop mid-write)"]


def read_runs(paths: list[Path]) -> list[RunRecords]:
    """The runs in the order given; a stage started ``--from`` a checkpoint of an earlier run in
    the list continues that run's samples and FLOPs."""
    runs: list[RunRecords] = []
    read = [read_run(path) for path in paths]
    for index, run in enumerate(read):
        parent = _chained_parent(run, runs)
        later = None if parent else _chained_parent(run, read[index + 1 :])
        if parent is not None:
            step = _checkpoint_step(run.options.get("from_checkpoint")) or parent.last_step
            run = replace(
                run, start_samples=parent.samples(step), start_flops=parent.flops(step),
                inherited_model=parent.family,
            )  # fmt: skip
        elif later is not None:  # its samples and FLOPs would start at 0, unsaid
            note = (
                f"{run.path} started --from a checkpoint of {later.path}, given after it: give "
                "a recipe's stages in order, so its samples and FLOPs continue that run's"
            )
            run = replace(run, notes=(*run.notes, note))
        runs.append(run)
    labels = unique_labels([run.path for run in runs])
    return [replace(run, label=label) for run, label in zip(runs, labels, strict=True)]


def unique_labels(paths: list[Path]) -> list[str]:
    """For each path, its fewest trailing folder names that no other path ends with."""
    parts = [Path(path).resolve().parts for path in paths]
    labels = []
    for index, own in enumerate(parts):
        others = [other for number, other in enumerate(parts) if number != index]
        depth = 1
        while depth < len(own) and any(other[-depth:] == own[-depth:] for other in others):
            depth += 1
        labels.append(str(Path(*own[-depth:])))
    return labels


def _chained_parent(run: RunRecords, earlier: list[RunRecords]) -> RunRecords | None:
    source = run.options.get("from_checkpoint")
    if not source:
        return None
    resolved = Path(source).resolve()
    for candidate in reversed(earlier):
        if resolved.is_relative_to(candidate.path.resolve()) or _names_run(source, candidate.path):
            return candidate
    return None


def _names_run(source: str, run_dir: Path) -> bool:
    """Whether checkpoint path ``source`` names ``run_dir`` by its trailing folders: older runs
    recorded ``--from`` as typed (relative to wherever they were started), and a run directory
    may since have moved, so ``rr/pretrain/checkpoints/step_2.pt`` matches ``.../rr/pretrain``."""
    folder = Path(source).parent
    folder = folder.parent if folder.name == "checkpoints" else folder
    parts = tuple(part for part in folder.parts if part not in ("/", ".", ".."))
    return bool(parts) and run_dir.resolve().parts[-len(parts) :] == parts


def _checkpoint_step(source: str | None) -> int | None:
    """The step in a ``step_00001234.pt`` checkpoint name (None for other names)."""
    match = re.search(r"step_(\d+)", Path(source).name) if source else None
    return int(match.group(1)) if match else None


RUN_CONFIG_OPTIONS = ("stage", "batch_size", "image_mask", "mask_ratio")
"""The ``config.json`` options a report reads (besides the model)."""


def _check_run_config(path: Path, config: dict) -> None:
    """A ``config.json`` the report can read: its options and model, or one line."""
    options = config.get("options")
    lacking = [] if isinstance(options, dict) else ["options"]
    lacking += [] if isinstance(config.get("model"), dict) else ["model"]
    if not lacking:
        lacking = [f"options.{name}" for name in RUN_CONFIG_OPTIONS if name not in options]
    if lacking:
        raise ClipaError(
            f"{path}: no {', '.join(lacking)}, so not the config.json of a clipa-train run; "
            "give run directories as clipa-train pretrain/finetune wrote them"
        )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ClipaError(
            f"{path}: unreadable ({error}); was the run directory copied whole?"
        ) from None
    if not isinstance(value, dict):
        raise ClipaError(f"{path}: not a JSON object; was the run directory copied whole?")
    return value
