"""``clipa-data info``: splits, shards, examples, features and provenance of a builder dir."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import typer
from clipa_cli.common import reports_errors, stdout
from clipa_cli.options import command, config_arguments, config_options
from clipa_cli.tables import info_tables

from clipa_data.core.config_fields import Doc
from clipa_data.prepare.info import report


@dataclass(frozen=True)
class InfoRequest:
    """What ``clipa-data info`` shows, and how."""

    path: Annotated[
        str,
        Doc(
            "A builder directory (OUT/NAME/VERSION), or OUT or OUT/NAME when it holds one; "
            "gs:// and s3:// URLs work too."
        ),
    ]
    as_json: Annotated[bool, Doc("Print the report as JSON instead.")] = False


@reports_errors
def show_info(path: str, as_json: bool) -> None:
    """Show what a TFDS builder directory holds, without loading TensorFlow."""
    result = report(path)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    console = stdout()
    for table in info_tables(result):
        console.print(table)


info_command = command(
    show_info,
    [
        *config_arguments(InfoRequest, ("path",)),
        *config_options(InfoRequest, ("as_json",), flags={"as_json": "--json"}, bare=("as_json",)),
    ],
)
"""The ``clipa-data info`` command."""
