"""The answers a replica remembers to judge feedback: bounded in bytes, ids and outputs included, the
oldest forgotten first, and no answer keeping its whole batch alive."""

from __future__ import annotations

import tracemalloc

import numpy as np

from runtime.monitor.labels import CORRECT, UNMATCHED, WRONG, RecentPredictions


def test_remembered_answers_are_bounded_in_bytes_oldest_forgotten_first():
    recent = RecentPredictions(max_bytes=1 << 20)
    tracemalloc.start()
    try:
        for i in range(20_000):  # ids of 256 bytes: about 15 MB unbounded
            recent.remember(f"{i:0>256}", "1", np.eye(10)[i % 10][None, :])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recent.held_bytes <= 1 << 20
    assert held <= 2 * (1 << 20)  # the count matches the memory, within its overheads
    assert recent.judge(f"{19_999:0>256}", [9]) == ("1", CORRECT)  # the newest kept
    assert recent.judge(f"{19_998:0>256}", [0]) == ("1", WRONG)
    assert recent.judge(f"{0:0>256}", [0]) == (None, UNMATCHED)  # the oldest forgotten


def test_an_answer_is_kept_as_a_copy_not_a_view_of_its_batch():
    recent = RecentPredictions()
    tracemalloc.start()
    try:
        batch = np.ones((100_000, 10))  # 8 MB of outputs, of which the request's row is one
        recent.remember("a", "1", batch[3:4])
        del batch
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1 << 20
    assert recent.judge("a", [0]) == ("1", CORRECT)


def test_an_id_remembered_again_is_counted_once_and_a_huge_answer_is_not_kept():
    recent = RecentPredictions(max_bytes=10_000)
    recent.remember("a", "1", np.zeros((1, 10)))
    once = recent.held_bytes
    recent.remember("a", "2", np.zeros((1, 10)))
    assert recent.held_bytes == once and recent.judge("a", [0]) == ("2", CORRECT)
    recent.remember("a", "3", np.zeros((1, 10_000)))  # 80 kB: larger than the whole bound
    assert recent.judge("a", [0]) == (None, UNMATCHED) and recent.held_bytes == 0
