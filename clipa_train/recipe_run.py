"""``clipa-train recipe NAME --data DIR --out DIR``: every stage of a recipe, in order, resumable.

Each stage trains in its own run directory ``OUT/<stage name>`` exactly as ``clipa-train
pretrain|finetune --recipe NAME:STAGE`` would (so its ``config.json`` names the recipe), each
stage after the first ``--from`` the previous stage's final checkpoint (the one its
``summary.json`` names). The command is resumable as a whole: a re-run skips the stages that
finished, continues an unfinished one with ``--resume auto`` (or, when it stopped before its
first checkpoint, starts it over with ``--overwrite``, which moves the attempt aside, never
deletes it), and goes on. A stage that stops (a signal) ends the command; the next stage never
starts from an unfinished one, and ``--stage NAME`` asked to do so is refused with one line.

Every stage's options are resolved before the first one trains, so a flag that contradicts a
later stage's recipe is refused at once, not hours later. Torch-free (the CLI's ``--plan``).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from clipa_data.core import layout
from clipa_data.core.config_fields import Doc
from clipa_data.core.errors import ClipaError
from clipa_train.recipes import Recipe, StageRecipe, get_recipe
from clipa_train.run_config import (
    IGNORED_UNLESS,
    OPTIONS,
    RECIPE_RENAMES,
    coerce_option,
    option_flag,
    recipe_options,
    resolve,
    same_value,
)
from clipa_train.run_dir import run_files

MANAGED = ("recipe", "data", "out", "from_checkpoint", "resume", "overwrite")
"""Options the recipe command sets per stage itself (refused as flags and in ``--set``)."""

PLACEHOLDER_CHECKPOINT = "<the previous stage's final checkpoint>"
"""``--from`` while checking a later stage's options before its previous stage has trained."""


@dataclass(frozen=True)
class RecipeRunConfig:
    """Options of ``clipa-train recipe``."""

    recipe: Annotated[str, Doc("A recipe name (listed above) or a recipe .json/.yaml file.")]
    data: Annotated[str, Doc("TFDS builder directory every stage trains on.")]
    out: Annotated[
        str, Doc("Folder of the stages' run directories, one per stage: OUT/<stage name>.")
    ]
    stage: Annotated[
        str | None, Doc("Run only this stage (its previous stage must have finished).")
    ] = None
    options: Annotated[
        tuple[tuple[str, Any], ...],
        Doc("Training options for every stage, as (option name, value); one the recipe fixes "
            "must agree with it."),
    ] = ()  # fmt: skip
    settings: Annotated[
        tuple[str, ...],
        Doc("An option for one stage only, e.g. finetune.accum_steps=8 (repeat for more)."),
    ] = ()
    config_file: Annotated[
        str | None,
        Doc("YAML or JSON file of training options for every stage, as --config of pretrain "
            "(the flags in ``options`` override it)."),
    ] = None  # fmt: skip

    def __post_init__(self) -> None:
        layout.check_local(self.out, "--out")
        for name, _ in self.options:
            if name in MANAGED:
                raise ClipaError(
                    f"{option_flag(name)} is set per stage by clipa-train recipe; drop it"
                )

    def every_stage(self) -> dict[str, Any]:
        """The options for every stage: the config file's, then the flags over them."""
        from clipa_train.run_config import read_config_file, without_ignored_defaults

        from_file = read_config_file(self.config_file) if self.config_file else {}
        from_file = without_ignored_defaults(from_file)  # as pretrain --config lets them pass
        for name in from_file:
            if name in MANAGED:
                raise ClipaError(
                    f"{self.config_file}: {option_flag(name)} is set per stage by clipa-train "
                    "recipe; remove it from the file"
                )
        return {**from_file, **dict(self.options)}


