"""Convert's source shards: where they are, which format they have, and a check of the folders.

Every shard of a source folder must have one format, found by its file suffix
(``source_format.format_of_shard``), and one shard number; a ``--mode move`` run that was
interrupted (or finished) has already taken some shards out of SRC, and ``moved_sources`` finds
them where its manifest says they went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core import layout
from clipa_data.core.atomic import check_writable_folder
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.manifest import read_manifest
from clipa_data.prepare.source_format import (
    SOURCE_FORMATS,
    SourceFormat,
    format_of_shard,
    shard_examples,
    source_format,
)


@dataclass(frozen=True)
class Source:
    """A source shard: its file name in SRC and where to read it now."""

    name: str
    """File name in SRC, e.g. ``00003.tfrecord``."""
    path: Path
    """Where its bytes are now (SRC, or the staging folder when resuming a move)."""
    source_format: SourceFormat
    """Its format, from its suffix."""


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_locations(src: Path, out: Path | str, writing: bool = True) -> None:
    """SRC must be a folder with content; OUT (a local one) must not be inside it and, when
    ``writing`` (a finished conversion there may be up to date: read-only is fine), writable."""
    if not src.exists():
        raise ClipaError(f"{src} does not exist; pass the output folder of clipa-data download")
    if not src.is_dir():
        raise ClipaError(f"{src} is not a folder; pass the output folder of clipa-data download")
    if not any(src.iterdir()):
        raise ClipaError(f"{src} is empty; run clipa-data download into it first")
    if writing and not layout.is_url(out):
        check_writable_folder(Path(out), "the builder directory")
    if not layout.is_url(out) and _is_within(Path(out).resolve(), src.resolve()):
        raise ClipaError(
            f"OUT {out} is inside SRC {src}; img2dataset's resume reads every *.json in "
            f"SRC, so write the builder elsewhere, e.g. {src.resolve().parent / 'tfds'}"
        )


def _source(path: Path) -> Source | None:
    found = format_of_shard(path)
    return Source(path.name, path, found) if found is not None else None


def _check_one_format(src: Path, sources: Sequence[Source]) -> None:
    names = {source.source_format.name for source in sources}
    if len(names) > 1:
        suffixes = " and ".join(f.suffix for f in SOURCE_FORMATS.values() if f.name in names)
        raise ClipaError(
            f"{src} holds both {suffixes} shards; convert one format at a time "
            "(move the other shards to their own folder)"
        )


def _check_unique_ids(src: Path, sources: Sequence[Source]) -> None:
    ids: dict[int, str] = {}
    for source in sources:
        shard_id = layout.raw_shard_id(source.name)
        if shard_id in ids:
            raise ClipaError(
                f"{src}: {ids[shard_id]} and {source.name} are both shard {shard_id}; remove one"
            )
        ids[shard_id] = source.name


def find_sources(src: Path, moved: Sequence[Source] = ()) -> list[Source]:
    """The shards in ``src`` (plus ``moved``: shards an interrupted ``--mode move`` took)."""
    found = [s for s in map(_source, layout.find_raw_shards(src)) if s is not None]
    present = {source.name for source in found}
    sources = found + [source for source in moved if source.name not in present]
    stats = sorted(src.glob("*_stats.json")) if not sources else []
    if stats:  # the download was here: its shards went elsewhere
        raise ClipaError(
            f"{src} holds {len(stats)} shards' *_stats.json but none of their shard files: "
            "an earlier clipa-data convert --mode move took them into its builder directory "
            "(use that one), or they were deleted (re-run the same clipa-data download)"
        )
    if not sources:
        formats = " or ".join(SOURCE_FORMATS)
        built = any(src.glob("dataset_info.json")) or any(src.glob("*/*/dataset_info.json"))
        swapped = " (it holds a converted builder directory: did you swap SRC and OUT?)"
        raise ClipaError(
            f"{src} holds no img2dataset shards ({shard_examples()}){swapped * built}; "
            f"pass the folder clipa-data download wrote (output_format {formats})"
        )
    _check_one_format(src, sources)
    _check_unique_ids(src, sources)
    return sorted(sources, key=lambda source: layout.raw_shard_id(source.name))


def moved_sources(src: Path, mode: str, folders: Sequence[Path | str]) -> list[Source]:
    """Shards an interrupted or earlier ``--mode move`` run took out of SRC, where they are now;
    one line when this run is not ``--mode move`` (it said the shards were missing and to
    download them again)."""
    for folder in folders:
        if layout.is_url(folder):  # a store takes only copies: nothing was moved there
            continue
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest and manifest.config.method == "move":
            moved_format = source_format(manifest.source.format)
            moved = [
                Source(shard.source, folder / shard.target, moved_format)
                for shard in manifest.shards
                if not (src / shard.source).exists() and (folder / shard.target).exists()
            ]
            if moved and mode != "move":
                raise ClipaError(
                    f"{src}: {len(moved)} of its shards were moved into {folder} by a --mode "
                    "move conversion; run it again with --mode move"
                )
            return moved
    return []
