"""Typer options built from config dataclasses: the type hint gives the type, ``Doc`` the help.

Every command builds its options here (``config_options``) from the config it fills, so a
field's help, type and choices are written once, beside the field
(``clipa_data.core.config_fields``). Commands whose values are resolved in several layers
(defaults < recipe < file < flags) ask for ``unset=True``: ``--help`` still shows the field's
default, but the command receives None, meaning "not given", for every option the user did not
type (read from click's parameter source, so a typed value equal to the default still counts).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import typer
from clipa_cli.common import fail

from clipa_data.core.config_fields import FieldSpec, field_specs

UNSET_MARK = "clipa_unset"
"""Attribute set on the ``typer.Option`` of an ``unset`` option: ``command`` passes None for it
when the user did not give it."""

_CONTEXT = "clipa_typer_context"
"""The parameter through which Typer hands ``command`` its context (never an option)."""

_TYPER_KIND = {bool: bool, int: int, float: float, str: str, Path: str, tuple: str}
"""The type Typer parses each field kind as: tuples arrive as text (the command parses them),
paths too (``command`` makes them paths), as Typer's own reads an empty one as "." (this
folder) before the command could refuse it."""

PATH_MARK = "clipa_path"
"""Attribute set on the ``typer.Option``/``typer.Argument`` of a path field."""


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def help_of(spec: FieldSpec, extra: str = "") -> str:
    """The field's help, its choices and any command-specific addition, as one line."""
    parts = [spec.help.replace("``", "")]
    if spec.meanings:
        said = "; ".join(f"{n}: {m}" for n, m in zip(spec.choices, spec.meanings, strict=True))
        parts.append(f"One of: {said}.")
    elif spec.choices:
        parts.append(f"One of: {', '.join(spec.choices)}.")
    if extra:
        parts.append(extra)
    return " ".join(p for p in parts if p)


def _names(flag: str | tuple[str, ...] | None, name: str) -> tuple[str, ...]:
    if flag is None:
        return (flag_of(name),)
    return (flag,) if isinstance(flag, str) else tuple(flag)


def option(
    spec: FieldSpec,
    *,
    flag: str | tuple[str, ...] | None = None,
    panel: str | None = None,
    extra_help: str = "",
    unset: bool = False,
    repeated: bool = False,
    bare: bool = False,
    metavar: str | None = None,
) -> inspect.Parameter:
    """One keyword parameter whose default is a ``typer.Option`` for ``spec``.

    ``flag`` is the option's name or names (aliases; default ``--field-name``). A bool gets a
    ``--no-`` twin unless ``bare``. A ``repeated`` option collects every use into a list
    (default: none given).
    """
    kind = _TYPER_KIND.get(spec.kind, str)
    names = _names(flag, spec.name)
    if kind is bool and not bare:
        names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
    has_default = spec.default is not dataclasses.MISSING
    default = None if repeated or not has_default else spec.default
    if kind is str and isinstance(default, tuple):
        default = ",".join(map(str, default))  # tuples arrive as comma-separated text
    if repeated:
        annotation: Any = Optional[list[kind]]  # noqa: UP045 - Typer needs the typing form at runtime
    else:
        annotation = Optional[kind] if (unset or spec.optional or default is None) else kind  # noqa: UP045 - Typer needs the typing form at runtime
    info = typer.Option(
        default,
        *names,
        help=help_of(spec, extra_help),
        rich_help_panel=panel,
        show_default=default is not None,
        metavar=metavar,
    )
    setattr(info, UNSET_MARK, unset)
    setattr(info, PATH_MARK, spec.kind is Path)
    return inspect.Parameter(
        spec.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
    )


def config_options(
    cls: type,
    names: Iterable[str] | None = None,
    *,
    flags: Mapping[str, str | tuple[str, ...]] | None = None,
    panels: Mapping[str, str] | None = None,
    extra_help: Mapping[str, str] | None = None,
    unset: bool = False,
    repeated: Iterable[str] = (),
    bare: Iterable[str] = (),
    metavars: Mapping[str, str] | None = None,
) -> list[inspect.Parameter]:
    """Options for the fields ``names`` of ``cls`` (default: every field), in that order.

    ``flags`` renames (or aliases) an option, ``repeated`` names the fields given once per
    value (``--split a --split b``), ``bare`` the bool fields without a ``--no-`` twin.
    """
    specs = field_specs(cls)
    chosen = list(specs) if names is None else list(names)
    flags, panels, extra_help = flags or {}, panels or {}, extra_help or {}
    repeated, bare, metavars = set(repeated), set(bare), metavars or {}
    return [
        option(
            specs[name],
            flag=flags.get(name),
            panel=panels.get(name),
            extra_help=extra_help.get(name, ""),
            unset=unset,
            repeated=name in repeated,
            bare=name in bare,
            metavar=metavars.get(name),
        )
        for name in chosen
    ]


