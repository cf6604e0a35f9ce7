"""Typer options built from config dataclasses: the type hint gives the type, ``Doc`` the help.

Every command builds its options here (``config_options``) from the config it fills, so a
field's help, type and choices are written once, beside the field
(``clipa_data.core.config_fields``). Commands whose values are resolved in several layers
(defaults < recipe < file < flags) ask for ``unset=True``: every option then defaults to None,
meaning "not given".
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import typer

from clipa_data.core.config_fields import FieldSpec, field_specs

_TYPER_KIND = {bool: bool, int: int, float: float, str: str, Path: Path, tuple: str}
"""The type Typer parses each field kind as (tuples arrive as text; the command parses them)."""


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def help_of(spec: FieldSpec, extra: str = "") -> str:
    """The field's help, its choices and any command-specific addition, as one line."""
    parts = [spec.help.replace("``", "")]
    if spec.choices:
        parts.append(f"One of: {', '.join(spec.choices)}.")
    if extra:
        parts.append(extra)
    return " ".join(p for p in parts if p)


def option(
    spec: FieldSpec,
    *,
    flag: str | None = None,
    panel: str | None = None,
    extra_help: str = "",
    unset: bool = False,
) -> inspect.Parameter:
    """One keyword parameter whose default is a ``typer.Option`` for ``spec``."""
    kind = _TYPER_KIND.get(spec.kind, str)
    flag = flag or flag_of(spec.name)
    if kind is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    has_default = spec.default is not dataclasses.MISSING
    default = None if unset or not has_default else spec.default
    annotation = Optional[kind] if (unset or spec.optional or default is None) else kind  # noqa: UP045 - Typer needs the typing form at runtime
    return inspect.Parameter(
        spec.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            default,
            flag,
            help=help_of(spec, extra_help),
            rich_help_panel=panel,
            show_default=not unset and default is not None,
        ),
        annotation=annotation,
    )


def config_options(
    cls: type,
    names: Iterable[str] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    panels: Mapping[str, str] | None = None,
    extra_help: Mapping[str, str] | None = None,
    unset: bool = False,
) -> list[inspect.Parameter]:
    """Options for the fields ``names`` of ``cls`` (default: every field), in that order."""
    specs = field_specs(cls)
    chosen = list(specs) if names is None else list(names)
    flags, panels, extra_help = flags or {}, panels or {}, extra_help or {}
    return [
        option(
            specs[name],
            flag=flags.get(name),
            panel=panels.get(name),
            extra_help=extra_help.get(name, ""),
            unset=unset,
        )
        for name in chosen
    ]


def command(
    body: Callable[..., Any], parameters: Iterable[inspect.Parameter], doc: str | None = None
) -> Callable[..., Any]:
    """``body(**options)`` as a Typer command whose signature is ``parameters``."""

    def run(**options: Any) -> Any:
        return body(**options)

    run.__signature__ = inspect.Signature(list(parameters))  # type: ignore[attr-defined]
    run.__doc__ = doc or body.__doc__
    return run
