"""``clipa-train report``: real tiny runs -> an HTML page whose figures all exist (and load in
headless Chromium where it is installed); bad run directories are one line; the scaling-law fit
recovers known constants and refuses too few points and mixed stages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from builders import make_builder_dir, make_records
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from sidecars import write_sidecars
from typer.testing import CliRunner

from clipa_data.demo import write_demo_validation
from clipa_train.report import summary_rows
from clipa_train.run_records import read_runs, unique_labels
from clipa_train.scaling_fit import ScalingPoint, fit_power_law

BATCH = 8


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two clipa-tiny pre-trainings (the second with a random image mask) and a fine-tune
    chained to the first, each evaluated zero-shot at its end."""
    root = tmp_path_factory.mktemp("report")
    builder = make_builder_dir(root / "data", [make_records(24, start=i * 24) for i in range(2)])
    write_sidecars(builder)
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    common = [
        "--data", builder, "--image-size", 32, "--text-length", 8, "--batch-size", BATCH,
        "--workers", 1, "--no-progress", "--log-every", 1, "--zeroshot", val.root,
        "--classnames", val.classnames_path,
    ]  # fmt: skip
    made = {"a": root / "a", "b": root / "b", "ft": root / "ft"}
    stages = {
        "a": ["pretrain", "--model", "clipa-tiny", "--samples", 32],
        "b": ["pretrain", "--model", "clipa-tiny", "--samples", 24, "--image-mask", "random"],
        "ft": [
            "finetune",
            "--from",
            made["a"] / "checkpoints" / "step_00000004.pt",
            "--samples",
            16,
        ],
    }
    for name, stage in stages.items():
        result = invoke(*stage, *common, "--out", made[name])
        assert result.exit_code == 0, result.output
    return made


def referenced_assets(page: Path) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.read_text())


def test_report_writes_the_page_and_every_figure_it_references(runs, tmp_path):
    out = tmp_path / "report"
    result = invoke("report", runs["a"], runs["b"], "--out", out)
    assert result.exit_code == 0, result.output
    page = out / "index.html"
    assert f"report: {page}" in result.stdout
    assets = referenced_assets(page)
    assert len(assets) == 3
    for asset in assets:  # relative, beside the page: opens with no server and no network
        assert "://" not in asset and not asset.startswith("/"), asset
        assert (out / asset).is_file() and (out / asset).stat().st_size > 1000, asset
    text = page.read_text()
    # The option that differs is highlighted in the second run's column; the first run's
    # options are the baseline.
    assert re.search(r"<td>image_mask</td><td>&quot;resize&quot;</td><td class=\"diff\">", text)
    # Image tokens after the mask: 16 patches, random at ratio 0.5 keeps 8.
    rows = re.findall(r"<tr><td>(a|b)</td><td>pretrain</td><td>clipa-tiny</td><td>(\d+)</td>", text)
    assert rows == [("a", "16"), ("b", "8")]


def test_a_chained_finetune_continues_samples_and_flops(runs):
    pretrain, finetune = read_runs([runs["a"], runs["ft"]])
    assert finetune.start_samples == pretrain.samples(4) == 4 * BATCH
    assert finetune.start_flops == pytest.approx(pretrain.flops(4))
    first = finetune.train[0]["step"]
    assert finetune.samples(first) == 4 * BATCH + first * BATCH
    # Alone, the fine-tune starts from zero.
    assert read_runs([runs["ft"]])[0].start_samples == 0
    # It names its model by the run it came from (no --model: its config.json names none)
    assert finetune.options["model"] is None and finetune.family == pretrain.family == "clipa-tiny"
    # Listed before that run: said, not a silent restart of its samples at 0
    backwards, _ = read_runs([runs["ft"], runs["a"]])
    assert backwards.start_samples == 0 and len(backwards.notes) == 1
    assert f"started --from a checkpoint of {runs['a']}, given after it" in backwards.notes[0]


