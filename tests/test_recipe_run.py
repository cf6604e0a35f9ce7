"""``clipa-train recipe``: a two-stage tiny recipe runs end to end through the real command (a
subprocess), is SIGTERM-killed after its first stage finished, and a re-run skips that stage and
finishes the second from the first one's final checkpoint; a stage whose previous stage did not
finish is refused with one line; ``--plan`` and ``--help`` list stages and recipes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from typer.testing import CliRunner

from clipa_train.recipe_run import stage_status
from clipa_train.recipes import RECIPE_NAMES

PROGRAM = str(Path(sys.executable).parent / "clipa-train")
PRETRAIN_STEPS, FINETUNE_STEPS = 6, 40  # batch 8; the second stage outlasts the kill

TINY = {
    "name": "tiny-two-stage",
    "description": "clipa-tiny at 32 px / 8 tokens, then 40 px / 16 tokens",
    "stages": [
        {"stage": "pretrain", "model": "clipa-tiny", "image_size": 32, "text_length": 8,
         "text_mask": "truncate", "global_batch": 8, "lr": 1e-3, "warmup_steps": 1,
         "samples": 8 * PRETRAIN_STEPS, "pos_embed": "sin_cos_2d", "precision": "fp32",
         "grad_checkpointing": False},
        {"stage": "finetune", "model": "clipa-tiny", "image_size": 40, "text_length": 16,
         "text_mask": "truncate", "global_batch": 8, "lr": 1e-4, "warmup_steps": 2,
         "samples": 8 * FINETUNE_STEPS, "pos_embed": "learnable", "precision": "fp32",
         "grad_checkpointing": False, "image_mask": "random", "mask_ratio": 0.3},
    ],
}  # fmt: skip


def command(recipe: Path, data: Path, out: Path, *more: object) -> list[str]:
    return [
        str(arg)
        for arg in (
            "recipe", recipe, "--data", data, "--out", out, "--workers", 1, "--no-progress",
            "--log-every", 1000, "--checkpoint-every", 2, "--keep-checkpoints", 2, *more,
        )
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe")
    data = make_builder_dir(root / "data", [make_records(24, start=i * 24) for i in range(2)])
    recipe = root / "tiny.json"
    recipe.write_text(json.dumps(TINY))
    return {"root": root, "data": data, "recipe": recipe}


def start_killed(args: list[str], ready, what: str) -> tuple[int, str]:
    """Start ``clipa-train ARGS``, SIGTERM it (as ``kill`` does) once ``ready()``; its exit
    code and stderr."""
    process = subprocess.Popen(
        [PROGRAM, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    with_group_gone(process)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def killed_between_stages(setup) -> dict:
    """The recipe run killed once its first stage finished, run again and killed inside its
    second stage (after a checkpoint), then run again to the end."""
    out = setup["root"] / "runs"
    args = command(setup["recipe"], setup["data"], out)
    _, first = start_killed(
        args, lambda: stage_status(out / "pretrain").state == "finished", "the first stage"
    )
    between = {name: stage_status(out / name) for name in ("pretrain", "finetune")}
    second_checkpoints = out / "finetune" / "checkpoints"
    second_code, second = start_killed(
        args, lambda: any(second_checkpoints.glob("step_*.pt")), "a second-stage checkpoint"
    )
    inside = stage_status(out / "finetune")
    again = subprocess.run([PROGRAM, *args], env=ENV, capture_output=True, text=True, timeout=300)
    return {
        "out": out, "first": first, "between": between, "second": second, "inside": inside,
        "again": again, "second_code": second_code,
    }  # fmt: skip


def with_group_gone(process: subprocess.Popen) -> None:
    """A kill before the loop's handler is installed may leave loader workers: end them."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def test_kill_between_stages_then_rerun_finishes_the_recipe(killed_between_stages):
    run = killed_between_stages
    out, between, again = run["out"], run["between"], run["again"]
    assert between["pretrain"].state == "finished", run["first"]
    assert between["finetune"].state != "finished", run["first"]
    assert "stage 1/2 pretrain" in run["second"] and "already finished, skipped" in run["second"]
    assert run["inside"].state == "unfinished" and run["inside"].steps < FINETUNE_STEPS
    assert run["second_code"] == 130, run["second"]  # stopped by the signal, not finished
    assert again.returncode == 0, again.stderr
    assert "already finished, skipped" in again.stderr
    # The unfinished second stage continued (--resume auto) from its own latest checkpoint.
    assert f"finetune ({out / 'finetune'}): continuing, stopped at step" in again.stderr
    pretrain, finetune = stage_status(out / "pretrain"), stage_status(out / "finetune")
    assert (pretrain.state, pretrain.steps) == ("finished", PRETRAIN_STEPS)
    assert (finetune.state, finetune.steps) == ("finished", FINETUNE_STEPS)
    config = json.loads((out / "finetune" / "config.json").read_text())
    # The second stage started from the first one's final checkpoint, at its own sizes.
    assert Path(config["options"]["from_checkpoint"]) == pretrain.checkpoint
    assert config["options"]["recipe"].endswith("tiny.json:finetune")
    assert (config["options"]["image_size"], config["options"]["text_length"]) == (40, 16)
    summary = json.loads((out / "finetune" / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == FINETUNE_STEPS


def test_a_finished_recipe_run_again_does_nothing(setup, killed_between_stages):
    out = killed_between_stages["out"]
    before = sorted(p.name for p in (out / "finetune" / "checkpoints").iterdir())
    done = subprocess.run(
        [PROGRAM, *command(setup["recipe"], setup["data"], out)], env=ENV, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("already finished, skipped") == 2, done.stderr
    assert sorted(p.name for p in (out / "finetune" / "checkpoints").iterdir()) == before


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_a_stage_run_with_other_settings_is_neither_skipped_nor_continued(
    setup, killed_between_stages
):
    """A finished stage is not kept, nor an unfinished one continued, when the recipe now
    gives it other settings (an edited file, a --set): the line names them."""
    run = setup["root"] / "changed"
    shutil.copytree(killed_between_stages["out"], run)
    edited = setup["root"] / "edited.json"
    recipe = json.loads(Path(setup["recipe"]).read_text())
    recipe["stages"][0]["lr"] = 0.5
    edited.write_text(json.dumps(recipe))
    result = invoke(*command(edited, setup["data"], run))
    assert_one_line_error(
        result, f"pretrain ({run / 'pretrain'}): its run trained with --lr ",
        "the recipe now gives --lr 0.5", f"move {run / 'pretrain'}",
    )  # fmt: skip
    (run / "finetune" / "checkpoints" / f"step_{FINETUNE_STEPS:08d}.pt").unlink()
    result = invoke(*command(setup["recipe"], setup["data"], run, "--set", "finetune.seed=5"))
    *notes, last = result.stderr.strip().splitlines()  # after "pretrain: already finished"
    assert result.exit_code != 0 and len(notes) == 1 and "already finished" in notes[0]
    assert last.startswith("error: stage 2/2 finetune") and "gives --seed 5" in last, last
    assert "its run trained with --seed 0" in last and "Traceback" not in result.output


def test_a_re_run_compares_the_settings_as_given_not_as_worked_out(setup, killed_between_stages):
    """config.json records worked-out values (a warm-up capped at the stage's steps, a preset's
    image size): the unchanged recipe run again skips its finished stages, and a stage stopped
    before its first checkpoint starts over with new settings rather than being refused."""
    run = setup["root"] / "as-given"
    shutil.copytree(killed_between_stages["out"], run)
    config = json.loads((run / "pretrain" / "config.json").read_text())
    config["options"]["warmup_steps"] = 0  # as a warm-up longer than the stage was capped
    # As a run of an older clipa recorded --loss: worked out, not as given (now: None).
    config["options"]["loss"] = "contrastive"
    del config["given"]["loss"]
    (run / "pretrain" / "config.json").write_text(json.dumps(config))
    other_captions = invoke(*command(setup["recipe"], setup["data"], run, "--text-field", "alt"))
    assert_one_line_error(other_captions, "its run trained with --text-field txt", "gives "
                          "--text-field alt")  # fmt: skip
    again = invoke(*command(setup["recipe"], setup["data"], run))
    assert again.exit_code == 0, again.output
    assert again.stderr.count("already finished, skipped") == 2, again.stderr
    shutil.rmtree(run / "finetune" / "checkpoints")  # stopped before its first checkpoint
    (run / "finetune" / "checkpoints").mkdir()
    seeded = invoke(*command(setup["recipe"], setup["data"], run, "--set", "finetune.seed=3"))
    assert seeded.exit_code == 0, seeded.output
    assert json.loads((run / "finetune" / "config.json").read_text())["options"]["seed"] == 3


def test_a_stage_whose_previous_stage_did_not_finish_is_refused(setup, killed_between_stages):
    empty = setup["root"] / "empty"
    result = invoke(*command(setup["recipe"], setup["data"], empty, "--stage", "finetune"))
    assert_one_line_error(
        result, "stage finetune of recipe", "starts from stage pretrain", "not started",
        "without --stage (or with --stage pretrain)",
    )  # fmt: skip
    # A real first stage stopped before its end: its final checkpoint is not there.
    stopped = setup["root"] / "stopped"
    shutil.copytree(killed_between_stages["out"] / "pretrain", stopped / "pretrain")
    (stopped / "pretrain" / "checkpoints" / f"step_{PRETRAIN_STEPS:08d}.pt").unlink()
    result = invoke(*command(setup["recipe"], setup["data"], stopped, "--stage", "finetune"))
    assert_one_line_error(
        result, "which has not finished (stopped at step "
        f"{PRETRAIN_STEPS - 2} of {PRETRAIN_STEPS}", "--stage pretrain",
    )  # fmt: skip
    assert not (stopped / "finetune").exists()


def test_a_set_of_what_the_recipe_fixes_names_the_set(setup, tmp_path):
    """The stage's check said "drop --lr 0.0002 or the recipe", a flag never typed."""
    out = tmp_path / "runs"
    result = invoke(*command(setup["recipe"], setup["data"], out, "--set", "finetune.lr=2e-4"))
    assert_one_line_error(
        result, "--set finetune.lr=2e-4: recipe", "sets --lr 0.0001 for its finetune stage",
        "run a recipe file with yours (the recipe's values: clipa-train recipe --plan)",
    )  # fmt: skip
    other = invoke(*command(setup["recipe"], setup["data"], out, "--set", "finetune.epochs=2"))
    assert_one_line_error(other, "--set finetune.epochs=2: recipe", "sets the stage's length")
    assert not out.exists()
    same = invoke(
        *command(setup["recipe"], setup["data"], out, "--plan", "--set", "finetune.lr=1e-4")
    )
    assert same.exit_code == 0, same.output  # the recipe's own value changes nothing


def test_plan_lists_each_stage_with_its_command_and_state(setup, tmp_path):
    out = tmp_path / "runs"
    result = invoke(
        *command(setup["recipe"], setup["data"], out, "--plan", "--set", "finetune.workers=3")
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"stage 1 pretrain -> {out / 'pretrain'} (not started)" in lines
    pretrain_command = next(line for line in lines if "clipa-train pretrain" in line)
    finetune_command = next(line for line in lines if "clipa-train finetune" in line)
    assert "--from <the previous stage's final checkpoint>" in finetune_command
    assert "--workers 3" in finetune_command and "--workers 1" in pretrain_command
    assert not out.exists()  # a plan writes nothing
    home = invoke(*command(setup["recipe"], setup["data"], out, "--plan", "--set",
                           "finetune.zeroshot=~/val", "--set",
                           "finetune.classnames=~/names.txt"))  # fmt: skip
    assert home.exit_code == 0, home.output
    assert f"--classnames {Path.home() / 'names.txt'}" in home.stdout  # not a folder named ~


def test_an_option_for_every_stage_goes_only_to_the_stages_where_it_means_something(
    setup, tmp_path
):
    """--eval-batch-size for every stage, --zeroshot for the finetune stage only: the pretrain
    stage refused the run ("would be ignored"); it is left out there. Nobody evaluating, the
    option is still refused with its line."""
    base = command(setup["recipe"], setup["data"], tmp_path / "runs", "--plan")
    evaluating = ["--set", "finetune.zeroshot=~/val", "--set", "finetune.classnames=~/n.txt"]
    result = invoke(*base, "--eval-batch-size", 64, *evaluating)
    assert result.exit_code == 0, result.output
    pretrain, finetune = (
        next(line for line in result.stdout.splitlines() if f"clipa-train {stage}" in line)
        for stage in ("pretrain", "finetune")
    )
    assert "--eval-batch-size 64" in finetune and "--eval-batch-size" not in pretrain
    assert_one_line_error(
        invoke(*base, "--eval-batch-size", 64), "--eval-batch-size 64 would be ignored"
    )
    asked = invoke(*base, *evaluating, "--set", "pretrain.eval_batch_size=64")  # asked there
    assert_one_line_error(asked, "--eval-batch-size 64 would be ignored")
    # The pretrain stage's recipe fixes --mask-ratio (0.0, no mask): the flag must agree there.
    assert_one_line_error(invoke(*base, "--mask-ratio", 0.3), "sets --mask-ratio 0.0", "drop")
    # A WordPiece stage that --plan shows without --tokenizer is worked out all the same.
    v2 = ["recipe", "clipa-v2-h14-84-224", "--data", setup["data"], "--out", tmp_path / "v2"]
    shown = invoke(*v2, "--plan", "--eval-batch-size", 64, *evaluating)
    assert shown.exit_code == 0, shown.output
    pretrain = next(line for line in shown.stdout.splitlines() if "clipa-train pretrain" in line)
    assert "--eval-batch-size" not in pretrain and shown.stdout.count("--eval-batch-size 64") == 1


def test_a_config_file_gives_every_stage_its_options_under_the_flags(setup, tmp_path):
    out = tmp_path / "runs"
    config = tmp_path / "common.yaml"
    config.write_text("workers: 3\nlog-every: 7\n")
    base = command(setup["recipe"], setup["data"], out, "--plan", "--config", config)
    result = invoke(*base, "--set", "finetune.workers=2")
    assert result.exit_code == 0, result.output
    pretrain, finetune = (
        next(line for line in result.stdout.splitlines() if f"clipa-train {stage}" in line)
        for stage in ("pretrain", "finetune")
    )
    # --workers 1 and --log-every 1000 of command() are flags: they override the file.
    assert "--workers 1" in pretrain and "--log-every 1000" in pretrain
    assert "--workers 2" in finetune
    config.write_text("workers: 3\nkeep-checkpoints: 5\n")
    assert "--keep-checkpoints 5" not in invoke(*base).stdout  # a flag of command() wins
    config.write_text("seed: 4\n")
    assert "--seed 4" in invoke(*base).stdout
    config.write_text("batch-size: 4\n")  # the recipe fixes it, as for a flag
    assert_one_line_error(invoke(*base), "sets --batch-size 8", "drop")
    config.write_text("out: elsewhere\n")
    assert_one_line_error(invoke(*base), f"{config}: --out is set per stage", "remove it")
    # A default repeated by the file (a saved run's options) passes, as under pretrain --config
    config.write_text("wandb_project: clipa\nmask_ratio: 0.5\n")
    assert invoke(*base).exit_code == 0
    typed = invoke(*base, "--wandb-project", "clipa")  # typed, it is refused
    assert_one_line_error(typed, "--wandb-project clipa would be ignored without --log wandb")
    assert not out.exists()


def test_help_lists_every_recipe_and_bad_settings_are_one_line(setup, tmp_path):
    result = invoke("recipe", "--help")
    assert result.exit_code == 0
    for name in RECIPE_NAMES:
        assert name in result.stdout
    # A stand-alone stage's defaults (--batch-size 256, ...) are not the recipe's: not shown.
    said = " ".join(result.stdout.replace("│", " ").split())
    assert "[default:" not in said and "--plan prints every stage's values" in said
    assert "[default: 256]" in " ".join(invoke("pretrain", "--help").stdout.split())
    base = command(setup["recipe"], setup["data"], tmp_path / "runs")
    assert_one_line_error(invoke(*base, "--set", "ft.workers=2"), "has no stage 'ft'")
    assert_one_line_error(invoke(*base, "--batch-size", 4), "sets --batch-size 8", "drop")
    # --plan refuses the same contradiction (it printed a plan the run then refused)
    assert_one_line_error(invoke(*base, "--batch-size", 4, "--plan"), "sets --batch-size 8")
    v2 = ["recipe", "clipa-v2-h14-84-224", "--data", setup["data"], "--out", tmp_path / "v2"]
    assert_one_line_error(invoke(*v2), "give --tokenizer PATH", "nothing is downloaded")
    shown = invoke(*v2, "--plan")  # the plan still says what the run needs
    assert shown.exit_code == 0 and "give --tokenizer PATH" in shown.stdout, shown.output
