"""Looking a name up in one of the registries (one dict per kind of choice), with one error form.

Every kind of choice (image mask, text mask, loss, backend, precision, positional embedding,
source format) is a dict from name to implementation, the only list of its names; ``pick`` is
the one way code turns a user's name into its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from clipa_data.core.errors import ClipaError

Entry = TypeVar("Entry")


def unknown_choice(kind: str, name: object, names: object) -> ClipaError:
    """The one-line error for a name that is not in a registry."""
    return ClipaError(f"unknown {kind} {name!r}; choose one of {', '.join(names)}")


def pick(registry: Mapping[str, Entry], name: str, kind: str) -> Entry:
    """``registry[name]``, or a ClipaError naming ``kind`` and every registered name."""
    if name not in registry:
        raise unknown_choice(kind, name, registry)
    return registry[name]
