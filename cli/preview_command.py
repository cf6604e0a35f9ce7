"""``clipa-data preview``: the first captions and what the model sees after text reduction."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from clipa_cli.common import reports_errors, stdout
from rich.markup import escape
from rich.table import Table

from clipa_data.core.text_reduction import TEXT_MASKS

TextMaskChoice = Enum("TextMaskChoice", {name: name for name in TEXT_MASKS}, type=str)
"""The text-mask registry's names as Typer choices."""


@reports_errors
def preview(
    builder_dir: Annotated[
        Path,
        typer.Argument(
            help="TFDS builder directory from clipa-data convert (or a folder holding one)."
        ),
    ],
    text_mask: Annotated[
        TextMaskChoice, typer.Option(help="Text reduction strategy.")
    ] = TextMaskChoice["syntax"],
    text_length: Annotated[int, typer.Option(help="Context length L (with SOT and EOT).")] = 16,
    n: Annotated[int, typer.Option("--n", help="Captions from the start of the split.")] = 10,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per caption (key, caption, ids, text)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the random and block strategies.")] = 0,
    split: Annotated[
        str | None, typer.Option(help="Split to read; default: the only one, or train.")
    ] = None,
    text_field: Annotated[str, typer.Option(help="Record feature holding the caption.")] = "txt",
) -> None:
    """Show the first N captions and the tokens the text tower gets after reduction."""
    from clipa_data.prepare.preview import PreviewConfig, preview_rows

    config = PreviewConfig(
        builder_dir=builder_dir,
        text_mask=text_mask.value,
        text_length=text_length,
        n=n,
        seed=seed,
        split=split,
        text_field=text_field,
    )
    if json_lines:
        for row in preview_rows(config):
            print(json.dumps(asdict(row), ensure_ascii=False))
        return
    table = Table(title=f"{text_mask.value} mask, L={text_length}", show_lines=True)
    table.add_column("key")
    table.add_column("caption")
    table.add_column("model sees")
    table.add_column("ids")
    for row in preview_rows(config):
        kept = [i for i in row.ids if i]
        table.add_row(escape(row.key), escape(row.caption), escape(row.text), str(kept))
    stdout().print(table)
