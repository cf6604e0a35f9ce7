"""What convert learns about one source shard before writing anything: count, checks, schema.

``inspect_shard`` runs in a worker process and never raises for bad data: a corrupt shard, a
count that disagrees with img2dataset's ``*_stats.json`` or a missing stats file comes back as
``Inspection.problem`` (one line naming the file and byte offset), so the parent can stop on the
first one in shard order or, with ``--skip-bad-shards``, leave them all out and report them.

With ``InspectTask.salvage`` (``--skip-bad-shards``) a damaged shard (cut short, a bad checksum,
an unreadable tar member) is no problem but an ``Inspection.damage``: the records before the
damage are whole (``SourceFormat.intact_part``), and they alone are counted and checked; the
records lost are img2dataset's ``successes`` minus those.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError, CorruptShardError
from clipa_data.prepare.download_start import read_start, read_summary, resume_advice
from clipa_data.prepare.manifest import Damage
from clipa_data.prepare.schema import ShardSchema, UnparsableRecord, observe
from clipa_data.prepare.source_format import SourceFormat


@dataclass(frozen=True)
class InspectTask:
    """One shard to inspect."""

    path: str
    """Where the shard can be read now (the source, or its placed copy when resuming a move)."""
    source: str
    """Source file name, used in messages (``00003.tfrecord``)."""
    source_format: SourceFormat
    """The shard's format (``source_format.SOURCE_FORMATS``)."""
    stats_path: str
    """img2dataset's ``*_stats.json`` for this shard (may not exist)."""
    require_stats: bool
    """Treat a missing stats file as an unfinished download (other shards have theirs)."""
    check_data_crc: bool
    """Also check the data CRC of every record (formats with ``data_checksums`` only)."""
    schema_records: int
    """Records to check the schema of; 0 means every record."""
    salvage: bool = False
    """Keep the whole records before a damage (``--skip-bad-shards``) instead of failing."""

    def __post_init__(self) -> None:
        if self.schema_records < 0:
            raise ValueError("schema_records must be 0 (all) or positive")


@dataclass(frozen=True)
class Inspection:
    """The outcome of inspecting one shard."""

    source: str
    """Source file name."""
    records: int
    """Exact number of records (0 when the shard could not be read)."""
    num_bytes: int
    """Size of the source file in bytes."""
    mtime_ns: int
    """Modification time of the source file (a rewritten source is another conversion)."""
    stats_successes: int | None
    """``successes`` from img2dataset's stats file, when there is one."""
    schema: ShardSchema | None
    """Schema facts of the inspected records (None for an empty or bad shard)."""
    problem: str | None
    """Why the shard cannot be converted (one line naming file and offset), else None."""
    damage: Damage | None
    """Of a damaged shard salvaged (``records`` are the whole ones before it), else None."""
    count_seconds: float
    """Time spent counting (and CRC-checking) the records."""
    schema_seconds: float
    """Time spent reading records for the schema."""


def _crc_while_reading(task: InspectTask) -> bool:
    """Data CRCs are checked in the schema pass when it reads every record (no second read)."""
    return task.check_data_crc and task.schema_records == 0


@dataclass(frozen=True)
class _Read:
    """What reading a shard found: its whole records and, for a damaged one, the damage."""

    records: int
    """Whole records read before the end or the damage."""
    end: int | None
    """Byte offset where the whole records end (None: the whole file)."""
    damage: CorruptShardError | None
    """What ended the read early (a salvaged damaged shard); None: the shard is whole."""


def _salvaged(task: InspectTask, damage: CorruptShardError) -> _Read:
    """The intact part before ``damage`` when salvaging; re-raises it otherwise."""
    if not task.salvage:
        raise damage
    part = task.source_format.intact_part(task.path, damage)
    return _Read(records=part.records, end=part.end, damage=damage)


def count_records(task: InspectTask) -> _Read:
    """Exact record count without reading the payloads (header walk); damage raises unless
    salvaging."""
    crc = task.check_data_crc and not _crc_while_reading(task)
    try:
        return _Read(task.source_format.count(task.path, check_data_crc=crc), None, None)
    except CorruptShardError as damage:
        return _salvaged(task, damage)


def examples(task: InspectTask, end: int | None = None) -> Iterator[bytes]:
    """The shard's records as serialized Examples (tar samples re-encoded), up to ``end``."""
    return task.source_format.examples(task.path, check_data_crc=_crc_while_reading(task), end=end)


