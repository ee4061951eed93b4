"""When a thread-batched function's batches are dispatched: group commit, max_size, windows."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from tests.threads.kit import Caller, Gate, gated, virtual_clock

from concresce.threads import batch, collect, scatter


def test_a_lone_call_leads_a_batch_of_one_at_once_without_waiting():
    log = []

    @batch
    def double(x: int) -> int:
        xs = collect(x)
        log.append(xs)
        return scatter([v * 2 for v in xs])

    clock = virtual_clock(double)
    assert double(21) == 42
    assert double(4) == 8
    assert log == [[21], [4]]
    assert clock.now == 0.0  # nobody waited for time to pass
    stats = double.stats()
    assert (stats.calls, stats.batches, stats.items, stats.flushes["tick"]) == (2, 2, 2, 2)
    assert stats.wait_time.max == 0.0


def test_calls_made_while_every_slot_is_busy_go_together_in_the_next_batch():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def lookup(x: str) -> str:
        xs = collect(x)
        gate("bulk", xs)
        return scatter([v.upper() for v in xs])

    clock = virtual_clock(lookup)
    first = Caller(lookup, "a")
    gate.wait_reached()  # "a" leads a batch of its own and holds the only slot
    others = []
    for item in "bcd":
        others.append(Caller(lookup, item))
        clock.wait_parked(len(others))  # each joins the open batch, in this order
    gate.open()
    assert first.join() == "A"
    assert [caller.join() for caller in others] == ["B", "C", "D"]
    assert log == [("bulk", ["a"]), ("bulk", ["b", "c", "d"])]
    assert lookup.stats().flushes["tick"] == 2


def test_max_size_caps_the_batches_that_collect_while_slots_are_busy():
    lookup, gate, log = gated(max_concurrency=1, max_size=2)

    clock = virtual_clock(lookup)
    first = Caller(lookup, 0)
    gate.wait_reached()
    callers = []
    for item in range(1, 6):
        callers.append(Caller(lookup, item))
        clock.wait_parked(len(callers))
    gate.open()
    assert [caller.join() for caller in [first, *callers]] == [0, 1, 2, 3, 4, 5]
    # Full batches queue for the slot in order; the last one is dispatched when it frees.
    assert log == [("bulk", [0]), ("bulk", [1, 2]), ("bulk", [3, 4]), ("bulk", [5])]
    # Each was due at once (group commit) and filled while it waited for the slot: it keeps
    # the reason it became due for (decision 19).
    assert lookup.stats().flushes["tick"] == 4


def test_max_concurrency_bounds_the_bulk_sections_running_at_once():
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=2)
    def lookup(x: int) -> int:
        nonlocal running, most
        xs = collect(x)
        with lock:
            running += 1
            most = max(most, running)
        gate("bulk", xs)
        with lock:
            running -= 1
        return scatter(xs)

    clock = virtual_clock(lookup)
    a, b = Caller(lookup, 1), None
    gate.wait_reached()
    b = Caller(lookup, 2)
    gate.wait_reached()  # two batches of one, both running
    late = [Caller(lookup, 3)]
    clock.wait_parked(1)
    late.append(Caller(lookup, 4))
    clock.wait_parked(2)
    gate.open()
    release.set()
    assert [c.join() for c in (a, b, *late)] == [1, 2, 3, 4]
    assert most == 2
    assert sorted(log[:2]) == [("bulk", [1]), ("bulk", [2])]
    assert log[2:] == [("bulk", [3, 4])]


def test_no_max_concurrency_and_no_window_dispatches_every_call_alone():
    lookup, gate, log = gated(max_concurrency=None)

    virtual_clock(lookup)
    callers = []
    for item in range(3):
        callers.append(Caller(lookup, item))
        gate.wait_reached()
    gate.open()
    assert [c.join() for c in callers] == [0, 1, 2]
    assert sorted(log) == [("bulk", [0]), ("bulk", [1]), ("bulk", [2])]


def test_a_window_holds_the_batch_until_it_ends_then_dispatches_it():
    log: list[object] = []

    @batch(max_window=timedelta(milliseconds=5), max_concurrency=None)
    def lookup(x: int) -> int:
        xs = collect(x)
        log.append(("bulk", xs, clock.now))
        return scatter(xs)

    clock = virtual_clock(lookup)
    callers = []
    for item in range(3):
        callers.append(Caller(lookup, item))
        clock.wait_parked(len(callers))
    clock.advance(0.004)
    clock.wait_parked(3)  # not yet: 4 ms of 5
    assert log == []
    clock.advance(0.001)
    assert [c.join() for c in callers] == [0, 1, 2]
    assert log == [("bulk", [0, 1, 2], 0.005)]
    stats = lookup.stats()
    assert stats.flushes["window"] == 1
    assert stats.wait_time.max == pytest.approx(0.005)


def test_a_full_batch_does_not_wait_for_its_window():
    log: list[object] = []

    @batch(max_window=10.0, max_size=2)
    def lookup(x: int) -> int:
        xs = collect(x)
        log.append(xs)
        return scatter(xs)

    clock = virtual_clock(lookup)
    first = Caller(lookup, 1)
    clock.wait_parked(1)
    assert lookup(2) == 2  # fills the batch: due at once, its first member leads
    assert first.join() == 1
    assert log == [[1, 2]]
    assert clock.now == 0.0
    assert lookup.stats().flushes["size"] == 1


def test_a_window_that_ends_while_every_slot_is_busy_waits_for_a_slot_and_keeps_collecting():
    lookup, gate, log = gated(max_window=0.001, max_concurrency=1)

    clock = virtual_clock(lookup)
    first = Caller(lookup, 0)
    clock.wait_parked(1)
    clock.advance(0.001)
    gate.wait_reached()  # [0] runs, holding the slot
    second = Caller(lookup, 1)
    clock.wait_parked(1)
    clock.advance(0.001)  # [1]'s window ends: due, but no slot
    clock.wait_parked(1)
    third = Caller(lookup, 2)  # still joins the due batch
    clock.wait_parked(2)
    gate.open()
    assert [c.join() for c in (first, second, third)] == [0, 1, 2]
    assert log == [("bulk", [0]), ("bulk", [1, 2])]
