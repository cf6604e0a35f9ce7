"""The process pool of ``convert`` and ``tag`` (``runner.map_shards``) when its command dies.

Its workers ignore SIGINT/SIGTERM (the command decides when they stop), so a command killed
with SIGKILL, or by the SIGHUP of a closed terminal, left them behind for good: each finished
its shard and then waited for work forever (a tag worker holding its spaCy model, ~430 MB).
They now end themselves once their parent is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import time
from clipa_data.prepare.runner import RunnerConfig, map_shards

if __name__ == "__main__":
    map_shards(time.sleep, [120.0] * 4, RunnerConfig("sleeping", workers=2, show_progress=False))
"""


def children(parent: int) -> list[int]:
    """The pids of ``parent``'s live child processes (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == str(parent) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_pool_workers_end_when_their_command_is_killed(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    command = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 3:  # the two workers and multiprocessing's resource tracker
            assert time.monotonic() < deadline, f"the pool did not start: {workers}"
            time.sleep(0.2)
            workers = children(command.pid)
        time.sleep(2)  # the workers are in their first shard
        command.kill()
        command.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "the pool's workers outlived their command"
            time.sleep(0.2)
    finally:
        for pid in [*workers, command.pid]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
