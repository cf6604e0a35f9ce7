"""Both console scripts exist, explain themselves and report their version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipa_data import __version__


@pytest.mark.parametrize("program", ["clipa-data", "clipa-train"])
def test_version_and_help(program):
    bindir = Path(sys.executable).parent
    version = subprocess.run(
        [bindir / program, "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"{program} {__version__}"
    help_text = subprocess.run(
        [bindir / program, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--version" in help_text


def test_train_cli_starts_without_torch():
    code = (
        "import sys; from clipa_cli import train_app, data_app; "
        "bad = {'torch', 'tensorflow', 'nltk', 'spacy', 'img2dataset'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_paragraphs_flow_to_the_terminal_width():
    """A docstring's line breaks do not reach the help: at 200 columns a paragraph is one line."""
    bindir = Path(sys.executable).parent
    help_text = subprocess.run(
        [bindir / "clipa-train", "report", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    # this paragraph spans two lines of report_body's docstring
    assert (
        "Loss and zero-shot accuracy against samples and FLOPs, throughput, config differences; "
        "--fit adds the scaling-law fit." in help_text
    )


REQUIRED, OPTIONAL = "give a value", "give a value or leave it out"
EMPTY_VALUES = {
    "eval checkpoint": (
        ["clipa-train", "eval", "--checkpoint", "", "--imagenet-val", "x"],
        f"--checkpoint is empty; {REQUIRED}",
    ),
    "eval set": (
        ["clipa-train", "eval", "--checkpoint", "x.pt", "--imagenet-val", ""],
        f"--imagenet-val is empty; {OPTIONAL}",
    ),
    "export": (["clipa-train", "export", "", "out"], f"CK is empty; {REQUIRED}"),
    "probe": (
        ["clipa-train", "probe", "--checkpoint", "x.pt", "--train", "", "--val", "v"],
        f"--train is empty; {REQUIRED}",
    ),
    "report": (["clipa-train", "report", "a", "", "--out", "r"], f"RUN is empty; {REQUIRED}"),
    "convert": (["clipa-data", "convert", "", "out", "--name", "n"], f"SRC is empty; {REQUIRED}"),
    "info": (["clipa-data", "info", ""], f"PATH is empty; {REQUIRED}"),
    "pretrain config": (
        ["clipa-train", "pretrain", "--config", "", "--data", "d", "--out", "o"],
        f"--config is empty; {OPTIONAL}",
    ),
    "recipe config": (
        [
            "clipa-train",
            "recipe",
            "clipa-b16-i50-t16",
            "--data",
            "d",
            "--out",
            "o",
            "--config",
            "",
            "--plan",
        ],
        f"--config is empty; {OPTIONAL}",
    ),
}
"""Commands given an empty value, and the line that says so (a value that cannot be left out
is not advised to be)."""


@pytest.mark.parametrize("case", list(EMPTY_VALUES))
def test_an_empty_value_is_one_line_not_this_folder(case, tmp_path):
    """`--checkpoint "$(ls runs/*/checkpoints/* | tail -1)"` with nothing found: read as a
    path, "" was "." (this folder), which eval tried to evaluate."""
    (program, *args), said = EMPTY_VALUES[case]
    command = [str(Path(sys.executable).parent / program), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {said}"
    assert not list(tmp_path.iterdir())
