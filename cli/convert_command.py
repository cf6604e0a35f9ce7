"""``clipa-data convert``: img2dataset shards -> a verified TFDS builder directory."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from clipa_cli.common import reports_errors, stdout
from rich.table import Table

from clipa_data.core import layout
from clipa_data.prepare.convert import ConvertConfig, ConvertResult, convert
from clipa_data.prepare.runner import default_workers


class Mode(str, Enum):
    """How tfrecord shards reach OUT."""

    auto = "auto"
    copy = "copy"
    hardlink = "hardlink"
    symlink = "symlink"
    move = "move"


class Verify(str, Enum):
    """How thoroughly records are checked."""

    headers = "headers"
    crc = "crc"


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:,.0f} {unit}" if unit == "B" else f"{num_bytes:,.2f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)


def print_summary(result: ConvertResult) -> None:
    """The summary table, then the shards left out and where to look next."""
    console = stdout()
    table = Table(title=f"clipa-data convert: {result.status}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    seconds = ", ".join(f"{phase} {value:.1f}s" for phase, value in result.phases.items())
    rows = [
        ("builder directory", str(result.builder_dir)),
        ("source shards", f"{result.source_shards:,}"),
        ("shards written", f"{result.shards:,} ({result.method}; {result.reused_shards} reused)"),
        ("records", f"{result.records:,}"),
        ("bytes", _size(result.num_bytes)),
        ("empty shards left out", f"{len(result.empty_shards):,}"),
        ("bad shards left out", f"{len(result.bad_shards):,}"),
        ("features", ", ".join(f"{c.name}: {c.describe()}" for c in result.schema.columns)),
        ("columns dropped", ", ".join(result.schema.dropped) or "none"),
        (
            "verified with TFDS",
            f"{result.verification.shards:,} shard lengths, "
            f"{result.verification.examples_decoded:,} examples decoded",
        ),
        ("time", seconds),
    ]
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    if result.bad_shards:
        bad = Table(title="bad shards left out")
        bad.add_column("source")
        bad.add_column("problem")
        for source, problem in result.bad_shards:
            bad.add_row(source, problem)
        console.print(bad)
    console.print(f"summary: {layout.convert_summary_path(result.builder_dir)}")
    console.print(f"inspect: clipa-data info {result.builder_dir}")


@reports_errors
def convert_command(
    src: Annotated[
        Path,
        typer.Argument(
            help="img2dataset output folder (00000.tfrecord or 00000.tar shards, *_stats.json). "
            "Never written to (--mode move takes the shards out of it)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(help="Folder that receives NAME/VERSION/ (the TFDS builder); not in SRC."),
    ],
    name: Annotated[
        str,
        typer.Option(
            help="TFDS dataset name: letters, digits and underscores, starting with a letter "
            "(TFDS cannot read names with hyphens back from the shard names)."
        ),
    ] = "laion400m",
    split: Annotated[
        str, typer.Option(help="Split name used in shard names and metadata.")
    ] = "train",
    version: Annotated[
        str, typer.Option(help="Dataset version X.Y.Z, the builder folder.")
    ] = "1.0.0",
    mode: Annotated[
        Mode,
        typer.Option(
            help="How tfrecord shards reach OUT: auto = hardlink when SRC and OUT share a "
            "filesystem, else copy; copy; hardlink; symlink (absolute links into SRC); move "
            "(out of SRC). Webdataset .tar shards are always re-encoded to tfrecord."
        ),
    ] = Mode.auto,
    verify: Annotated[
        Verify,
        typer.Option(
            help="headers: count by walking the record headers (length CRCs checked, image "
            "bytes never read); crc: also check the data CRC of every record."
        ),
    ] = Verify.headers,
    schema_records: Annotated[
        int,
        typer.Option(
            min=0,
            help="Records per shard whose column types are checked. 0 (default) = every "
            "record: exact, finds the one record where img2dataset wrote a missing float as "
            "empty bytes, at the cost of reading each shard once (measured here: about 0.7 s "
            "per GB per worker, against about 0.1 s for counting). N = only the first N records "
            "of each shard: reads little beyond the record headers, but misses a later change.",
        ),
    ] = 0,
    drop_column: Annotated[
        list[str] | None,
        typer.Option(
            "--drop-column",
            help="Leave this column out of the declared features (repeatable), e.g. one that "
            "changes type between records. The records keep it; TFDS ignores it.",
        ),
    ] = None,
    skip_bad_shards: Annotated[
        bool,
        typer.Option(
            "--skip-bad-shards",
            help="Leave out corrupt, truncated or unfinished shards (listed in the summary "
            "and manifest) instead of stopping at the first.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a different conversion already in OUT/NAME/VERSION, or discard an "
            "unfinished one made with other options, instead of stopping.",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes for per-shard work.")
    ] = default_workers(),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
    ] = True,
) -> None:
    """Turn img2dataset output into a TFDS builder directory, counted exactly and verified.

    Shards are renumbered NAME-SPLIT.tfrecord-XXXXX-of-NNNNN (gaps closed, empty shards dropped).
    dataset_info.json and features.json are written by TFDS, then loaded back to prove them.
    A killed run, re-run with the same options, resumes where it stopped.
    """
    config = ConvertConfig(
        src=src,
        out=out,
        name=name,
        split=split,
        version=version,
        mode=mode.value,
        verify=verify.value,
        schema_records=schema_records,
        drop_columns=tuple(drop_column or ()),
        skip_bad_shards=skip_bad_shards,
        overwrite=overwrite,
        workers=workers,
        show_progress=progress,
    )
    print_summary(convert(config))
