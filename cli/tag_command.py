"""``clipa-data tag``: POS-tag captions into Arrow sidecars, or ``--check`` existing ones."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from clipa_cli.common import reports_errors, stdout
from rich.markup import escape
from rich.table import Table

from clipa_data.core import layout
from clipa_data.core.taggers import DEFAULT_BATCH_SIZE, DEFAULT_SPACY_MODEL
from clipa_data.prepare.runner import default_workers


class TaggerChoice(str, Enum):
    auto = "auto"
    nltk = "nltk"
    spacy = "spacy"


@reports_errors
def tag(
    builder_dir: Annotated[
        Path,
        typer.Argument(
            help="TFDS builder directory from clipa-data convert (or a folder holding one)."
        ),
    ],
    tagger: Annotated[
        TaggerChoice,
        typer.Option(
            help="auto: NLTK when its data is present, else an installed spaCy English pipeline."
        ),
    ] = TaggerChoice.auto,
    spacy_model: Annotated[
        str, typer.Option(help="Installed spaCy English pipeline (package name or folder).")
    ] = DEFAULT_SPACY_MODEL,
    text_field: Annotated[str, typer.Option(help="Record feature holding the caption.")] = "txt",
    split: Annotated[
        list[str] | None, typer.Option(help="Split to tag (repeatable); default: every split.")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes (default: all cores).")
    ] = default_workers(),
    overwrite: Annotated[
        bool, typer.Option(help="Re-tag shards that already have a sidecar.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            help="Tag nothing: verify existing sidecars (rows, keys, vocabulary, text field)."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help="Captions per spaCy nlp.pipe batch.")
    ] = DEFAULT_BATCH_SIZE,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Tokenise and POS-tag every caption once into one Arrow sidecar per shard."""
    if check:
        run_check(builder_dir, text_field, tuple(split or ()), workers, progress)
        return
    from clipa_data.prepare.tagging import TagConfig, tag_builder

    summary = tag_builder(
        TagConfig(
            builder_dir=builder_dir,
            tagger=tagger.value,
            spacy_model=spacy_model,
            text_field=text_field,
            splits=tuple(split or ()),
            workers=workers,
            overwrite=overwrite,
            batch_size=batch_size,
            show_progress=progress,
        )
    )
    table = Table(title="clipa-data tag")
    table.add_column("")
    table.add_column("")
    spec = summary.tagger
    table.add_row("tagger", escape(f"{spec.name} {spec.version} ({spec.model_id})"))
    table.add_row("shards tagged", f"{len(summary.tagged):,}")
    table.add_row("shards skipped (finished)", f"{len(summary.shards) - len(summary.tagged):,}")
    table.add_row("captions tagged", f"{summary.captions_tagged:,}")
    table.add_row("captions/s", f"{summary.captions_per_second:,.0f} ({summary.workers} workers)")
    table.add_row("sidecars", escape(str(layout.sidecar_dir(summary.builder_dir))))
    table.add_row("summary", escape(str(layout.tag_summary_path(summary.builder_dir))))
    stdout().print(table)


def run_check(
    builder_dir: Path, text_field: str, splits: tuple[str, ...], workers: int, progress: bool
) -> None:
    from clipa_data.prepare.sidecar_check import CheckConfig, check_sidecars

    report = check_sidecars(
        CheckConfig(
            builder_dir=builder_dir,
            text_field=text_field,
            splits=splits,
            workers=workers,
            show_progress=progress,
        )
    )
    problems = report.problems
    table = Table(title="clipa-data tag --check")
    table.add_column("shard")
    table.add_column("records", justify="right")
    table.add_column("sidecar")
    shown = problems[:20] if problems else report.shards[:20]
    for shard in shown:
        table.add_row(escape(shard.shard), f"{shard.records:,}", escape(shard.problem) or "ok")
    stdout().print(table)
    stdout().print(
        f"{len(report.shards) - len(problems):,} of {len(report.shards):,} shards ok"
        + (f" (showing the first {len(shown)})" if len(shown) < len(report.shards) else "")
    )
    report.raise_for_problems()  # one error line naming the first bad shard, exit 2
