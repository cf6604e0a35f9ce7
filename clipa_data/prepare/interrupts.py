"""Ctrl-C and SIGTERM in the offline stages: the first finishes the shards in flight, the second
stops at once.

Every stage writes a shard under a temporary name and renames it when complete, so stopping
between shards loses nothing and a re-run resumes; stopping inside one loses only that shard's
work. The first signal prints one line and asks the stage to start no new shard; the second
raises :class:`StopNow` from the handler. The CLI turns both outcomes into exit 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FIRST_SIGNAL_LINE = "stopping after the current shard(s); Ctrl-C again to stop now"
STOP_NOW_LINE = "stopped at once; re-run the same command to resume"


class Interrupted(KeyboardInterrupt):
    """A stage stopped by a signal; the message says what finished and how to resume."""


class StopNow(Interrupted):
    """A second signal: the stage stops at once (shards in flight are abandoned, not kept)."""


class ShardStop:
    """Installs the two-step stop handlers while a stage maps its shards (main thread only).

    ``requested`` turns True on the first SIGINT/SIGTERM; the stage checks it before starting
    each shard. ``on_first`` runs in the handler after the line is printed (e.g. to pass the
    request on to a child process). Off the main thread Python cannot install handlers, so
    nothing changes there. Handlers are restored on exit.
    """

    def __init__(self, on_first: Any = None) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._stop_pending = False

    def __enter__(self) -> ShardStop:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: object) -> None:
        if self.requested:
            if self._deferring:
                self._stop_pending = True
                return
            raise StopNow(STOP_NOW_LINE)
        self.requested = True
        # os.write, not print: the handler may run while the main thread is inside print.
        os.write(2, f"\n{signal.Signals(number).name}: {FIRST_SIGNAL_LINE}\n".encode())
        if self._on_first is not None:
            self._on_first()

    @contextlib.contextmanager
    def deferred(self):
        """Hold a second signal's stop until the block ends.

        Python runs a signal handler in the main thread between any two bytecodes, whichever
        thread the OS delivered the signal to (blocking it in the main thread does not help
        while a progress-bar thread takes it). Raised between a pool starting a worker process
        and recording it, the stop would orphan that worker: never killed, it outlives the
        parent and prints a traceback when the pool's semaphores vanish under it.
        """
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._stop_pending:
                self._stop_pending = False
                raise StopNow(STOP_NOW_LINE)

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals_blocked():
    """Hold SIGINT/SIGTERM back while worker processes start here.

    A worker started by ``spawn`` is a new interpreter that takes a moment to reach its
    initializer; a Ctrl-C to the process group in that moment would print its traceback. A
    blocked signal mask is inherited through fork and exec, so the new worker never sees it.
    (The parent's own handler may still run meanwhile, through another thread: see
    ``ShardStop.deferred``.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


PARENT_CHECK_S = 1.0
"""How often a pool worker looks whether the command that started it is still there."""


def ignore_stop_signals() -> None:
    """Worker-process initializer: the terminal signals the whole process group, but the parent
    decides (it finishes the shards in flight, or ends the workers on a second signal). A
    worker whose parent died (killed, its terminal closed) ends itself: it ignores SIGTERM,
    and it would wait for work forever (a tag worker holding its spaCy model)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    parent = os.getppid()

    def end_with_the_parent() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # what it was writing is a temporary file the re-run removes

    threading.Thread(target=end_with_the_parent, name="clipa-parent-watch", daemon=True).start()
