"""``clipa-data convert``: img2dataset shards -> a verified TFDS builder directory.

One function, ``convert``, wires the steps; each step is a module of its own:

1. find the source shards (``layout``) and refuse bad locations before touching anything;
2. inspect every shard in a process pool (``inspection``): exact count from the record headers,
   CRCs, the ``*_stats.json`` cross-check and the feature schema of every record (``schema``);
3. plan: drop empty shards, stop on (or skip) bad ones, number the rest contiguously and write
   the plan as the manifest of a hidden staging folder ``<out>/<name>/.<version>.partial``;
4. place each shard under its TFDS name (``placement``: hardlink, copy, symlink, move, or
   re-encode for webdataset), skipping shards an interrupted run already placed;
5. write ``dataset_info.json`` + ``features.json`` with TFDS's writer and prove the result with
   TFDS's reader (``tfds_metadata``), then rename the staging folder to ``<out>/<name>/<version>``.

Nothing is written before step 3, so bad input leaves OUT untouched; the final folder appears
only verified and complete; a killed run re-run with the same options resumes from the staging
folder and produces the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from clipa_data.core import layout
from clipa_data.core.atomic import remove_temporaries, write_json
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.provenance import package_versions
from clipa_data.prepare import tfds_metadata
from clipa_data.prepare.inspection import (
    TFRECORD,
    WEBDATASET,
    Inspection,
    InspectTask,
    inspect_shard,
)
from clipa_data.prepare.placement import ENCODE, MODES, Placed, PlaceTask, place_shard, resolve_mode
from clipa_data.prepare.runner import RunPlan, default_workers, map_shards
from clipa_data.prepare.schema import Schema, merge
from clipa_data.prepare.tfds_metadata import Verification

MANIFEST_VERSION = 1
VERIFY_CHOICES = ("headers", "crc")
VERSIONED_PACKAGES = ["img2dataset", "tensorflow-cpu", "tensorflow", "tensorflow-datasets"]
IDENTITY_KEYS = ("dataset", "source", "config", "schema", "shards", "dropped_empty", "skipped_bad")
"""Manifest parts that define a conversion; two runs agreeing on them produce the same bytes."""


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
        Path, Doc("Folder that receives NAME/VERSION/ (the TFDS builder); must not be inside SRC.")
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
            "(out of SRC). Webdataset .tar shards are always re-encoded to tfrecord."
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
            "Leave out corrupt, truncated or unfinished shards (listed in the summary and "
            "manifest) instead of stopping at the first."
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", Path(self.src))
        object.__setattr__(self, "out", Path(self.out))
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

    def to_json(self) -> dict:
        """The options as JSON values (for the summary)."""
        options = dataclasses.asdict(self)
        options.update(src=str(self.src), out=str(self.out), drop_columns=list(self.drop_columns))
        del options["show_progress"]
        return options


@dataclass(frozen=True)
class Source:
    """A source shard: its file name in SRC and where to read it now."""

    name: str
    """File name in SRC, e.g. ``00003.tfrecord``."""
    path: Path
    """Where its bytes are now (SRC, or the staging folder when resuming a move)."""
    file_format: str
    """``tfrecord`` or ``tar``."""


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion did; ``to_json`` is the summary JSON."""

    builder_dir: Path
    """The finished builder directory."""
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
            "features": self.schema.to_json(),
            "verification": {
                "shards": self.verification.shards,
                "examples_decoded": self.verification.examples_decoded,
            },
            "seconds": {phase: round(seconds, 3) for phase, seconds in self.phases.items()},
        }


# --- 1. sources and locations -------------------------------------------------------------------


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_locations(config: ConvertConfig) -> None:
    """SRC must be a folder with content; OUT must not be inside it."""
    src = config.src
    if not src.exists():
        raise ClipaError(f"{src} does not exist; pass the output folder of clipa-data download")
    if not src.is_dir():
        raise ClipaError(f"{src} is not a folder; pass the output folder of clipa-data download")
    if not any(src.iterdir()):
        raise ClipaError(f"{src} is empty; run clipa-data download into it first")
    if _is_within(config.out.resolve(), src.resolve()):
        raise ClipaError(
            f"OUT {config.out} is inside SRC {src}; img2dataset's resume reads every *.json in "
            f"SRC, so write the builder elsewhere, e.g. {src.resolve().parent / 'tfds'}"
        )


