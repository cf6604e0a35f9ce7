"""The data commands' options come from their configs: aliases, repeated and bare flags, tuples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import pytest
import typer
from clipa_cli.data_app import app as data_app
from clipa_cli.options import command, config_arguments, config_options, config_values
from typer.testing import CliRunner

from clipa_data.core.config_fields import Doc, field_specs
from clipa_data.prepare.convert import ConvertConfig
from clipa_data.prepare.download import DownloadConfig
from clipa_data.prepare.preview import PreviewConfig
from clipa_data.prepare.tagging import TagConfig


@dataclass(frozen=True)
class Example:
    """A config with the shapes the data commands need."""

    src: Annotated[str, Doc("Where to read.")]
    columns: Annotated[tuple[str, ...], Doc("Columns kept.")] = ("a", "b")
    splits: Annotated[tuple[str, ...], Doc("Splits.")] = ()
    workers: Annotated[int, Doc("Workers.")] = field(default_factory=lambda: 3)
    force: Annotated[bool, Doc("Force.")] = False


def _invoke(*args: str) -> dict:
    seen: dict = {}
    parameters = [
        *config_arguments(Example, ("src",)),
        *config_options(
            Example,
            ("columns", "splits", "workers", "force"),
            flags={"splits": "--split", "workers": ("--workers", "-w")},
            repeated=("splits",),
            bare=("force",),
        ),
    ]
    app = typer.Typer()
    app.command()(command(lambda **o: seen.update(config_values(Example, o)), parameters))
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return seen


def test_defaults_reach_the_config_untouched():
    assert Example(**_invoke("in")) == Example(src="in")


def test_aliases_repeats_bare_flags_and_comma_tuples():
    seen = _invoke("in", "--columns", "x, y", "--split", "a", "--split", "b", "-w", "2", "--force")
    expected = {"src": "in", "columns": ("x", "y"), "splits": ("a", "b"), "workers": 2}
    assert seen == {**expected, "force": True}
    assert _invoke("in", "--columns", "x,y", "--split", "a", "--split", "b", "--workers", "2") == {
        **expected,
        "force": False,
    }


def test_bare_flags_have_no_negative_twin():
    app = typer.Typer()
    app.command()(command(lambda **o: None, config_options(Example, ("force",), bare=("force",))))
    assert CliRunner().invoke(app, ["--no-force"]).exit_code == 2


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("download", DownloadConfig),
        ("convert", ConvertConfig),
        ("tag", TagConfig),
        ("preview", PreviewConfig),
    ],
)
def test_every_option_help_is_the_config_field_doc(name, config):
    click_command = typer.main.get_command(data_app).commands[name]
    helps = {param.name: param.help or "" for param in click_command.params}
    for spec in field_specs(config).values():
        assert spec.help, f"{config.__name__}.{spec.name} has no Doc"
        assert helps[spec.name].startswith(spec.help), spec.name
