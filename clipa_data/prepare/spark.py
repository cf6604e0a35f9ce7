"""Run a per-shard function on Spark: one Spark job per shard, submitted from a few driver threads.

``runner.map_shards`` calls ``run_on_spark`` for ``--distributor pyspark``. One job per shard
(``sc.parallelize([item], 1).map(function).collect()``) keeps what the process pool gives:
progress and ``on_result`` per shard on the driver, results in input order, while Spark ships
each task to an executor and retries a failed one (its own task retries). A shard whose task
fails in every attempt is remembered; the other shards run to the end (their outputs are
written atomically by ``function`` itself, so they are kept), then one ``ShardsFailedError``
names the failed shards. Executors run ``function`` as a module-level function, imported from
the installed ``clipa`` package (cloudpickle pickles it by reference).

pyspark is imported only here, inside the functions, so the package works without it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from clipa_data.core.errors import ClipaError

Item = TypeVar("Item")
Result = TypeVar("Result")

TASK_ATTEMPTS = 4
"""Attempts per task in a local session (Spark's ``spark.task.maxFailures`` default on a
cluster); local mode retries only through the ``local[N,F]`` master form."""
MAX_DRIVER_THREADS = 256
"""Concurrent single-shard jobs: enough to keep a large cluster busy without one Python thread
per shard on the driver."""
INSTALL_HINT = "pip install 'clipa[spark]' (or pip install pyspark==4.3.0; it needs Java 17+)"

_LOCAL = re.compile(r"local(?:\[(\*|\d+)\])?")
MASTER_FORMS = "local[N], spark://HOST:PORT, yarn or k8s://HOST:PORT"
"""The master URLs Spark accepts, as one refusal names them."""


class ShardsFailedError(ClipaError):
    """Some shards failed in every Spark task attempt; the other shards finished."""


def import_pyspark() -> Any:
    """The pyspark module, or one line naming the package to install."""
    try:
        import pyspark
    except ImportError:
        raise ClipaError(f"--distributor pyspark needs pyspark: {INSTALL_HINT}") from None
    return pyspark


def local_master(master: str) -> str:
    """``local``/``local[N]``/``local[*]`` -> the ``local[N,F]`` form, whose tasks are retried.

    Spark's plain local mode gives every task one attempt; any other master (``local[N,F]``,
    ``spark://``, ``yarn``, ``k8s://``) is returned unchanged.
    """
    match = _LOCAL.fullmatch(master.strip())
    if match is None:
        return master
    return f"local[{match.group(1) or 1},{TASK_ATTEMPTS}]"


def spark_context(master: str | None, workers: int) -> Any:
    """The active SparkSession's context; without one, a new session.

    ``master`` (``--spark-master``) builds the session when none is active (an active session,
    e.g. one a notebook or ``spark-submit`` made, always wins). Without either, a
    ``local[workers]`` session on this machine. A local session's Python workers run this
    interpreter (its virtual environment has clipa installed); the console progress bar and
    Spark's per-attempt error logs are turned off, since the runner reports both itself.
    """
    if master is not None and not (
        master == "yarn" or master.startswith(("local", "spark://", "k8s://"))
    ):
        raise ClipaError(f"--spark-master {master} is not a Spark master URL: give {MASTER_FORMS}")
    import_pyspark()
    from pyspark.sql import SparkSession

    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise ClipaError(
            "--distributor pyspark needs Java 17+ on the driver: install it (Debian/Ubuntu: "
            "apt-get install -y openjdk-17-jre-headless) or set JAVA_HOME"
        )
    active = SparkSession.getActiveSession()
    if active is not None:
        return active.sparkContext
    chosen = local_master(master or f"local[{workers}]")
    builder = SparkSession.builder.appName("clipa-data").master(chosen)
    if chosen.startswith("local"):
        # PySpark reads the workers' interpreter from this variable when the context starts
        # (not from spark.pyspark.python); a user's own setting wins.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    try:
        context = builder.getOrCreate().sparkContext
    except Exception as error:  # Py4JJavaError, PySparkRuntimeError: Spark's reasons, traced
        fix = (
            "check --spark-master, or leave it out for a session on this machine"
            if master
            else "check Java 17+ (JAVA_HOME) and that this machine's host name resolves "
            "(or set SPARK_LOCAL_IP=127.0.0.1)"
        )
        raise ClipaError(
            f"cannot start a Spark session on {chosen} ({_start_failure(error)}); {fix}"
        ) from None
    if chosen.startswith("local"):
        context.setLogLevel("FATAL")
    return context


def _start_failure(error: BaseException) -> str:
    """The line of a failed session start that says why: Java's exception rather than py4j's
    "An error occurred while calling ..." (a gateway that exited printed its reason above)."""
    lines = [line.strip().lstrip(":").strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("An error occurred")]
    said = next((line for line in lines if re.search(r"(Exception|Error): ", line)), None)
    said = said or (lines[0] if lines else type(error).__name__)
    return said if len(said) <= 300 else said[:300].rsplit(" ", 1)[0] + " …"


def failure_line(error: BaseException) -> str:
    """One line for a Spark job's failure: the Python exception of the last attempt if the
    function raised, else the first line of Spark's message (e.g. a worker that crashed)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "exception was thrown from the Python worker" in text:
        last = next((line for line in reversed(lines) if not line.startswith("SQLSTATE")), "")
        kind, sep, message = last.partition(": ")
        if not (sep and re.fullmatch(r"[\w.]+", kind)):
            return last
        return message if kind.endswith("ClipaError") else f"{kind.rsplit('.', 1)[-1]}: {message}"
    return lines[0][:400] if lines else type(error).__name__


