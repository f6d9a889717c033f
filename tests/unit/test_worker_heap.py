"""The worker's long-lived heap is frozen out of the cycle collector once started, and refrozen after a
reload so that the old runtime's cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.server.worker import YOUNG_THRESHOLD, freeze_heap, refreeze_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_freeze_moves_the_heap_out_of_collections() -> None:
    before = gc.get_freeze_count()
    freeze_heap()
    assert gc.get_freeze_count() > before


def test_freeze_raises_the_young_generations_threshold_only() -> None:
    _, gen1, gen2 = gc.get_threshold()
    freeze_heap()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, gen1, gen2)
    refreeze_heap()  # a reload keeps it
    assert gc.get_threshold() == (YOUNG_THRESHOLD, gen1, gen2)


def test_a_cycle_frozen_then_dropped_waits_for_the_refreeze() -> None:
    cycle = _cycle()  # alive until collected: only the cycle holds it
    gc.disable()
    try:
        a = cycle()
        freeze_heap()  # collects first, but the cycle is still referenced here
        del a
        gc.collect()
        assert cycle() is not None  # frozen: a collection does not see it
        refreeze_heap()
        assert cycle() is None  # the reload's refreeze collected it
    finally:
        gc.enable()
