"""Ctrl-C as a terminal sends it, for the interrupt tests of the offline stages."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def ctrl_c_when(
    command: list[str], ready: Callable[[], bool], presses: int, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; once ``ready()`` holds (or it exits), send
    ``presses`` SIGINTs to the whole group (the workers too), 5 ms apart; wait for the end."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=env,
    )  # fmt: skip
    while process.poll() is None and not ready():
        time.sleep(0.001)
    for _ in range(presses):
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.005)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