def _format_of(path: Path) -> str:
    return TFRECORD if layout.raw_shard_format(path) == "tfrecord" else WEBDATASET


def find_sources(config: ConvertConfig, moved: Sequence[Source] = ()) -> list[Source]:
    """The shards in SRC (plus ``moved``: shards an interrupted ``--mode move`` already took)."""
    found = [Source(p.name, p, _format_of(p)) for p in layout.find_raw_shards(config.src)]
    present = {source.name for source in found}
    sources = found + [source for source in moved if source.name not in present]
    if not sources:
        raise ClipaError(
            f"{config.src} holds no img2dataset shards (00000.tfrecord or 00000.tar); "
            "pass the folder clipa-data download wrote (output_format tfrecord or webdataset)"
        )
    formats = {source.file_format for source in sources}
    if len(formats) > 1:
        raise ClipaError(
            f"{config.src} holds both .tfrecord and .tar shards; convert one format at a time "
            "(move the other shards to their own folder)"
        )
    ids: dict[int, str] = {}
    for source in sources:
        shard_id = layout.raw_shard_id(source.name)
        if shard_id in ids:
            raise ClipaError(
                f"{config.src}: {ids[shard_id]} and {source.name} are both shard {shard_id}; "
                "remove one"
            )
        ids[shard_id] = source.name
    return sorted(sources, key=lambda source: layout.raw_shard_id(source.name))


# --- 2. inspection ------------------------------------------------------------------------------


def inspect_sources(config: ConvertConfig, sources: Sequence[Source]) -> list[Inspection]:
    """Inspect every source shard in the process pool."""
    stats = [layout.raw_stats_path(config.src / source.name) for source in sources]
    any_stats = any(path.exists() for path in stats)
    tasks = [
        InspectTask(
            path=str(source.path),
            source=source.name,
            file_format=source.file_format,
            stats_path=str(stats_path),
            require_stats=any_stats,
            check_data_crc=config.verify == "crc",
            schema_records=config.schema_records,
        )
        for source, stats_path in zip(sources, stats, strict=True)
    ]
    plan = RunPlan("inspecting", config.workers, "records", config.show_progress)
    return map_shards(inspect_shard, tasks, plan, units_of=lambda result: result.records)


# --- 3. the plan (manifest) ---------------------------------------------------------------------


def _method(config: ConvertConfig, sources: Sequence[Source]) -> str:
    if sources[0].file_format == WEBDATASET:
        if config.mode not in ("auto", "copy"):
            raise ClipaError(
                f"webdataset shards are re-encoded to tfrecord, so --mode {config.mode} does "
                "not apply; leave --mode at auto"
            )
        return ENCODE
    return resolve_mode(config.mode, config.src, config.out)


def build_manifest(
    config: ConvertConfig, sources: Sequence[Source], inspections: Sequence[Inspection]
) -> tuple[dict, Schema]:
    """The plan of the conversion (manifest without target bytes) and the declared schema."""
    bad = [i for i in inspections if i.problem]
    if bad and not config.skip_bad_shards:
        more = f" ({len(bad) - 1} more bad shards)" if len(bad) > 1 else ""
        raise ClipaError(f"{bad[0].problem}, or pass --skip-bad-shards to convert without it{more}")
    good = [i for i in inspections if not i.problem]
    kept = [i for i in good if i.records]
    if not kept:
        raise ClipaError(
            f"{config.src}: no records to convert (every shard is empty or bad); "
            "check the download summary"
        )
    schema = merge([(i.source, i.schema) for i in kept], config.drop_columns)
    count = len(kept)
    shards = [
        {
            "index": index,
            "target": layout.shard_filename(config.name, config.split, index, count),
            "source": inspection.source,
            "records": inspection.records,
            "source_bytes": inspection.num_bytes,
            "source_mtime_ns": inspection.mtime_ns,
            "stats_successes": inspection.stats_successes,
            "first_key": inspection.schema.first_key,
        }
        for index, inspection in enumerate(kept)
    ]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "dataset": {"name": config.name, "version": config.version, "split": config.split},
        "source": {
            "folder": str(config.src.resolve()),
            "format": "webdataset" if sources[0].file_format == WEBDATASET else "tfrecord",
        },
        "config": {
            "method": _method(config, sources),
            "verify": config.verify,
            "schema_records": config.schema_records,
            "drop_columns": list(config.drop_columns),
            "skip_bad_shards": config.skip_bad_shards,
        },
        "schema": schema.to_json(),
        "shards": shards,
        "dropped_empty": [i.source for i in good if not i.records],
        "skipped_bad": [{"source": i.source, "problem": i.problem} for i in bad],
        "totals": {"shards": count, "records": sum(i.records for i in kept)},
        "versions": package_versions(VERSIONED_PACKAGES),
    }
    return manifest, schema


