"""Training checkpoints: one file per save, written atomically by rank 0, resumable exactly.

A checkpoint holds the model, the optimiser, the schedule step, every rank's stream state and RNG
states, the architecture and the resolved run config. Files are
``<run>/checkpoints/step_00001234.pt``; ``--resume auto`` takes the highest step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipa_data.core import layout
from clipa_data.core.atomic import atomic_writer, remove_temporaries
from clipa_data.core.errors import AgreedError, ClipaError
from clipa_train.backend import Backend
from clipa_train.sharding import full_state, load_full_state

FORMAT = "clipa-checkpoint"
VERSION = 1
TORCH_ZIP_MAGIC = b"PK\x03\x04"
"""How every ``torch.save`` file since PyTorch 1.6 begins (a zip archive)."""
PICKLE_PROTOCOL_OPCODE = b"\x80"
"""How older ``torch.save`` files (``_use_new_zipfile_serialization=False``) begin."""
NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint after ``step`` optimiser steps lives."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), entry) for entry in directory.iterdir() if (m := NAME.match(entry.name))
    ]
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def resolve_resume(resume: str | Path | None, directory: Path) -> Path | None:
    """``--resume``: None → start fresh; ``auto`` → the latest checkpoint in ``directory``
    (an error when there is none); anything else → that file, which must exist."""
    if resume is None or str(resume) == "":
        return None
    if str(resume) == "auto":
        latest = latest_checkpoint(directory)
        if latest is None:
            raise ClipaError(
                f"--resume auto: no checkpoint in {directory}; start without --resume (with "
                "--overwrite if the run directory holds a run) or point --resume at a checkpoint "
                "file"
            )
        return latest
    layout.check_local(resume, "--resume", read=True)
    path = Path(resume)
    refuse_folder(path, "resume from", "or --resume auto")
    if not path.is_file():
        raise ClipaError(f"--resume {path}: no such checkpoint file")
    return path


EXPORTED_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
"""The weights files of a ``clipa-train export --format openclip-dir|safetensors`` folder."""


def refuse_folder(path: Path, verb: str, other: str = "") -> None:
    """A folder given where a checkpoint file goes (a run directory, its ``checkpoints/``) is
    refused in one line naming its newest checkpoint, so the fix is one copy-paste away."""
    path = Path(path)
    if not path.is_dir():
        return
    newest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    exported = [path / name for name in EXPORTED_WEIGHTS if (path / name).is_file()]
    if newest is None and exported:
        raise ClipaError(
            f"{path} is an exported model folder; {verb} its weights file: {exported[0]} "
            "(its open_clip_config.json beside it is read too)"
        )
    if newest is None:
        raise ClipaError(
            f"{path} is a directory without checkpoints; {verb} a checkpoint file "
            f"(RUN/checkpoints/step_*.pt){' ' + other if other else ''}"
        )
    raise ClipaError(
        f"{path} is a run directory, not a checkpoint file; {verb} one of its checkpoints, "
        f"e.g. the newest: {newest}{' (' + other + ')' if other else ''}"
    )


def to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached on the CPU (XLA-safe)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(item) for item in value)
    return value


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DDP's wrappers (or the model itself), so state
    dicts never carry their ``_orig_mod.`` / ``module.`` prefixes."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        inner = getattr(model, "module", None) if inner is None else inner
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream_state: dict,
    backend: Backend,
    run_config: dict | None = None,
    keep: int = 0,
) -> Path:
    """Write the checkpoint after ``step`` steps. Every rank must call it (it gathers each rank's
    stream and RNG state, and under FSDP one full state dict); rank 0 writes. ``keep`` > 0
    deletes all but the newest ``keep`` (``stale_checkpoints``)."""
    model = unwrap(model)
    model_state, optimizer_state = full_state(model, optimizer)
    per_rank = backend.gather_objects({"stream": stream_state, "rng": backend.rng_state()})
    path = checkpoint_path(directory, step)
    failure = None
    if backend.is_main:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "world": backend.world,
            "architecture": model.config.to_dict(),
            "model": model_state,
            "optimizer": optimizer_state,
            "ranks": per_rank,
            "config": run_config or {},
        }
        try:
            _write(path, to_cpu(payload))  # to_cpu: on XLA it materialises, outside any step
        except ClipaError as error:
            failure = str(error)
        else:
            for old in stale_checkpoints(directory, path, keep) if keep > 0 else []:
                old.unlink()
    # Every rank learns how the write went (rank 0 leaving alone with its error killed the
    # others waiting for it with gloo's or NCCL's traceback): rank 0 says it for all.
    failure = backend.gather_objects(failure)[0]
    if failure is not None:
        raise AgreedError(failure, backend.is_main)
    return path


def _write(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically, or fail with one line naming it: a full disk
    (or a file-size limit) leaves no partial file and every earlier checkpoint as it was."""
    try:
        with atomic_writer(path) as handle:
            torch.save(payload, handle)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports ENOSPC as RuntimeError
        earlier = [p for _, p in list_checkpoints(path.parent) if p != path]
        kept = f"the latest intact one is {earlier[-1]}" if earlier else "no earlier one exists"
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ClipaError(
            f"could not write checkpoint {path} ({detail}): is the disk full? Nothing was "
            f"kept of it and {kept}; free space and continue with --resume auto"
        ) from None


