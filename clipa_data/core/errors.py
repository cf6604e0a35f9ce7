"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero)."""

from __future__ import annotations


class ClipaError(Exception):
    """Bad input or a failed check; the message names the file/shard/record and the fix."""


class CorruptShardError(ClipaError):
    """A TFRecord shard whose framing or checksums are broken at a known byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.path = path
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: corrupt TFRecord at byte {self.offset}: {self.reason}"
