"""The options of ``clipa-train pretrain`` / ``finetune`` / ``eval``, built from their configs.

Every row of ``run_config.OPTIONS`` becomes a ``--flag`` whose type, help and choices come
from the nested ``TrainConfig`` field it maps to (``clipa_cli.options``; no source parsing).
All training flags default to "not given" (None), so ``run_config.resolve`` can tell a flag
from a default and apply defaults < recipe < config file < flags.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from clipa_cli.options import PATH_MARK, command, config_options

from clipa_data.core.config_fields import field_specs
from clipa_data.core.errors import ClipaError
from clipa_train.eval_stage import EvalConfig
from clipa_train.run_config import OPTIONS, option_flag, option_owner

PANELS = {
    "run": "Data and output",
    "recipe": "Model",
    "model": "Model",
    "reduction": "Token reduction",
    "augment": "Augmentation",
    "optim": "Optimisation",
    "evaluation": "Evaluation",
    "logging": "Logging and checkpoints",
}
"""The help panel of each ``TrainConfig`` group (and of the top-level ``recipe``)."""

EXTRA_HELP = {"color_jitter": "As b,c,s,h (e.g. 0.32,0.32,0.32,0.08) or none."}


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


def training_options() -> list[inspect.Parameter]:
    """One unset option per flat training option, named like it, typed and documented by the
    nested field it maps to."""
    parameters = []
    for name, path in OPTIONS.items():
        owner, attr = option_owner(name)
        (parameter,) = config_options(
            owner,
            [attr],
            flags={attr: option_flag(name)},
            panels={attr: PANELS[path.partition(".")[0]]},
            extra_help={attr: EXTRA_HELP.get(name, "")},
            unset=True,
        )
        parameters.append(parameter.replace(name=name))
    return parameters


CONFIG_FILE = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(
        None,
        "--config",
        help="YAML or JSON file giving any of these options (flags override it).",
        rich_help_panel="Data and output",
    ),
    annotation=Optional[str],  # noqa: UP045 - Typer needs the typing form at runtime
)
setattr(CONFIG_FILE.default, PATH_MARK, True)  # text, so that "" is refused, not read as "."


def train_command(stage: str, run: Callable[[str, dict, Path | None], None]) -> Callable:
    """A Typer command for ``stage`` whose options are every training option + --config."""

    def body(**options):
        config_file = options.pop("config")
        options["color_jitter"] = parse_jitter(options.get("color_jitter"))
        return run(stage, options, config_file)

    return command(body, [*training_options(), CONFIG_FILE])


def _required(parameter: inspect.Parameter) -> inspect.Parameter:
    """The option without a default: Typer asks for it."""
    parameter.default.default = ...
    return parameter.replace(annotation=str)


def eval_options() -> list[inspect.Parameter]:
    """The options of ``clipa-train eval``: every ``EvalConfig`` field, plus ``--json``."""
    from clipa_train.retrieval_stage import RetrievalOptions

    parameters = config_options(
        EvalConfig, flags={"dataset": "--imagenet-val"}, bare=("no_text_cache",)
    )
    parameters += config_options(RetrievalOptions)
    as_json = inspect.Parameter(
        "as_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            False,
            "--json",
            help="Print the result as one JSON object (with --suite: one line per set).",
        ),
        annotation=bool,
    )
    required = {"checkpoint"}  # and one of --imagenet-val, --suite, --retrieval: eval_body checks
    return [_required(p) if p.name in required else p for p in parameters] + [as_json]


def report_options() -> list[inspect.Parameter]:
    """The arguments of ``clipa-train report``: RUN... and the ``ReportConfig`` options."""
    from clipa_cli.options import help_of

    from clipa_train.report import ReportConfig

    runs = inspect.Parameter(
        "runs",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(
            ...,
            help=help_of(field_specs(ReportConfig)["runs"]),
            metavar="RUN...",
            show_default=False,
        ),
        annotation=list[str],  # not Path: an empty one ("" would be ".") is refused
    )
    out, fit = config_options(ReportConfig, ("out", "fit"), bare=("fit",))
    return [runs, _required(out), fit]
