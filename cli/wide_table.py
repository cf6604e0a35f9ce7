"""A table wider than the terminal, printed as several tables that each fit: the first column
(the row's name) repeats in each, and no number is cut to ``…``.

A file or a pipe gets one table, however wide: nothing there wraps or crops.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

CELL_PADDING = 3
"""Columns a cell takes besides its text: one space each side and one border."""


def print_wide_table(
    console: Console, title: str, headers: list[str], rows: list[list[str]], key_columns: int = 1
) -> None:
    """Print ``rows`` under ``headers`` (left-aligned key columns, the rest right-aligned)."""
    if not console.is_terminal:
        groups = [list(range(key_columns, len(headers)))]
    else:
        groups = _column_groups(headers, rows, key_columns, console.width)
    for number, group in enumerate(groups):
        part = title if len(groups) == 1 else f"{title} ({number + 1}/{len(groups)})"
        table = Table(title=part, title_justify="left")
        for column in [*range(key_columns), *group]:
            justify = "left" if column < key_columns else "right"
            table.add_column(headers[column], justify=justify, no_wrap=True)
        for row in rows:
            table.add_row(*(row[column] for column in [*range(key_columns), *group]))
        if not console.is_terminal:  # every cell whole, however wide the table
            console.width = max(console.width, _width(headers, rows, range(len(headers))))
        console.print(table)


def _width(headers: list[str], rows: list[list[str]], columns) -> int:
    """Characters the table of ``columns`` needs, borders included."""
    return 1 + sum(
        max([len(headers[c]), *(len(row[c]) for row in rows)]) + CELL_PADDING for c in columns
    )


def _column_groups(
    headers: list[str], rows: list[list[str]], key_columns: int, width: int
) -> list[list[int]]:
    """The value columns in order, packed greedily into groups whose table (with the key
    columns) fits ``width``; a column too wide even alone gets a group of its own."""
    keys = range(key_columns)
    groups: list[list[int]] = [[]]
    for column in range(key_columns, len(headers)):
        if groups[-1] and _width(headers, rows, [*keys, *groups[-1], column]) > width:
            groups.append([])
        groups[-1].append(column)
    return groups
