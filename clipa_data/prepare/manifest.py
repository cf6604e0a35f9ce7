"""The convert manifest: what a conversion was asked to do and what it placed where.

``clipa_convert_manifest.json`` is written twice: as the plan, when the staging folder is made
(no target sizes yet), and complete, once every shard is placed (``with_placed`` adds the sizes).
A re-run compares the ``identity`` of its own plan with the stored one to tell "the same
conversion, resume or reuse it" from "another conversion, stop or overwrite".

The types are frozen; ``to_json`` writes the same keys in the same order as the nested dicts
this replaced, so manifests written before and after read the same (and a killed run's partial
manifest resumes).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipa_data.core import layout
from clipa_data.core.atomic import write_json
from clipa_data.core.errors import ClipaError

MANIFEST_VERSION = 1
IDENTITY_KEYS = ("dataset", "source", "config", "schema", "shards", "dropped_empty", "skipped_bad")
"""Manifest parts that define a conversion; two runs agreeing on them produce the same bytes."""
CHECK_SETTINGS = ("verify", "schema_records")
"""Settings of ``config`` that choose only what a run checks, not the bytes it writes."""


@dataclass(frozen=True)
class DatasetName:
    """The TFDS dataset the conversion writes."""

    name: str
    """TFDS dataset name."""
    version: str
    """Dataset version (``X.Y.Z``)."""
    split: str
    """The split the shards form."""


@dataclass(frozen=True)
class SourceFolder:
    """Where the shards came from."""

    folder: str
    """The resolved source folder."""
    format: str
    """Its shards' format (a ``source_format.SOURCE_FORMATS`` name)."""


@dataclass(frozen=True)
class ConvertSettings:
    """The options that change the bytes written (or what was checked)."""

    method: str
    """How shards were placed: hardlink, copy, symlink, move or encode."""
    verify: str
    """``headers`` or ``crc``."""
    schema_records: int
    """Records per shard whose features were checked; 0 = every record."""
    drop_columns: tuple[str, ...]
    """Columns left out of the declared features."""
    skip_bad_shards: bool
    """Whether bad shards were left out (damaged ones: all but their intact records) instead
    of stopping."""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "drop_columns": list(self.drop_columns)}


@dataclass(frozen=True)
class Damage:
    """What ``--skip-bad-shards`` salvaged of a damaged shard: the whole records before it."""

    problem: str
    """The damage (one line naming the file and byte offset)."""
    intact_bytes: int
    """Bytes of the source before the damage: only these are read and converted."""
    lost: int | None
    """Records lost with the damage (img2dataset's ``successes`` minus those salvaged); None
    when the shard has no stats file to tell."""


@dataclass(frozen=True)
class ShardEntry:
    """One source shard and the TFDS shard it became."""

    index: int
    """Shard index in the split."""
    target: str
    """TFDS shard file name (``<name>-<split>.tfrecord-XXXXX-of-NNNNN``)."""
    source: str
    """Source file name in SRC (``00003.tfrecord``)."""
    records: int
    """Records in the shard (of a damaged source: those salvaged)."""
    source_bytes: int
    """Size of the source file when inspected."""
    source_mtime_ns: int
    """Modification time of the source file when inspected."""
    stats_successes: int | None
    """``successes`` of img2dataset's stats file, when there was one."""
    first_key: str | None
    """Key of the first record (how verify tells shards apart), when records have keys."""
    bytes: int | None = None
    """Size of the placed target; None in the plan, before placement."""
    damage: Damage | None = None
    """A damaged source's salvage (its intact part was converted); None for an intact one."""

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        if self.bytes is None:
            del entry["bytes"]
        if self.damage is None:  # manifests of intact sources read as before
            del entry["damage"]
        return entry

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardEntry:
        damage = data.get("damage")
        return cls(**{**data, "damage": Damage(**damage) if damage is not None else None})


@dataclass(frozen=True)
class BadShard:
    """A source shard left out by ``--skip-bad-shards``."""

    source: str
    """Source file name."""
    problem: str
    """Why it could not be converted (one line)."""


