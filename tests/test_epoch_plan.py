"""Epoch plans: shard order, file-level split, budgets and the batch order (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from clipa_data.core.errors import ClipaError
from clipa_train import epoch_plan as plan


def shares(lengths, world, workers, steps, seed=0, epoch=0):
    return [
        plan.plan_rank(
            lengths, seed=seed, epoch=epoch, rank=r, world=world, workers=workers, steps=steps
        )
        for r in range(world)
    ]


def test_shard_order_is_a_pure_function_of_seed_and_epoch():
    first = plan.shard_order(3, 0, 50)
    assert first.tolist() == plan.shard_order(3, 0, 50).tolist()
    assert sorted(first.tolist()) == list(range(50))
    assert first.tolist() != plan.shard_order(3, 1, 50).tolist()
    assert first.tolist() != plan.shard_order(4, 0, 50).tolist()


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 2), (3, 4), (4, 3)])
def test_every_shard_goes_to_exactly_one_reader(world, workers):
    lengths = np.random.default_rng(world).integers(0, 40, size=37).tolist()
    for epoch in range(3):
        plans = shares(lengths, world, workers, steps=5, epoch=epoch)
        assigned = [s for rank in plans for share in rank for s in share.shards]
        assert sorted(assigned) == list(range(len(lengths)))
        for rank in plans:
            for share in rank:
                assert share.records == sum(lengths[s] for s in share.shards)


def test_ranks_are_balanced_and_take_the_same_steps():
    lengths = [100] * 10 + [90] * 6
    plans = shares(lengths, world=4, workers=2, steps=7)
    totals = [sum(share.records for share in rank) for rank in plans]
    assert max(totals) - min(totals) <= 100
    assert all(sum(share.batches for share in rank) == 7 for rank in plans)


def test_steps_split_in_proportion_to_records():
    assert plan.split_batches(10, [30, 10]) == [8, 2]
    assert plan.split_batches(3, [5, 5, 5]) == [1, 1, 1]
    assert plan.split_batches(4, [5, 5, 5]) == [2, 1, 1]
    assert plan.split_batches(5, [0, 7]) == [0, 5]
    assert plan.split_batches(2, [0, 0]) == [0, 0]


def test_steps_per_epoch():
    assert plan.steps_per_epoch(1000, batch_size=32, world=2) == 15
    assert plan.steps_per_epoch(1000, batch_size=32, world=2, samples_per_epoch=640) == 10
    with pytest.raises(ClipaError, match="less than one global batch of 2 x 32"):
        plan.steps_per_epoch(63, batch_size=32, world=2)


def test_a_rank_without_records_is_refused():
    with pytest.raises(ClipaError, match="rank 2 of 3 gets no records"):
        shares([5, 0, 5, 0], world=3, workers=1, steps=1)


def test_interleave_is_round_robin_skipping_finished_workers():
    assert plan.interleave([3, 1, 2]) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]
    for step in range(7):
        before = plan.batches_before([3, 1, 2], step)
        assert sum(before) == step
    assert plan.batches_before([3, 1, 2], 4) == [2, 1, 1]
