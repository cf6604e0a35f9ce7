"""``clipa-data convert``: img2dataset shards -> a verified TFDS builder directory.

One function, ``convert``, wires the steps; each step is a module of its own:

1. find the source shards and their format (``sources``, ``source_format``) and refuse bad
   locations before touching anything;
2. inspect every shard in a process pool (``inspection``): exact count from the record headers,
   CRCs, the ``*_stats.json`` cross-check and the feature schema of every record (``schema``);
3. plan: drop empty shards, stop on (or skip) bad ones, keep the intact records of damaged ones
   (with ``--skip-bad-shards``: every whole record before the damage, counted), number the
   rest contiguously and write the plan as the manifest (``manifest``) of a hidden staging folder
   ``<out>/<name>/.<version>.partial`` (``staging``);
4. place each shard under its TFDS name (``placement``: hardlink, copy, symlink, move, or
   re-encode, as the source format allows), skipping shards an interrupted run already placed;
5. write ``dataset_info.json`` + ``features.json`` with TFDS's writer and prove the result with
   TFDS's reader (``tfds_metadata``), then rename the staging folder to ``<out>/<name>/<version>``.

Nothing is written before step 3, so bad input leaves OUT untouched; the final folder appears
only verified and complete; a killed run re-run with the same options resumes from the staging
folder and produces the same bytes. An OUT on an fsspec store (``gs://``, ...) takes steps 4-5
from ``store_convert`` instead: shards published one by one, the manifest last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from clipa_data.core import layout
from clipa_data.core.atomic import check_writable_folder, remove_temporaries
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.provenance import package_versions
from clipa_data.core.run_lock import only_run_in
from clipa_data.prepare import store_convert, stores, tfds_metadata
from clipa_data.prepare.inspection import (
    Inspection,
    InspectTask,
    inspect_shard,
    missing_shards,
    unfinished_shards,
)
from clipa_data.prepare.manifest import (
    BadShard,
    ConvertManifest,
    ConvertSettings,
    DatasetName,
    ShardEntry,
    SourceFolder,
    write_manifest,
)
from clipa_data.prepare.placement import (
    BYTE_COPYING_METHODS,
    MODES,
    Placed,
    PlaceTask,
    place_shard,
)
from clipa_data.prepare.runner import (
    DISTRIBUTORS,
    DistributorField,
    RunnerConfig,
    SparkMasterField,
    default_workers,
    map_shards,
)
from clipa_data.prepare.schema import Schema, merge
from clipa_data.prepare.source_format import source_format
from clipa_data.prepare.sources import Source, check_locations, find_sources, moved_sources
from clipa_data.prepare.staging import existing_conversion, prepare_staging
from clipa_data.prepare.stores import local_path, output_location
from clipa_data.prepare.tfds_metadata import Verification

VERIFY_CHOICES = ("headers", "crc")
VERSIONED_PACKAGES = ["img2dataset", "tensorflow-cpu", "tensorflow", "tensorflow-datasets"]


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert, where to, and how."""

    src: Annotated[
        Path,
        Doc(
            "img2dataset output folder (00000.tfrecord or 00000.tar shards, *_stats.json). "
            "Never written to (mode move takes the shards out of it)."
        ),
    ]
    out: Annotated[
        Path,
        Doc(
            "Folder that receives NAME/VERSION/ (the TFDS builder); must not be inside SRC. "
            "Or an fsspec URL (gs://, s3://, hdfs://; its fsspec package installed): shards "
            "are staged locally and published one by one, the manifest last."
        ),
    ]
    name: Annotated[
        str,
        Doc(
            "TFDS dataset name: letters, digits and underscores, starting with a letter "
            "(TFDS cannot read names with hyphens back from the shard names)."
        ),
    ] = "laion400m"
    split: Annotated[str, Doc("Split name written into the shard names and dataset_info.json.")] = (
        "train"
    )
    version: Annotated[str, Doc("Dataset version X.Y.Z, the name of the builder folder.")] = "1.0.0"
    mode: Annotated[
        str,
        Doc(
            "How tfrecord shards reach OUT: auto = hardlink when SRC and OUT share a "
            "filesystem, else copy; copy; hardlink; symlink (absolute links into SRC); move "
            "(out of SRC). A hardlink or symlink is the source file: rewriting SRC's shard "
            "later changes the builder (copy if SRC will change). Webdataset .tar shards are "
            "always re-encoded to tfrecord."
        ),
        Choices(MODES),
    ] = "auto"
    verify: Annotated[
        str,
        Doc(
            "headers: count by walking the record headers (length CRCs checked, image bytes "
            "never read); crc: also check the data CRC of every record."
        ),
        Choices(VERIFY_CHOICES),
    ] = "headers"
    schema_records: Annotated[
        int,
        Doc(
            "Records per shard whose column types are checked. 0 (default) = every record: "
            "exact, finds the one record where img2dataset wrote a missing float as empty "
            "bytes, at the cost of reading each shard once (measured here: about 0.7 s per GB "
            "per worker, against about 0.1 s for counting). N = only the first N records of "
            "each shard: reads little beyond the record headers, but misses a later change."
        ),
    ] = 0
    drop_columns: Annotated[
        tuple[str, ...],
        Doc(
            "Columns left out of the declared features, e.g. one that changes type between "
            "records. The records keep them; TFDS ignores them."
        ),
    ] = ()
    skip_bad_shards: Annotated[
        bool,
        Doc(
            "Instead of stopping at the first bad shard: convert every whole record before "
            "the damage of a corrupt or truncated shard, and leave out unfinished or "
            "unreadable ones (salvaged and lost records per shard in the summary and manifest)."
        ),
    ] = False
    overwrite: Annotated[
        bool,
        Doc(
            "Replace a different conversion already in OUT/NAME/VERSION, or discard an "
            "unfinished one made with other options, instead of stopping."
        ),
    ] = False
    workers: Annotated[
        int, Doc("Worker processes for per-shard work (default: every core this process may use).")
    ] = field(default_factory=default_workers)
    show_progress: Annotated[bool, Doc("Show progress bars (on stderr).")] = True
    distributor: DistributorField = "multiprocessing"
    spark_master: SparkMasterField = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", local_path(self.src, "SRC"))
        object.__setattr__(self, "out", output_location(self.out, "OUT"))
        if layout.is_url(self.out):
            store_convert.check_mode(self.mode, self.out)
        object.__setattr__(self, "drop_columns", tuple(self.drop_columns))
        layout.check_dataset_name(self.name)
        layout.check_split_name(self.split)
        layout.check_version(self.version)
        if self.mode not in MODES:
            raise ClipaError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.verify not in VERIFY_CHOICES:
            raise ClipaError(f"--verify {self.verify!r}: choose headers or crc")
        if self.schema_records < 0:
            raise ClipaError("--schema-records must be 0 (every record) or a positive number")
        if self.workers < 1:
            raise ClipaError("--workers must be at least 1")
        if self.distributor not in DISTRIBUTORS:
            raise ClipaError(f"--distributor must be one of {', '.join(DISTRIBUTORS)}")

    def to_json(self) -> dict:
        """The options as JSON values (for the summary)."""
        options = dataclasses.asdict(self)
        options.update(src=str(self.src), out=str(self.out), drop_columns=list(self.drop_columns))
        del options["show_progress"]
        return options


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion did; ``to_json`` is the summary JSON."""

    builder_dir: Path | str
    """The finished builder directory (a URL on an fsspec store)."""
    status: str
    """``converted``, ``resumed`` (an interrupted run was finished) or ``up to date``."""
    source_shards: int
    """Shard files found in SRC (plus shards an interrupted move had already taken)."""
    shards: int
    """Shards in the builder directory."""
    records: int
    """Records in the split."""
    num_bytes: int
    """Bytes of the split's shards."""
    method: str
    """How shards were placed (hardlink, copy, symlink, move or encode)."""
    reused_shards: int
    """Shards an earlier, interrupted run had already placed."""
    empty_shards: tuple[str, ...]
    """Source shards without records, left out."""
    bad_shards: tuple[tuple[str, str], ...]
    """(source, problem) of the shards left out by ``skip_bad_shards``."""
    damaged_shards: tuple[ShardEntry, ...]
    """Shards converted from the intact part of a damaged source (``ShardEntry.damage``)."""
    schema: Schema
    """The declared features."""
    verification: Verification
    """What reading the result back with TFDS proved."""
    phases: dict[str, float]
    """Wall seconds per phase (inspect, import_tensorflow, place, metadata, verify, total)."""
    options: dict
    """The options of this run (``ConvertConfig`` as JSON values)."""

    def to_json(self) -> dict:
        """The machine-readable summary."""
        return {
            "builder_dir": str(self.builder_dir),
            "status": self.status,
            "options": self.options,
            "source_shards": self.source_shards,
            "shards": self.shards,
            "records": self.records,
            "bytes": self.num_bytes,
            "method": self.method,
            "reused_shards": self.reused_shards,
            "empty_shards": list(self.empty_shards),
            "bad_shards": [{"source": s, "problem": p} for s, p in self.bad_shards],
            "damaged_shards": [
                {
                    "source": shard.source,
                    "records_salvaged": shard.records,
                    "records_lost": shard.damage.lost,
                    "problem": shard.damage.problem,
                }
                for shard in self.damaged_shards
                if shard.damage is not None
            ],
            "features": self.schema.to_json(),
            "verification": {
                "shards": self.verification.shards,
                "examples_decoded": self.verification.examples_decoded,
            },
            "seconds": {phase: round(seconds, 3) for phase, seconds in self.phases.items()},
        }