def identity(manifest: dict) -> dict:
    """The parts of a manifest that define the conversion (no sizes, no package versions)."""
    parts = {key: manifest.get(key) for key in IDENTITY_KEYS}
    parts["shards"] = [
        {k: v for k, v in shard.items() if k != "bytes"} for shard in manifest.get("shards", [])
    ]
    return parts


def _difference(old: dict, new: dict) -> str:
    differing = [key for key in IDENTITY_KEYS if identity(old)[key] != identity(new)[key]]
    return "different " + ", ".join(differing)


def read_manifest(builder: Path) -> dict | None:
    """The convert manifest of a (staging) builder folder, or None if there is none."""
    path = Path(layout.convert_manifest_path(builder))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise ClipaError(f"{path} is damaged (not JSON); remove {builder}") from None


def moved_sources(config: ConvertConfig, folders: Sequence[Path]) -> list[Source]:
    """Shards an interrupted or earlier ``--mode move`` run took out of SRC, where they are now."""
    if config.mode != "move":
        return []
    for folder in folders:
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest and manifest["config"]["method"] == "move":
            return [
                Source(shard["source"], folder / shard["target"], TFRECORD)
                for shard in manifest["shards"]
                if not (config.src / shard["source"]).exists()
                and (folder / shard["target"]).exists()
            ]
    return []


# --- 4. staging and placement -------------------------------------------------------------------


def _refuse_to_discard_moved(folder: Path, previous: dict) -> None:
    if previous["config"]["method"] == "move":
        raise ClipaError(
            f"{folder} holds shards moved out of {previous['source']['folder']}; discarding it "
            "would delete the only copy; finish or keep that conversion and choose another "
            "--version or OUT"
        )


def existing_conversion(final: Path, manifest: dict, config: ConvertConfig) -> dict | None:
    """The manifest of ``final`` when it already holds this very conversion, else None.

    Raises when ``final`` holds something else, unless ``--overwrite`` may replace it.
    """
    if not final.exists():
        return None
    previous = read_manifest(final)
    if previous is None:
        raise ClipaError(
            f"{final} exists but was not written by clipa-data convert; "
            "remove it yourself, or choose another --version or OUT"
        )
    if identity(previous) == identity(manifest):
        return previous
    if not config.overwrite:
        raise ClipaError(
            f"{final} already holds another conversion ({_difference(previous, manifest)}); "
            "pass --overwrite to replace it, or choose another --version or OUT"
        )
    _refuse_to_discard_moved(final, previous)
    return None


def prepare_staging(staging: Path, manifest: dict, config: ConvertConfig) -> bool:
    """Create (or adopt) the staging folder and write the plan; True when resuming a run."""
    previous = read_manifest(staging) if staging.is_dir() else None
    if previous is not None and identity(previous) != identity(manifest):
        if not config.overwrite:
            raise ClipaError(
                f"{staging} holds an unfinished conversion ({_difference(previous, manifest)}); "
                "re-run with the same options to finish it, or pass --overwrite to discard it"
            )
        _refuse_to_discard_moved(staging, previous)
        shutil.rmtree(staging)
        previous = None
    staging.mkdir(parents=True, exist_ok=True)
    remove_temporaries(staging)
    write_json(layout.convert_manifest_path(staging), manifest)
    return previous is not None


def place_all(config: ConvertConfig, staging: Path, manifest: dict) -> list[Placed]:
    """Put every planned shard in the staging folder (those already there are kept)."""
    method = manifest["config"]["method"]
    src = config.src.resolve()
    tasks = [
        PlaceTask(
            source=str(src / shard["source"]),
            target=str(staging / shard["target"]),
            method=method,
            records=shard["records"],
            num_bytes=shard["source_bytes"],
        )
        for shard in manifest["shards"]
    ]
    # Links and renames take microseconds: a pool would only add its start-up time.
    workers = config.workers if method in ("copy", ENCODE) else 1
    plan = RunPlan(f"placing ({method})", workers, "shards", config.show_progress)
    return map_shards(place_shard, tasks, plan, units_of=lambda _: 1)


