"""Options built from config type hints: type, help, choices and defaults reach Typer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from clipa_cli.options import command, config_options
from typer.testing import CliRunner

from clipa_data.core.config_fields import Choices, Doc, field_specs


@dataclass(frozen=True)
class Example:
    """A config with one field of each kind."""

    size: Annotated[int, Doc("Image side in pixels.")] = 224
    mask: Annotated[str, Doc("Image token reduction."), Choices(("resize", "grid"))] = "resize"
    ratio: Annotated[float | None, Doc("Share dropped.")] = None
    verbose: Annotated[bool, Doc("Say more.")] = False


def _app(unset: bool) -> typer.Typer:
    app = typer.Typer()
    seen = {}
    app.command()(command(lambda **o: seen.update(o), config_options(Example, unset=unset)))
    app.seen = seen  # type: ignore[attr-defined]
    return app


def test_field_specs_read_type_help_and_choices():
    specs = field_specs(Example)
    assert specs["size"].kind is int and specs["size"].help == "Image side in pixels."
    assert specs["mask"].choices == ("resize", "grid")
    assert specs["ratio"].optional and specs["ratio"].kind is float
    assert specs["verbose"].kind is bool


def test_options_parse_and_default_from_the_config():
    app = _app(unset=False)
    result = CliRunner().invoke(app, ["--size", "112", "--verbose"])
    assert result.exit_code == 0, result.output
    assert app.seen == {"size": 112, "mask": "resize", "ratio": None, "verbose": True}


def test_unset_options_default_to_none_and_help_lists_choices():
    app = _app(unset=True)
    assert CliRunner().invoke(app, []).exit_code == 0
    assert app.seen == {"size": None, "mask": None, "ratio": None, "verbose": None}
    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "Image token reduction. One of: resize, grid." in help_text
    assert "--verbose" in help_text and "--no-verbose" in help_text


@dataclass(frozen=True)
class _Said:
    """What a registry says of each name (an entry's ``help``, or a text value)."""

    help: str


@dataclass(frozen=True)
class Described:
    """Choices from registries that say what each name means, and one that does not."""

    device: Annotated[
        str, Doc("Where to run."), Choices({"cpu": _Said("the host"), "gpu": _Said("a GPU")})
    ] = "cpu"
    mode: Annotated[str, Doc("How."), Choices({"fast": "skip checks", "safe": "check all"})] = (
        "safe"
    )
    plain: Annotated[str, Doc("Which."), Choices({"a": object(), "b": object()})] = "a"


def test_help_says_what_each_choice_means_where_its_registry_does():
    specs = field_specs(Described)
    assert specs["device"].meanings == ("the host", "a GPU")
    assert specs["plain"].choices == ("a", "b") and specs["plain"].meanings == ()
    app = typer.Typer()
    app.command()(command(lambda **o: None, config_options(Described)))
    help_text = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split())
    assert "Where to run. One of: cpu: the host; gpu: a GPU." in help_text
    assert "How. One of: fast: skip checks; safe: check all." in help_text
    assert "Which. One of: a, b." in help_text
