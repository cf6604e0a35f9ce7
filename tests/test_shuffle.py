"""The position-based shuffle buffer and the counter-based random streams."""

from __future__ import annotations

import itertools

from clipa_train.seeding import CounterRandom
from clipa_train.shuffle import ShuffleOrder


def test_shuffle_emits_each_record_of_a_pass_once_and_skips_exactly():
    length, size = 57, 10
    order = ShuffleOrder(length, size, CounterRandom(0, 0, 0, 0, 9))
    emitted = [order.advance()[1] for _ in range(2 * length)]
    assert sorted(emitted[:length]) == list(range(length))
    assert sorted(emitted[length:]) == list(range(length, 2 * length))
    assert emitted[:length] != list(range(length))
    for skip in (0, 1, 9, 10, 33, 57, 60):
        replay = ShuffleOrder(length, size, CounterRandom(0, 0, 0, 0, 9))
        replay.skip(skip)
        assert sorted(replay.buffered) == sorted(
            set(range(replay.next_input)) - set(emitted[:skip])
        )
        assert [replay.advance()[1] for _ in range(2 * length - skip)] == emitted[skip:]


def test_shuffle_buffer_of_one_keeps_file_order():
    order = ShuffleOrder(9, 1, CounterRandom(0, 0, 0, 0, 9))
    assert [order.advance()[1] for _ in range(9)] == list(range(9))


def test_counter_random_depends_only_on_position():
    random = CounterRandom(1, 2, 3, 4, 5)
    later = random.at(7).random(3).tolist()
    random.at(2).random(100)
    assert random.at(7).random(3).tolist() == later
    assert CounterRandom(1, 2, 3, 4, 5).at(7).random(3).tolist() == later
    others = [
        CounterRandom(*args).at(7).random(3).tolist()
        for args in itertools.permutations([1, 2, 3, 4, 5])
    ][1:6]
    assert all(other != later for other in others)
    assert random.at(8).random(3).tolist() != later