def _schema(task: InspectTask, read: _Read) -> tuple[_Read, ShardSchema | None]:
    """The schema facts of the records read; a damage found on the way (a data checksum, a tar
    sample without an image) shortens what is salvaged, which is then read again."""
    limit = task.schema_records or None
    for _ in range(2):  # a damage in the intact part of a damage cannot happen: it was read
        if not read.records:
            return read, None
        try:
            return read, observe(itertools.islice(examples(task, read.end), limit), task.path)
        except UnparsableRecord as unparsable:
            if not task.salvage:
                raise ClipaError(f"{unparsable}; --verify crc finds where") from None
            damage = task.source_format.record_damage(
                task.path, unparsable.index, unparsable.reason
            )
            read = _salvaged(task, damage)
        except CorruptShardError as damage:
            read = _salvaged(task, damage)
    raise AssertionError("unreachable: the intact part was read without damage")


class _CutBetweenRecords(CorruptShardError):
    """A shard of whole records, fewer than img2dataset wrote (its framing has no damage)."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _cut_at_a_record_boundary(task: InspectTask, read: _Read, num_bytes: int) -> _Read:
    """When salvaging, a whole shard that holds fewer records than its stats file's
    ``successes`` as damage at its end: a copy cut exactly between two records reads as whole,
    and its records are as intact as those before any other cut."""
    if not task.salvage or read.damage is not None or not read.records:
        return read  # no whole record: nothing to salvage (the count's problem says so)
    if not os.path.exists(task.stats_path):
        return read
    try:
        successes = _stats_successes(task.stats_path)
    except (OSError, ValueError):
        return read  # _stats_problem names the unreadable stats file
    if successes <= read.records:
        return read
    damage = _CutBetweenRecords(
        task.path,
        num_bytes,
        f"ends after {read.records} whole records at byte {num_bytes:,}, but "
        f"{Path(task.stats_path).name} reports {successes} successes (cut short between two "
        "records)",
    )
    return _Read(records=read.records, end=num_bytes, damage=damage)


def _stats_problem(task: InspectTask, read: _Read) -> tuple[int | None, str | None]:
    records = read.records
    stats_name = Path(task.stats_path).name
    if not os.path.exists(task.stats_path):
        if task.require_stats:
            return None, (
                f"{task.path}: no {stats_name}, so img2dataset never finished this shard; "
                "re-run clipa-data download to finish it"
            )
        return None, None
    try:
        successes = _stats_successes(task.stats_path)
    except ValueError as error:
        return None, f"{task.stats_path}: not an img2dataset stats file ({error})"
    if successes != records and (read.damage is None or successes < records):
        return successes, (
            f"{task.path}: holds {records} records but {stats_name} reports {successes} "
            "successes; the shard changed after img2dataset wrote it; delete both and re-run "
            "clipa-data download to fetch it again"
        )
    return successes, None


def _stats_successes(path: str | Path) -> int:
    """``successes`` of an img2dataset stats file; ValueError when it holds no such count."""
    with open(path) as handle:
        try:
            return int(json.load(handle)["successes"])
        except (KeyError, TypeError) as error:  # another JSON document: say which key
            raise ValueError(f"no successes count: {error!r}") from None


def _refetch(task: InspectTask) -> str:
    """How to get a damaged shard again: a finished one (its stats file there) is fetched anew
    once both are deleted; one img2dataset never finished, by finishing the download."""
    stats = Path(task.stats_path)
    if stats.is_file():
        return f"delete it and {stats.name}, then re-run clipa-data download to fetch it again"
    return f"img2dataset never finished it (no {stats.name}): {_how_to_finish(stats.parent)}"


def _damage(task: InspectTask, read: _Read, successes: int | None) -> Damage | None:
    if read.damage is None:
        return None
    lost = None if successes is None else successes - read.records
    return Damage(problem=f"{read.damage}", intact_bytes=read.end or 0, lost=lost)


def missing_shards(src: Path, present: Sequence[str], suffix: str) -> list[Inspection]:
    """A bad-shard inspection for each ``NNNNN_stats.json`` in ``src`` that counts records but
    whose shard is not among ``present`` (source names; a deleted or half-copied shard would
    otherwise vanish from the conversion without a word). ``suffix``: the shards' format."""
    ids = {layout.raw_shard_id(name) for name in present}
    missing = []
    for stats_path in sorted(src.glob("*_stats.json")):
        shard_id = layout.raw_stats_shard_id(stats_path)
        if shard_id is None or shard_id in ids:
            continue
        try:
            successes = _stats_successes(stats_path)
        except (OSError, ValueError):
            successes = None  # unreadable: the shard may have held records, so it counts
        if successes == 0:
            continue  # nothing was downloaded into it: nothing is lost
        name = f"{stats_path.name.split('_')[0]}{suffix}"
        counted = "records" if successes is None else f"{successes} records"
        missing.append(
            Inspection(
                source=name,
                records=0,
                num_bytes=0,
                mtime_ns=0,
                stats_successes=successes,
                schema=None,
                problem=(
                    f"{src / name} is missing, but {stats_path.name} says img2dataset wrote "
                    f"{counted} into it; restore the shard, or delete {stats_path.name} and "
                    "re-run clipa-data download to fetch it again"
                ),
                damage=None,
                count_seconds=0.0,
                schema_seconds=0.0,
            )
        )
    return missing


