"""The per-shard runner: a first stop signal finishes the shard in flight and stops; its line
says whether a re-run resumes (work kept per shard) or starts over (inspection, checks)."""

from __future__ import annotations

import os
import signal

import pytest

from clipa_data.prepare.interrupts import Interrupted
from clipa_data.prepare.runner import RunnerConfig, map_shards


def _stop_during_the_first(item: int) -> int:
    if item == 0:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the runner: the shard still finishes
    return item


@pytest.mark.parametrize(
    "resumes, advice",
    [(True, "re-run the same command to resume"), (False, "a re-run starts it over")],
)
def test_a_stop_says_whether_a_re_run_resumes(resumes, advice):
    plan = RunnerConfig("inspecting", show_progress=False, resumes=resumes)
    with pytest.raises(Interrupted) as stopped:
        map_shards(_stop_during_the_first, [0, 1, 2], plan)
    assert str(stopped.value).startswith("stopped after 1 of 3 shards (inspecting); ")
    assert str(stopped.value).endswith(advice)
