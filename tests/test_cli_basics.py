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