def unfinished_shards(src: Path, present: Sequence[str], suffix: str) -> list[Inspection]:
    """A bad-shard inspection for each shard that the last ``clipa-data download`` in ``src``
    did not finish and that is still neither there nor counted by a stats file: a stopped
    download leaves no file at all for the shards it never started, so without this a partial
    download converts into a smaller dataset without a word.

    Its summary lists them when the input's size was known (parquet); a run stopped before the
    end of an input of unknown size, or one that never wrote its summary (killed, failed, still
    running), has the shard after the last one present named instead."""
    ids = {layout.raw_shard_id(name) for name in present}
    counted = {layout.raw_stats_shard_id(path) for path in src.glob("*_stats.json")}
    width = len(Path(present[0]).stem) if present else 5
    listed, why = _unfinished_by_the_download(src)
    if why is not None:
        listed = [max(ids | counted, default=-1) + 1]
    summary = layout.download_summary_path(src)
    why = why or f"{summary} lists this shard as unfinished (the download stopped before it)"
    fix = _how_to_finish(src)
    return [
        Inspection(
            source=f"{shard:0{width}d}{suffix}",
            records=0,
            num_bytes=0,
            mtime_ns=0,
            stats_successes=None,
            schema=None,
            problem=f"{src / f'{shard:0{width}d}{suffix}'}: {why}; {fix}",
            damage=None,
            count_seconds=0.0,
            schema_seconds=0.0,
        )
        for shard in sorted(set(listed) - ids - counted)
    ]


def _how_to_finish(src: Path) -> str:
    """How to finish the stopped download of ``src``: the same command, unless it was one that
    would not resume (an extend run, an overwrite)."""
    recorded = read_start(src)
    mode = recorded.get("incremental_mode", "incremental")
    if mode == "incremental":
        return "re-run the same clipa-data download to finish it"
    return f"to finish the clipa-data download, {resume_advice(mode, recorded)}"


def _unfinished_by_the_download(src: Path) -> tuple[list[int], str | None]:
    """The shards the download's summary lists as unfinished, and why shards beyond the last
    one present may be missing too (None: they are not)."""
    summary_path = layout.download_summary_path(src)
    summary = read_summary(src)
    if summary is None and not summary_path.is_file():
        if layout.download_start_path(src).is_file():
            return [], (
                f"the last clipa-data download in {src} did not finish (it wrote "
                f"{layout.download_start_path(src).name} when it started but no summary: it was "
                "killed, failed, or is still running), so this shard and those after it may be "
                "missing"
            )
        return [], None  # img2dataset run by hand: the stats files are all there is
    try:
        listed = [int(shard) for shard in summary.get("unfinished_shards", ())]
    except (AttributeError, ValueError, TypeError):
        return [], None  # an unreadable summary: nothing to go by
    if summary.get("stopped") is True and summary.get("expected_shards", 0) is None:
        return [], (
            f"{summary_path} says the download was stopped before the end of its URL list, "
            "whose shards were not counted beforehand, so this shard and those after it may be "
            "missing"
        )
    return listed, None


def inspect_shard(task: InspectTask) -> Inspection:
    """Count, check and read the schema of one shard (runs in a worker process)."""
    started = time.perf_counter()
    num_bytes, mtime_ns = 0, 0
    try:
        stat = os.stat(task.path)
        num_bytes, mtime_ns = stat.st_size, stat.st_mtime_ns
        read = _cut_at_a_record_boundary(task, count_records(task), num_bytes)
        counted = time.perf_counter()
        successes, problem = _stats_problem(task, read)
        schema = None
        if problem is None:
            read, schema = _schema(task, read)
            successes, problem = _stats_problem(task, read)  # the schema pass may find damage
        if read.damage is not None and not read.records:
            problem = f"{read.damage} (no whole record before it); {_refetch(task)}"
        finished = time.perf_counter()
    except (ClipaError, OSError) as error:
        return Inspection(
            source=task.source,
            records=0,
            num_bytes=num_bytes,
            mtime_ns=mtime_ns,
            stats_successes=None,
            schema=None,
            problem=f"{error}; {_refetch(task)}",
            damage=None,
            count_seconds=time.perf_counter() - started,
            schema_seconds=0.0,
        )
    return Inspection(
        source=task.source,
        records=read.records,
        num_bytes=num_bytes,
        mtime_ns=mtime_ns,
        stats_successes=successes,
        schema=None if problem else schema,
        problem=problem,
        damage=None if problem else _damage(task, read, successes),
        count_seconds=counted - started,
        schema_seconds=finished - counted,
    )
