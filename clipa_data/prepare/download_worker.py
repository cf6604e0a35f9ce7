"""img2dataset in a child process of ``clipa-data download`` (``python -m`` this module).

The parent starts it in its own session with stdout/stderr going to ``_clipa/img2dataset.log``,
so img2dataset's prints, per-worker lines, bandwidth hint, TensorFlow start-up lines and
``Process LoggerProcess-1:`` tracebacks land in the log and the console shows only our progress
bar. The img2dataset arguments come pickled on stdin.

SIGINT to this process means "start no new shard": img2dataset's own multiprocessing
distributor queues every shard into its pool at once (so only killing the pool could stop it),
hence :func:`stoppable_distributor` replaces it here, in this child only. It keeps one shard per
process in flight and stops submitting on SIGINT/SIGTERM; img2dataset then finishes normally
(stats logger joined, ``_tmp`` removed) with the unsubmitted shards left for a re-run. The
kernel sends that SIGINT when the parent dies (``stop_when_the_parent_dies``).
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any


def run_shards(
    pool: Any, downloader: Callable, shards: Iterable, in_flight: int, stop: threading.Event
) -> list:
    """Download ``shards`` with at most ``in_flight`` running; returns the failed ones."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    failed, running = [], 0
    pending = iter(shards)
    while True:
        while running < in_flight and not stop.is_set():
            shard = next(pending, None)
            if shard is None:
                break
            pool.apply_async(
                downloader, (shard,), callback=finished.put, error_callback=finished.put
            )
            running += 1
        if running == 0:
            return failed
        outcome = finished.get()
        running -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        status, row = outcome
        if status is False:
            failed.append(row)


def stoppable_distributor(
    processes_count: int, downloader: Callable, reader: Iterable, _subjob_size: int, retries: int
) -> None:
    """img2dataset's ``multiprocessing_distributor`` (same signature, pool and shard retries),
    except that a stop request finishes the shards in flight and submits no more."""
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes_count, maxtasksperchild=5) as pool:
        failed = run_shards(pool, downloader, reader, processes_count, stop)
        for attempt in range(retries):
            if not failed or stop.is_set():
                break
            print(f"retrying {len(failed)} shards, try {attempt + 1}", flush=True)
            failed = run_shards(pool, downloader, failed, processes_count, stop)
        if failed:
            print(f"{len(failed)} shards failed; re-run to retry them", flush=True)
        pool.terminate()
        pool.join()


PARENT_ENV = "CLIPA_DOWNLOAD_PARENT"
"""The pid of the ``clipa-data download`` that started this child."""


def stop_when_the_parent_dies() -> None:
    """Have the kernel send SIGINT (a stop request: the shards in flight finish, no new one
    starts) when the parent dies (a closed terminal's SIGHUP, a kill): in its own session no
    terminal signal reaches this child, which would download on unwatched beside a re-run.
    Linux only (``prctl``); elsewhere the parent's lock still refuses a second run."""
    import ctypes
    import os

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGINT)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ.get(PARENT_ENV, os.getppid())):
        os.kill(os.getpid(), signal.SIGINT)  # it died before prctl: nobody would send it


def main() -> None:
    stop_when_the_parent_dies()
    arguments = pickle.load(sys.stdin.buffer)
    # The module, not the package attribute ``img2dataset.main`` (its ``main`` function).
    i2d_main = importlib.import_module("img2dataset.main")
    # In this child only (see the module docstring): img2dataset looks the name up at call time.
    i2d_main.multiprocessing_distributor = stoppable_distributor
    i2d_main.download(**arguments)


if __name__ == "__main__":
    main()
