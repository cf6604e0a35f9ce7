"""``clipa-data info``: what a builder directory holds, read without TensorFlow.

The report is a sequence of sections, each made by one function of the loaded ``Builder``
(``SECTIONS``). A new aspect (for example sidecar coverage from ``layout.sidecar_dir``) is one
more function appended there; the CLI renders every section as a table and ``--json`` emits
``{section.key: section.data}``.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.prepare import stores
from clipa_data.prepare.sidecar_check import coverage_of_splits


@dataclass(frozen=True)
class Builder:
    """A builder directory's metadata, loaded once for all sections."""

    path: str
    """The builder directory (local path or URL)."""
    info: dict
    """Parsed ``dataset_info.json``."""
    features: dict
    """Parsed ``features.json`` (empty when missing)."""
    splits: tuple[layout.SplitInfo, ...]
    """Every split with its shard paths and exact lengths."""
    manifest: dict | None
    """The ``clipa-data convert`` manifest, or None for a builder made otherwise."""


@dataclass(frozen=True)
class Section:
    """One part of the report: a table for people and a JSON value for programs."""

    key: str
    """Key of this section in the JSON report."""
    title: str
    """Table title."""
    columns: tuple[str, ...]
    """Table header."""
    rows: tuple[tuple[str, ...], ...]
    """Table rows, already formatted."""
    data: object
    """The same content as JSON-ready values."""


SectionMaker = Callable[[Builder], Section]


def _read_json(path) -> dict | None:
    if not layout.exists(path):
        return None
    try:
        return json.loads(layout.read_text(path))
    except json.JSONDecodeError as error:
        raise ClipaError(f"{path}: not valid JSON ({error})") from None


def load_builder(path) -> Builder:
    """Resolve ``path`` (OUT, OUT/NAME or the builder dir itself) and read its metadata."""
    builder = layout.resolve_builder_dir(stores.output_location(path, "BUILDER_DIR"))
    info = layout.read_dataset_info(builder)
    splits = tuple(layout.read_split(builder, name) for name in layout.split_names(builder))
    return Builder(
        path=str(builder),
        info=info,
        features=_read_json(layout.join(builder, layout.FEATURES)) or {},
        splits=splits,
        manifest=_read_json(layout.convert_manifest_path(builder)),
    )


def _shard_bytes(shard: layout.ShardInfo) -> int | None:
    """Size of a local shard file (following symlinks); None for URLs or missing files."""
    if layout.is_url(shard.path):
        return None
    try:
        return os.path.getsize(shard.path)
    except OSError:
        return None


def overview_section(builder: Builder) -> Section:
    """Name, version, location, totals."""
    shards = sum(len(split.shards) for split in builder.splits)
    examples = sum(split.num_records for split in builder.splits)
    data = {
        "name": builder.info.get("name"),
        "version": builder.info.get("version"),
        "path": builder.path,
        "file_format": builder.info.get("fileFormat", layout.FILE_FORMAT),
        "splits": len(builder.splits),
        "shards": shards,
        "examples": examples,
    }
    rows = tuple(
        (label, f"{value:,}" if isinstance(value, int) else str(value))
        for label, value in data.items()
    )
    return Section("overview", "dataset", ("", ""), rows, data)


def _recorded_bytes(builder: Builder) -> dict[str, int]:
    """Each placed shard's size as the convert manifest recorded it (none without one)."""
    shards = (builder.manifest or {}).get("shards", [])
    return {shard["target"]: shard["bytes"] for shard in shards if shard.get("bytes") is not None}


def splits_section(builder: Builder) -> Section:
    """Per split: shards, examples, bytes on disk, empty shards, missing files and files whose
    size is not the one the convert manifest recorded (a shard cut short or replaced since)."""
    data = {}
    recorded = _recorded_bytes(builder)
    for split in builder.splits:
        sizes = [_shard_bytes(shard) for shard in split.shards]
        local = not any(layout.is_url(shard.path) for shard in split.shards)
        names = [posixpath.basename(str(shard.path)) for shard in split.shards]
        wrong = [
            name
            for name, size in zip(names, sizes, strict=True)
            if size is not None and recorded.get(name, size) != size
        ]
        data[split.name] = {
            "shards": len(split.shards),
            "examples": split.num_records,
            "bytes": sum(size or 0 for size in sizes) if local else None,
            "empty_shards": sum(1 for shard in split.shards if shard.num_records == 0),
            "missing_files": sum(1 for size in sizes if size is None) if local else None,
            "wrong_size_files": len(wrong) if local and recorded else None,
        }
    rows = tuple(
        (name, *(f"{v:,}" if isinstance(v, int) else "n/a" for v in values.values()))
        for name, values in data.items()
    )
    columns = (
        "split", "shards", "examples", "bytes", "empty shards", "missing files", "wrong size",
    )  # fmt: skip
    return Section("splits", "splits", columns, rows, data)


def _feature_entry(spec: dict) -> dict:
    kind = spec.get("pythonClassName", "?").rsplit(".", 1)[-1]
    inner = next((v for k, v in spec.items() if k != "pythonClassName"), {}) or {}
    dims = inner.get("shape", {}).get("dimensions", []) if isinstance(inner, dict) else []
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    entry = {"type": kind, "dtype": inner.get("dtype", "string"), "shape": list(shape)}
    if "encodingFormat" in inner:
        entry["encoding"] = inner["encodingFormat"]
    return entry