# --- 2. inspection ------------------------------------------------------------------------------


def inspect_sources(config: ConvertConfig, sources: Sequence[Source]) -> list[Inspection]:
    """Inspect every source shard in the process pool."""
    stats = [layout.raw_stats_path(config.src / source.name) for source in sources]
    any_stats = any(path.exists() for path in stats)
    tasks = [
        InspectTask(
            path=str(source.path),
            source=source.name,
            source_format=source.source_format,
            stats_path=str(stats_path),
            require_stats=any_stats,
            check_data_crc=config.verify == "crc",
            schema_records=config.schema_records,
            salvage=config.skip_bad_shards,
        )
        for source, stats_path in zip(sources, stats, strict=True)
    ]
    plan = RunnerConfig(
        "inspecting",
        config.workers,
        "records",
        config.show_progress,
        config.distributor,
        config.spark_master,
        resumes=False,  # nothing is written before every shard is inspected
    )
    return map_shards(
        inspect_shard,
        tasks,
        plan,
        units_of=lambda result: result.records,
        name_of=lambda task: task.source,
    )


# --- 3. the plan (manifest) ---------------------------------------------------------------------


def _kept(config: ConvertConfig, inspections: Sequence[Inspection]) -> list[Inspection]:
    """The shards to convert: stops on a bad shard unless ``skip_bad_shards``; no empty ones."""
    bad = [i for i in inspections if i.problem]
    if bad and not config.skip_bad_shards:
        more = f" ({len(bad) - 1} more bad shards)" if len(bad) > 1 else ""
        raise ClipaError(f"{bad[0].problem}, or pass --skip-bad-shards to convert without it{more}")
    kept = [i for i in inspections if not i.problem and i.records]
    if not kept:
        raise ClipaError(
            f"{config.src}: no records to convert (every shard is empty or bad); "
            "check the download summary"
        )
    return kept


