"""How ``clipa-train eval --suite`` shows its result: one rich table in the paper's column order,
or with ``--json`` one line per set of the suite (a skipped set's line says why)."""

from __future__ import annotations

import json
from pathlib import Path

from clipa_cli.common import stderr, stdout
from rich.markup import escape
from rich.table import Table

from clipa_train.eval_suite import table_columns


def suite_lines(result: dict) -> list[dict]:
    """One record per set of the suite, in the table's order: its result, or why it was skipped."""
    names = dict.fromkeys(name for name, _, _ in table_columns(result["suite"]))
    return [
        {"set": name, **result["sets"][name]}
        if name in result["sets"]
        else {"set": name, "skipped": result["skipped"][name]}
        for name in names
    ]


def suite_table(result: dict) -> Table:
    """One row per column of the paper's table (percent), in its order; absent sets show —.

    Rows rather than columns: ten columns do not fit an 80-character terminal.
    """
    table = Table(
        title=f"{result['suite']} suite — {escape(result['checkpoint'])}", title_justify="left"
    )
    for header, justify in (
        ("set", "left"),
        ("metric", "left"),
        ("%", "right"),
        ("images", "right"),
    ):
        table.add_column(header, justify=justify)
    for name, header, key in table_columns(result["suite"]):
        found = result["sets"].get(name)
        metric = "top-1" if key == "top1" else key.rsplit("_", 1)[-1]  # image_to_text_R@1: R@1
        score = f"{100 * found[key]:.1f}" if found else "[dim]—[/]"
        table.add_row(header, metric, score, f"[dim]{found['n']:,}[/]" if found else "")
    return table


def note_skipped(name: str, why: str) -> None:
    """An absent set, on stderr (as soon as the suite has looked for it)."""
    stderr().print(f"skipped {name}: {escape(why)}")


def print_suite(result: dict, out: Path, as_json: bool) -> None:
    """The table (or the JSON lines) on stdout."""
    if as_json:
        for line in suite_lines(result):
            print(json.dumps(line))
        return
    stdout().print(suite_table(result))
    stdout().print(f"-> {escape(str(out))}")
