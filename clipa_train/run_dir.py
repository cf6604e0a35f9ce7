"""The run-directory contract: one run per directory, nothing lost, nothing written early.

- ``--out`` that already holds a run (``RUN_FILES``) is refused unless ``--resume auto|PATH``
  continues it or ``--overwrite`` moves it aside to ``RUN_DIR.old-<UTC time>`` (never deleted):
  re-running into a finished run used to mix two runs' metrics, config and checkpoints.
- ``check_run_dir`` and ``check_resume_step`` run inside ``resolve_stage``, so a refused run
  changes nothing; the directory itself is written only once the model, optimiser and stream
  are restored (the loop writes ``config.json``), so a run that fails its checks leaves none.
- ``--resume`` of a run that already made all its steps does nothing (one line, exit 0); a
  checkpoint past the stage's last step is refused, naming the step budget.
- One stage at a time writes a directory (``writing``): a second run into a run directory in
  use (``--resume auto`` beside a running stage, ``--overwrite`` under it) is refused with one
  line; two of them interleaved their metrics and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from clipa_data.core import layout
from clipa_data.core.atomic import check_writable_folder
from clipa_data.core.errors import ClipaError
from clipa_data.core.run_lock import only_run_in

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")
"""What a stage writes into its run directory; any of them present means it holds a run."""


@contextlib.contextmanager
def writing(out: str | Path) -> Iterator[None]:
    """Hold ``out``'s lock while a stage trains into it (made now if new, and removed again if
    the stage fails before writing anything: a refused run leaves no trace)."""
    out = Path(out).absolute()
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        with only_run_in(out, "clipa-train stage"):
            yield
    finally:
        for folder in created:  # the deepest first, while empty
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def run_files(out: Path) -> list[str]:
    """The names of ``RUN_FILES`` present in ``out`` (empty: no run there)."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []


def check_run_dir(out: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an ``--out`` that already holds a run unless ``--resume`` or ``--overwrite`` says
    what to do with it (one line naming the directory and both fixes)."""
    layout.check_local(out, "--out")  # checkpoints in ./gs:/b/x, not the bucket, otherwise
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClipaError(f"--out {out} is a file, not a run directory; choose another --out")
    check_writable_folder(out, "the run (--out)")
    found = run_files(out)
    if found and not resume and not overwrite:
        checkpoints = out / "checkpoints"
        saved = checkpoints.is_dir() and any(checkpoints.glob("step_*.pt"))
        continued = "continue it with --resume auto, or " if saved else "it saved no step: "
        raise ClipaError(
            f"--out {out} already holds a run ({', '.join(found)}); {continued}start over with "
            f"--overwrite (moves it to {out}.old-<UTC time>)"
        )


def move_aside(out: str | Path) -> Path | None:
    """``--overwrite``: move the run in ``out`` to ``out.old-<UTC time>`` (a free name; never
    deletes); returns the new name, or None when ``out`` holds no run. What is in ``out`` moves,
    not ``out`` itself: the stage's lock (``writing``) is on ``out``'s folder, and a renamed
    folder took it along, leaving the new ``out`` open to a second stage beside this one."""
    out = Path(out)
    if not run_files(out):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, number = out.with_name(f"{out.name}.old-{stamp}"), 1
    while target.exists():
        number += 1
        target = out.with_name(f"{out.name}.old-{stamp}-{number}")
    target.mkdir()
    for entry in sorted(out.iterdir()):
        entry.rename(target / entry.name)
    return target


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint was written after: from its name ``step_NNNNNNNN.pt`` (no read),
    else from the file."""
    from clipa_train.checkpoint import NAME, load_checkpoint

    match = NAME.match(Path(path).name)
    return int(match.group(1)) if match else int(load_checkpoint(Path(path))["step"])


def check_resume_step(resume: str | Path | None, total_steps: int) -> bool:
    """Whether the run resumed from ``resume`` has already made all ``total_steps`` steps
    (nothing to do). A checkpoint past the last step is refused: its schedule ended earlier."""
    if resume is None:
        return False
    step = checkpoint_step(resume)
    if step > total_steps:
        raise ClipaError(
            f"--resume {resume}: the checkpoint is at step {step} but this stage has only "
            f"{total_steps} steps; give --samples or --epochs for more steps, or start a new run "
            "(another --out, or --overwrite)"
        )
    return step == total_steps


def saved_options(resume: Path, parts: tuple[str, ...] = ("options",)) -> tuple[Path, dict]:
    """The ``config.json`` of the run that wrote checkpoint ``resume`` and its options (with
    ``parts``, those parts merged in order, e.g. ``given`` over ``options``); empty when there
    is none or it cannot be read: then there is nothing to compare with."""
    config = Path(resume).resolve().parent.parent / "config.json"
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError):
        return config, {}
    found = [saved.get(part) for part in parts] if isinstance(saved, dict) else []
    return config, {k: v for part in found if isinstance(part, dict) for k, v in part.items()}