def test_the_chain_holds_from_another_folder_and_for_moved_runs(runs, tmp_path):
    """config.json records --from as an absolute path; a relative one (older runs: as typed,
    from wherever the run was started) still names its run by the trailing folders."""
    options = json.loads((runs["ft"] / "config.json").read_text())["options"]
    assert options["from_checkpoint"] == str(runs["a"] / "checkpoints" / "step_00000004.pt")
    moved = tmp_path / "elsewhere" / "rr"
    for name in ("a", "ft"):
        shutil.copytree(runs[name], moved / name, ignore=shutil.ignore_patterns("*.pt"))
    config = moved / "ft" / "config.json"
    saved = json.loads(config.read_text())
    saved["options"]["from_checkpoint"] = "rr/a/checkpoints/step_00000004.pt"
    config.write_text(json.dumps(saved))
    pretrain, finetune = read_runs([moved / "a", moved / "ft"])
    assert finetune.start_samples == pretrain.samples(4) == 4 * BATCH


def test_a_partial_last_record_is_skipped_and_reported_once(runs, tmp_path):
    run = shutil.copytree(runs["a"], tmp_path / "killed", ignore=shutil.ignore_patterns("*.pt"))
    metrics = run / "metrics.jsonl"
    complete = metrics.read_text().count("\n")
    with metrics.open("a") as handle:
        handle.write('{"step": 5, "loss": 2.3')  # killed mid-write: no closing brace, no newline
    out = tmp_path / "report"
    result = invoke("report", run, "--out", out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert f"skipped the partial last line {complete + 1}" in warnings[0]
    assert str(metrics) in warnings[0]
    assert "skipped the partial last line" in (out / "index.html").read_text()
    (records,) = read_runs([run])
    assert [r["step"] for r in records.train] == [1, 2, 3, 4]


def test_records_of_steps_a_resumed_run_ran_again_are_the_re_runs(runs, tmp_path):
    options = json.loads((runs["a"] / "config.json").read_text())["options"]
    run = tmp_path / "resumed"
    common = [
        "pretrain", "--model", "clipa-tiny", "--samples", 32, "--data", options["data"],
        "--image-size", 32, "--text-length", 8, "--batch-size", BATCH, "--workers", 1,
        "--no-progress", "--log-every", 1, "--zeroshot", options["zeroshot"],
        "--classnames", options["classnames"], "--out", run, "--checkpoint-every", 2,
    ]  # fmt: skip
    assert invoke(*common).exit_code == 0
    # As after a kill past step 2's checkpoint: steps 3 and 4 run again and are logged again.
    resumed = invoke(*common, "--resume", run / "checkpoints" / "step_00000002.pt")
    assert resumed.exit_code == 0, resumed.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 3, 4]
    (records,) = read_runs([run])
    assert [r["step"] for r in records.train] == [1, 2, 3, 4]
    assert list(records.train[2:]) == [r for r in lines if "loss" in r][4:]  # the re-run's
    assert [r["step"] for r in records.evals] == [4]
    assert records.evals[0] == [r for r in lines if "eval/top1" in r][-1]
    assert records.notes == (
        f"{run}/metrics.jsonl: 3 records of steps that a resumed run ran again were replaced "
        "by the re-run's",
    )
    result = invoke("report", run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "were replaced by the re-run's" in result.stderr
    # Resumed at step 2 again with --log-every 2: its first record is at step 4, past the
    # abandoned attempt's step 3, which a step that does not rise could not show.
    every_two = [*common[: common.index("--log-every")], *common[common.index("--log-every") + 2 :]]
    again = invoke(
        *every_two, "--log-every", 2, "--resume", run / "checkpoints" / "step_00000002.pt"
    )
    assert again.exit_code == 0, again.output
    (records,) = read_runs([run])
    assert [r["step"] for r in records.train] == [1, 2, 4]
    assert records.train[-1]["window_steps"] == 2


def test_a_run_stopped_before_its_first_record_still_reports(runs, tmp_path):
    run = shutil.copytree(runs["a"], tmp_path / "early", ignore=shutil.ignore_patterns("*.pt"))
    (run / "metrics.jsonl").write_text("")
    (run / "summary.json").unlink()
    result = invoke("report", runs["a"], run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "<td>early</td><td>pretrain</td>" in (tmp_path / "report" / "index.html").read_text()
    assert "0 (unfinished)" in (tmp_path / "report" / "index.html").read_text()


def test_a_stopped_run_and_a_resumed_one_still_running_are_unfinished(runs, tmp_path):
    """summary.json is written by a stopped run too, and a resumed attempt keeps the earlier
    one's until it ends: neither makes a run finished in the table."""
    stopped = shutil.copytree(
        runs["a"], tmp_path / "stopped", ignore=shutil.ignore_patterns("*.pt")
    )
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"]
    (stopped / "summary.json").write_text(json.dumps({**summary, "stopped": True}))
    running = shutil.copytree(
        runs["a"], tmp_path / "running", ignore=shutil.ignore_patterns("*.pt")
    )
    last = json.loads((running / "metrics.jsonl").read_text().splitlines()[-1])
    (running / "summary.json").write_text(json.dumps({**summary, "steps": last["step"] - 1}))
    result = invoke("report", runs["a"], stopped, running, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("(unfinished)") == 2, page


def test_a_stopped_run_counts_the_step_it_saved_after_its_last_logged_one(runs, tmp_path):
    """It counted steps, samples and FLOPs to the last logged step only."""
    run = shutil.copytree(runs["a"], tmp_path / "stopped", ignore=shutil.ignore_patterns("*.pt"))
    summary = json.loads((run / "summary.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    train = [json.loads(line) for line in lines if "loss" in json.loads(line)]
    logged_before = max(r["step"] for r in train if r["step"] < summary["steps"])
    kept = [line for line in lines if json.loads(line)["step"] <= logged_before]
    (run / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    stopped_at = logged_before + 1
    (run / "summary.json").write_text(json.dumps({**summary, "steps": stopped_at, "stopped": True}))
    result = invoke("report", run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"<td>{stopped_at} (unfinished)</td>" in page, page
    samples = stopped_at * json.loads((run / "config.json").read_text())["options"]["batch_size"]
    assert f"<td>{samples:,}</td>" in page


def test_a_folder_of_runs_names_them_in_the_order_they_ran(runs, tmp_path):
    """A clipa-train recipe --out holds one run per stage: it was 'no config.json'."""
    recipe = tmp_path / "recipe"
    for name in ("pretrain", "finetune"):  # finetune sorts first by name, ran second
        shutil.copytree(runs["a"], recipe / name, ignore=shutil.ignore_patterns("*.pt"))
        (recipe / name / "config.json").touch()
        time.sleep(0.05)
    result = invoke("report", recipe, "--out", tmp_path / "report")
    assert_one_line_error(
        result, f"{recipe} holds run directories", f"{recipe / 'pretrain'} {recipe / 'finetune'}"
    )


def test_a_run_directory_without_metrics_is_one_line(runs, tmp_path):
    run = shutil.copytree(runs["a"], tmp_path / "empty", ignore=shutil.ignore_patterns("*.pt"))
    (run / "metrics.jsonl").unlink()
    result = invoke("report", run, "--out", tmp_path / "report")
    assert_one_line_error(result, str(run), "no metrics.jsonl")
    assert not (tmp_path / "report").exists()


def test_a_config_without_options_and_records_without_rates_are_read_past(runs, tmp_path):
    """A config.json that is not a run's is one line naming it; train records without a
    rate (written by hand, or by another tool) leave the rate columns, not a traceback."""
    run = shutil.copytree(runs["a"], tmp_path / "odd", ignore=shutil.ignore_patterns("*.pt"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "options": None}))
    result = invoke("report", run, "--out", tmp_path / "report")
    assert_one_line_error(result, f"{run / 'config.json'}: no options", "not the config.json")
    (run / "config.json").write_text(json.dumps(config))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bare = [{k: v for k, v in r.items() if k not in ("samples_per_s", "data_wait_share")}
            for r in records]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bare))
    result = invoke("report", run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "<td>odd</td><td>pretrain</td>" in (tmp_path / "report" / "index.html").read_text()


def test_the_table_rate_and_wait_weigh_each_window_by_its_time(runs, tmp_path):
    """A first window of start-up (10 steps at 10 samples/s, all waiting) and a full one (90
    steps at 900/s, no wait): 91 samples/s, 91 % waiting, by steps over
    seconds, not the windows' mean rate (455/s) and wait (50 %)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(runs["a"] / "config.json", run / "config.json")
    records = [
        {"step": 10, "loss": 2.0, "samples_per_s": 10.0, "data_wait_share": 1.0, "time": 1.0},
        {"step": 100, "loss": 1.0, "samples_per_s": 900.0, "data_wait_share": 0.0, "time": 2.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    header, row = summary_rows(read_runs([run]))
    cells = dict(zip(header, row, strict=True))
    seconds = 10 / 10.0 + 90 / 900.0  # per sample of a batch
    assert cells["samples/s"] == f"{100 / seconds:,.1f}", cells
    assert cells["data wait"] == f"{(10 / 10.0) / seconds:.1%}", cells


def test_the_first_window_after_a_resume_counts_its_own_steps(runs, tmp_path):
    """Resumed from a checkpoint at step 15 (not a logged step): the re-run's record at step 20
    covers 5 steps (at 10 samples/s), not the 10 since the record before it: 25 steps in
    10/100 + 5/10 + 10/100 seconds per sample of a batch."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(runs["a"] / "config.json", run / "config.json")
    records = [
        {"step": 10, "samples_per_s": 100.0, "window_steps": 10},
        {"step": 20, "samples_per_s": 100.0, "window_steps": 10},  # the abandoned attempt's
        {"step": 20, "samples_per_s": 10.0, "window_steps": 5},
        {"step": 30, "samples_per_s": 100.0, "window_steps": 10},
    ]
    lines = [json.dumps({"loss": 1.0, "data_wait_share": 0.0, "time": 1.0, **r}) for r in records]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    header, row = summary_rows(read_runs([run]))
    cells = dict(zip(header, row, strict=True))
    assert cells["samples/s"] == f"{25 / (10 / 100 + 5 / 10 + 10 / 100):,.1f}", cells


def test_an_out_folder_that_cannot_be_written_is_one_line(runs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("report", runs["a"], "--out", blocker / "report")
    assert_one_line_error(result, f"cannot write to --out {blocker / 'report'}", "writable folder")


def test_too_few_runs_for_a_fit_are_refused(runs, tmp_path):
    # a and b differ in image tokens: two groups of one run each.
    result = invoke("report", runs["a"], runs["b"], "--out", tmp_path / "report", "--fit")
    assert_one_line_error(result, "clipa-tiny img16 txt8 has 1 run(s)", "3 parameters")


def test_runs_of_different_stages_in_one_fit_are_refused(runs, tmp_path):
    result = invoke("report", runs["a"], runs["ft"], "--out", tmp_path / "report", "--fit")
    assert_one_line_error(result, "mix stages", "pretrain: a", "finetune: ft")
    assert not (tmp_path / "report").exists()


def test_the_fit_recovers_known_constants_from_noisy_points():
    """1 % multiplicative noise on 12 points over 6 decades of compute: α and E within 3 %,
    A within 25 % (ln A trades off against α × ln C), each within 3 standard errors."""
    a, alpha, e = 1.3e5, 0.35, 0.25
    compute = np.geomspace(1e14, 1e20, 12)
    noise = np.exp(np.random.default_rng(0).normal(0, 0.01, compute.size))
    error = (a * compute**-alpha + e) * noise
    points = tuple(
        ScalingPoint(f"run{i}", "g", float(c), float(v))
        for i, (c, v) in enumerate(zip(compute, error, strict=True))
    )
    fit = fit_power_law("g", "loss", points)
    for got, se, want, tolerance in (
        (fit.alpha, fit.alpha_se, alpha, 0.03),
        (fit.e, fit.e_se, e, 0.03),
        (fit.a, fit.a_se, a, 0.25),
    ):
        assert abs(got - want) <= tolerance * want, (got, want)
        assert se > 0 and abs(got - want) <= 3 * se, (got, se, want)


def synthetic_run(template: Path, out: Path, steps: int, top1: float) -> Path:
    """A run directory with ``template``'s config and a metrics.jsonl ending at ``steps``."""
    out.mkdir(parents=True)
    shutil.copy(template / "config.json", out / "config.json")
    records = [
        {"step": steps, "loss": 1.0, "samples_per_s": 10.0, "data_wait_share": 0.1, "time": 1.0},
        {"step": steps, "eval/top1": top1},
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.json").write_text(json.dumps({"steps": steps, "total_steps": steps}))
    return out


def test_report_fit_recovers_the_constants_of_exact_points(runs, tmp_path):
    """Runs of one model and token length whose final zero-shot error follows the law exactly:
    the constants come back within 0.1 %, printed and in fit.json, with the scaling figure."""
    (template,) = read_runs([runs["a"]])
    per_step = BATCH * template.flops_per_sample
    a, alpha, e = 275.0, 0.3, 0.2
    dirs = []
    for steps in (10, 100, 1_000, 10_000, 100_000):
        error = a * (steps * per_step) ** -alpha + e
        dirs.append(synthetic_run(runs["a"], tmp_path / f"s{steps}", steps, 1 - error))
    out = tmp_path / "report"
    result = invoke("report", *dirs, "--out", out, "--fit")
    assert result.exit_code == 0, result.output
    assert "clipa-tiny img16 txt8: zero-shot error = A·C^-α + E" in result.stdout
    (fit,) = json.loads((out / "fit.json").read_text())["fits"]
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-3)
    assert fit["e"] == pytest.approx(e, rel=1e-3)
    assert fit["a"] == pytest.approx(a, rel=1e-3)
    assert len(fit["points"]) == 5
    assert "scaling.png" in referenced_assets(out / "index.html")
    assert (out / "scaling.png").stat().st_size > 1000


def test_a_three_run_fit_is_strict_json_and_a_later_report_drops_it(runs, tmp_path):
    """3 points leave no degrees of freedom: the standard errors are null, not Infinity (which
    strict parsers refuse); a report without --fit into the same folder removes the old fit."""
    per_step = BATCH * read_runs([runs["a"]])[0].flops_per_sample
    dirs = [
        synthetic_run(
            runs["a"], tmp_path / f"s{steps}", steps, 1 - (275 * (steps * per_step) ** -0.3 + 0.2)
        )
        for steps in (10, 1_000, 100_000)
    ]
    out = tmp_path / "report"
    fitted = invoke("report", *dirs, "--out", out, "--fit")
    assert fitted.exit_code == 0, fitted.output
    said = " ".join(fitted.output.split())  # "± inf" alone left the reader to work out why
    assert "(3 runs: as many runs as constants, no standard errors; a run at other" in said
    text = (out / "fit.json").read_text()
    (fit,) = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in fit.json"))[
        "fits"
    ]
    assert fit["a_se"] is None and fit["alpha_se"] is None
    assert invoke("report", *dirs, "--out", out).exit_code == 0
    assert not (out / "fit.json").exists() and not (out / "scaling.png").exists()
    assert "scaling.png" not in referenced_assets(out / "index.html")


def test_a_run_whose_loss_is_nan_is_named_by_the_fit(runs, tmp_path):
    dirs = [synthetic_run(runs["a"], tmp_path / f"s{n}", n, 0.5) for n in (10, 100, 1_000)]
    metrics = dirs[1] / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"eval/top1": 0.5', '"eval/top1": NaN'))
    result = invoke("report", *dirs, "--out", tmp_path / "report", "--fit")
    assert_one_line_error(result, f"run {dirs[1]}", "error nan", "leave the run out")


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_an_unfinished_run_is_refused_by_the_fit(runs, tmp_path, how):
    """A stopped run's last loss is mid-schedule: as a point of the fit it would sit above the
    curve of finished runs of that compute."""
    dirs = [synthetic_run(runs["a"], tmp_path / f"s{n}", n, 0.5) for n in (10, 100, 1_000)]
    summary = dirs[1] / "summary.json"
    if how == "stopped":
        summary.write_text(json.dumps({"steps": 100, "total_steps": 400, "stopped": True}))
    else:  # killed: no summary at all
        summary.unlink()
    result = invoke("report", *dirs, "--out", tmp_path / "report", "--fit")
    where = "stopped at step 100" + (" of 400" if how == "stopped" else "")
    assert_one_line_error(result, f"{dirs[1]} is unfinished ({where})", "--resume auto")
    assert invoke("report", *dirs, "--out", tmp_path / "report").exit_code == 0


def test_a_run_whose_final_evaluation_was_cut_short_has_no_final_top1(runs, tmp_path):
    """Ctrl-C twice during the final evaluation: every step made, the last evaluation a
    mid-schedule one. The table said it as the run's top-1 and the fit took it as final."""
    dirs = [synthetic_run(runs["a"], tmp_path / f"s{n}", n, 0.5) for n in (10, 100, 1_000)]
    metrics = dirs[1] / "metrics.jsonl"
    metrics.write_text(
        metrics.read_text().replace('{"step": 100, "eval/top1"', '{"step": 40, "eval/top1"')
    )
    result = invoke("report", *dirs, "--out", tmp_path / "report", "--fit")
    assert_one_line_error(
        result, f"{dirs[1]} finished but its final zero-shot evaluation was cut short",
        "(the last is at step 40 of 100)", "leave it out",
    )  # fmt: skip
    assert invoke("report", *dirs, "--out", tmp_path / "report").exit_code == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("final evaluation cut short") == 1 and "50.0%" in page, page
    # No evaluation before the cut one (--eval-every 0): the summary says it; the fit, seeing
    # a run without evaluations, fitted the loss of every run instead.
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    summary = {"steps": 100, "total_steps": 100, "final_eval_cut": True, "zeroshot": None}
    (dirs[1] / "summary.json").write_text(json.dumps(summary))
    result = invoke("report", *dirs, "--out", tmp_path / "report", "--fit")
    assert_one_line_error(result, f"{dirs[1]} finished but", "(none before it)", "leave it out")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener("load", () => {
  for (const image of document.images) image.setAttribute("data-width", image.naturalWidth);
  document.body.setAttribute("data-probed", "yes");
});
</script></body>"""
"""Records each image's decoded width into the DOM once the page has loaded (0: not loaded)."""


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs chromium or chromium-browser on PATH (Debian: apt-get install chromium, as "
    ".ci/run does)",
)
def test_the_page_renders_in_headless_chromium_with_every_image_loaded(runs, tmp_path):
    out = tmp_path / "report"
    assert invoke("report", runs["a"], runs["b"], "--out", out).exit_code == 0
    probe = out / "probe.html"
    probe.write_text((out / "index.html").read_text().replace("</body>", PROBE))
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={screenshot}", "--window-size=1280,2400", probe.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert screenshot.stat().st_size > 10_000
    dom = subprocess.run(
        [*browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-probed="yes"' in dom
    widths = re.findall(r'<img [^>]*data-width="(\d+)"', dom)
    assert len(widths) == len(referenced_assets(out / "index.html")) == 3
    assert all(int(width) > 0 for width in widths), widths


def test_bench_step_and_reports_share_one_flops_formula():
    from benchmarks import bench_step, time_to_clipa
    from clipa_train import flops

    assert bench_step.train_flops_per_sample is flops.train_flops_per_sample
    assert time_to_clipa.train_flops_per_sample is flops.train_flops_per_sample


def test_runs_of_the_same_folder_name_are_told_apart(runs, tmp_path):
    """Two recipes' ``pretrain`` folders side by side: each labelled by enough of its path."""
    for name in ("x", "y"):
        shutil.copytree(
            runs["a"], tmp_path / name / "pretrain", ignore=shutil.ignore_patterns("*.pt")
        )
    first, second = read_runs([tmp_path / "x" / "pretrain", tmp_path / "y" / "pretrain"])
    assert (first.name, second.name) == ("x/pretrain", "y/pretrain")
    assert read_runs([runs["a"]])[0].name == "a"  # alone: its folder name
    assert unique_labels([Path("/r/a"), Path("/r/a")]) == ["/r/a", "/r/a"]  # the same run twice


def test_a_run_without_records_reports_without_a_plotting_warning(runs, tmp_path):
    run = shutil.copytree(runs["a"], tmp_path / "empty", ignore=shutil.ignore_patterns("*.pt"))
    (run / "metrics.jsonl").write_text("")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke("report", run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert not [str(w.message) for w in caught if "legend" in str(w.message)]
