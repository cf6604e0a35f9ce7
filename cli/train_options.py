"""The pretrain/finetune options, generated from ``TrainConfig`` so help and config never drift.

Every field of ``TrainConfig`` becomes a ``--flag`` whose help is the field's docstring. All
flags default to "not given" (None), so ``run_config.resolve`` can tell a flag from a default
and apply defaults < recipe < config file < flags.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from clipa_data.core.errors import ClipaError
from clipa_train.recipes import RECIPE_NAMES
from clipa_train.run_config import TrainConfig, option_flag

PANELS = {
    "Data and output": ("data", "out", "split", "workers", "shuffle_buffer", "seed"),
    "Model": ("model", "from_checkpoint", "recipe", "pos_embed", "loss", "grad_checkpointing"),
    "Token reduction": ("image_size", "image_mask", "mask_ratio", "text_length", "text_mask"),
    "Augmentation": ("crop_scale_min", "color_jitter", "color_jitter_prob", "grayscale_prob"),
    "Optimisation": (
        "batch_size", "epochs", "samples", "lr", "warmup_steps", "weight_decay", "beta1",
        "beta2", "eps", "grad_clip_norm", "precision", "backend",
    ),
    "Evaluation": ("zeroshot", "classnames", "templates", "eval_every", "eval_batch_size"),
    "Logging and checkpoints": (
        "resume", "log_every", "checkpoint_every", "keep_checkpoints", "progress",
    ),
}  # fmt: skip
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, read from the class's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
            text = " ".join(str(following.value.value).split())
            docs[node.target.id] = text.replace("``", "")
    return docs


def parse_jitter(text: str | None) -> tuple[float, float, float, float] | None:
    """``0.32,0.32,0.32,0.08`` -> a 4-tuple (``none`` disables)."""
    if text is None or text.lower() == "none":
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ClipaError(f"--color-jitter needs 4 comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def _annotation(field: dataclasses.Field) -> type:
    kind = str(field.type)
    if "bool" in kind:
        return Optional[bool]  # noqa: UP045 - Typer needs the typing form at runtime
    if "tuple" in kind:
        return Optional[str]  # noqa: UP045
    if "float" in kind:
        return Optional[float]  # noqa: UP045
    if "int" in kind:
        return Optional[int]  # noqa: UP045
    return Optional[str]  # noqa: UP045


def _option(field: dataclasses.Field) -> inspect.Parameter:
    help_text = field_docs(TrainConfig).get(field.name, "")
    if field.name == "recipe":
        help_text += f" One of: {', '.join(RECIPE_NAMES)}."
    if field.name == "color_jitter":
        help_text += " As b,c,s,h (e.g. 0.32,0.32,0.32,0.08) or none."
    flag = option_flag(field.name)
    if "bool" in str(field.type):
        flag = f"{flag}/--no-{flag[2:]}"
    default = typer.Option(
        None,
        flag,
        help=help_text,
        rich_help_panel=PANEL_OF.get(field.name, "Other"),
        show_default=False,
    )
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_annotation(field)
    )


def train_command(stage: str, run: Callable[[str, dict, Path | None], None]) -> Callable:
    """A Typer command for ``stage`` whose options are every ``TrainConfig`` field + --config."""

    def command(**options):
        config_file = options.pop("config")
        options["color_jitter"] = parse_jitter(options.get("color_jitter"))
        return run(stage, options, config_file)

    parameters = [_option(f) for f in dataclasses.fields(TrainConfig) if f.name != "stage"]
    parameters.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--config",
                help="YAML or JSON file giving any of these options (flags override it).",
                rich_help_panel="Data and output",
            ),
            annotation=Optional[Path],  # noqa: UP045
        )
    )
    command.__signature__ = inspect.Signature(parameters)
    return command
