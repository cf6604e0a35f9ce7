"""``clipa-data convert``: img2dataset shards -> a verified TFDS builder directory."""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from clipa_cli.common import reports_errors, stdout
from clipa_cli.options import command, config_arguments, config_options, config_values
from clipa_cli.tables import bad_shards_table, convert_table
from rich.markup import escape

from clipa_data.core import layout
from clipa_data.prepare.convert import ConvertConfig, ConvertResult, convert

OPTIONS = config_options(
    ConvertConfig,
    [f.name for f in dataclasses.fields(ConvertConfig) if f.name not in ("src", "out")],
    flags={"drop_columns": "--drop-column", "show_progress": "--progress"},
    extra_help={"drop_columns": "Repeatable."},
    repeated=("drop_columns",),
    bare=("skip_bad_shards", "overwrite"),
)


def damaged_lines(result: ConvertResult) -> list[str]:
    """One line per damaged shard: what was salvaged, what was lost, and the damage."""
    lines = []
    for shard in result.damaged_shards:
        if shard.damage is None:
            continue
        lost = shard.damage.lost
        lost = "an unknown number (no stats file)" if lost is None else f"{lost:,}"
        lines.append(
            f"damaged shard {shard.source}: salvaged {shard.records:,} records, lost {lost} "
            f"({shard.damage.problem})"
        )
    return lines


def print_summary(result: ConvertResult) -> None:
    """The summary table, then the shards left out and where to look next."""
    console = stdout()
    console.print(convert_table(result))
    if result.bad_shards:
        console.print(bad_shards_table(result.bad_shards))
    for line in damaged_lines(result):
        console.print(line, markup=False, highlight=False)
    said = "summary (of the run that converted)" if result.status == "up to date" else "summary"
    console.print(f"{said}: {escape(str(layout.convert_summary_path(result.builder_dir)))}")
    console.print(f"inspect: clipa-data info {escape(shlex.quote(str(result.builder_dir)))}")


@reports_errors
def convert_options(**options: Any) -> None:
    """Turn img2dataset output into a TFDS builder directory, counted exactly and verified.

    Shards are renumbered NAME-SPLIT.tfrecord-XXXXX-of-NNNNN (gaps closed, empty shards dropped).
    dataset_info.json and features.json are written by TFDS, then loaded back to prove them.
    A killed run, re-run with the same options, resumes where it stopped.
    """
    print_summary(convert(ConvertConfig(**config_values(ConvertConfig, options))))


convert_command = command(
    convert_options, [*config_arguments(ConvertConfig, ("src", "out")), *OPTIONS]
)
"""The ``clipa-data convert`` command."""
