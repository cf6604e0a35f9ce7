"""``clipa-train eval --retrieval``: progress bar, result table and ``--json`` of retrieval."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import fields

from clipa_cli.common import stderr, stdout
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clipa_train.eval_stage import EvalConfig
from clipa_train.retrieval_sets import RECALL_AT
from clipa_train.retrieval_stage import RetrievalOptions


def split_retrieval_options(options: dict) -> RetrievalOptions:
    """Take the retrieval flags out of ``options`` (the rest are ``EvalConfig``'s)."""
    return RetrievalOptions(**{f.name: options.pop(f.name) for f in fields(RetrievalOptions)})


@contextlib.contextmanager
def _bar(name: str) -> Iterator:
    """A progress factory ``total -> update(done)``; silent when stderr is no terminal."""
    console = stderr()
    progress = Progress(
        TextColumn(f"[bold]{escape(name)}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images + captions"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )

    def start(total: int):
        task = progress.add_task(name, total=total)
        return lambda done: progress.advance(task, done)

    with progress:
        yield start


def retrieval_body(config: EvalConfig, options: RetrievalOptions, as_json: bool) -> None:
    """Run the retrieval eval; print one JSON line or a table of Recall@1/5/10."""
    from clipa_train.retrieval_stage import evaluate_retrieval_checkpoint

    def note(line: str) -> None:
        stderr().print(f"warning: {escape(line)}")

    with _bar(options.retrieval) as progress:
        result = evaluate_retrieval_checkpoint(config, options, note, progress)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(
        title=f"{result['retrieval']} retrieval ({result['images']} images, "
        f"{result['captions']} captions)",
        title_justify="left",
    )
    table.add_column("")
    for k in RECALL_AT:
        table.add_column(f"R@{k}", justify="right")
    for label, key in (("image → text", "image_to_text"), ("text → image", "text_to_image")):
        table.add_row(label, *(f"{result[f'{key}_R@{k}']:.2%}" for k in RECALL_AT))
    stdout().print(table)
    stdout().print(f"-> {escape(str(config.result_path()))}")
