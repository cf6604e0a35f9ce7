"""Ctrl-C through the real ``clipa-data convert`` (a subprocess in its own process group,
signalled as a terminal signals it: the workers too).

The first SIGINT, sent once some shards are placed, prints one line, lets the shards in flight
finish and exits 130 with a line saying how far it got; a second one stops at once. Either way
no traceback is printed and the same command, re-run, resumes to exactly the bytes of an
uninterrupted conversion (the sources and helpers of ``test_convert_killed``). If a run places
every shard before the signal, the source is made bigger and the test tried again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ctrl_c import ctrl_c_when
from test_convert_killed import (
    ATTEMPTS,
    NAME,
    ROWS,
    SHARDS,
    builder_files,
    comparable_summary,
    convert_command,
    placed_shards,
    run_to_the_end,
    write_big_source,
)

from clipa_data.core import layout
from clipa_data.prepare.interrupts import FIRST_SIGNAL_LINE

STOPPED = re.compile(r"stopped after (\d+) of (\d+) shards \(placing")
STOPPED_AT_ONCE = re.compile("stopped at once; re-run the same command to resume")


def interrupt_mid_way(src: Path, out: Path, signals: int) -> subprocess.CompletedProcess | None:
    """Send ``signals`` SIGINTs to convert's process group once a shard is placed; None when
    it got past placing before they arrived (or, for two, finished the shards in flight before
    the second)."""
    staging = layout.staging_dir(out, NAME, "1.0.0")
    result = ctrl_c_when(convert_command(src, out), lambda: bool(placed_shards(staging)), signals)
    return result if (STOPPED if signals == 1 else STOPPED_AT_ONCE).search(result.stderr) else None


def assert_resumes_to_the_uninterrupted_bytes(src: Path, out: Path, reference: Path) -> None:
    resumed = run_to_the_end(src, out)
    assert "clipa-data convert: resumed" in resumed.stdout
    got, want = builder_files(out), builder_files(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        if name != layout.CONVERT_SUMMARY:
            assert got[name] == want[name], f"{name} differs from the uninterrupted run"
    assert comparable_summary(got[layout.CONVERT_SUMMARY]) == comparable_summary(
        want[layout.CONVERT_SUMMARY]
    )


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_stops_after_the_shards_in_flight_or_at_once_and_resumes(signals, tmp_path):
    for attempt in range(ATTEMPTS):
        folder = tmp_path / f"attempt{attempt}"
        src = write_big_source(folder / "raw", ROWS * 2**attempt)
        stopped = interrupt_mid_way(src, folder / "out", signals)
        if stopped is not None:
            break
        shutil.rmtree(folder)
    else:
        raise AssertionError(f"convert was never caught mid-way in {ATTEMPTS} attempts")
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count(FIRST_SIGNAL_LINE) == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr and "Error" not in stopped.stderr, stopped.stderr
    staging = layout.staging_dir(folder / "out", NAME, "1.0.0")
    if signals == 1:
        match = STOPPED.search(stopped.stderr)
        assert match and int(match[2]) == SHARDS, stopped.stderr
        assert 1 <= int(match[1]) < SHARDS
        assert len(placed_shards(staging)) == int(match[1])  # the ones in flight finished
        assert "re-run the same command to resume" in stopped.stderr
    else:
        assert "stopped at once; re-run the same command to resume" in stopped.stderr
    assert not layout.builder_dir(folder / "out", NAME, "1.0.0").exists()
    reference = folder / "reference"
    run_to_the_end(src, reference)
    assert_resumes_to_the_uninterrupted_bytes(src, folder / "out", reference)
    shutil.rmtree(folder)
