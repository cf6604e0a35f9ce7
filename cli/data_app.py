"""``clipa-data``: download, convert, tag, inspect and preview CLIP training data."""

from __future__ import annotations

from clipa_cli import preview_command, tag_command
from clipa_cli.common import make_app

app = make_app(
    "clipa-data",
    "Prepare CLIP training data: download with img2dataset, convert to a TFDS builder "
    "directory, tag captions into Arrow sidecars, and inspect the result.",
)

app.command(name="tag")(tag_command.tag)
app.command(name="preview")(preview_command.preview)


def main() -> None:
    """Console-script entry point."""
    app()