def stale_checkpoints(directory: Path, newest: Path, keep: int) -> list[Path]:
    """What ``keep`` deletes after ``newest`` was written: all but ``newest`` and the ``keep`` - 1
    before it. Never ``newest`` (the summary names it) nor a later step: a run resumed from an
    earlier checkpoint finds later ones, and those are not the keep-newest rule's to delete."""
    step = int(NAME.match(Path(newest).name).group(1))
    earlier = [path for number, path in list_checkpoints(directory) if number < step]
    return earlier[: max(len(earlier) - (keep - 1), 0)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU), or fail with one line.

    Checkpoints hold only tensors and plain values, so they load with ``weights_only=True``
    (no arbitrary code runs while reading a file).
    """
    payload = _read(Path(path), fix="delete it and resume from an earlier checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ClipaError(
            f"{path} is not a clipa training checkpoint; to start from OpenCLIP/CLIPA weights "
            "use them as pretrained weights instead of resuming"
        )
    return payload


def architecture_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``field: checkpoint X, model Y`` for every differing architecture field."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += architecture_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: checkpoint {old!r}, model {new!r}")
    return differences


def restore_checkpoint(
    payload: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    backend: Backend,
    source: str = "checkpoint",
) -> tuple[int, dict]:
    """Load model, optimiser and this rank's RNG state; return (step, this rank's stream state).

    A checkpoint of another architecture is refused with the differing fields named.
    """
    model = unwrap(model)
    # Read through ModelConfig so checkpoints of older clipa versions (fewer fields, old pool
    # names) compare by what they build, not by how they spelled it.
    saved = type(model.config).from_dict(payload["architecture"], source=source).to_dict()
    differences = architecture_differences(saved, model.config.to_dict())
    if differences:
        raise ClipaError(
            f"{source} was written for a different model ({'; '.join(differences[:3])}); "
            "resume with the same preset and sizes, or load it as pretrained weights"
        )
    load_full_state(model, optimizer, payload["model"], payload["optimizer"])
    ranks = payload["ranks"]
    mine = ranks[backend.rank] if len(ranks) == backend.world else ranks[0]
    backend.set_rng_state(mine["rng"])
    return int(payload["step"]), mine["stream"]


SUPERSEDED = "superseded"
"""The folder of ``checkpoints/`` that holds the checkpoints a resume from an earlier step left
behind (another attempt's, not this one's)."""


def supersede_later(directory: Path, step: int) -> tuple[list[int], Path | None]:
    """Move the checkpoints past ``step`` (of an attempt a resume from ``step`` abandoned) into
    ``directory/superseded/after_step_N/``: kept, but no longer the latest that ``--resume
    auto`` continues (it picks the highest step, so it went back to the abandoned attempt and,
    when that one had finished, said there was nothing to do). Returns their steps and folder."""
    later = [(number, path) for number, path in list_checkpoints(directory) if number > step]
    if not later:
        return [], None
    base = Path(directory) / SUPERSEDED / f"after_step_{step:08d}"
    folder, copy = base, 1
    while folder.exists():
        copy += 1
        folder = base.with_name(f"{base.name}_{copy}")
    folder.mkdir(parents=True)
    for _, path in later:
        path.rename(folder / path.name)
    return [number for number, _ in later], folder


def clean_directory(directory: Path) -> None:
    """Remove temporary files an interrupted save left behind."""
    remove_temporaries(Path(directory))


def _read(path: Path, fix: str) -> Any:
    """``torch.load`` of ``path`` (tensors and plain values only), or one line naming the
    file and ``fix``."""
    layout.check_local(path, "checkpoint", read=True)
    refuse_folder(path, "use")
    if not path.is_file():
        raise ClipaError(f"checkpoint {path} does not exist")
    head = _head(path)
    safetensors = is_safetensors(head)
    if head and not safetensors and not head.startswith((TORCH_ZIP_MAGIC, PICKLE_PROTOCOL_OPCODE)):
        raise ClipaError(
            f"{path} is not a PyTorch checkpoint (torch.save writes a zip; this file begins "
            f"{head[:8]!r}): did you mean a RUN_DIR/checkpoints/step_N.pt?"
        )
    try:
        return load_tensors(path, safetensors)
    except ClipaError:
        raise
    except Exception as error:  # truncated zip, bad pickle, EOF: several types
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ClipaError(f"checkpoint {path} is truncated or corrupt ({detail}); {fix}") from None


def _head(path: Path) -> bytes:
    """The first bytes of ``path``: a config or log passed by mistake is named as such by them
    instead of "truncated" (and its owner is not told to delete it). Empty and cut-short
    checkpoints keep torch's first bytes or none: those are damaged checkpoints."""
    with path.open("rb") as handle:
        return handle.read(9)