def _entries(config: ConvertConfig, kept: Sequence[Inspection]) -> tuple[ShardEntry, ...]:
    return tuple(
        ShardEntry(
            index=index,
            target=layout.shard_filename(config.name, config.split, index, len(kept)),
            source=inspection.source,
            records=inspection.records,
            source_bytes=inspection.num_bytes,
            source_mtime_ns=inspection.mtime_ns,
            stats_successes=inspection.stats_successes,
            first_key=inspection.schema.first_key,
            damage=inspection.damage,
        )
        for index, inspection in enumerate(kept)
    )


def placement(config: ConvertConfig, sources: Sequence[Source]) -> str:
    """How the shards will be placed (``--mode`` resolved), or one line saying why that mode
    cannot be: asked before the inspection, which reads every shard (hours at LAION scale)."""
    return sources[0].source_format.placement_method(
        "copy" if layout.is_url(config.out) else config.mode, config.src, config.out
    )


def build_manifest(
    config: ConvertConfig,
    sources: Sequence[Source],
    inspections: Sequence[Inspection],
    method: str,
) -> tuple[ConvertManifest, Schema]:
    """The plan of the conversion (manifest without target bytes) and the declared schema."""
    kept = _kept(config, inspections)
    schema = merge([(i.source, i.schema) for i in kept], config.drop_columns)
    source = sources[0].source_format
    manifest = ConvertManifest(
        dataset=DatasetName(name=config.name, version=config.version, split=config.split),
        source=SourceFolder(folder=str(config.src.resolve()), format=source.name),
        config=ConvertSettings(
            method=method,
            verify=config.verify,
            schema_records=config.schema_records,
            drop_columns=config.drop_columns,
            skip_bad_shards=config.skip_bad_shards,
        ),
        schema=schema.to_json(),
        shards=_entries(config, kept),
        dropped_empty=tuple(i.source for i in inspections if not i.problem and not i.records),
        skipped_bad=tuple(BadShard(i.source, i.problem) for i in inspections if i.problem),
        versions=package_versions(VERSIONED_PACKAGES),
    )
    return manifest, schema


