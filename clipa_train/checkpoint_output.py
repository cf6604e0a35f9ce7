"""Where the result of scoring a checkpoint goes: ``clipa-train eval`` and ``probe`` write their
JSON (and caches) into the run directory of the checkpoint, unless ``--out`` says otherwise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.atomic import check_writable_file, result_file, write_json


@dataclass(frozen=True)
class CheckpointOutput:
    """The result file of scoring one checkpoint."""

    checkpoint: str
    """The checkpoint (or weights file) scored."""
    out: str | None
    """``--out``: the result file, or a folder when it ends with /; None: ``name`` in
    ``run_folder()``."""
    name: str
    """The result's default file name (``eval.json``, ``probe.json``)."""

    def run_folder(self) -> Path:
        """The folder holding ``checkpoints/`` (the run dir), else the checkpoint's folder."""
        folder = Path(self.checkpoint).resolve().parent
        return folder.parent if folder.name == "checkpoints" else folder

    def result_path(self) -> Path:
        """``--out`` (a folder when it ends with /), else ``name`` in ``run_folder()``."""
        return result_file(self.out, self.name) if self.out else self.run_folder() / self.name

    def check_writable(self) -> None:
        """Refuse in one line, before any work, a result file that cannot be written."""
        check_writable_file(self.result_path(), "--out" if self.out else "", self.name)

    def write(self, result: dict, note: Callable[[str], None]) -> None:
        """Write ``result``, saying so when it replaces an earlier one (every evaluation of a
        run's checkpoints writes the same file by default)."""
        path = self.result_path()
        if path.exists():
            apart = "" if self.out else " (--out FILE keeps results apart)"
            note(f"replaced the earlier result in {path}{apart}")
        write_json(path, result)
