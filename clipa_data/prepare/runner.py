"""Map a per-shard function over shards: in this process, in a process pool or on Spark.

Every offline stage (convert, tag) is a pure function of one shard, so parallelism and progress
live here once. Workers are started with the ``spawn`` method: the parent may have imported
TensorFlow or spaCy, which are not fork-safe. ``distributor="pyspark"`` runs one Spark job per
shard instead (``clipa_data.prepare.spark``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Annotated, Optional, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from clipa_data.core.config_fields import Choices, Doc
from clipa_data.prepare.interrupts import (
    Interrupted,
    ShardStop,
    ignore_stop_signals,
    stop_signals_blocked,
)

DISTRIBUTORS = ("multiprocessing", "pyspark")
"""Where per-shard work runs: a process pool on this machine, or Spark executors (the choices of
``--distributor`` on download, convert and tag)."""

DistributorField = Annotated[
    str,
    Doc(
        "multiprocessing (a pool of --workers processes) or pyspark (one Spark job per shard on "
        "the active SparkSession, or on one built with --spark-master, default local[WORKERS])."
    ),
    Choices(DISTRIBUTORS),
]
"""The ``distributor`` field of the convert and tag configs."""
SparkMasterField = Annotated[
    Optional[str],  # noqa: UP045 - evaluated at runtime by field_specs on Python 3.10
    Doc(
        "Master of the SparkSession built for --distributor pyspark when none is active, e.g. "
        "local[2] or spark://host:7077 (local[N] becomes local[N,4]: 4 attempts per task)."
    ),
]
"""The ``spark_master`` field of the convert and tag configs."""

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
    distributor: str = "multiprocessing"
    """One of ``DISTRIBUTORS``; ``pyspark`` ignores ``workers`` but for a new local session."""
    spark_master: str | None = None
    """Master of the SparkSession built when none is active (``local[2]``, ``spark://...``)."""
    resumes: bool = True
    """Whether a re-run skips the shards finished before a stop (False: the work keeps nothing,
    e.g. inspection or a check, and a stop says that a re-run starts over)."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.distributor not in DISTRIBUTORS:
            raise ValueError(f"distributor must be one of {', '.join(DISTRIBUTORS)}")


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
    name_of: Callable[[Item], str] = str,
) -> list[Result]:
    """Apply ``function`` to every item; return the results in input order.

    ``units_of(result)`` feeds the rate column (e.g. records or captions per second);
    ``on_result`` is called in the parent as each item finishes (for logging or manifests).
    An exception in any item cancels the items not yet started and is re-raised here; on Spark
    the other items finish first and the failed ones are named with ``name_of``. The first
    SIGINT/SIGTERM finishes the items in flight (on Spark: the running jobs) and raises
    ``Interrupted``; a second one ends the workers (cancels the Spark jobs) at once.
    """
    return map_shards_timed(function, items, plan, units_of, on_result, name_of)[0]


def map_shards_timed(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    plan: RunnerConfig,
    units_of: Callable[[Result], int] = lambda _: 0,
    on_result: Callable[[Item, Result], None] | None = None,
    name_of: Callable[[Item], str] = str,
) -> tuple[list[Result], float]:
    """``map_shards``, plus the seconds its rate column divides by: from the start of the
    progress bar (worker start-up included) to the last item's finish."""
    if not items:  # a re-run with every shard finished: no empty 0/0 progress bar
        return [], 0.0
    console = Console(stderr=True)
    results: dict[int, Result] = {}
    started = time.perf_counter()
    units, seconds = 0, 0.0

    with ShardStop() as stop, _progress(console, plan) as progress:
        task = progress.add_task(plan.description, total=len(items), rate="")

        def finish(index: int, result: Result) -> None:
            nonlocal units, seconds
            results[index] = result
            units += units_of(result)
            seconds = max(time.perf_counter() - started, 1e-9)
            rate = f"{units / seconds:,.0f} {plan.unit}/s" if units else ""
            progress.update(task, advance=1, rate=rate)
            if on_result is not None:
                on_result(items[index], result)

        if plan.distributor == "pyspark" and items:
            _run_spark(function, items, plan, finish, name_of, lambda: stop.requested)
        elif plan.workers == 1 or len(items) <= 1:
            for index, item in enumerate(items):
                if stop.requested:
                    break
                finish(index, function(item))
        else:
            _run_pool(function, items, plan.workers, finish, stop)
    if len(results) < len(items):
        again = (
            "re-run the same command to resume"
            if plan.resumes
            else "nothing of it was kept: a re-run starts it over"
        )
        raise Interrupted(
            f"stopped after {len(results)} of {len(items)} shards ({plan.description}); {again}"
        )
    return [results[index] for index in range(len(items))], seconds


def _run_pool(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    finish: Callable[[int, Result], None],
    stop: ShardStop,
) -> None:
    """Keep ``workers`` items in flight (no queue of started-but-waiting items, so a stop
    request leaves exactly the running ones to finish)."""
    context = multiprocessing.get_context("spawn")
    workers = min(workers, len(items))
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=ignore_stop_signals
    )
    queued = iter(enumerate(items))
    pending: dict[Future, int] = {}
    try:
        while True:
            while not stop.requested and len(pending) < workers:
                following = next(queued, None)
                if following is None:
                    break
                # submit may start a worker process: the new process starts with the stop
                # signals blocked, and a second Ctrl-C waits until the pool has recorded it.
                with stop.deferred(), stop_signals_blocked():
                    pending[pool.submit(function, following[1])] = following[0]
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finish(pending.pop(future), future.result())
    except KeyboardInterrupt:
        _end_workers(pool)
        raise
    finally:
        _shut_down(pool)


def _shut_down(pool: ProcessPoolExecutor) -> None:
    """Wait for the workers to exit. A second Ctrl-C while waiting (e.g. for a worker still
    starting up after the first one stopped the submissions) ends them at once, and they are
    reaped before the stop goes on: a worker left behind would outlive this process and print
    a traceback when the pool's semaphores vanish under it."""
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        _end_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the workers of ``pool`` at once (a second Ctrl-C; they ignore SIGINT/SIGTERM)."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14+
    if kill is not None:
        kill()
        return
    # Before 3.14 the executor has no public way to end running workers.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


def _run_spark(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    plan: RunnerConfig,
    finish: Callable[[int, Result], None],
    name_of: Callable[[Item], str],
    stop_requested: Callable[[], bool],
) -> None:
    from clipa_data.prepare import spark

    context = spark.spark_context(plan.spark_master, plan.workers)
    spark.run_on_spark(function, items, plan.description, context, finish, name_of, stop_requested)
