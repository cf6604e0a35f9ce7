"""The in-worker shuffle buffer, over record *positions* so it can be fast-forwarded.

A worker's input is a sequence of records numbered 0, 1, 2, ... (its shards read in order,
pass after pass). The buffer admits records until it holds ``size`` of them, then emits a
uniformly chosen one and admits the next, like ``tf.data``'s shuffle. Each pass of ``length``
records is shuffled on its own and drains before the next pass starts, so a worker that reads
exactly one pass emits every record of it exactly once.

Which record comes out at output position ``t`` depends only on ``length``, ``size`` and the
seeded draws, never on record contents. ``skip(n)`` therefore replays ``n`` steps with no I/O
(about 1 µs per step); the caller then reads the records still buffered (``buffered``).
"""

from __future__ import annotations

from clipa_train.seeding import CounterRandom

BLOCK = 1024
"""Draws are made in blocks of this many positions (each block keyed by its number)."""


class ShuffleOrder:
    """Which input record each output position takes."""

    def __init__(self, length: int, size: int, random: CounterRandom) -> None:
        if length < 1 or size < 1:
            raise ValueError(f"need a pass length and buffer size >= 1, got {length}, {size}")
        self.length = length
        self.size = size
        self._random = random
        self._draws = None
        self._block = -1
        self.position = 0
        """Output positions emitted so far."""
        self.next_input = 0
        """The next input record to admit."""
        self.buffered: list[int] = []
        """Input records admitted and not yet emitted."""

    def _uniform(self, position: int) -> float:
        block, offset = divmod(position, BLOCK)
        if block != self._block:
            self._draws = self._random.at(block).random(BLOCK)
            self._block = block
        return float(self._draws[offset])

    def advance(self) -> tuple[range, int]:
        """Admit records to fill the buffer, emit one: (the records admitted, the one emitted)."""
        pass_end = (self.position // self.length + 1) * self.length
        first = self.next_input
        self.next_input = min(pass_end, max(first, self.position + self.size))
        self.buffered.extend(range(first, self.next_input))
        pick = int(self._uniform(self.position) * len(self.buffered))
        buffered = self.buffered
        emitted = buffered[pick]
        buffered[pick] = buffered[-1]
        buffered.pop()
        self.position += 1
        return range(first, self.next_input), emitted

    def skip(self, count: int) -> None:
        """Advance ``count`` positions without reading anything."""
        for _ in range(count):
            self.advance()
