"""The replica's start-up heap is frozen: full collections no longer walk it; later garbage is still freed."""

import gc
import weakref

from runtime.serve.heap import freeze_startup_heap


class _Thing:
    pass


def test_start_up_objects_are_frozen_and_later_cycles_still_collected():
    kept = [_Thing() for _ in range(1000)]
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(kept)
        later = _Thing()
        later.cycle = later  # only the cyclic collector frees this
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
