"""The run-directory contract through the real ``clipa-train`` command (a subprocess, as a user
runs it): a run directory that holds a run is refused unless ``--resume`` or ``--overwrite``
says what to do, ``--overwrite`` moves the old run aside, a run that fails its checks writes
nothing, a finished run resumed does nothing, and the summary's checkpoint always exists.
Every refusal is one line with exit 2 and leaves every file's bytes as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records

PROGRAM = str(Path(sys.executable).parent / "clipa-train")


def clipa_train(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [PROGRAM, *(str(arg) for arg in args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def one_line(done: subprocess.CompletedProcess, exit_code: int, *fragments: str) -> str:
    """The command exited with ``exit_code`` and said exactly one stderr line holding every
    fragment; returns the line."""
    assert done.returncode == exit_code, done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def tiny(stage: str, data: Path, out: Path, *more: object) -> list[object]:
    """Options of a clipa-tiny run of 2 steps (batch 8, 16 samples) on the builder ``data``."""
    return [
        stage, "--data", data, "--out", out, "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8, "--samples", 16,
        "--workers", 1, "--no-progress", *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run-dir")
    return make_builder_dir(root / "data", [make_records(24, start=i * 24) for i in range(2)])


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished 2-step run, a checkpoint every step and only the newest kept."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = clipa_train(
        *tiny("pretrain", data, out, "--checkpoint-every", 1, "--keep-checkpoints", 1)
    )
    assert done.returncode == 0, done.stderr
    return out


def test_the_summary_names_the_one_checkpoint_kept(finished):
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["steps"] == 2 and Path(summary["checkpoint"]).is_file()
    assert [p.name for p in (finished / "checkpoints").iterdir()] == ["step_00000002.pt"]


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_run_directory_that_holds_a_run_is_refused(data, finished, stage):
    before = snapshot(finished)
    weights = (
        ["--from", finished / "checkpoints" / "step_00000002.pt"] if stage == "finetune" else []
    )
    done = clipa_train(*tiny(stage, data, finished, *weights))
    one_line(
        done, 2, f"--out {finished} already holds a run", "config.json", "--resume auto",
        "--overwrite", f"{finished}.old-",
    )  # fmt: skip
    assert snapshot(finished) == before


@pytest.mark.parametrize("how", [["--resume", "auto"], ["--overwrite"]])
def test_a_run_directory_a_stage_is_writing_is_refused(data, finished, tmp_path, how):
    """A second stage beside a running one (the test holds the directory's lock, as a running
    stage does) interleaved the two runs' metrics and checkpoints (--resume auto), or moved the
    running one aside under it (--overwrite)."""
    from clipa_data.core.run_lock import only_run_in

    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = snapshot(out)
    with only_run_in(out, "clipa-train stage"):
        done = clipa_train(*tiny("pretrain", data, out, "--samples", 24, *how))
    one_line(done, 2, f"{out}: another clipa-train stage is writing here now")
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_overwrite_keeps_the_lock_of_the_directory_it_writes(finished, tmp_path):
    """--overwrite renamed the run directory, lock and all, so the new one it then wrote was
    open to a second stage (a --resume auto beside it trained into the live run)."""
    from clipa_data.core.errors import ClipaError
    from clipa_data.core.run_lock import only_run_in
    from clipa_train.run_dir import move_aside, writing

    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = snapshot(out)
    with writing(out):  # as the stage holds it
        moved = move_aside(out)
        assert moved is not None and snapshot(moved) == before and not any(out.iterdir())
        second = "another clipa-train stage is writing here now"
        with pytest.raises(ClipaError, match=second), only_run_in(out, "clipa-train stage"):
            pass


def test_a_new_run_refused_in_its_worker_leaves_no_directory(data, tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")  # refused after the options
    out = tmp_path / "new" / "run"
    done = clipa_train(*tiny("finetune", data, out, "--from", tmp_path / "weights.pt"))
    one_line(done, 2, "weights.pt")
    assert not (tmp_path / "new").exists()


def test_overwrite_and_resume_together_are_refused(data, finished):
    before = snapshot(finished)
    done = clipa_train(*tiny("pretrain", data, finished, "--overwrite", "--resume", "auto"))
    one_line(done, 2, "--overwrite starts the run over and --resume continues it")
    assert snapshot(finished) == before


def test_overwrite_moves_the_old_run_aside_and_starts_over(data, finished, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = snapshot(out)
    done = clipa_train(*tiny("pretrain", data, out, "--samples", 24, "--overwrite"))
    line = one_line(done, 0, f"--overwrite: moved the earlier run in {out} to {out}.old-")
    moved = Path(line.rsplit(" to ", 1)[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", moved.name]
    assert snapshot(moved) == before  # nothing lost
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [3]  # only the new run's (3 steps, logged at the end)
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_overwrite_refused_in_the_worker_leaves_the_earlier_run_in_place(data, finished, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = snapshot(out)
    (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")  # refused after the options
    weights = ["--from", tmp_path / "weights.pt", "--overwrite"]
    one_line(clipa_train(*tiny("finetune", data, out, *weights)), 2, "weights.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "weights.pt"]
    assert snapshot(out) == before


def test_overwrite_can_fine_tune_from_the_run_it_moves_aside(data, finished, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    weights = ["--from", out / "checkpoints" / "step_00000002.pt", "--overwrite"]
    done = clipa_train(*tiny("finetune", data, out, *weights))
    line = one_line(done, 0, f"--overwrite: moved the earlier run in {out} to {out}.old-")
    moved = Path(line.rsplit(" to ", 1)[1])
    assert (moved / "checkpoints" / "step_00000002.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_a_run_that_fails_its_checks_writes_nothing(data, finished, tmp_path):
    bad_option = clipa_train(*tiny("pretrain", data, tmp_path / "bad", "--image-size", 36))
    one_line(bad_option, 2, "not a multiple of the patch size")
    # Checked in the worker, after the options: unreadable weights for --from.
    (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")
    weights = ["--from", tmp_path / "weights.pt"]
    bad_weights = clipa_train(*tiny("finetune", data, tmp_path / "ft", *weights))
    one_line(bad_weights, 2, "weights.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]
    # Resuming with other sizes or another architecture is refused and leaves the run as it was.
    before = snapshot(finished)
    more = ["--samples", 24, "--image-size", 64, "--resume", "auto"]
    other = clipa_train(*tiny("pretrain", data, finished, *more))
    one_line(other, 2, "the run trained with --image-size 32 (this command: --image-size 64)")
    from clipa_train.model import load_preset

    deeper = load_preset("clipa-tiny").to_dict()
    deeper["vision"]["layers"] += 1
    (tmp_path / "deeper.json").write_text(json.dumps(deeper))
    options = tiny("pretrain", data, finished, "--samples", 24, "--resume", "auto")
    options[options.index("--model") + 1] = tmp_path / "deeper.json"
    deeper_run = clipa_train(*options)  # refused in the worker, after the note on its length
    assert deeper_run.returncode == 2, deeper_run.stderr
    last = deeper_run.stderr.strip().splitlines()[-1]
    assert "was written for a different model" in last and "vision.layers" in last
    assert snapshot(finished) == before


def test_a_resumed_fine_tune_no_longer_needs_its_from_file(data, finished, tmp_path):
    """The architecture comes from the checkpoint the run resumes from (no --model here)."""
    weights = Path(shutil.copy(finished / "checkpoints" / "step_00000002.pt", tmp_path / "w.pt"))
    out = tmp_path / "ft"
    every = ["--from", weights, "--checkpoint-every", 1, "--keep-checkpoints", 0]
    options = tiny("finetune", data, out, *every)
    options[options.index("--model") : options.index("--model") + 2] = []
    assert clipa_train(*options).returncode == 0
    weights.unlink()
    (out / "checkpoints" / "step_00000002.pt").unlink()
    done = clipa_train(*options, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_an_out_below_a_file_is_one_line(data, tmp_path):
    (tmp_path / "afile").write_text("x")
    done = clipa_train(*tiny("pretrain", data, tmp_path / "afile" / "run"))
    one_line(done, 2, f"{tmp_path / 'afile'} is a file", f"go to {tmp_path / 'afile' / 'run'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_resuming_a_finished_run_does_nothing(data, finished):
    before = snapshot(finished)
    done = clipa_train(*tiny("pretrain", data, finished, "--resume", "auto"))
    one_line(done, 0, f"{finished}: the run already finished its 2 steps", "nothing to do")
    assert done.stdout.strip() == ""
    fewer = clipa_train(*tiny("pretrain", data, finished, "--samples", 8, "--resume", "auto"))
    one_line(fewer, 2, "the checkpoint is at step 2 but this stage has only 1 steps", "--samples")
    assert snapshot(finished) == before


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(data, tmp_path):
    """Going back to step 1 of a 3-step run with --keep-checkpoints 1: the keep-newest cleanup
    must neither delete the checkpoint just written (the summary names it) nor the later
    steps of the first run, and --resume auto must then continue this attempt, not the first
    run's (it took the highest step, and said "step 3 but this stage has only 2 steps"; after an
    abandoned attempt that had finished, "nothing to do")."""
    out = tmp_path / "run"
    every = ["--checkpoint-every", 1, "--keep-checkpoints", 0]
    first = clipa_train(*tiny("pretrain", data, out, "--samples", 24, *every))
    assert first.returncode == 0, first.stderr
    step_1 = out / "checkpoints" / "step_00000001.pt"
    keep_1 = ["--checkpoint-every", 1, "--keep-checkpoints", 1, "--resume", step_1]
    again = clipa_train(*tiny("pretrain", data, out, *keep_1))
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start_step"] == 1 and summary["steps"] == 2
    assert Path(summary["checkpoint"]).is_file()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000002.pt", "superseded"]
    aside = out / "checkpoints" / "superseded" / "after_step_00000001"
    assert sorted(p.name for p in aside.iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    assert f"later steps (2, 3) belong to the attempt this resume leaves: moved to {aside}" in (
        " ".join(again.stderr.split())
    )
    done = clipa_train(*tiny("pretrain", data, out, "--resume", "auto"))
    one_line(done, 0, f"{out}: the run already finished its 2 steps", "step_00000002.pt")


def test_a_run_killed_before_its_first_checkpoint_names_overwrite(data, finished, tmp_path):
    """What a run killed early leaves (config.json, an empty metrics.jsonl): --resume auto has
    nothing to continue and says to start over with --overwrite."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(finished / "config.json", out / "config.json")
    (out / "metrics.jsonl").write_text("")
    before = snapshot(out)
    done = clipa_train(*tiny("pretrain", data, out, "--resume", "auto"))
    one_line(done, 2, "--resume auto: no checkpoint in", "--overwrite")
    assert snapshot(out) == before
    again = clipa_train(*tiny("pretrain", data, out))  # it named --resume auto first
    line = one_line(again, 2, "already holds a run", "it saved no step: start over with")
    assert "--resume" not in line


