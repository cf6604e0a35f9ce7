"""Issue 16's quiet part, through the real ``clipa-data`` command (a subprocess, as a user runs
it): summary tables with a title and no empty header row, and ``tag`` reporting the rate its
progress bar showed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nltk_data
import pytest
from builders import make_builder_dir, make_records

from clipa_data.core import layout

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
DATA = str(Path(sys.executable).parent / "clipa-data")
EMPTY_HEADER = re.compile(r"^[┃│ ]+$")
"""A header row whose cells are all blank (rich draws ``┃`` between header cells)."""


def clipa_data(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [DATA, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


def table_lines(stdout: str) -> list[str]:
    """The lines of the rich tables printed (box-drawing characters)."""
    return [line for line in stdout.splitlines() if line[:1] in "┏┃┡│└╭╰┌├"]


@pytest.fixture(scope="module")
def builder(tmp_path_factory) -> Path:
    records = make_records(90, size=8)
    return make_builder_dir(
        tmp_path_factory.mktemp("tag"), [records[:30], records[30:60], records[60:]]
    )


def test_tag_summary_shows_the_rate_of_its_progress_bar_and_a_headerless_table(builder, nltk_env):
    result = clipa_data("tag", builder, "--workers", "2", "--progress")
    assert result.returncode == 0, result.stderr
    bar_rates = re.findall(r"([\d,]+) captions/s", result.stderr)
    assert bar_rates, result.stderr
    table_rate = re.search(r"captions/s\s*│?\s*([\d,]+) \(2 workers\)", result.stdout)
    assert table_rate, result.stdout
    assert table_rate[1] == bar_rates[-1]
    summary = json.loads(layout.tag_summary_path(builder).read_text())
    assert summary["captions_tagged"] == 90
    assert summary["tagging_seconds"] <= summary["seconds"]
    # The summary keeps one decimal, the bar none: the same rate, each rounded once.
    bar_rate = int(bar_rates[-1].replace(",", ""))
    assert abs(summary["captions_per_second"] - bar_rate) <= 0.55
    assert "clipa-data tag" in result.stdout  # the title
    assert not [line for line in table_lines(result.stdout) if EMPTY_HEADER.match(line)]
    assert not [line for line in result.stdout.splitlines() if line.startswith("┏")]


TRAINING_SUMMARY = {
    "stage": "pretrain", "steps": 9, "total_steps": 9, "stopped": False, "final_loss": 1.5,
    "samples_per_s": 120.0, "zeroshot": None, "stream": {"bad_images": 0, "messages": []},
    "checkpoint": "run/ckpt-9", "run_dir": "run",
}  # fmt: skip
"""A summary.json as the training stage writes it."""


def test_the_training_summary_table_has_a_title_and_no_empty_header(capsys):
    from clipa_cli.train_app import print_summary

    print_summary(TRAINING_SUMMARY)
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == "pretrain summary"
    assert not [line for line in table_lines(out) if EMPTY_HEADER.match(line)]
    assert not [line for line in out.splitlines() if line.startswith("┏")]
    assert "final loss" in out and "1.5000" in out


def test_the_training_summary_says_the_step_of_an_evaluation_before_the_last(capsys):
    from clipa_cli.train_app import print_summary

    zeroshot = {"step": 4, "top1": 0.25, "chance": 0.05}
    print_summary({**TRAINING_SUMMARY, "steps": 6, "stopped": True, "zeroshot": zeroshot})
    assert "25.0% at step 4 (chance 5.0%)" in capsys.readouterr().out
