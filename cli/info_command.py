"""``clipa-data info``: splits, shards, examples, features and provenance of a builder dir."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from clipa_cli.common import reports_errors, stdout
from rich.table import Table

from clipa_data.prepare.info import report


@reports_errors
def info_command(
    path: Annotated[
        str,
        typer.Argument(
            help="A builder directory (OUT/NAME/VERSION), or OUT or OUT/NAME when it holds "
            "one; gs:// and s3:// URLs work too."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead.")
    ] = False,
) -> None:
    """Show what a TFDS builder directory holds, without loading TensorFlow."""
    result = report(path)
    console = stdout()
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    for section in result.sections:
        headed = any(section.columns)
        table = Table(title=section.title, show_header=headed)
        for index, column in enumerate(section.columns):
            table.add_column(column, style="bold" if index == 0 else None)
        for row in section.rows:
            table.add_row(*row)
        console.print(table)