# --- 4. placement -------------------------------------------------------------------------------


def place_all(config: ConvertConfig, staging: Path, manifest: ConvertManifest) -> list[Placed]:
    """Put every planned shard in the staging folder (those already there are kept)."""
    method = manifest.config.method
    shard_format = source_format(manifest.source.format)
    src = config.src.resolve()
    tasks = [
        PlaceTask(
            source=str(src / shard.source),
            target=str(staging / shard.target),
            method=method,
            source_format=shard_format,
            records=shard.records,
            num_bytes=shard.source_bytes,
            intact_bytes=shard.damage.intact_bytes if shard.damage is not None else None,
        )
        for shard in manifest.shards
    ]
    # Links and renames take microseconds: a pool or Spark jobs would only add start-up time.
    copies = method in BYTE_COPYING_METHODS
    plan = RunnerConfig(
        f"placing ({method})",
        config.workers if copies else 1,
        "shards",
        config.show_progress,
        config.distributor if copies else "multiprocessing",
        config.spark_master,
    )
    return map_shards(
        place_shard, tasks, plan, units_of=lambda _: 1, name_of=lambda task: Path(task.source).name
    )


# --- 5. the whole flow --------------------------------------------------------------------------


def _finish(
    config: ConvertConfig,
    staging: Path,
    plan: ConvertManifest,
    schema: Schema,
    placed: Sequence[Placed],
) -> tuple[ConvertManifest, float, Verification]:
    """Metadata, the final manifest and the TFDS check; returns the metadata seconds too."""
    started = time.perf_counter()
    manifest = plan.with_placed([result.num_bytes for result in placed])
    tfds_metadata.write_for(staging, manifest, schema)
    write_manifest(staging, manifest)
    metadata_seconds = time.perf_counter() - started
    return manifest, metadata_seconds, verify_manifest(staging, manifest, fresh=True)


def verify_manifest(builder: Path, manifest: ConvertManifest, fresh: bool = False) -> Verification:
    """Prove with TFDS's reader that ``builder`` holds what its ``manifest`` says. ``fresh``: it
    was just written from the sources, so a record TFDS cannot read came from its source (a
    stored result may have been damaged since: delete it and convert again)."""
    fix = None  # tfds_metadata's default: delete the folder and re-run convert
    if manifest.config.method == "move":  # deleting would lose the only copy
        fix = (
            f"its shards were moved here out of {manifest.source.folder}; move them back "
            f"(see {layout.CONVERT_MANIFEST}), then delete {builder} and re-run clipa-data convert"
        )
    verification = tfds_metadata.verify(
        builder,
        split=manifest.dataset.split,
        shard_lengths=[shard.records for shard in manifest.shards],
        first_keys=[shard.first_key for shard in manifest.shards],
        fix=fix,
        unreadable_fix=(lambda index: _unreadable_source_fix(manifest, index)) if fresh else None,
    )
    for shard in manifest.shards:  # a shard cut after its first record still passes TFDS
        size = (builder / shard.target).stat().st_size
        if size != shard.bytes:
            raise ClipaError(
                f"{builder}: shard {shard.target} is {size} bytes but {layout.CONVERT_MANIFEST} "
                f"says {shard.bytes}; {fix or f'delete {builder} and re-run clipa-data convert'}"
            )
    return verification


def _unreadable_source_fix(manifest: ConvertManifest, index: int) -> str:
    """What to do about a shard whose first record TFDS cannot read: convert copies records as
    they are, so its source holds that record (converting again fails the same way)."""
    source = Path(manifest.source.folder) / manifest.shards[index].source
    if manifest.config.verify != "crc":
        return (
            f"the record comes from {source} as it is, so it is likely damaged there (--verify "
            "headers does not read record data): convert with --verify crc to check every "
            "record (and --skip-bad-shards to leave damaged shards out), or download that "
            "shard again"
        )
    return (
        f"the record comes from {source} as it is and passed its checksum, so it is not what "
        "the features describe (an image that does not decode?): download that shard again, "
        "or leave it out of SRC"
    )