@dataclass(frozen=True)
class ConvertManifest:
    """The whole manifest; ``to_json`` / ``from_json`` are its file form."""

    dataset: DatasetName
    """The dataset written."""
    source: SourceFolder
    """Where the shards came from."""
    config: ConvertSettings
    """The options that define the conversion."""
    schema: Mapping[str, Any]
    """The declared features as JSON (``schema.Schema.to_json``)."""
    shards: tuple[ShardEntry, ...]
    """Every converted shard, by index."""
    dropped_empty: tuple[str, ...]
    """Source shards without records, left out."""
    skipped_bad: tuple[BadShard, ...]
    """Source shards left out as bad."""
    versions: Mapping[str, str | None]
    """Versions of clipa and the packages that wrote the result."""
    manifest_version: int = MANIFEST_VERSION
    """Version of this file's layout."""

    @property
    def records(self) -> int:
        """Records over all shards."""
        return sum(shard.records for shard in self.shards)

    @property
    def damaged(self) -> tuple[ShardEntry, ...]:
        """The shards converted from the intact part of a damaged source."""
        return tuple(shard for shard in self.shards if shard.damage is not None)

    @property
    def num_bytes(self) -> int | None:
        """Bytes of the placed shards; None before placement."""
        sizes = [shard.bytes for shard in self.shards]
        return None if None in sizes else sum(sizes)

    def with_placed(self, sizes: Sequence[int]) -> ConvertManifest:
        """This plan with the placed size of every shard."""
        shards = tuple(
            dataclasses.replace(shard, bytes=size)
            for shard, size in zip(self.shards, sizes, strict=True)
        )
        return dataclasses.replace(self, shards=shards)

    def to_json(self) -> dict[str, Any]:
        """The file form (keys in the order earlier versions wrote them)."""
        totals: dict[str, int] = {"shards": len(self.shards), "records": self.records}
        if self.num_bytes is not None:
            totals["bytes"] = self.num_bytes
        return {
            "manifest_version": self.manifest_version,
            "dataset": dataclasses.asdict(self.dataset),
            "source": dataclasses.asdict(self.source),
            "config": self.config.to_json(),
            "schema": dict(self.schema),
            "shards": [shard.to_json() for shard in self.shards],
            "dropped_empty": list(self.dropped_empty),
            "skipped_bad": [dataclasses.asdict(bad) for bad in self.skipped_bad],
            "totals": totals,
            "versions": dict(self.versions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConvertManifest:
        """Read the file form; raises KeyError/TypeError/ValueError on a malformed one."""
        config = dict(data["config"])
        return cls(
            dataset=DatasetName(**data["dataset"]),
            source=SourceFolder(**data["source"]),
            config=ConvertSettings(**{**config, "drop_columns": tuple(config["drop_columns"])}),
            schema=dict(data["schema"]),
            shards=tuple(ShardEntry.from_json(shard) for shard in data["shards"]),
            dropped_empty=tuple(data["dropped_empty"]),
            skipped_bad=tuple(BadShard(**bad) for bad in data["skipped_bad"]),
            versions=dict(data["versions"]),
            manifest_version=int(data["manifest_version"]),
        )

    def identity(self) -> dict[str, Any]:
        """The parts that define the conversion (no sizes, no package versions)."""
        parts = {key: value for key, value in self.to_json().items() if key in IDENTITY_KEYS}
        parts["shards"] = [
            {k: v for k, v in shard.items() if k != "bytes"} for shard in parts["shards"]
        ]
        return parts

    def covers(self, other: ConvertManifest) -> bool:
        """Whether this finished conversion is what ``other`` plans: the same identity, checked
        at least as thoroughly as ``other`` asks (``--verify crc`` covers ``headers``;
        ``--schema-records 0``, every record, covers any count; more records cover fewer)."""
        mine, theirs = self.identity(), other.identity()
        done, asked = mine["config"], theirs["config"]
        if not _checked_at_least(done, asked):
            return False
        theirs["config"] = {**asked, **{name: done[name] for name in CHECK_SETTINGS}}
        return mine == theirs

    def difference(self, other: ConvertManifest) -> str:
        """``different source, shards``: what sets ``other`` apart from this conversion; a
        different config names its settings (``--verify headers → crc``)."""
        mine, theirs = self.identity(), other.identity()
        parts = []
        for key in IDENTITY_KEYS:
            if mine[key] == theirs[key]:
                continue
            if key not in ("config", "dataset"):
                parts.append(key)
                continue
            settings = [
                f"{SETTING_FLAGS.get(name, name)} {_shown(mine[key][name])} → "
                f"{_shown(theirs[key][name])}"
                for name in mine[key]
                if mine[key][name] != theirs[key].get(name)
            ]
            if mine[key].get("split") != theirs[key].get("split"):
                settings.append("a builder directory holds the one split it was converted with")
            parts.append(f"{key}: {'; '.join(settings)}" if settings else key)
        return "different " + ", ".join(parts)


SETTING_FLAGS = {
    "method": "placement",
    "verify": "--verify",
    "schema_records": "--schema-records",
    "drop_columns": "--drop-column",
    "skip_bad_shards": "--skip-bad-shards",
    "split": "--split",
}
"""How a ``ConvertSettings`` field is named in a message (the flag that sets it)."""


def _checked_at_least(done: dict[str, Any], asked: dict[str, Any]) -> bool:
    """Whether the checks ``done`` (a config's JSON) include those ``asked``."""
    records_done, records_asked = done["schema_records"], asked["schema_records"]
    return done["verify"] in (asked["verify"], "crc") and (
        records_done == 0 or 0 < records_asked <= records_done
    )


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def write_manifest(builder: Path, manifest: ConvertManifest) -> None:
    """Write ``manifest`` into the (staging) builder folder, atomically."""
    write_json(layout.convert_manifest_path(builder), manifest.to_json())


def read_manifest(builder: Path) -> ConvertManifest | None:
    """The convert manifest of a (staging) builder folder, or None if there is none."""
    path = Path(layout.convert_manifest_path(builder))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise ClipaError(f"{path} is damaged (not JSON); remove {builder}") from None
    try:
        return ConvertManifest.from_json(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ClipaError(
            f"{path} is not a convert manifest this version can read ({error!r}); remove {builder}"
        ) from None
