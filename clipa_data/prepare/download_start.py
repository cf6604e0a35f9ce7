"""What ``clipa-data download`` records as a run starts (``_clipa/sharding.json``: shard size,
settings, incremental mode, first shard), and how a run that stopped is finished.

Read by ``download`` (resume checks, stop messages) and by ``convert`` (a download that did not
finish names the way to finish it).
"""

from __future__ import annotations

import json
from pathlib import Path

from clipa_data.core import layout


def read_start(output_folder: str | Path) -> dict:
    """What the last run in ``output_folder`` recorded as it started (empty: nothing)."""
    try:
        recorded = json.loads(layout.download_start_path(Path(output_folder)).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def read_summary(output_folder: str | Path) -> dict | None:
    """The ``summary`` part of the last run's ``download_summary.json`` (as ``download``
    writes it: ``{"summary": ..., "config": ...}``); None when there is none or it is unreadable.
    One reader, so that resume and convert never disagree with the writer about its layout."""
    try:
        last = json.loads(layout.download_summary_path(Path(output_folder)).read_text())
        summary = last["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return summary if isinstance(summary, dict) else None


def extended_from(recorded: dict) -> int | None:
    """The first shard the recorded run wrote when it extended a download (img2dataset numbers
    an extend run's shards after the last finished one); None for any other run, and for an
    extend into an empty folder (it numbered from 0, as an incremental run does)."""
    first = recorded.get("first_shard")
    extended = recorded.get("incremental_mode") == "extend" and isinstance(first, int)
    return first if extended and first > 0 else None


def resume_advice(mode: str, recorded: dict) -> str:
    """How to finish a run in ``mode`` that stopped: the same command, except where that would
    not resume (``overwrite`` starts over; ``extend`` adds its URL list a second time)."""
    first = extended_from(recorded) if mode == "extend" else None
    if first is not None:
        return (
            "an extend run cannot resume (a re-run would add its URL list again): delete the "
            f"shards it wrote, {first:05d} and later (each with its _stats.json and .parquet), "
            "then run it again"
        )
    if mode in ("overwrite", "extend"):
        return "re-run it with --incremental-mode incremental to resume (finished shards are kept)"
    return "re-run the same command to resume (finished shards are skipped)"