def is_safetensors(head: bytes) -> bool:
    """Whether a file beginning with ``head`` (9 bytes) is safetensors: the little-endian size
    of a JSON header, then the header's ``{``."""
    return len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") < 2**30


def load_tensors(path: Path, safetensors: bool) -> Any:
    """What ``path`` holds: ``torch.load`` (tensors and plain values only), or the tensors of a
    safetensors file (``clipa-train export --format safetensors``: the weights alone)."""
    if safetensors:
        return load_safetensors(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file (one line saying how to install the package)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ClipaError(
            f"{path} is safetensors, which needs the safetensors package: pip install "
            "'clipa[train]'"
        ) from None
    return load_file(str(path))


def checkpoint_architecture(path: str | Path) -> dict | None:
    """The architecture stored in a clipa checkpoint; None for other weights (OpenCLIP/CLIPA).
    A file that cannot be read at all is damaged, whatever it held: that is the error."""
    payload = _read(Path(path), fix="use an earlier checkpoint or copy this one again")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload["architecture"]
    return None


def base_architecture(preset: str | None, weights: str | None, default: str):
    """The ``ModelConfig`` a command starts from, before its per-stage overrides: ``preset`` if
    given, else the architecture stored in the clipa checkpoint ``weights`` (or recorded by
    ``clipa-train export`` beside them), else ``default``. Weights that hold no architecture
    (OpenCLIP format) take the bundled preset whose names and shapes they have; none or several
    is an error naming the file and the fix. A preset for ``weights`` takes the loss they were
    trained with (``saved_loss``)."""
    from clipa_train.model import ModelConfig, load_preset

    if weights is None:
        return load_preset(preset or default)
    if preset is not None:  # the weights still say which loss they were trained with
        return load_preset(preset).replace(loss=saved_loss(weights))
    saved = checkpoint_architecture(weights) or exported_architecture(weights)
    if saved is None:  # OpenCLIP-format weights: the one bundled preset with their shapes
        from clipa_train.model.weights import recognise_preset

        return recognise_preset(weights).replace(loss=saved_loss(weights))
    return ModelConfig.from_dict(saved, source=weights)


def exported_architecture(weights: str | Path) -> dict | None:
    """The architecture ``clipa-train export`` recorded in the ``open_clip_config.json`` beside
    ``weights`` (None: no such file or key, e.g. a single-file export or OpenCLIP's own)."""
    import json

    from clipa_train.export import CLIPA_ARCHITECTURE, CONFIG_NAME

    config = Path(weights).parent / CONFIG_NAME
    if Path(weights).name not in EXPORTED_WEIGHTS or not config.is_file():
        return None
    try:
        saved = json.loads(config.read_text()).get(CLIPA_ARCHITECTURE)
    except (OSError, ValueError, AttributeError):
        return None  # OpenCLIP reads it; the weights' shapes still name a preset
    return saved if isinstance(saved, dict) else None


def saved_loss(weights: str | Path) -> str | None:
    """The loss ``weights`` were trained with: the sigmoid loss's has a ``logit_bias``. Reads
    the tensor names only (memory-mapped), not the tensors. None when ``weights`` is no file
    (a run directory, a missing file): loading them says so, with the fix."""
    from clipa_train.loss import loss_of

    path = Path(weights)
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        head = handle.read(9)
    if is_safetensors(head):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as tensors:
            names = list(tensors.keys())
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # not zip-format: the full read that follows names the problem
            payload = _read(path, fix="use an earlier checkpoint or copy this one again")
        if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
            payload = payload["model"]
        elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
            payload = payload["state_dict"]
        names = list(payload) if isinstance(payload, dict) else []
    return loss_of(any(str(name).endswith("logit_bias") for name in names))
