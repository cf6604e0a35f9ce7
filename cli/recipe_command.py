"""``clipa-train recipe NAME --data DIR --out DIR``: every stage of a recipe in order, resumable
(``clipa_train.recipe_run``); ``--plan`` prints the stages without training."""

from __future__ import annotations

import inspect

import typer
from clipa_cli.common import EXIT_INTERRUPTED, stderr, stdout
from clipa_cli.options import config_arguments, config_options
from clipa_cli.train_options import CONFIG_FILE, parse_jitter, training_options

from clipa_train.recipe_run import MANAGED, RecipeRunConfig
from clipa_train.recipes import RECIPE_NAMES, get_recipe

PANEL = "Recipe"


def recipe_help() -> str:
    """The command's help: what it does, an example, and every bundled recipe."""
    listed = [f"{name}: {get_recipe(name).description}." for name in RECIPE_NAMES]
    return "\n\n".join(
        [
            "Run every stage of a CLIPA recipe in order, each in its own run directory "
            "OUT/<stage>, each after the first starting --from the previous stage's final "
            "checkpoint. Run it again to continue: finished stages are skipped, an unfinished "
            "one resumes. Other training flags apply to every stage (a flag the recipe fixes "
            "must agree with it; one that needs another, as --eval-batch-size needs --zeroshot, "
            "goes to the stages that have it), and so do the options of a --config file (flags "
            "override it); --set STAGE.OPTION=VALUE applies to one stage. An option not given "
            "is the recipe's (or the stage's default): --plan prints every stage's values.",
            "Example: clipa-train recipe clipa-v2-h14-84-224 --data out/datacomp/1.0.0 --out "
            "runs/h14 --tokenizer vocab/bert-base-uncased --accum-steps auto --micro-batch 256 "
            "--plan",
            "Recipes (or a recipe .json/.yaml file):",
            *listed,
        ]
    )


def recipe_parameters() -> list[inspect.Parameter]:
    """NAME, --data, --out, --stage, --set, --plan, then every training flag it passes on."""
    (name,) = config_arguments(RecipeRunConfig, ["recipe"], metavars={"recipe": "NAME"})
    own = config_options(
        RecipeRunConfig,
        ["data", "out", "stage", "settings"],
        flags={"settings": "--set"},
        panels=dict.fromkeys(["data", "out", "stage", "settings"], PANEL),
        repeated=["settings"],
        metavars={"settings": "STAGE.OPTION=VALUE"},
    )
    for parameter in own[:2]:  # --data and --out are required
        parameter.default.default = ...
    plan = inspect.Parameter(
        "plan",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            False,
            "--plan",
            help="Print each stage (state, equivalent command, settings) and exit.",
            rich_help_panel=PANEL,
        ),
        annotation=bool,
    )
    passed_on = [p for p in training_options() if p.name not in MANAGED]
    for parameter in passed_on:  # a stand-alone stage's default, not the recipe's: not shown
        parameter.default.show_default = False
    return [name, *own, plan, *passed_on, CONFIG_FILE]


def recipe_body(
    recipe: str, data: str, out: str, stage, settings, plan: bool, config, **flags
) -> None:
    """Run (or with --plan, list) the recipe's stages."""
    from clipa_cli.train_app import print_summary
    from rich.markup import escape

    from clipa_train.recipe_run import RecipeRunConfig, plan_lines, run_recipe

    flags["color_jitter"] = parse_jitter(flags.get("color_jitter"))
    given = tuple((key, value) for key, value in flags.items() if value is not None)
    config = RecipeRunConfig(
        recipe=recipe, data=data, out=out, stage=stage, options=given,
        settings=tuple(settings or ()), config_file=None if config is None else str(config),
    )  # fmt: skip
    if plan:
        for line in plan_lines(config):
            stdout().print(escape(line), soft_wrap=True)
        return
    summaries: list[dict] = []

    def report(summary: dict) -> None:
        summaries.append(summary)
        print_summary(summary)

    def note(line: str) -> None:
        stderr().print(escape(line), soft_wrap=True)

    finished = run_recipe(config, note, report)
    if not finished and summaries and summaries[-1].get("signalled"):
        raise SystemExit(EXIT_INTERRUPTED)  # as clipa-train pretrain/finetune: see train_app
