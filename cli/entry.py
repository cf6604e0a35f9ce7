"""The console scripts' entry points, importing nothing heavy themselves.

Importing an app (typer, rich, the option tables) takes about half a second; a Ctrl-C in that
time would end in a ``KeyboardInterrupt`` traceback. Here it ends as one later does (the
commands' ``reports_errors``): one line and exit 130.
"""

from __future__ import annotations

import importlib
import signal
import sys

EXIT_INTERRUPTED = 130
"""As ``clipa_cli.common.EXIT_INTERRUPTED`` (not imported from there: that imports rich)."""


def data() -> None:
    """``clipa-data``."""
    # SIGTERM stops a data command as Ctrl-C does (one line, exit 130, the same clean-up) also
    # outside the stages that handle both themselves: Python's default ended it silently.
    # Their worker processes ignore both (the parent decides).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _run("clipa_cli.data_app")


def train() -> None:
    """``clipa-train``."""
    _run("clipa_cli.train_app")


def _run(module: str) -> None:
    try:
        importlib.import_module(module).main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
