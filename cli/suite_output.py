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
    """The paper's columns (percent), one row of the checkpoint's scores; absent sets show —."""
    table = Table(
        title=f"{result['suite']} suite, zero-shot top-1 (%) — {escape(result['checkpoint'])}",
        title_justify="left",
    )
    table.add_column("")
    row, images = ["top-1"], ["[dim]images[/]"]
    for name, header, key in table_columns(result["suite"]):
        table.add_column(header, justify="right")
        found = result["sets"].get(name)
        row.append(f"{100 * found[key]:.1f}" if found else "[dim]—[/]")
        images.append(f"[dim]{found['n']:,}[/]" if found else "")
    table.add_row(*row)
    table.add_row(*images)
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