def _convert_into(
    config: ConvertConfig, staging: Path, final: Path, plan: ConvertManifest, schema: Schema
) -> tuple[str, ConvertManifest, int, dict[str, float], Verification]:
    """Stage, place, describe, verify and publish; returns status, manifest, reused, phases.
    Runs under the lock of ``staging.parent`` (``_locked``)."""
    resuming = prepare_staging(staging, plan, config.overwrite)
    placing = time.perf_counter()
    placed = place_all(config, staging, plan)
    remove_temporaries(staging)  # of a copy whose worker died (Spark retried it elsewhere)
    placed_seconds = time.perf_counter() - placing
    manifest, metadata_seconds, verification = _finish(config, staging, plan, schema, placed)
    if final.exists():
        shutil.rmtree(final)  # --overwrite of another conversion, checked under the same lock
    staging.rename(final)
    phases = {"place": placed_seconds, "metadata": metadata_seconds}
    reused = sum(result.reused for result in placed)
    return "resumed" if resuming else "converted", manifest, reused, phases, verification


@contextlib.contextmanager
def _locked(staging: Path | str, on_store: bool) -> Iterator[None]:
    """One convert at a time judges and writes ``OUT/NAME`` (a second is refused in one line);
    a store has no lock (its runs publish whole objects)."""
    if on_store:
        yield
        return
    staging.parent.mkdir(parents=True, exist_ok=True)
    with only_run_in(staging.parent, "clipa-data convert"):
        yield


def convert(config: ConvertConfig) -> ConvertResult:
    """Convert ``config.src`` into a verified TFDS builder directory; see the module docstring."""
    started = time.perf_counter()
    final = layout.builder_dir(config.out, config.name, config.version)
    # A finished conversion may be up to date: checked (and left) without writing to OUT.
    finished_there = not layout.is_url(final) and (final / layout.CONVERT_MANIFEST).is_file()
    check_locations(config.src, config.out, writing=not finished_there)
    stores.check_workers_reach(config.out, config.workers, config.distributor, "OUT")
    staging = layout.staging_dir(config.out, config.name, config.version)
    if not layout.is_url(staging) and staging.parent.is_dir():
        with only_run_in(staging.parent, "clipa-data convert"):
            pass  # refused now, not after inspecting every shard (hours at LAION scale)
    sources = find_sources(config.src, moved_sources(config.src, config.mode, [staging, final]))
    method = placement(config, sources)
    inspections = inspect_sources(config, sources)
    suffix = sources[0].source_format.suffix
    present = [source.name for source in sources]
    inspections += missing_shards(config.src, present, suffix)
    inspections += unfinished_shards(config.src, present, suffix)
    inspected = time.perf_counter()
    plan, schema = build_manifest(config, sources, inspections, method)
    on_store = layout.is_url(final)
    # What is there is judged under the lock that publishing holds: a second convert that
    # finished while this one inspected its shards is seen (and not silently replaced).
    with _locked(staging, on_store):
        stored = (
            store_convert.existing_conversion(final, staging, plan, config.overwrite)
            if on_store
            else existing_conversion(final, plan, config.overwrite)
        )
        import_seconds = tfds_metadata.import_tensorflow()  # timed on its own: seconds, once
        if stored is not None:
            status, manifest, reused = "up to date", stored, len(stored.shards)
            phases = {"place": 0.0, "metadata": 0.0}
            verify = store_convert.verify_published if on_store else verify_manifest
            verification = verify(final, stored)
        else:
            if finished_there:  # another conversion there, to be replaced (--overwrite)
                check_writable_folder(Path(config.out), "the builder directory")
            into = store_convert.convert_into_store if on_store else _convert_into
            status, manifest, reused, phases, verification = into(
                config, staging, final, plan, schema
            )
    result = ConvertResult(
        builder_dir=final,
        status=status,
        source_shards=len(sources),
        shards=len(manifest.shards),
        records=manifest.records,
        num_bytes=manifest.num_bytes,
        method=manifest.config.method,
        reused_shards=reused,
        empty_shards=manifest.dropped_empty,
        bad_shards=tuple((bad.source, bad.problem) for bad in manifest.skipped_bad),
        damaged_shards=manifest.damaged,
        schema=schema,
        verification=verification,
        phases={
            "inspect": inspected - started,
            "import_tensorflow": import_seconds,
            **phases,
            "verify": verification.seconds,
            "total": time.perf_counter() - started,
        },
        options=config.to_json(),
    )
    summary = layout.convert_summary_path(final)
    if status != "up to date" or not layout.exists(summary):  # keep the converting run's
        stores.write_json(summary, result.to_json())
    return result
