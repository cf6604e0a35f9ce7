"""``clipa-train probe``: linear-probe top-1 of a checkpoint (``clipa_train.probe``)."""

from __future__ import annotations

import inspect
import json

import typer
from clipa_cli.common import reports_errors, stderr, stdout
from clipa_cli.options import command, config_options
from rich.markup import escape
from rich.table import Table

from clipa_train.probe import ProbeConfig

PROBE_HELP = "\n\n".join(
    [
        "Linear-probe top-1: frozen image features (extracted once, cached), a logistic-"
        "regression head fitted with L-BFGS, its L2 strength chosen on a held-out part of "
        "the training set.",
        "Example: clipa-train probe --checkpoint runs/b16/checkpoints/step_00037292.pt "
        "--train data/cifar10/train --val data/cifar10/test",
        "Sets: ImageFolder trees (one folder per class; DIR/train and DIR/val are found) or "
        "TFDS builder directories (train and validation/test splits). A second probe of the "
        "same checkpoint and sets reuses the cached features (said on stderr).",
    ]
)


def probe_body(as_json: bool = False, **options) -> None:
    """Run the probe; print a table (or one JSON object)."""
    from clipa_train.probe import probe_checkpoint

    config = ProbeConfig(**options)
    result = probe_checkpoint(config, say=lambda line: stderr().print(escape(line)))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="linear probe", title_justify="left")
    table.add_column("")
    table.add_column("")
    per_l2 = ", ".join(f"{k}: {v:.1%}" for k, v in result["holdout_top1"].items())
    rows = [
        ("top-1", f"{result['top1']:.2%} (chance {result['chance']:.2%})"),
        ("L2 (chosen)", f"{result['l2']:g}"),
        ("held-out top-1 per L2", per_l2),
        ("train / val images", f"{result['n_train']} / {result['n_val']}"),
        ("classes, feature dim", f"{result['classes']}, {result['feature_dim']}"),
        ("result", str(config.result_path())),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, escape(value))
    stdout().print(table)


def probe_options() -> list[inspect.Parameter]:
    """Every ``ProbeConfig`` field as an option (checkpoint, train, val required) + ``--json``."""
    required = {"checkpoint", "train", "val"}
    parameters = []
    for parameter in config_options(ProbeConfig):
        if parameter.name in required:
            parameter.default.default = ...
            parameter = parameter.replace(annotation=str)
        parameters.append(parameter)
    as_json = inspect.Parameter(
        "as_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--json", help="Print the result as one JSON object."),
        annotation=bool,
    )
    return [*parameters, as_json]


probe_command = command(reports_errors(probe_body), probe_options(), doc=PROBE_HELP)
"""The ``clipa-train probe`` command."""
