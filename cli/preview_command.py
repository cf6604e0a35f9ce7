"""``clipa-data preview``: the first captions and what the model sees after text reduction."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated, Any

from clipa_cli.common import reports_errors, stdout
from clipa_cli.options import command, config_arguments, config_options, config_values
from clipa_cli.tables import preview_table

from clipa_data.core.config_fields import Doc
from clipa_data.prepare.preview import PreviewConfig, preview_rows


@dataclass(frozen=True)
class PreviewRequest:
    """How ``clipa-data preview`` prints, besides filling ``PreviewConfig``."""

    json_lines: Annotated[
        bool,
        Doc("One JSON object per caption (key, caption, source, ids, text) instead of a table."),
    ] = False


PARAMETERS = [
    *config_arguments(PreviewConfig, ("builder_dir",)),
    *config_options(
        PreviewConfig,
        [f.name for f in dataclasses.fields(PreviewConfig) if f.name != "builder_dir"],
    ),
    *config_options(PreviewRequest, flags={"json_lines": "--json"}, bare=("json_lines",)),
]
"""The command's arguments and options."""


@reports_errors
def preview_options(json_lines: bool, **options: Any) -> None:
    """Show the first N captions and the tokens the text tower gets after reduction."""
    config = PreviewConfig(**config_values(PreviewConfig, options))
    if json_lines:
        for row in preview_rows(config):
            print(json.dumps(dataclasses.asdict(row), ensure_ascii=False))
        return
    stdout().print(preview_table(preview_rows(config), config.text_mask, config.text_length))


preview = command(preview_options, PARAMETERS)
"""The ``clipa-data preview`` command."""
