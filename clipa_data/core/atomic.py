"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed process leaves at most a temporary file (``.<name>.tmp-<pid>``) that ``is_temporary``
recognises and a re-run removes; a finished file is never half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clipa_data.core.errors import ClipaError

TEMP_MARKER = ".tmp-"


def temporary_path(path: Path) -> Path:
    """The temporary sibling used while ``path`` is being written by this process."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a leftover temporary file from an interrupted write."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a binary file that appears at ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if error.filename is not None:
            raise
        # A full disk or a file-size limit fails a write or the flush with no file named:
        # name the file being written, so the error is one line saying where.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_writer(Path(path)) as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=False).encode() + b"\n")


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete leftover temporary files in ``folder`` (not recursive); returns what was removed."""
    removed = []
    if Path(folder).is_dir():
        for entry in Path(folder).iterdir():
            if entry.is_file() and is_temporary(entry):
                entry.unlink()
                removed.append(entry)
    return removed


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse in one line a ``folder`` (for ``what``) that cannot be created or written: it, or
    its nearest existing parent, is a file or not writable."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise ClipaError(
            f"{existing} is a file, not a folder, so {what} cannot go to {folder}; "
            "move the file away or choose another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ClipaError(
            f"{existing} is not writable, so {what} cannot go to {folder}; "
            "fix its permissions or choose another folder"
        )


def result_file(out: str, name: str) -> Path:
    """The result file an ``--out`` names: ``out`` itself, or ``out/name`` when it ends with a
    separator (``--out results/``: a folder, however ``Path`` would drop the slash)."""
    return Path(out) / name if out.endswith(("/", os.sep)) else Path(out)


def check_writable_file(path: Path, option: str, name: str) -> None:
    """Refuse in one line, before any work, a result file ``path`` (given with ``option``, or
    "" for a default ``name``) that could not be written at the end: its folder cannot be, or a
    folder already has its name."""
    path = Path(path)
    if path.is_dir():
        fix = f"give a file name, e.g. {option} {path / name}" if option else "remove the folder"
        raise ClipaError(f"{path} is a folder where the result file goes; {fix}")
    check_writable_folder(path.parent, path.name)