def test_the_summary_rate_is_every_window_together_not_a_mean_of_their_rates(data, tmp_path):
    """The first window holds the start-up (workers, the first step), a short last one counts
    only its steps: the mean of the windows' rates counted both like full windows (a demo run
    said 614 samples/s for 146). Now it is the steps over the seconds of all windows."""
    out = tmp_path / "run"
    done = clipa_train(*tiny("pretrain", data, out, "--samples", 40, "--log-every", 2))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert steps == [2, 4, 5], steps  # a short last window
    spans = [2, 2, 1]
    rates = [record["samples_per_s"] for record in records]
    seconds = sum(span / rate for span, rate in zip(spans, rates, strict=True))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_per_s"] == pytest.approx(sum(spans) / seconds, rel=1e-9)


def test_a_vocabulary_an_older_run_recorded_relative_counts_from_this_folder(tmp_path, monkeypatch):
    """Older runs recorded --tokenizer as typed; they now record it absolute: a resume from
    the run's folder is the same vocabulary, not a changed option."""
    from clipa_train.run_dir import _same

    monkeypatch.chdir(tmp_path)
    assert _same("tokenizer", "vocab.txt", str(tmp_path / "vocab.txt"))
    assert not _same("tokenizer", "vocab.txt", str(tmp_path / "other" / "vocab.txt"))
    assert not _same("tokenizer", "clip-bpe", str(tmp_path / "vocab.txt"))
    assert not _same("seed", 1, 2) and _same("seed", 1, 1)
