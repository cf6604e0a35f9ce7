"""Stop signals at step boundaries: SIGTERM/SIGINT (a preemptible VM's notice, Ctrl-C) become a
flag the training loop reads between steps, so a stopped run ends with a checkpoint of its last
whole step; a second signal stops at once where nothing is half done."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from clipa_train.signal_relay import RelayedSignals


class StopNow(KeyboardInterrupt):
    """A second stop signal: leave the loop at once (it saves the last finished step)."""


TRAINING, FINAL_EVALUATION, ENDING = "training", "final evaluation", "ending"
PHASES = (TRAINING, FINAL_EVALUATION, ENDING)
"""Where a run is when a stop signal arrives: before its last step; after it, with the final
evaluation to come or under way; after it with nothing left (no evaluation, or done)."""


TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"
"""Set by torchrun in the processes it starts."""


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries (preemptible TPU VMs).

    The first signal says at once (one line on stderr, when ``announce``) at which step the run
    will stop; a second one sets ``now`` and, inside :meth:`interruptible` (waits for data,
    evaluation), raises :class:`StopNow` at once. Elsewhere (the step's compute, which may have
    half-updated the weights) it is noticed at the step's end. Handlers are restored on exit.
    Off the main thread (where Python cannot install handlers: ``torch_xla.launch`` runs the
    stage in a thread) it reads the signals the launching process relays (``relayed``), at
    each step boundary, where a second one stops the run.
    """

    def __init__(self, announce: bool = True, relayed: RelayedSignals | None = None) -> None:
        self._requested = self._now = False
        self.next_check = 0
        """The step boundary at which a stop requested now is noticed (kept by the loop)."""
        self.last_step: int | None = None
        """The stage's last step (set by the loop)."""
        self.phase = TRAINING
        """Where the run is (set by the loop; one of ``PHASES``): after the last step a signal no
        longer stops training, and says what it does instead."""
        self._announce, self._interruptible = announce, False
        self._previous: dict[int, Any] = {}
        self._relayed, self._relayed_seen = relayed, 0
        # A torchrun rank's launcher is its parent: killed (SIGKILL), it passes nothing on, and
        # the ranks trained on alone, holding their GPUs, beside the re-run a user would start.
        self._torchrun = os.getppid() if TORCHRUN_ENV in os.environ else None

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        self._poll()
        return self._requested

    @property
    def now(self) -> bool:
        """Whether a second one arrived: stop at once."""
        self._poll()
        return self._now

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._relayed = None  # this thread hears the signals itself
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: object) -> None:
        if not self._requested:
            self._requested = True
            self._say(f"{signal.Signals(number).name}: {self._first_reply()}")
            return
        if not self._now:
            self._now = True
            self._say(self._second_reply())
        if self._interruptible:
            raise StopNow

    def _first_reply(self) -> str:
        if self.phase == TRAINING:
            # Under several processes the next check may lie past the end: the end comes first.
            at = min(self.next_check, self.last_step or self.next_check)
            return f"stopping after step {at} with a checkpoint; Ctrl-C again to stop now"
        if self.phase == FINAL_EVALUATION:
            return (
                f"training has finished (step {self.last_step}, saved before the final "
                "evaluation); the evaluation goes on, Ctrl-C again to cut it short"
            )
        return f"training has finished (step {self.last_step}); the run ends with its checkpoint"

    def _second_reply(self) -> str | None:
        if self.phase == TRAINING:
            return "stopping now; saving the last finished step"
        if self.phase == FINAL_EVALUATION:
            return f"cutting the final evaluation short; step {self.last_step} is saved"
        return None  # nothing left to stop

    def _poll(self) -> None:
        """Take in the signals relayed since the last look (each as if it had arrived now), and
        a torchrun launcher's death as a first signal."""
        if self._relayed is None:
            if self._torchrun not in (None, os.getppid()) and not self._requested:
                self._requested = True
                self._say(
                    f"torchrun is gone: stopping after step {self.next_check} with a checkpoint"
                )
            return
        count, first, last = self._relayed.received()
        while self._relayed_seen < count:
            self._handle(last if self._relayed_seen else first, None)
            self._relayed_seen += 1
        if not self._requested and self._relayed.launcher_gone():
            self._requested = True
            self._say(
                f"the launching process is gone: stopping after step {self.next_check} with a "
                "checkpoint"
            )

    def _say(self, line: str | None) -> None:
        # os.write, not print: a handler may run while the main thread is inside print.
        if self._announce and line is not None:
            os.write(2, f"\n{line}\n".encode())

    @contextlib.contextmanager
    def interruptible(self):
        """A stretch where a second signal may raise (nothing half-done to lose)."""
        if self.now:
            raise StopNow
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
