"""``clipa-data``: download, convert, tag, inspect and preview CLIP training data."""

from __future__ import annotations

from clipa_cli import (
    convert_command,
    download_command,
    info_command,
    preview_command,
    tag_command,
)
from clipa_cli.common import make_app

app = make_app(
    "clipa-data",
    "Prepare CLIP training data: download with img2dataset, convert to a TFDS builder "
    "directory, tag captions into Arrow sidecars, and inspect the result.",
)

app.command("download", help=download_command.HELP)(download_command.download_command)
app.command("convert")(convert_command.convert_command)
app.command("info")(info_command.info_command)
app.command("tag")(tag_command.tag)
app.command("preview")(preview_command.preview)


def main() -> None:
    """Console-script entry point."""
    app()