# --- 5. the whole flow --------------------------------------------------------------------------


def _finish(
    config: ConvertConfig, staging: Path, manifest: dict, schema: Schema, placed: Sequence[Placed]
) -> tuple[dict, float, Verification]:
    """Metadata, the final manifest and the TFDS check; returns the metadata seconds too."""
    started = time.perf_counter()
    for shard, result in zip(manifest["shards"], placed, strict=True):
        shard["bytes"] = result.num_bytes
    manifest["totals"]["bytes"] = sum(result.num_bytes for result in placed)
    tfds_metadata.write(
        staging,
        name=config.name,
        version=config.version,
        split=config.split,
        shard_lengths=[shard["records"] for shard in manifest["shards"]],
        num_bytes=manifest["totals"]["bytes"],
        schema=schema,
        description=(
            f"img2dataset shards from {manifest['source']['folder']}, "
            "converted by clipa-data convert"
        ),
    )
    write_json(layout.convert_manifest_path(staging), manifest)
    metadata_seconds = time.perf_counter() - started
    return manifest, metadata_seconds, verify_manifest(staging, manifest)


def verify_manifest(builder: Path, manifest: dict) -> Verification:
    """Prove with TFDS's reader that ``builder`` holds what its ``manifest`` says."""
    shards = manifest["shards"]
    fix = None  # tfds_metadata's default: delete the folder and re-run convert
    if manifest["config"]["method"] == "move":  # deleting would lose the only copy
        fix = (
            f"its shards were moved here out of {manifest['source']['folder']}; move them back "
            f"(see {layout.CONVERT_MANIFEST}), then delete {builder} and re-run clipa-data convert"
        )
    return tfds_metadata.verify(
        builder,
        split=manifest["dataset"]["split"],
        shard_lengths=[shard["records"] for shard in shards],
        first_keys=[shard["first_key"] for shard in shards],
        fix=fix,
    )


def convert(config: ConvertConfig) -> ConvertResult:
    """Convert ``config.src`` into a verified TFDS builder directory; see the module docstring."""
    started = time.perf_counter()
    check_locations(config)
    final = layout.builder_dir(config.out, config.name, config.version)
    staging = layout.staging_dir(config.out, config.name, config.version)
    sources = find_sources(config, moved_sources(config, [staging, final]))
    inspections = inspect_sources(config, sources)
    inspected = time.perf_counter()
    manifest, schema = build_manifest(config, sources, inspections)
    stored = existing_conversion(final, manifest, config)
    import_seconds = tfds_metadata.import_tensorflow()  # timed on its own: seconds, once

    if stored is not None:
        status, placed_seconds, metadata_seconds = "up to date", 0.0, 0.0
        verification = verify_manifest(final, stored)
        manifest, reused = stored, len(stored["shards"])
    else:
        resuming = prepare_staging(staging, manifest, config)
        placing = time.perf_counter()
        placed = place_all(config, staging, manifest)
        placed_seconds = time.perf_counter() - placing
        reused = sum(result.reused for result in placed)
        manifest, metadata_seconds, verification = _finish(
            config, staging, manifest, schema, placed
        )
        if final.exists():
            shutil.rmtree(final)  # --overwrite of another conversion, checked above
        staging.rename(final)
        status = "resumed" if resuming else "converted"

    result = ConvertResult(
        builder_dir=final,
        status=status,
        source_shards=len(sources),
        shards=len(manifest["shards"]),
        records=manifest["totals"]["records"],
        num_bytes=manifest["totals"]["bytes"],
        method=manifest["config"]["method"],
        reused_shards=reused,
        empty_shards=tuple(manifest["dropped_empty"]),
        bad_shards=tuple((bad["source"], bad["problem"]) for bad in manifest["skipped_bad"]),
        schema=schema,
        verification=verification,
        phases={
            "inspect": inspected - started,
            "import_tensorflow": import_seconds,
            "place": placed_seconds,
            "metadata": metadata_seconds,
            "verify": verification.seconds,
            "total": time.perf_counter() - started,
        },
        options=config.to_json(),
    )
    write_json(layout.convert_summary_path(final), result.to_json())
    return result
