"""Assertions shared by the command-line tests."""

from __future__ import annotations

from clipa_cli.common import EXIT_BAD_INPUT


def assert_one_line_error(result, *fragments: str, after_warnings: bool = False) -> str:
    """``result`` (a Typer ``CliRunner`` result) exited for bad input with exactly one
    ``error:`` line on stderr containing every fragment (``after_warnings``: and before it, any
    ``warning:`` lines, as about a test's deliberately sparse data); returns that line."""
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if after_warnings:
        lines = [line for line in lines if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