def config_arguments(
    cls: type, names: Iterable[str], *, metavars: Mapping[str, str] | None = None
) -> list[inspect.Parameter]:
    """Positional arguments for the fields ``names`` of ``cls``, help from their ``Doc``."""
    specs, metavars = field_specs(cls), metavars or {}
    parameters = []
    for name in names:
        info = typer.Argument(
            ..., help=help_of(specs[name]), metavar=metavars.get(name, name.upper()),
            show_default=False,
        )  # fmt: skip
        setattr(info, PATH_MARK, specs[name].kind is Path)
        kind = _TYPER_KIND.get(specs[name].kind, str)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info, annotation=kind
            )
        )
    return parameters


def config_values(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed options -> keyword arguments of ``cls``: lists and comma-separated text become
    tuples, and "not given" (None) leaves a field that cannot be None at its default."""
    specs = field_specs(cls)
    values = {}
    for name, value in options.items():
        spec = specs[name]
        if value is None and not spec.optional:
            continue
        if spec.kind is tuple and isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        elif spec.kind is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return values


def command(
    body: Callable[..., Any],
    parameters: Iterable[inspect.Parameter],
    doc: str | None = None,
    *,
    empty_allowed: Iterable[str] = (),
) -> Callable[..., Any]:
    """``body(**options)`` as a Typer command whose signature is ``parameters``; an empty value
    is refused with one line but for the options ``empty_allowed`` (where "" says "none")."""

    parameters = list(parameters)
    unset = [p.name for p in parameters if getattr(p.default, UNSET_MARK, False)]
    if unset:  # Typer passes its context to a parameter annotated typer.Context
        parameters.append(
            inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        )

    shown = {parameter.name: _shown_name(parameter) for parameter in parameters}
    advice = {  # a required one cannot be left out
        parameter.name: "give a value"
        if getattr(parameter.default, "default", None) is ...
        else "give a value or leave it out"
        for parameter in parameters
    }
    paths = {p.name for p in parameters if getattr(p.default, PATH_MARK, False)}
    empty_allowed = set(empty_allowed)

    def run(**options: Any) -> Any:
        context = options.pop(_CONTEXT, None)
        for name, value in options.items():
            if name not in empty_allowed and _empty_text(value):
                # `--checkpoint "$(ls ... | tail -1)"` with nothing found: read as a path, ""
                # is "." (this folder), which the command would go on to use.
                fail(f"{shown[name]} is empty; {advice[name]}")
        options = {name: home_expanded(value) for name, value in options.items()}
        options |= {name: Path(options[name]) for name in paths if options[name] is not None}
        for name in unset if context is not None else ():
            source = context.get_parameter_source(name)
            if source is None or source.name == "DEFAULT":
                options[name] = None  # shown as the default, read as "not given"
        return body(**options)

    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__doc__ = flowing(doc or body.__doc__ or "")
    return run


def _empty_text(value: Any) -> bool:
    """Whether ``value`` (or an item of a list of them) is text with nothing in it."""
    values = value if isinstance(value, list | tuple) else [value]
    return any(isinstance(item, str) and not item.strip() for item in values)


def _shown_name(parameter: inspect.Parameter) -> str:
    """How the user gives ``parameter``: its first flag, or an argument's metavar."""
    info = parameter.default
    if isinstance(info, typer.models.ArgumentInfo):
        return (info.metavar or parameter.name.upper()).rstrip(".")
    declared = getattr(info, "param_decls", None) or ()
    return declared[0].split("/")[0] if declared else flag_of(parameter.name)


def home_expanded(value: Any) -> Any:
    """``value`` (or each item of a list) with a leading ``~`` or ``~user`` expanded, as a shell
    does for an unquoted word but not for ``--out=~/runs`` or ``--out '~/runs'``: without this
    those make a folder named ``~`` in the current one."""
    if isinstance(value, (str, Path)) and str(value).startswith("~"):
        return type(value)(os.path.expanduser(value))
    if isinstance(value, list):
        return [home_expanded(item) for item in value]
    return value


def flowing(doc: str) -> str:
    """``doc`` with each paragraph on one line: Typer's rich help keeps a docstring's line
    breaks, which at other terminal widths cut sentences (and examples) mid-way."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)
