"""``clipa-train export``: a checkpoint as OpenCLIP weights (``clipa_train.export``)."""

from __future__ import annotations

from clipa_cli.common import reports_errors, stderr, stdout
from clipa_cli.options import command, config_arguments, config_options
from rich.markup import escape

from clipa_train.export import EXPORT_FORMATS, ExportConfig

EXPORT_HELP = "\n\n".join(
    [
        "Export a checkpoint with OpenCLIP's parameter names (for OpenCLIP, CLIP_benchmark and "
        "the CLIPA repository's scripts).",
        "Example: clipa-train export runs/b16/checkpoints/step_00037292.pt b16-export "
        "--format openclip-dir, then open_clip.create_model_and_transforms('local-dir:b16-export')",
        *(f"{name}: {entry.help}." for name, entry in EXPORT_FORMATS.items()),
    ]
)


def export_body(**options) -> None:
    """Write the export and say what was written."""
    from clipa_train.export import export_checkpoint

    result = export_checkpoint(ExportConfig(**options))
    for note in result.notes:
        stderr().print(f"note: {escape(note)}")
    stdout().print(
        f"exported {escape(result.source)}: {result.tensors} tensors, "
        f"{result.parameters:,} parameters -> {escape(', '.join(result.files))}"
    )


export_command = command(
    reports_errors(export_body),
    [
        *config_arguments(ExportConfig, ("checkpoint", "out"), metavars={"checkpoint": "CK"}),
        *config_options(ExportConfig, ("format", "overwrite")),
    ],
    doc=EXPORT_HELP,
)
"""The ``clipa-train export`` command."""
