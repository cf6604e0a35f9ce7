"""Ctrl-C through the real ``clipa-data tag`` (a subprocess in its own process group, signalled
as a terminal signals it: the workers too), with NLTK's tagger on a 2-worker process pool.

The first SIGINT, sent once a sidecar is written, prints one line, lets the shards in flight
finish and exits 130 saying how far it got; a second one stops at once. Either way no traceback
is printed, no temporary file is left, and the same command, re-run, tags only the rest, to
exactly the sidecar bytes of an uninterrupted run. If a run tags every shard before the signal,
the builder is made bigger and the test tried again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nltk_data
import pytest
from builders import make_builder_dir, make_records
from ctrl_c import ctrl_c_when

from clipa_data.core import layout
from clipa_data.prepare.interrupts import FIRST_SIGNAL_LINE, STOP_NOW_LINE

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
DATA = str(Path(sys.executable).parent / "clipa-data")
SHARDS, CAPTIONS_PER_SHARD, ATTEMPTS = 12, 40, 4
STOPPED = re.compile(r"stopped after (\d+) of (\d+) shards \(tagging\)")
STOP_NOW = re.compile(re.escape(STOP_NOW_LINE))


def tag_command(builder: Path) -> list[str]:
    return [DATA, "tag", str(builder), "--workers", "2", "--no-progress"]


def write_builder(folder: Path, captions_per_shard: int) -> Path:
    records = make_records(SHARDS * captions_per_shard, size=8)
    shards = [
        records[i : i + captions_per_shard] for i in range(0, len(records), captions_per_shard)
    ]
    return make_builder_dir(folder, shards)


def sidecars(builder: Path) -> dict[str, bytes]:
    """The finished sidecars of a builder, by file name."""
    folder = Path(layout.sidecar_dir(builder))
    if not folder.exists():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.endswith(".arrow")}


def interrupt_mid_way(builder: Path, signals: int, env: dict) -> subprocess.CompletedProcess | None:
    """Send ``signals`` SIGINTs to tag's process group once a sidecar is written; None when
    every shard was tagged (or, for two, the shards in flight finished) before they arrived."""
    folder = Path(layout.sidecar_dir(builder))

    def written() -> bool:  # names only: polled every millisecond
        return any(folder.glob("*.arrow"))

    result = ctrl_c_when(tag_command(builder), written, signals, env)
    return result if (STOPPED if signals == 1 else STOP_NOW).search(result.stderr) else None


def run_to_the_end(builder: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        tag_command(builder), capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_stops_after_the_shards_in_flight_or_at_once_and_resumes(
    signals, nltk_env, tmp_path
):
    env = {**os.environ, "COLUMNS": "120"}
    for attempt in range(ATTEMPTS):
        folder = tmp_path / f"attempt{attempt}"
        builder = write_builder(folder / "interrupted", CAPTIONS_PER_SHARD * 2**attempt)
        reference = shutil.copytree(builder, folder / "reference" / "demo" / "1.0.0")
        stopped = interrupt_mid_way(builder, signals, env)
        if stopped is not None:
            break
        shutil.rmtree(folder)
    else:
        raise AssertionError(f"tag was never caught mid-way in {ATTEMPTS} attempts")
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count(FIRST_SIGNAL_LINE) == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr and "Error" not in stopped.stderr, stopped.stderr
    done = sidecars(builder)
    if signals == 1:
        match = STOPPED.search(stopped.stderr)
        assert match and int(match[2]) == SHARDS, stopped.stderr
        assert 1 <= int(match[1]) < SHARDS
        assert len(done) == int(match[1])  # the ones in flight finished
    assert len(done) < SHARDS
    assert not Path(layout.tag_summary_path(builder)).exists()
    leftovers = [p.name for p in Path(layout.sidecar_dir(builder)).iterdir() if p.name not in done]
    assert leftovers == [], leftovers  # no temporaries of the shards cut off

    resumed = run_to_the_end(builder, env)
    run_to_the_end(reference, env)
    got, want = sidecars(builder), sidecars(reference)
    assert sorted(got) == sorted(want) and len(want) == SHARDS
    for name in want:
        assert got[name] == want[name], f"{name} differs from the uninterrupted run"
    assert "Traceback" not in resumed.stderr, resumed.stderr
    summary = json.loads(Path(layout.tag_summary_path(builder)).read_text())
    assert summary["shards_skipped"] == len(done)  # resumed: the finished ones not tagged again
    assert summary["shards_tagged"] == SHARDS - len(done)
    if signals == 1:
        assert_an_overwrite_stopped_mid_way_resumes(builder, sidecars(reference), env)


def assert_an_overwrite_stopped_mid_way_resumes(builder: Path, want: dict, env: dict) -> None:
    """``tag --overwrite`` stopped mid-way, run again, re-tags only the shards it had not
    re-tagged yet (not all of them again): the stopped run's mark says which are its own."""
    from clipa_data.prepare.tagging import OVERWRITE_MARK

    folder = Path(layout.sidecar_dir(builder))
    mark = folder / OVERWRITE_MARK

    def retagged() -> bool:
        since = mark.stat().st_mtime_ns if mark.exists() else None
        return since is not None and any(
            p.stat().st_mtime_ns >= since for p in folder.glob("*.arrow")
        )

    command = [*tag_command(builder), "--overwrite"]
    stopped = ctrl_c_when(command, retagged, 1, env)
    match = STOPPED.search(stopped.stderr)
    if match is None:  # every shard re-tagged before the signal: nothing left to resume
        return
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(Path(layout.tag_summary_path(builder)).read_text())
    assert summary["shards_skipped"] == int(match[1]) >= 1, (stopped.stderr, summary)
    assert summary["shards_tagged"] == SHARDS - int(match[1])
    assert sidecars(builder) == want and not mark.exists()
