"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero)."""

from __future__ import annotations


class ClipaError(Exception):
    """Bad input or a failed check; the message names the file/shard/record and the fix."""


class AgreedError(ClipaError):
    """A failure every rank of a distributed run raises with the same line (the ranks agreed on
    it): only the rank that says it prints it, so a torchrun run shows it once."""

    def __init__(self, message: str, said_here: bool = True) -> None:
        super().__init__(message)
        self.said_here = said_here
        """False on the ranks that leave the line to rank 0 (they exit non-zero silently)."""


class CorruptShardError(ClipaError):
    """A TFRecord shard whose framing or checksums are broken at a known byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.path = path
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: corrupt TFRecord at byte {self.offset}: {self.reason}"


def worker_message(error: ClipaError) -> str:
    """The message ``error`` was raised with, also when a torch ``DataLoader`` worker raised it:
    torch re-raises it in the main process with the worker's whole traceback as its message
    ("Caught ClipaError in DataLoader worker process 0. Original Traceback ..."), whose last
    line ends with the original one. The user is owed that line, not the traceback."""
    text = str(error)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    last = text.rstrip("\n").rsplit("\n", 1)[-1]  # "clipa_data.core.errors.ClipaError: MESSAGE"
    return last.split(": ", 1)[1] if ": " in last else last


def parse_error_line(error: Exception) -> str:
    """A YAML or JSON parser's error in one line: PyYAML's message spans several lines (the
    problem, a snippet and a caret), so it becomes its problem and where; others are joined."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())