@dataclass(frozen=True)
class StageStatus:
    """How far a stage's run directory got."""

    state: str
    """``new`` (no run there), ``unfinished`` or ``finished``."""
    steps: int | None = None
    """Steps made (from ``summary.json`` or the latest checkpoint's name)."""
    total_steps: int | None = None
    """The stage's steps, when its ``summary.json`` says."""
    checkpoint: Path | None = None
    """The final checkpoint (finished) or the latest one (unfinished; None: none yet)."""

    def describe(self) -> str:
        """A few words for the console and the errors."""
        if self.state == "new":
            return "not started"
        if self.state == "finished":
            return f"finished: {self.checkpoint}"
        if self.checkpoint is None:
            return "started, no checkpoint yet"
        of = f" of {self.total_steps}" if self.total_steps else ""
        return f"stopped at step {self.steps}{of}, checkpoint {self.checkpoint}"


CHECKPOINT_NAME = re.compile(r"^step_(\d{8,})\.pt$")
"""``checkpoint.NAME`` (that module imports torch; this one stays torch-free)."""


def _latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = []
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found) if found else None


def _total_steps(run_dir: Path) -> int | None:
    """The stage's steps as its ``config.json`` (written once it started) derived them."""
    try:
        return int(json.loads((run_dir / "config.json").read_text())["derived"]["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage_status(run_dir: Path) -> StageStatus:
    """Whether ``run_dir`` holds no run, an unfinished one or a finished one: a checkpoint at
    the stage's last step (every stage writes one at its end, and the checkpoint pruning keeps
    the newest), whether or not ``summary.json`` got written after it."""
    if not run_files(run_dir):
        return StageStatus("new")
    latest, total = _latest_checkpoint(run_dir), _total_steps(run_dir)
    if latest is None:
        return StageStatus("unfinished", 0, total, None)
    steps, checkpoint = latest
    state = "finished" if total is not None and steps >= total else "unfinished"
    return StageStatus(state, steps, total, checkpoint)


@dataclass(frozen=True)
class PlannedStage:
    """One stage of the run: its recipe, run directory and options."""

    index: int
    """Position in the recipe, from 0."""
    recipe: StageRecipe
    """The stage's settings."""
    run_dir: Path
    """``OUT/<stage name>``."""
    options: dict[str, Any]
    """The options given to ``run_config.resolve`` (without ``--from``/``--resume``)."""

    @property
    def name(self) -> str:
        """The stage's name."""
        return self.recipe.name


def load(config: RecipeRunConfig) -> tuple[Recipe, str]:
    """The recipe and how ``--recipe`` names it (a file by its absolute path)."""
    try:
        recipe = get_recipe(config.recipe)
    except KeyError as error:
        raise ClipaError(str(error.args[0])) from None
    path = Path(config.recipe)
    ref = str(path.resolve()) if path.suffix and path.is_file() else config.recipe
    return recipe, ref


def _setting_parts(item: str) -> tuple[str, str, str]:
    """``finetune.micro-batch=64`` -> ``("finetune", "micro_batch", "64")``."""
    target, equals, text = item.partition("=")
    stage, dot, key = target.rpartition(".")
    key = key.strip().replace("-", "_").removeprefix("__")
    if not (equals and dot):
        raise ClipaError(f"--set {item!r}: write STAGE.OPTION=VALUE (e.g. finetune.workers=4)")
    return stage, "from_checkpoint" if key == "from" else key, text


def parse_settings(recipe: Recipe, settings: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``--set STAGE.OPTION=VALUE`` items as ``{stage: {option: value}}`` (values read as the
    option's type, as config files are)."""
    per_stage: dict[str, dict[str, Any]] = {}
    for item in settings:
        stage, key, text = _setting_parts(item)
        recipe.stage_named(stage)  # an unknown stage: one line listing the recipe's stages
        if key in MANAGED or key not in OPTIONS:
            raise ClipaError(
                f"--set {item!r}: {key!r} is not an option clipa-train recipe passes on; use a "
                "training option such as accum_steps, workers or eval_every"
            )
        try:
            per_stage.setdefault(stage, {})[key] = coerce_option(key, text)
        except (KeyError, TypeError, ValueError):
            raise ClipaError(f"--set {item!r}: {text!r} is not a value of {key}") from None
    return per_stage


def _check_settings_free(recipe: Recipe, ref: str, settings: tuple[str, ...]) -> None:
    """A ``--set`` of a setting the recipe fixes, to another value, is refused naming the
    ``--set`` as typed (the stage's check named a flag the user never typed) and the way to
    change it."""
    from clipa_train.run_config import coerce_option, recipe_options, recipe_setting, same_value

    for item in settings:
        name, key, text = _setting_parts(item)
        fixed = recipe_options(f"{ref}:{name}", recipe.stage_named(name).stage)
        if key in fixed and not same_value(coerce_option(key, text), fixed[key]):
            raise ClipaError(
                f"--set {item}: recipe {ref} {recipe_setting(fixed, key)} for its {name} "
                "stage; for another value, run a recipe file with yours (the recipe's values: "
                "clipa-train recipe --plan)"
            )


def plan(
    config: RecipeRunConfig, without_tokenizer: bool = False
) -> tuple[Recipe, list[PlannedStage]]:
    """Every stage with its run directory and options, each resolved (a later stage with a
    stand-in ``--from``), so a contradiction with any stage is refused up front.
    ``without_tokenizer`` (``--plan``): a WordPiece stage without ``--tokenizer`` is resolved
    as if it had one, so the plan can say what a run still needs."""
    recipe, ref = load(config)
    per_stage = parse_settings(recipe, config.settings)
    _check_settings_free(recipe, ref, config.settings)
    every_stage = config.every_stage()
    if config.stage is not None:
        recipe.stage_named(config.stage)
    given = [
        {
            **every_stage,
            **per_stage.get(stage.name, {}),
            "recipe": f"{ref}:{stage.name}",
            "data": config.data,
            "out": str(Path(config.out) / stage.name),
        }
        for stage in recipe.stages
    ]
    lacking = [
        without_tokenizer and _lacks_tokenizer(stage, options)
        for stage, options in zip(recipe.stages, given, strict=True)
    ]

    def resolved(index: int, options: dict[str, Any]) -> Any:
        stand_in = {"from_checkpoint": PLACEHOLDER_CHECKPOINT} if index else {}
        stage = recipe.stages[index].stage
        return resolve(stage, {**options, **stand_in}, without_tokenizer=lacking[index])

    given = _where_they_apply(recipe, given, every_stage, per_stage, resolved)
    stages = []
    for index, (stage, options) in enumerate(zip(recipe.stages, given, strict=True)):
        resolved(index, options)
        stages.append(PlannedStage(index, stage, Path(options["out"]), options))
    return recipe, stages


def _where_they_apply(
    recipe: Recipe,
    given: list[dict[str, Any]],
    every_stage: dict[str, Any],
    per_stage: dict[str, dict[str, Any]],
    resolved: Callable[[int, dict[str, Any]], Any],
) -> list[dict[str, Any]]:
    """Options for every stage that mean something only beside another (``--eval-batch-size``
    beside ``--zeroshot``), left out of the stages where they would be ignored when another
    stage uses them: ``--eval-batch-size 64 --set finetune.zeroshot=DIR`` was refused for the
    pretrain stage. One that no stage uses, or that a stage's recipe fixes, stays, and the
    stage refuses it with its line."""
    shared = [name for name, *_ in IGNORED_UNLESS if name in every_stage]
    if not shared:
        return given
    applies: dict[str, list[bool]] = {name: [] for name in shared}
    for index, options in enumerate(given):
        config = resolved(index, {k: v for k, v in options.items() if k not in shared})
        for name, applies_to, *_ in IGNORED_UNLESS:
            if name in applies:
                applies[name].append(applies_to(config))
    kept = []
    for index, (stage, options) in enumerate(zip(recipe.stages, given, strict=True)):
        fixed = recipe_options(options["recipe"], stage.stage)
        asked = per_stage.get(stage.name, {}).keys() | fixed.keys()
        kept.append({
            key: value
            for key, value in options.items()
            if key not in applies or applies[key][index] or key in asked or not any(applies[key])
        })  # fmt: skip
    return kept


def _lacks_tokenizer(stage: StageRecipe, options: dict) -> bool:
    return stage.tokenizer != "clip-bpe" and options.get("tokenizer") is None


def stage_flags(stage: PlannedStage, status: StageStatus, start_from: Path | None) -> dict:
    """The stage's options plus ``--from`` the previous checkpoint and how to treat its run
    directory: continue it (a checkpoint), or start it over (a run without one)."""
    flags = dict(stage.options)
    if start_from is not None:
        flags["from_checkpoint"] = str(start_from)
    if status.state == "unfinished" and status.checkpoint is not None:
        flags["resume"] = "auto"
    elif status.state == "unfinished":
        flags["overwrite"] = True  # stopped before its first checkpoint: moved aside, not lost
    return flags


def previous_checkpoint(recipe: Recipe, stages: list[PlannedStage], index: int) -> Path | None:
    """The final checkpoint of stage ``index - 1`` (None for the first stage); one line naming
    that stage, how far it got and the fix when it has not finished."""
    if index == 0:
        return None
    previous, stage = stages[index - 1], stages[index]
    status = stage_status(previous.run_dir)
    if status.state != "finished":
        raise ClipaError(
            f"stage {stage.name} of recipe {recipe.name} starts from stage {previous.name} "
            f"({previous.run_dir}), which has not finished ({status.describe()}); finish it "
            f"first: run clipa-train recipe without --stage (or with --stage {previous.name})"
        )
    return status.checkpoint


WHAT_A_STAGE_TRAINS = (
    "split", "seed", "text_source", "samples_per_epoch", "model", "pos_embed", "loss",
    "image_norm", "image_size", "image_mask", "mask_ratio", "text_length", "text_mask",
    "crop_scale_min", "color_jitter", "color_jitter_prob", "grayscale_prob", "batch_size",
    "epochs", "samples", "lr", "warmup_steps", "weight_decay", "beta1", "beta2", "eps",
    "grad_clip_norm", "precision", "text_field",
)  # fmt: skip
"""Options that decide what a stage trains (not how fast, where to, or what it logs): a stage
run with others is not the stage the recipe now describes. ``--data`` is left out: the same
builder may be spelled another way from another folder."""


def check_same_stage(stage: PlannedStage, flags: dict, label: str) -> None:
    """Refuse to continue or skip a stage whose run trained with other settings than the
    recipe (an edited file, another ``--set``/flag) now gives, naming them: a finished stage
    would be kept as if it were the new one, an unfinished one changed mid-run."""
    try:
        saved = json.loads((stage.run_dir / "config.json").read_text())
        # Options whose defaults the run worked out (a warm-up capped at the stage's steps)
        # are compared as they were given.
        recorded = {**saved["options"], **saved["given"]}
    except (OSError, ValueError, KeyError, TypeError):
        return  # stopped before it wrote its config, or an older clipa's: nothing to go by
    now = resolve(stage.recipe.stage, flags).to_json()
    changed = [
        name
        for name in WHAT_A_STAGE_TRAINS
        if name in recorded
        and not same_value(recorded[name], now[name])
        # Left to be worked out now (--loss: the checkpoint's) where an older run recorded
        # only the value it worked out: nothing to compare.
        and not (now[name] is None and name not in saved["given"])
    ]
    if changed:
        was = ", ".join(f"{option_flag(n)} {recorded[n]}" for n in changed)
        given = ", ".join(f"{option_flag(n)} {now[n]}" for n in changed)
        raise ClipaError(
            f"{label}: its run trained with {was}, the recipe now gives {given}; run the "
            f"recipe as it was, or move {stage.run_dir} (and the stages after it) aside to "
            "train the stage anew"
        )


def run_recipe(
    config: RecipeRunConfig,
    note: Callable[[str], None],
    on_summary: Callable[[dict], None] = lambda summary: None,
) -> bool:
    """Run the recipe's stages in order (or ``--stage`` alone); True when every stage asked
    for has finished, False when one stopped (a signal: run the command again to continue)."""
    from clipa_train.train_stage import run_stage

    recipe, stages = plan(config)
    chosen = [s for s in stages if config.stage in (None, s.name)]
    for stage in chosen:
        status = stage_status(stage.run_dir)
        label = f"stage {stage.index + 1}/{len(stages)} {stage.name} ({stage.run_dir})"
        finished = status.state == "finished"
        start_from = None if finished else previous_checkpoint(recipe, stages, stage.index)
        flags = stage_flags(stage, status, start_from)
        if status.checkpoint is not None:  # one without a checkpoint starts over anyway
            placeholder = finished and stage.index  # a finished stage's --from is not needed
            stand_in = {"from_checkpoint": PLACEHOLDER_CHECKPOINT} if placeholder else {}
            check_same_stage(stage, {**flags, **stand_in}, label)
        if finished:
            note(f"{label}: already finished, skipped ({status.checkpoint})")
            continue
        note(f"{label}: {'continuing, ' if status.state != 'new' else ''}{status.describe()}")
        summary = run_stage(resolve(stage.recipe.stage, flags))
        if summary is not None:
            on_summary(summary)
        after = stage_status(stage.run_dir)
        if after.state != "finished":
            note(
                f"{label}: {after.describe()}; run the same clipa-train recipe command again "
                "to continue it"
            )
            return False
        if summary is not None and summary.get("signalled") and stage is not chosen[-1]:
            # The signal came after the stage's last step: it finished, the recipe stops here.
            note(
                f"{label}: finished; stopped before the next stage (a signal): run the same "
                "clipa-train recipe command again to go on"
            )
            return False
    return True


def describe_stage(stage: PlannedStage, status: StageStatus) -> list[str]:
    """``--plan`` lines of one stage: its state, the equivalent command and its settings."""
    flags = {key: value for key, value in stage.options.items() if value is not None}
    first = ("recipe", "data", "out")  # then --from, then the flags given
    words = [f"clipa-train {stage.recipe.stage}", *(_flag_text(key, flags[key]) for key in first)]
    if stage.index:
        words.append(f"--from {PLACEHOLDER_CHECKPOINT}")
    words += [_flag_text(key, value) for key, value in flags.items() if key not in first]
    settings = ", ".join(
        f"{RECIPE_RENAMES.get(key, key)}={value}"
        for key, value in stage.recipe.as_options().items()
        if value is not None
    )
    if _lacks_tokenizer(stage.recipe, flags):
        settings += ", tokenizer=<your local WordPiece vocabulary: give --tokenizer PATH>"
    return [
        f"stage {stage.index + 1} {stage.name} -> {stage.run_dir} ({status.describe()})",
        "  " + " ".join(words),
        "  " + settings,
    ]


def _flag_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return option_flag(key) if value else f"--no-{option_flag(key)[2:]}"
    if isinstance(value, tuple):
        value = ",".join(str(item) for item in value)
    return f"{option_flag(key)} {shlex.quote(str(value))}"


def plan_lines(config: RecipeRunConfig) -> list[str]:
    """What ``--plan`` prints: the recipe, then each stage (state, command, settings)."""
    recipe, stages = plan(config, without_tokenizer=True)  # a contradiction is refused here too
    lines = [f"{recipe.name}: {recipe.description}"]
    for stage in stages:
        if config.stage in (None, stage.name):
            lines += describe_stage(stage, stage_status(stage.run_dir))
    if recipe.note:
        lines.append(f"note: {recipe.note}")
    return lines
