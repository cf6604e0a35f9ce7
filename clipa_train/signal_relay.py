"""Stop signals for a stage that runs off its process's main thread.

``torch_xla.launch`` runs the stage in a thread of a process it spawns, and Python installs
signal handlers only on a main thread: SIGTERM (a scheduler, a preempted TPU VM) killed the
launching process and left the spawned one training alone to the end, holding the device, and
Ctrl-C went unheard. So the launching process handles SIGINT/SIGTERM itself (it waits on its
main thread) and counts them in shared memory; the spawned process ignores them (its main
thread does so while it unpickles the relay, before the stage starts) and the stage's
``StopSignal`` reads the count at each step boundary, so one signal is counted once whether it
went to the launcher alone (``kill``) or to the whole process group (a terminal's Ctrl-C). A
second signal thus stops the run at the next step boundary, not inside a wait for data or an
evaluation, and a launcher that died (SIGKILL) stops it there too, with a checkpoint. Before the
first step boundary (start-up, the first compile: minutes for a large model) nothing is heard,
so a third signal makes the launcher kill what it spawned at once (``KilledAtOnce``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.shared_memory import SharedMemory

SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The stop signals (as ``loop.StopSignal`` handles them on a main thread)."""

KILL_AT = 3
"""The signal that kills the spawned processes at once: the first two wait for a step boundary,
which a run still starting up (or hung) may not reach for minutes."""


class KilledAtOnce(KeyboardInterrupt):
    """The launcher killed the processes it spawned (the CLI prints the message, exits 130)."""


class SignalRelay:
    """The launching side: counts stop signals while a spawned process trains. Passed to the
    spawned stage in its arguments, it arrives there as :class:`RelayedSignals`."""

    def __init__(self) -> None:
        self._memory: SharedMemory | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalRelay:
        # [signals so far, the first one's number, the last one's number]
        self._memory = SharedMemory(create=True, size=3)
        self._memory.buf[:3] = bytes(3)
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._count)
        return self

    def _count(self, number: int, frame: object) -> None:
        buffer = self._memory.buf
        if buffer[0] == 0:
            buffer[1] = number
        buffer[0], buffer[2] = min(buffer[0] + 1, 255), number
        # os.write, not print: the main thread may be inside print.
        if buffer[0] == 1:  # said now: the training says its step only once it reaches one
            name = signal.Signals(number).name
            os.write(2, f"\n{name}: passed on to the training, which says at its next step "
                     "boundary what it does\n".encode())  # fmt: skip
        elif buffer[0] == KILL_AT - 1:
            os.write(2, b"\n(a third stop signal kills the training at once)\n")
        elif buffer[0] == KILL_AT:
            self._kill_spawned()

    def _kill_spawned(self) -> None:
        """SIGKILL every process this one spawned (the pool's; their loader workers notice
        their parent's death themselves) and leave ``torch_xla.launch`` with the line to say."""
        for child in multiprocessing.active_children():
            if child.pid is not None:
                os.kill(child.pid, signal.SIGKILL)
        raise KilledAtOnce(
            "third stop signal: the training processes were killed at once (the steps since "
            "the last checkpoint are lost); --resume auto continues from the last checkpoint, "
            "or, if the run saved none yet, run the command again without --resume"
        )

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._memory.close()
        self._memory.unlink()

    def __reduce__(self):
        return _relayed_in_spawned_process, (self._memory.name,)


class RelayedSignals:
    """The stage's side: the stop signals the launching process counted."""

    def __init__(self, name: str) -> None:
        self._memory = SharedMemory(name=name)
        self._launcher = os.getppid()

    def received(self) -> tuple[int, int, int]:
        """(how many stop signals so far, the first one's number, the last one's number)."""
        buffer = self._memory.buf
        return buffer[0], buffer[1], buffer[2]

    def launcher_gone(self) -> bool:
        """Whether the launching process died (killed with SIGKILL, say): nobody relays signals
        any more and this process, which ignores them, would otherwise train on alone."""
        return os.getppid() != self._launcher

    def leave_if_launcher_gone(self) -> None:
        """End this process once its stage is over if the launcher died: the process pool
        would wait forever for the launcher's next task (it holds its own queue's write end)."""
        if self.launcher_gone():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)


def _relayed_in_spawned_process(name: str) -> RelayedSignals:
    """Unpickling a :class:`SignalRelay` in the spawned process: its main thread (where a
    process pool reads its work) ignores stop signals from now on, as the launcher relays them."""
    if threading.current_thread() is threading.main_thread():
        for number in SIGNALS:
            signal.signal(number, signal.SIG_IGN)
    return RelayedSignals(name)
