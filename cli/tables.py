"""The rich tables that ``clipa-data`` prints: one function per stage result, no logic.

The stages return plain results (``DownloadSummary``, ``ConvertResult``, ``TagSummary``...);
how they look on a terminal is decided here, so ``clipa_data`` never builds markup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from clipa_data.core import layout
from clipa_data.prepare.placement import BYTE_COPYING_METHODS

if TYPE_CHECKING:
    from clipa_data.prepare.convert import ConvertResult
    from clipa_data.prepare.download import DownloadSummary
    from clipa_data.prepare.info import Report
    from clipa_data.prepare.preview import PreviewRow
    from clipa_data.prepare.sidecar_check import CheckReport
    from clipa_data.prepare.tagging import TagSummary

CHECK_ROWS_SHOWN = 20
"""Shards listed by ``tag --check`` (the problems first, else the first shards)."""


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({part / whole:.1%})" if whole else f"{part:,}"


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:,.0f} {unit}" if unit == "B" else f"{num_bytes:,.2f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)


def download_table(summary: DownloadSummary, top_errors: int = 5) -> Table:
    """A download: shards, counts, the main error kinds and the speed."""
    table = Table(title="download summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("output", f"{escape(summary.output_folder)} ({summary.output_format})")
    shards = f"{len(summary.shards)} finished"
    if summary.resumed_shards:
        shards += f" ({len(summary.resumed_shards)} by an earlier run, skipped)"
    if summary.unfinished_shards:
        shards += f", [red]{len(summary.unfinished_shards)} unfinished[/]"
    table.add_row("shards", shards)
    table.add_row("samples", f"{summary.count:,}")
    table.add_row("successes", _share(summary.successes, summary.count))
    table.add_row("failed_to_download", _share(summary.failed_to_download, summary.count))
    table.add_row("failed_to_resize", _share(summary.failed_to_resize, summary.count))
    for message, count in summary.error_kinds()[:top_errors]:
        table.add_row("  error", f"{count:,} × {escape(message)}")
    rate = summary.samples_per_second
    speed = f"{rate:,.1f} samples/s" if rate is not None else "nothing new to download"
    table.add_row("speed", f"{speed} ({summary.wall_seconds:.1f} s wall)")
    table.add_row("summary JSON", escape(summary.summary_path))
    return table


def convert_table(result: ConvertResult) -> Table:
    """A conversion: shards, records, bytes, features, what was left out, the verification."""
    table = Table(title=f"clipa-data convert: {result.status}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    seconds = ", ".join(f"{phase} {value:.1f}s" for phase, value in result.phases.items())
    rows = [
        ("builder directory", str(result.builder_dir)),
        ("source shards", f"{result.source_shards:,}"),
        (
            "shards written",
            f"{result.shards:,} ({_placed_how(result)}; {result.reused_shards} reused)",
        ),
        ("records", f"{result.records:,}"),
        ("bytes", _size(result.num_bytes)),
        ("empty shards left out", f"{len(result.empty_shards):,}"),
        ("bad shards left out", f"{len(result.bad_shards):,}"),
        ("damaged shards salvaged", f"{len(result.damaged_shards):,}"),
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
        table.add_row(label, escape(value))  # a folder named "o[v2]" is text, not markup
    return table


def _placed_how(result: ConvertResult) -> str:
    """The placement method, and that a salvaged shard's intact part was copied whatever it is
    (a link or a move would take the damage with it)."""
    salvaged = len(result.damaged_shards)
    if not salvaged or result.method in BYTE_COPYING_METHODS:
        return result.method
    return f"{result.method}; the {salvaged:,} salvaged copied"


def bad_shards_table(bad_shards: Iterable[tuple[str, str]]) -> Table:
    """The source shards a conversion left out, with their problem."""
    table = Table(title="bad shards left out")
    table.add_column("source")
    table.add_column("problem")
    for source, problem in bad_shards:
        table.add_row(escape(source), escape(problem))
    return table


def tag_table(summary: TagSummary) -> Table:
    """A tagging run: the tagger, shards tagged and skipped, captions and their rate."""
    table = Table(title="clipa-data tag", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    spec = summary.tagger
    table.add_row("tagger", escape(f"{spec.name} {spec.version} ({spec.model_id})"))
    table.add_row("shards tagged", f"{len(summary.tagged):,}")
    table.add_row("shards skipped (finished)", f"{len(summary.shards) - len(summary.tagged):,}")
    table.add_row("captions tagged", f"{summary.captions_tagged:,}")
    if summary.tagged:
        rate = f"{summary.captions_per_second:,.0f} ({summary.workers} workers)"
        table.add_row("captions/s", rate)  # the progress bar's final rate: the same measure
    else:
        table.add_row("captions/s", "- (every shard was already tagged)")
    table.add_row("time", f"{summary.tagging_seconds:.1f} s tagging, {summary.seconds:.1f} s wall")
    table.add_row("sidecars", escape(str(layout.sidecar_dir(summary.builder_dir))))
    said = "summary" if summary.tagged else "summary (of the run that tagged)"
    table.add_row(said, escape(str(layout.tag_summary_path(summary.builder_dir))))
    return table


def check_table(report: CheckReport) -> tuple[Table, str]:
    """A sidecar check: the problem shards (else the first shards), and a one-line count."""
    problems = report.problems
    table = Table(title="clipa-data tag --check")
    table.add_column("shard")
    table.add_column("records", justify="right")
    table.add_column("sidecar")
    shown = problems[:CHECK_ROWS_SHOWN] if problems else report.shards[:CHECK_ROWS_SHOWN]
    for shard in shown:
        table.add_row(escape(shard.shard), f"{shard.records:,}", escape(shard.problem) or "ok")
    count = f"{len(report.shards) - len(problems):,} of {len(report.shards):,} shards ok"
    if len(shown) < len(report.shards):
        count += f" (showing the first {len(shown)})"
    return table, count


def preview_table(rows: Iterable[PreviewRow], text_mask: str, text_length: int) -> Table:
    """Captions beside the text the model sees after reduction, and the kept ids."""
    table = Table(title=f"{text_mask} mask, L={text_length}", show_lines=True)
    for column in ("key", "caption", "model sees", "ids"):
        table.add_column(column)
    for row in rows:
        kept = [i for i in row.ids if i]
        table.add_row(escape(row.key), escape(row.caption), escape(row.text), str(kept))
    return table


def info_tables(result: Report) -> list[Table]:
    """One table per section of a builder directory's report."""
    tables = []
    for section in result.sections:
        table = Table(title=section.title, show_header=any(section.columns))
        for index, column in enumerate(section.columns):
            table.add_column(column, style="bold" if index == 0 else None)
        for row in section.rows:
            table.add_row(*(escape(str(cell)) for cell in row))  # paths, captions: not markup
        tables.append(table)
    return tables