def check_resume_settings(
    resume: Path | None, batch_size: int, from_checkpoint: str | None
) -> None:
    """Refuse to resume a run with settings its ``config.json`` contradicts (a checkpoint
    without its run's config has nothing to compare with):

    - another global batch size: steps, learning-rate schedule and samples seen are counted in
      the run's batches, so the resumed run would train neither run's number of samples, on a
      schedule bent mid-way;
    - another ``--from``: the resumed weights are the run's own, so the new one would be
      ignored, yet ``config.json`` would record it (and ``clipa-train report`` chain the run to
      the wrong parent).
    """
    if resume is None:
        return
    config, options = saved_options(resume)
    _check_same_batch_size(resume, config, options.get("batch_size"), batch_size)
    if from_checkpoint:
        _check_same_origin(resume, config, options.get("from_checkpoint"), from_checkpoint)


LENGTH_OPTIONS = ("samples", "epochs", "samples_per_epoch")
"""A resume may change the stage's length (to train a finished run on, say): said in a note,
as the schedule is then recomputed over the new length."""

TRAJECTORY_OPTIONS = (
    "lr", "warmup_steps", "weight_decay", "beta1", "beta2", "eps", "grad_clip_norm", "seed",
    "loss", "pos_embed", "image_size", "image_mask", "mask_ratio", "text_length", "text_mask",
    "crop_scale_min", "color_jitter", "color_jitter_prob", "grayscale_prob", "tokenizer",
    "image_norm", "text_source", "text_field", "shuffle_buffer", "reference_exact",
)  # fmt: skip
"""Options that shape a run's schedule, data or model: a resume keeps them. The rest (logging,
checkpoints, workers, evaluation, --accum-steps, which is exact) may change between attempts;
the length (``LENGTH_OPTIONS``) with a note."""


def check_resume_options(resume: Path | None, run_config: dict) -> None:
    """Refuse a resume whose options (``run_config``: what ``config.json`` will hold) differ
    from its run's ``config.json`` in a ``TRAJECTORY_OPTIONS`` one: a flag left off
    (``--samples`` forgotten: one epoch, a cosine schedule recomputed over fewer steps) or
    changed gave another run that called itself the same one, and rewrote ``config.json`` as
    if it had been. Options whose defaults are worked out (the warm-up, the lr) compare as
    given, so a difference is said once, where the user made it."""
    shown, config = _differences(resume, run_config, TRAJECTORY_OPTIONS)
    if not shown:
        return
    raise ClipaError(
        f"--resume {resume}: the run trained with {shown} (its {config}); resume with the "
        "run's options, or start a new run (another --out) from these weights with --from"
    )


def resume_length_notes(resume: Path | None, run_config: dict) -> list[str]:
    """One note when a resume changes the stage's length (``LENGTH_OPTIONS``): a forgotten
    ``--samples`` shortens the run, so it is said, with the steps it now has."""
    shown, config = _differences(resume, run_config, LENGTH_OPTIONS)
    if not shown:
        return []
    steps = run_config["derived"]["total_steps"]
    return [
        f"note: --resume {resume}: the run trained with {shown} (its {config}): it now ends "
        f"at step {steps}, its learning-rate schedule recomputed for {steps} steps"
    ]


def _differences(
    resume: Path | None, run_config: dict, names: tuple[str, ...]
) -> tuple[str, Path | None]:
    """(``--samples 80 (this command: no --samples); ...`` for the ``names`` whose value
    differs between a resume's run and this command's ``run_config``, "" for none; the run's
    config.json)."""
    if resume is None:
        return "", None
    config, saved = saved_options(resume, ("options", "given"))
    # tuples as lists, as config.json holds them
    current = json.loads(json.dumps({**run_config["options"], **run_config["given"]}))
    shown = "; ".join(
        f"{_said(name, saved[name])} (this command: {_said(name, current[name])})"
        for name in names
        if name in saved and name in current and not _same(name, saved[name], current[name])
    )
    return shown, config


def _same(name: str, saved, current) -> bool:
    """Whether an option's recorded and current values agree; a vocabulary path an older run
    recorded as typed (relative) counts from this folder, as the run was started."""
    if name == "tokenizer" and isinstance(saved, str) and isinstance(current, str):
        saved, current = (os.path.abspath(os.path.expanduser(v)) for v in (saved, current))
    return saved == current


def _said(name: str, value) -> str:
    """An option as given: ``--samples 80``, ``no --lr``, ``--color-jitter 0.4,0.4,0.4,0.1``."""
    flag = "--" + name.replace("_", "-")
    if value is None:
        return f"no {flag}"
    return f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value}"


def _check_same_batch_size(resume: Path, config: Path, saved, batch_size: int) -> None:
    if isinstance(saved, int) and saved != batch_size:
        raise ClipaError(
            f"--resume {resume}: the run trained with --batch-size {saved} (its {config}), this "
            f"command gives {batch_size}; resume with --batch-size {saved} (--accum-steps fits "
            f"it in less memory), or start a new run from its weights with --from {resume}"
        )


def _check_same_origin(resume: Path, config: Path, saved, from_checkpoint: str) -> None:
    if not isinstance(saved, str) or not Path(saved).exists():
        return  # an older run's relative path from another folder: nothing to compare
    if not Path(from_checkpoint).exists() or not Path(saved).samefile(from_checkpoint):
        raise ClipaError(
            f"--resume {resume}: the run started --from {saved} (its {config}), this command "
            f"gives --from {from_checkpoint}; resume with the same --from, or start a new run "
            "(another --out) to fine-tune the other checkpoint"
        )
