"""Who reads what in an epoch: pure functions of (seed, epoch, rank, world, worker, workers).

Every rank computes the same plan from the split's shard lengths, so resuming (or recomputing
another rank's share) needs no communication.

1. **Shard order**: a permutation of all shards drawn from (seed, epoch).
2. **Assignment, at file level**: walking that order, each shard goes to the rank holding the
   fewest records so far (ties: lowest rank); then, within a rank and in the same order, to its
   worker holding the fewest records. Every shard goes to exactly one (rank, worker): no overlap,
   no loss.
3. **Budget**: every rank takes ``steps`` batches per epoch, ``steps = samples // (world *
   batch)`` where ``samples`` is the split's record count unless a budget is given. A rank's
   steps are split over its workers in proportion to their records (largest remainder).
4. **Uneven shares**: a worker reads its shards as a sequence of *passes*. When its budget is
   no larger than its records (the usual case), it reads part or all of one pass; records left
   over wait for a later epoch, where the shard order differs (and, with ``samples_per_epoch``
   given, its input starts at a seeded record: ``stream.WorkerInput``). When its budget
   is larger (its rank drew fewer records than the mean), it starts a second pass over its
   shards in a new order, so a few records appear twice. With equal shard sizes, a shard count
   that is a multiple of ``world * workers`` and a record count divisible by ``world * workers
   * batch``, every record appears exactly once per epoch (3 equal shards on 2 ranks give one
   rank twice the records of the other, but the same steps).
5. **Batch order**: worker ``w`` yields its batches ``0 .. n_w - 1``; the rank sees them
   interleaved round-robin over its workers, skipping workers that are done (what
   ``torch.utils.data.DataLoader`` does), so step ``s`` of an epoch is a known (worker, batch).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from clipa_data.core.errors import ClipaError

ORDER_STREAM = 0x5348  # distinguishes the shard-order generator from other seeded streams


@dataclass(frozen=True)
class WorkerShare:
    """What one worker of one rank reads in one epoch."""

    shards: tuple[int, ...]
    """Shard indices in reading order (the first pass)."""
    records: int
    """Records in those shards."""
    batches: int
    """Batches this worker yields in the epoch."""


def shard_order(seed: int, epoch: int, num_shards: int) -> np.ndarray:
    """The epoch's permutation of shard indices: a pure function of (seed, epoch)."""
    rng = np.random.default_rng([ORDER_STREAM, seed, epoch])
    return rng.permutation(num_shards)


def balance(items: list[int], lengths: list[int], bins: int) -> list[list[int]]:
    """Give each item, in order, to the bin holding the fewest records so far (ties: lowest)."""
    heap = [(0, b) for b in range(bins)]
    groups: list[list[int]] = [[] for _ in range(bins)]
    for item in items:
        load, b = heapq.heappop(heap)
        groups[b].append(item)
        heapq.heappush(heap, (load + lengths[item], b))
    return groups


def split_batches(steps: int, records: list[int]) -> list[int]:
    """Split ``steps`` over workers in proportion to their records (largest remainder)."""
    total = sum(records)
    if total == 0:
        return [0] * len(records)
    floors = [steps * r // total for r in records]
    remainders = [steps * r % total for r in records]
    missing = steps - sum(floors)
    by_remainder = sorted(range(len(records)), key=lambda w: (-remainders[w], w))
    for w in by_remainder[:missing]:
        floors[w] += 1
    return floors


def steps_per_epoch(
    num_records: int, batch_size: int, world: int, samples_per_epoch: int | None = None
) -> int:
    """Batches every rank takes per epoch; the remainder of ``samples / (world * batch)`` is
    not drawn."""
    samples = num_records if samples_per_epoch is None else samples_per_epoch
    steps = samples // (world * batch_size)
    if steps < 1:
        raise ClipaError(
            f"an epoch of {samples} samples is less than one global batch of "
            f"{world} x {batch_size}; use a smaller batch size or more data"
        )
    return steps


def plan_rank(
    lengths: list[int],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    workers: int,
    steps: int,
) -> tuple[WorkerShare, ...]:
    """The shares of ``rank``'s workers in ``epoch`` (see the module docstring)."""
    order = [int(s) for s in shard_order(seed, epoch, len(lengths))]
    mine = balance(order, lengths, world)[rank]
    records = sum(lengths[s] for s in mine)
    if records == 0:
        raise ClipaError(
            f"rank {rank} of {world} gets no records in epoch {epoch}: the split has "
            f"{sum(1 for n in lengths if n)} non-empty shards; use fewer ranks or more shards"
        )
    groups = balance(mine, lengths, workers)
    counts = [sum(lengths[s] for s in group) for group in groups]
    batches = split_batches(steps, counts)
    return tuple(
        WorkerShare(tuple(group), count, n)
        for group, count, n in zip(groups, counts, batches, strict=True)
    )


def interleave(batches: list[int]) -> list[tuple[int, int]]:
    """(worker, batch) for every step of the epoch: round-robin, skipping finished workers."""
    return sorted(
        ((w, i) for w, n in enumerate(batches) for i in range(n)),
        key=lambda pair: (pair[1], pair[0]),
    )


def batches_before(batches: list[int], step: int) -> list[int]:
    """How many of each worker's batches come before ``step`` in the interleaved order."""
    done = [0] * len(batches)
    for worker, _ in interleave(batches)[:step]:
        done[worker] += 1
    return done
