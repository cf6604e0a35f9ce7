"""``clipa-data tag``: POS-tag captions into Arrow sidecars, or ``--check`` existing ones."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

from clipa_cli.common import reports_errors, stdout
from clipa_cli.options import command, config_arguments, config_options, config_values
from clipa_cli.tables import check_table, tag_table

from clipa_data.core.config_fields import Doc
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.sidecar_check import CheckConfig, check_sidecars
from clipa_data.prepare.tagging import TagConfig, tag_builder


@dataclass(frozen=True)
class TagRequest:
    """What ``clipa-data tag`` does besides filling ``TagConfig``."""

    check: Annotated[
        bool, Doc("Tag nothing: verify existing sidecars (rows, keys, vocabulary, text field).")
    ] = False


TAG_OPTIONS = [f.name for f in dataclasses.fields(TagConfig) if f.name != "builder_dir"]

PARAMETERS = [
    *config_arguments(TagConfig, ("builder_dir",)),
    *config_options(
        TagConfig,
        TAG_OPTIONS,
        flags={"splits": "--split", "show_progress": "--progress"},
        extra_help={"splits": "Repeatable."},
        repeated=("splits",),
    ),
    *config_options(TagRequest),
]
"""The command's arguments and options."""


@reports_errors
def tag_options(check: bool, **options: Any) -> None:
    """Tokenise and POS-tag every caption once into one Arrow sidecar per shard."""
    if check:
        checked = {f.name for f in dataclasses.fields(CheckConfig)}
        ignored = _tagging_options_given(options, checked)
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            raise ClipaError(
                f"--check only reads the sidecars, so {flags} would do nothing; drop it"
            )
        run_check(CheckConfig(**config_values(CheckConfig, {k: options[k] for k in checked})))
        return
    stdout().print(tag_table(tag_builder(TagConfig(**config_values(TagConfig, options)))))


def _tagging_options_given(options: dict[str, Any], checked: set[str]) -> list[str]:
    """The options of tagging (not of ``--check``) set to something other than their default."""
    given = []
    for field in dataclasses.fields(TagConfig):
        if field.name in checked or field.name not in options or options[field.name] is None:
            continue
        default = (
            field.default_factory() if field.default_factory is not dataclasses.MISSING
            else field.default
        )  # fmt: skip
        if options[field.name] != default:
            given.append(field.name)
    return given


def run_check(config: CheckConfig) -> None:
    """Verify the sidecars, print what was found, and fail naming the first bad shard."""
    report = check_sidecars(config)
    table, count = check_table(report)
    stdout().print(table)
    stdout().print(count)
    report.raise_for_problems()  # one error line naming the first bad shard, exit 2


tag = command(tag_options, PARAMETERS)
"""The ``clipa-data tag`` command."""
