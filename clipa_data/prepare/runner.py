"""Map a per-shard function over shards: in this process or in a process pool, with progress.

Every offline stage (convert, tag) is a pure function of one shard, so parallelism and progress
live here once. Workers are started with the ``spawn`` method: the parent may have imported
TensorFlow or spaCy, which are not fork-safe.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunnerConfig:
    """How to run a per-shard function and how to show its progress."""

    description: str
    """Label of the progress bar, e.g. ``converting``."""
    workers: int = 1
    """Worker processes; 1 runs everything in this process (no pool start-up cost)."""
    unit: str = "records"
    """Name of the unit counted by ``units_of`` for the rate column, e.g. ``captions``."""
    show_progress: bool = True
    """Draw a progress bar on stderr."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


def _progress(console: Console, plan: RunnerConfig) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not plan.show_progress,
        transient=False,
    )


def map_shards(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    plan: RunnerConfig,
    units_of: Callable[[Result], int] = lambda _: 0,
    on_result: Callable[[Item, Result], None] | None = None,
) -> list[Result]:
    """Apply ``function`` to every item; return the results in input order.

    ``units_of(result)`` feeds the rate column (e.g. records or captions per second);
    ``on_result`` is called in the parent as each item finishes (for logging or manifests).
    An exception in any item cancels the items not yet started and is re-raised here.
    """
    console = Console(stderr=True)
    results: dict[int, Result] = {}
    started = time.perf_counter()
    units = 0

    with _progress(console, plan) as progress:
        task = progress.add_task(plan.description, total=len(items), rate="")

        def finish(index: int, result: Result) -> None:
            nonlocal units
            results[index] = result
            units += units_of(result)
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = f"{units / elapsed:,.0f} {plan.unit}/s" if units else ""
            progress.update(task, advance=1, rate=rate)
            if on_result is not None:
                on_result(items[index], result)

        if plan.workers == 1 or len(items) <= 1:
            for index, item in enumerate(items):
                finish(index, function(item))
        else:
            _run_pool(function, items, plan.workers, finish)
    return [results[index] for index in range(len(items))]


def _run_pool(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    finish: Callable[[int, Result], None],
) -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context) as pool:
        pending: dict[Future, int] = {
            pool.submit(function, item): index for index, item in enumerate(items)
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    finish(index, future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