NOT_STARTED = object()
"""What a job returns when a stop was requested before its driver thread reached it."""


def _one_job(
    context: Any,
    group: str,
    label: str,
    function: Callable,
    item: Any,
    stop_requested: Callable[[], bool],
) -> Any:
    """Run ``function(item)`` as one single-task Spark job (in a driver thread), unless a stop
    was requested meanwhile: a driver thread takes its next job as soon as one ends, before
    the main thread has seen that one end and cancelled the jobs still waiting."""
    if stop_requested():
        return NOT_STARTED
    context.setJobGroup(group, label, interruptOnCancel=True)
    return context.parallelize([item], 1).map(function).collect()[0]


def run_on_spark(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    description: str,
    context: Any,
    finish: Callable[[int, Result], None],
    name_of: Callable[[Item], str],
    stop_requested: Callable[[], bool] = lambda: False,
) -> None:
    """``finish(index, result)`` for every item, on the driver, as its job ends.

    Raises ``ShardsFailedError`` after every other shard finished when some failed in every
    attempt. Once ``stop_requested()`` (a first Ctrl-C), the jobs not yet submitted to Spark are
    dropped and the running ones finish; a KeyboardInterrupt cancels them all.
    """
    group = f"clipa-{description.split()[0]}-{uuid.uuid4().hex[:8]}"
    threads = max(1, min(len(items), context.defaultParallelism, MAX_DRIVER_THREADS))
    failures: dict[int, str] = {}
    with ThreadPoolExecutor(threads, thread_name_prefix="clipa-spark") as pool:
        jobs: dict[Future, int] = {
            pool.submit(
                _one_job,
                context,
                group,
                f"{description} {name_of(item)}",
                function,
                item,
                stop_requested,
            ): index
            for index, item in enumerate(items)
        }
        try:
            for job in as_completed(jobs):
                if stop_requested():  # only jobs still waiting for a driver thread cancel
                    for waiting in jobs:
                        waiting.cancel()
                if job.cancelled():
                    continue
                index = jobs[job]
                try:
                    result = job.result()
                except Exception as error:
                    failures[index] = failure_line(error)
                    continue
                if result is not NOT_STARTED:
                    finish(index, result)
        except BaseException:
            for job in jobs:
                job.cancel()
            context.cancelJobGroup(group)
            raise
    if failures:
        raise _failed(items, failures, name_of)


def _failed(
    items: Sequence[Item], failures: dict[int, str], name_of: Callable[[Item], str]
) -> ShardsFailedError:
    first = min(failures)
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return ShardsFailedError(
        f"{len(failures)} of {len(items)} shards failed in every Spark task attempt; "
        f"{name_of(items[first])}: {failures[first]}{more}. The other shards are finished and "
        "kept: fix the cause and re-run the same command to do only the rest"
    )
