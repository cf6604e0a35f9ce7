"""What every command shares: the error boundary, ``--version`` and the consoles."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from clipa_data import __version__
from clipa_data.core.errors import AgreedError, ClipaError, worker_message

Command = TypeVar("Command", bound=Callable)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
"""What a shell reports for a command stopped by Ctrl-C (128 + SIGINT)."""


def stdout() -> Console:
    """Console for results (tables, JSON)."""
    return Console(soft_wrap=True)


def stderr() -> Console:
    """Console for progress, warnings and errors; never wraps a message over two lines."""
    return Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """Print one ``error:`` line and exit non-zero."""
    stderr().print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_BAD_INPUT)


def reports_errors(command: Command) -> Command:
    """Turn ``ClipaError`` (bad input, failed checks) and an ``OSError`` about a path into one
    line and a non-zero exit, and an interrupt (Ctrl-C, SIGTERM) into one line and exit 130
    instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AgreedError as error:
            if not error.said_here:  # another rank prints the same line
                raise typer.Exit(EXIT_BAD_INPUT) from None
            fail(str(error))
        except ClipaError as error:
            fail(worker_message(error))
        except OSError as error:
            if error.filename is None:
                raise  # not about a path the user gave: a traceback shows where it came from
            # A path the checks could not foresee (a folder under /proc, a disk that filled up,
            # a mount gone read-only): the path and the system's reason, in one line.
            fail(
                f"{error.filename}: {error.strerror or error} (the operating system refused "
                "it: check the path, its permissions and the free space)"
            )
        except KeyboardInterrupt as interrupt:
            # A stage's Interrupted says what finished and how to resume; a bare Ctrl-C says
            # nothing, and the stages write atomically, so there is nothing half-done to name.
            stderr().print(f"[bold yellow]{escape(str(interrupt) or 'interrupted')}[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def version_option(program: str) -> Callable[[bool], None]:
    """A Typer callback that prints ``<program> <version>`` and exits."""

    def show(value: bool) -> None:
        if value:
            stdout().print(f"{program} {__version__}")
            raise typer.Exit()

    return show


def make_app(program: str, help_text: str) -> typer.Typer:
    """A Typer app with ``--version``, no completion install, and help on bare invocation."""
    app = typer.Typer(
        name=program,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False,
            "--version",
            callback=version_option(program),
            is_eager=True,
            help="Show the version and exit.",
        ),
    ) -> None:
        """Root options."""

    return app
