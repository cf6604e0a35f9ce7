"""Per-field help and choices of the config dataclasses, readable from an installed wheel.

A config field carries its one-line documentation and, for a kind of choice, the registry it
picks from, in its type hint::

    image_mask: Annotated[str, Doc("Image token reduction."), Choices(IMAGE_MASKS)] = "resize"

``Doc`` is PEP 727's marker (``typing_extensions.Doc``). Both are read back with
``typing.get_type_hints(include_extras=True)``, so help texts need no source files (unlike
attribute docstrings) and the command-line options, validation messages and docs all read the
same registry keys.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath

from typing_extensions import Doc

__all__ = ["Choices", "Doc", "FieldSpec", "field_specs"]


@dataclass(frozen=True)
class Choices:
    """The names a string field may take (the keys of one registry), and what each means where
    the registry says (its entries' ``help``, or text values)."""

    names: tuple[str, ...]
    """Allowed values, in the order help texts list them."""
    meanings: tuple[str, ...]
    """What each name means, in the same order; empty when the registry does not say."""

    def __init__(self, names: Iterable[str] | Mapping[str, object]) -> None:
        object.__setattr__(self, "names", tuple(names))
        entries = list(names.values()) if isinstance(names, Mapping) else []
        meanings = [
            entry if isinstance(entry, str) else getattr(entry, "help", None) for entry in entries
        ]
        said = bool(meanings) and all(isinstance(meaning, str) for meaning in meanings)
        object.__setattr__(self, "meanings", tuple(meanings) if said else ())


@dataclass(frozen=True)
class FieldSpec:
    """What a command-line option needs to know about one config field."""

    name: str
    """The field's name (``batch_size``)."""
    kind: type
    """The plain value type: ``bool``, ``int``, ``float``, ``str``, ``tuple`` or a Path-like."""
    optional: bool
    """Whether ``None`` is a valid value."""
    help: str
    """The field's one-line documentation (empty when it has none)."""
    choices: tuple[str, ...] | None
    """The registry keys the field picks from, if it is a kind of choice."""
    default: object
    """The field's default, or ``dataclasses.MISSING``."""
    meanings: tuple[str, ...] = ()
    """What each of ``choices`` means, where its registry says (empty otherwise)."""


def _plain(hint: object) -> tuple[type, bool]:
    """``int | None`` -> (int, True); ``tuple[float, ...]`` -> (tuple, False);
    ``str | Path`` -> (Path, False)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional or isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        paths = [a for a in rest if isinstance(a, type) and issubclass(a, PurePath)]
        hint = rest[0] if len(rest) == 1 else (paths[0] if paths else str)
    origin = typing.get_origin(hint)
    return (origin if isinstance(origin, type) else hint), optional


@functools.cache
def field_specs(cls: type) -> Mapping[str, FieldSpec]:
    """Every field of the dataclass ``cls``: type, optionality, help, choices, default (read
    only: every caller shares the cached mapping)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        extras = getattr(hint, "__metadata__", ())
        base = typing.get_args(hint)[0] if extras else hint
        kind, optional = _plain(base)
        docs = [e.documentation for e in extras if isinstance(e, Doc)]
        picked = next((e for e in extras if isinstance(e, Choices)), None)
        specs[field.name] = FieldSpec(
            name=field.name,
            kind=kind,
            optional=optional,
            help=" ".join(" ".join(docs).split()),
            choices=picked.names if picked else None,
            meanings=picked.meanings if picked else (),
            default=field.default,
        )
    return types.MappingProxyType(specs)
