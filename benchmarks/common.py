"""What every benchmark shares: timing, the result JSON and the printed table.

Ours and the baseline always run in the same process run, interleaved where possible, so the
ratios survive a shared, noisy machine; the JSON keeps the raw figures next to the ratios.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clipa_data.core.atomic import write_json
from clipa_data.core.provenance import machine_info, package_versions

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_run(base: str) -> str:
    """``base`` (the command that reproduces a result with its defaults) plus the options this
    run was given, so a result made with ``--rounds 1`` says so."""
    given = shlex.join(sys.argv[1:])
    return f"{base} {given}" if given else base


def median_seconds(function: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``function()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_result(
    name: str,
    *,
    ratios: dict[str, float],
    figures: dict,
    config: dict,
    packages: list[str],
    command: str,
    into: Path = RESULTS_DIR,
) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``into``: a dry run's folder): ratios,
    machine, versions, config, raw figures."""
    path = into / f"{name}.json"
    write_json(
        path,
        {
            "benchmark": name,
            "command": command,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "ratios": {key: round(value, 3) for key, value in ratios.items()},
            "machine": machine_info(),
            "versions": package_versions(packages),
            "config": config,
            "figures": figures,
        },
    )
    return path


def print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    """Print a results table to stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)


def load_result(name: str) -> dict:
    """A committed result JSON (for README tables)."""
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())
