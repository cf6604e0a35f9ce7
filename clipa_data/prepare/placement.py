"""Putting one source shard at its TFDS name: hardlink, copy, symlink, move or re-encode.

Which methods apply is the source format's choice (``source_format.SourceFormat``): a tfrecord
shard's own bytes are placed (``FILE_METHODS``), any other format is re-encoded (``ENCODE``) from
the examples its format reads. Of a damaged source salvaged by ``--skip-bad-shards`` only the
intact part is placed (``PlaceTask.intact_bytes``): a tfrecord shard's first bytes are copied
(whatever the method: a link or a move would carry the damage), a webdataset shard's samples
before the damage re-encoded; the damaged source stays where it is.

Every method is atomic: the shard appears under its final name complete or not at all (a
temporary sibling plus ``os.replace``, or a single ``os.rename``), so a killed run leaves only
temporaries that ``clipa_data.core.atomic.remove_temporaries`` clears, and ``is_placed`` can tell a
finished shard from one still to do.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipa_data.core import tfrecord
from clipa_data.core.atomic import atomic_writer, temporary_path
from clipa_data.core.errors import ClipaError

if TYPE_CHECKING:  # source_format imports this module for its methods
    from clipa_data.prepare.source_format import SourceFormat

FILE_METHODS = ("copy", "hardlink", "symlink", "move")
"""Methods that place the source file's own bytes (tfrecord shards)."""
MODES = ("auto", *FILE_METHODS)
"""``--mode`` choices; ``auto`` is hardlink on one filesystem, else copy."""
ENCODE = "encode"
"""The method for webdataset shards: re-encoded to tfrecord (``--mode`` does not apply)."""
BYTE_COPYING_METHODS = ("copy", ENCODE)
"""Methods that write every byte (worth a process pool; links and renames take microseconds)."""


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def same_filesystem(first: Path, second: Path) -> bool:
    """Whether two paths (the second may not exist yet) live on one filesystem."""
    return os.stat(_existing_ancestor(first)).st_dev == os.stat(_existing_ancestor(second)).st_dev


def resolve_mode(requested: str, src: Path, out: Path) -> str:
    """The placement method: ``auto`` becomes hardlink or copy; impossible hardlinks fail early."""
    if requested not in MODES:
        raise ClipaError(f"--mode {requested!r}: choose one of {', '.join(MODES)}")
    shared = same_filesystem(src, out)
    if requested == "auto":
        return "hardlink" if shared else "copy"
    if requested == "hardlink" and not shared:
        raise ClipaError(
            f"cannot hardlink: {src} and {out} are on different filesystems; "
            "use --mode copy (or symlink)"
        )
    return requested


@dataclass(frozen=True)
class PlaceTask:
    """One shard to put in place."""

    source: str
    """The source shard as it is now."""
    target: str
    """Its final path in the builder (staging) directory."""
    method: str
    """``copy``, ``hardlink``, ``symlink``, ``move`` or ``encode`` (webdataset)."""
    source_format: SourceFormat
    """The source's format (``encode`` re-encodes the examples it reads)."""
    records: int
    """Records the target must hold."""
    num_bytes: int
    """Size of the source (equal to the target's for every method but ``encode``)."""
    intact_bytes: int | None = None
    """Of a damaged source: the bytes before the damage, the only ones placed; else None."""


@dataclass(frozen=True)
class Placed:
    """A shard in place."""

    target: str
    """Its path."""
    num_bytes: int
    """Size of the data it points to."""
    reused: bool
    """True when an earlier (interrupted) run had already placed it."""


def is_placed(task: PlaceTask) -> bool:
    """Whether an earlier run finished this shard (targets only ever appear complete)."""
    target = Path(task.target)
    if task.method == "symlink":
        return target.is_symlink() and os.readlink(target) == task.source
    if not target.exists() or target.is_symlink():
        return False
    if task.method == ENCODE:
        return tfrecord.scan_shard(target).records == task.records
    if task.intact_bytes is not None:
        return target.stat().st_size == task.intact_bytes
    if task.method == "hardlink":
        return os.path.samefile(task.source, target)
    return target.stat().st_size == task.num_bytes


def _copy(source: str, target: Path) -> None:
    temporary = temporary_path(target)
    try:
        shutil.copyfile(source, temporary)
        shutil.copystat(source, temporary)  # same mtime: a resumed move still matches its plan
        with open(temporary, "rb+") as handle:  # on disk before its name says it is whole,
            os.fsync(handle.fileno())  # as atomic_writer does (a power cut, not only a kill)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _copy_start(source: str, target: Path, num_bytes: int) -> None:
    """Copy the first ``num_bytes`` of ``source`` (the intact part of a damaged shard)."""
    with open(source, "rb") as reader, atomic_writer(target) as writer:
        left = num_bytes
        while left and (chunk := reader.read(min(left, 1 << 20))):
            writer.write(chunk)
            left -= len(chunk)
        if left:  # raised inside the block: the target never appears
            raise ClipaError(f"{source}: shorter than the {num_bytes} bytes inspected; it changed")


def _link(source: str, target: Path, link) -> None:
    temporary = temporary_path(target)
    try:
        link(source, temporary)
        os.replace(temporary, target)
    finally:
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()


def _encode(task: PlaceTask, target: Path) -> None:
    with atomic_writer(target) as handle:
        examples = task.source_format.examples(task.source, end=task.intact_bytes)
        written = tfrecord.write_records(handle, examples)
        if written != task.records:
            raise ClipaError(
                f"{task.source}: re-encoded {written} records but counted {task.records}; "
                "the shard changed during the conversion"
            )


def _move(source: str, target: Path) -> None:
    if same_filesystem(Path(source), target):
        os.rename(source, target)
    else:
        _copy(source, target)
        os.unlink(source)


def _place(task: PlaceTask, target: Path) -> None:
    if task.intact_bytes is not None and task.method != ENCODE:
        _copy_start(task.source, target, task.intact_bytes)
    elif task.method == "copy":
        _copy(task.source, target)
    elif task.method == "hardlink":
        _link(task.source, target, os.link)
    elif task.method == "symlink":
        _link(task.source, target, os.symlink)
    elif task.method == "move":
        _move(task.source, target)
    elif task.method == ENCODE:
        _encode(task, target)
    else:
        raise ValueError(f"unknown placement method {task.method!r}")


def place_shard(task: PlaceTask) -> Placed:
    """Put one shard at ``task.target`` (skipped when an earlier run already did)."""
    target = Path(task.target)
    if is_placed(task):
        moved = task.method == "move" and task.intact_bytes is None  # a damaged source stays
        if moved and os.path.exists(task.source):
            os.unlink(task.source)  # a cross-filesystem move killed after its copy
        return Placed(task.target, target.stat().st_size, reused=True)
    try:
        _place(task, target)
    except OSError as error:
        raise ClipaError(
            f"cannot {task.method} {task.source} to {task.target}: {error.strerror or error}"
            + ("; use --mode copy" if task.method == "hardlink" else "")
        ) from None
    return Placed(task.target, target.stat().st_size, reused=False)
