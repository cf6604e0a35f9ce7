"""What a user wants to know, said on the console by the real ``clipa-train`` command (a
subprocess): each in-loop zero-shot result, the step and checkpoint a run resumes from, and the
positional-embedding resizing of a fine-tune at another image size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import Record, make_builder_dir, make_records

from clipa_data.demo import write_demo_validation

PROGRAM = str(Path(sys.executable).parent / "clipa-train")


def clipa_train(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    command = [PROGRAM, *(str(arg) for arg in args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def tiny(stage: str, data: Path, out: Path, *more: object) -> list[object]:
    """Options of a clipa-tiny run of 4 steps (batch 8) on the builder ``data``."""
    return [
        stage, "--data", data, "--out", out, "--image-size", 32, "--text-length", 8,
        "--text-mask", "truncate", "--batch-size", 8, "--samples", 32, "--workers", 1,
        "--no-progress", *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("feedback")
    return make_builder_dir(root / "data", [make_records(24, start=i * 24) for i in range(2)])


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    zeroshot = ["--zeroshot", val.root, "--classnames", val.classnames_path]
    out = root / "run"
    done = clipa_train(
        *tiny("pretrain", data, out, "--model", "clipa-tiny", *zeroshot, "--eval-every", 2)
    )
    return out, done


def test_every_in_loop_zero_shot_result_is_a_console_line(pretrained):
    _, done = pretrained
    lines = [line for line in done.stderr.splitlines() if "zero-shot top-1" in line]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"], done.stderr
    assert all("top-5" in line and "20 images, chance 5.0%" in line for line in lines), lines


def test_a_resumed_run_says_from_which_step_and_checkpoint(pretrained, data):
    out, _ = pretrained
    checkpoint = json.loads((out / "summary.json").read_text())["checkpoint"]
    done = clipa_train(
        *tiny("pretrain", data, out, "--model", "clipa-tiny", "--samples", 48, "--resume", "auto")
    )
    assert f"resuming from step 4 ({checkpoint})" in done.stderr, done.stderr


def test_a_fine_tune_at_another_size_says_it_resized_the_positional_embeddings(
    pretrained, data, tmp_path
):
    out, _ = pretrained
    checkpoint = json.loads((out / "summary.json").read_text())["checkpoint"]
    done = clipa_train(
        *tiny("finetune", data, tmp_path / "ft", "--from", checkpoint, "--image-size", 48)
    )
    said = [line for line in done.stderr.splitlines() if "positional embeddings" in line]
    assert said == [
        "fine-tuning resized the image positional embeddings from 4x4 to 6x6 patches"
    ], done.stderr


def test_a_bad_image_is_counted_once_over_epochs_and_named_on_the_console(tmp_path):
    records = make_records(16)
    records[5] = Record(key=records[5].key, jpg=b"not a jpeg", txt=records[5].txt)
    builder = make_builder_dir(tmp_path / "data", [records])
    out = tmp_path / "run"
    done = clipa_train(*tiny("pretrain", builder, out, "--model", "clipa-tiny", "--samples", 48))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["stream"]["bad_images"] == 1, summary
    assert len(summary["stream"]["messages"]) == 1, summary
    assert "record 5 (key" in done.stdout and "bad images skipped" in done.stdout, done.stdout
