"""Counter-based random streams: a generator for any position without drawing the ones before.

``CounterRandom(seed, epoch, rank, worker, stream)`` holds one Philox key derived from those
numbers; ``at(position)`` returns a generator whose draws depend only on (key, position).
A resumed worker therefore gets the same crops and masks for position 10,000 without touching
positions 0..9,999. Re-keying costs about 5 µs (a ``SeedSequence`` per record costs ~25 µs).

The returned generator is shared and re-positioned by the next ``at`` call: use it before
asking for another position.
"""

from __future__ import annotations

import numpy as np

RECORDS = 1
"""Stream of per-record randomness (crop, jitter, masks)."""
SHUFFLE = 2
"""Stream of the shuffle buffer's draws."""
PASSES = 3
"""Stream of the shard order of a worker's second and later passes."""
ROTATIONS = 4
"""Stream of where a worker's input starts in an epoch that reads part of it."""


class CounterRandom:
    """Generators for positions of one (seed, epoch, rank, worker, stream)."""

    def __init__(self, seed: int, epoch: int, rank: int, worker: int, stream: int) -> None:
        sequence = np.random.SeedSequence([seed, epoch, rank, worker, stream])
        self._key = sequence.generate_state(2, np.uint64)
        self._bits = np.random.Philox(key=self._key)
        self._generator = np.random.Generator(self._bits)
        self._template = self._bits.state

    def at(self, position: int) -> np.random.Generator:
        """The generator of ``position`` (its draws depend only on the key and ``position``)."""
        state = dict(self._template)
        state["state"] = {
            "counter": np.array([0, position, 0, 0], dtype=np.uint64),
            "key": self._key,
        }
        state["buffer_pos"] = 4
        state["has_uint32"] = 0
        self._bits.state = state
        return self._generator
