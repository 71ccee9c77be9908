"""The start-up heap freeze (:mod:`streaming.heap`)."""

from __future__ import annotations

import gc
import weakref

from streaming.heap import freeze_start_up_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_what_lived_at_start_up_is_frozen_and_later_cycles_are_still_collected() -> None:
    before = _Node()
    frozen = freeze_start_up_heap()
    assert frozen >= 1 and gc.get_freeze_count() == frozen
    assert all(o is not before for o in gc.get_objects())  # out of every generation the collector scans
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None