def features_section(builder: Builder) -> Section:
    """Every declared feature: TFDS type, dtype, shape (and image encoding)."""
    specs = builder.features.get("featuresDict", {}).get("features", {})
    data = {name: _feature_entry(spec) for name, spec in specs.items()}
    rows = tuple(
        (
            name,
            entry["type"] + (f" ({entry['encoding']})" if "encoding" in entry else ""),
            entry["dtype"],
            str(tuple(entry["shape"])),
        )
        for name, entry in data.items()
    )
    return Section("features", "features", ("feature", "type", "dtype", "shape"), rows, data)


def _salvaged(damaged: list[dict]) -> str:
    """``00003.tfrecord (99 kept, 1 lost)`` for each shard salvaged by --skip-bad-shards."""
    shards = [
        f"{d['source']} ({d['records']:,} kept, {'?' if d['lost'] is None else d['lost']} lost)"
        for d in damaged
    ]
    return ", ".join(shards) or "none"


def provenance_section(builder: Builder) -> Section:
    """Where the data came from, per the convert manifest."""
    manifest = builder.manifest
    if manifest is None:
        data = None
        rows = (
            ("manifest", f"none (no {layout.CONVERT_MANIFEST}: not made by clipa-data convert)"),
        )
        return Section("provenance", "provenance", ("", ""), rows, data)
    config = manifest.get("config", {})
    versions = manifest.get("versions", {})
    data = {
        "source_folder": manifest.get("source", {}).get("folder"),
        "source_format": manifest.get("source", {}).get("format"),
        "method": config.get("method"),
        "verify": config.get("verify"),
        "schema_records": config.get("schema_records"),
        "dropped_columns": config.get("drop_columns", []),
        "source_shards_converted": len(manifest.get("shards", [])),
        "empty_shards_left_out": manifest.get("dropped_empty", []),
        "bad_shards_left_out": manifest.get("skipped_bad", []),
        "damaged_shards_salvaged": [
            {"source": s["source"], "records": s["records"], "lost": s["damage"]["lost"]}
            for s in manifest.get("shards", [])
            if s.get("damage")
        ],
        "versions": versions,
    }
    rows = (
        ("source", f"{data['source_folder']} ({data['source_format']})"),
        ("placed by", str(data["method"])),
        ("checks", f"verify={data['verify']}, schema records={data['schema_records'] or 'all'}"),
        ("columns dropped", ", ".join(data["dropped_columns"]) or "none"),
        ("shards converted", f"{data['source_shards_converted']:,}"),
        ("empty shards left out", ", ".join(data["empty_shards_left_out"]) or "none"),
        (
            "bad shards left out",
            ", ".join(bad["source"] for bad in data["bad_shards_left_out"]) or "none",
        ),
        ("damaged shards salvaged", _salvaged(data["damaged_shards_salvaged"])),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
    )
    return Section("provenance", "provenance (clipa-data convert)", ("", ""), rows, data)


def sidecars_section(builder: Builder) -> Section:
    """Sidecar coverage of ``clipa-data tag``: shards with sidecars, rows, taggers, vocabulary."""
    data = coverage_of_splits(builder.path, builder.splits)
    if data["with_sidecar"] == 0 and not data["unreadable"]:
        command = f"clipa-data tag {shlex.quote(str(builder.path))}"
        rows = (("sidecars", f"none; create them with: {command}"),)
        return Section("sidecars", "sidecars (clipa-data tag)", ("", ""), rows, data)
    vocabulary = "this tokenizer's" if data["vocab_matches"] else "ANOTHER vocabulary: re-tag"
    rows = (
        ("shards with sidecars", f"{data['with_sidecar']:,} of {data['shards']:,}"),
        ("rows", f"{data['rows']:,} (records: {data['records']:,})"),
        ("taggers", ", ".join(data["taggers"]) or "none"),
        ("text field", ", ".join(data["text_fields"]) or "none"),
        ("vocabulary", vocabulary),
        ("missing", ", ".join(data["missing"]) or "none"),
        ("unreadable", ", ".join(data["unreadable"]) or "none"),
        ("folder", data["sidecar_dir"]),
    )
    return Section("sidecars", "sidecars (clipa-data tag)", ("", ""), rows, data)


SECTIONS: tuple[SectionMaker, ...] = (
    overview_section,
    splits_section,
    features_section,
    provenance_section,
    sidecars_section,
)
"""The report, in order; append a function to add a section."""


@dataclass(frozen=True)
class Report:
    """Every section of one builder directory."""

    builder: str
    """The builder directory."""
    sections: tuple[Section, ...]
    """Sections in display order."""

    def to_json(self) -> dict:
        """``{"builder": ..., <section key>: <section data>, ...}``."""
        return {"builder": self.builder, **{s.key: s.data for s in self.sections}}


def report(path, sections: Sequence[SectionMaker] = SECTIONS) -> Report:
    """The info report of the builder directory at ``path``."""
    builder = load_builder(path)
    return Report(builder=builder.path, sections=tuple(make(builder) for make in sections))
