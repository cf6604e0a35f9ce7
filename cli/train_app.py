"""``clipa-train``: pre-train, fine-tune and evaluate CLIP with reduced token lengths."""

from __future__ import annotations

from clipa_cli.common import make_app

app = make_app(
    "clipa-train",
    "Train CLIP the CLIPA way: pre-train with short image and text token sequences, fine-tune "
    "briefly at full length, and evaluate zero-shot on ImageNet-1K.",
)


def main() -> None:
    """Console-script entry point."""
    app()
