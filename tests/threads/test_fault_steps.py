"""A fault at every step of a thread-batched call: each thread ends, and only the right ones fail.

Each test holds the only slot with a first call, lets three calls (items 1, 2, 3) join the
next batch, injects one fault at one step, and checks every call's outcome, that the function
works afterwards, and that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from tests.threads.kit import PATIENCE, Caller, Gate, virtual_clock

from concresce import BatchRoutingError
from concresce.threads import batch, collect, scatter


class InjectedError(Exception):
    pass


class Item:
    """An item whose hash raises for the value 2 (dedupe hashes every item as it joins)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        if self.value == 2:
            raise InjectedError(self.value)
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Item) and other.value == self.value


def _run(fn, *, wrap=lambda x: x):
    """Hold the slot with 0, queue 1, 2 and 3, release; return each call's outcome kind."""
    gate = fn.gate
    clock = virtual_clock(fn)
    leader = Caller(fn, wrap(0))
    gate.wait_reached()
    callers = []
    parked = 0
    for value in (1, 2, 3):
        caller = Caller(fn, wrap(value))
        callers.append(caller)
        # It joins the batch (parks), or is refused before it joins (ends at once).
        deadline = time.monotonic() + PATIENCE
        while caller.thread.is_alive() and clock.parked() == parked and time.monotonic() < deadline:
            time.sleep(0.001)
        parked = clock.parked()
    gate.open()
    outcomes = [caller.outcome() for caller in (leader, *callers)]
    assert fn(wrap(9)) is not None  # the function still works
    assert fn.stats.__self__.batcher.partitions == {}
    return [kind for kind, _ in outcomes], outcomes


def _function(body, **options):
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1, **options)
    def fn(x):
        xs = collect(x)
        first = getattr(xs[0], "value", xs[0])
        if first == 0:
            gate("hold", xs)
        if first in {0, 9}:  # the call holding the slot, and the one after the fault
            return scatter(xs)
        return body(xs)

    fn.gate = gate  # type: ignore[attr-defined]
    return fn


def test_group_by_that_raises_fails_that_call_alone_before_it_joins():
    def group(x):
        if x == 2:
            raise InjectedError(x)
        return "all"

    kinds, _ = _run(_function(scatter, group_by=group))
    assert kinds == ["ok", "ok", "InjectedError", "ok"]


def test_a_weight_function_that_raises_or_returns_nonsense_fails_that_call_alone():
    def weigh(x):
        if x == 2:
            raise InjectedError(x)
        if x == 3:
            return "heavy"
        return 1

    kinds, _ = _run(_function(scatter, weight=weigh, max_weight=10))
    assert kinds == ["ok", "ok", "InjectedError", "TypeError"]


def test_an_item_whose_hash_raises_under_dedupe_fails_that_call_alone():
    kinds, _ = _run(_function(scatter, dedupe=True), wrap=Item)
    assert kinds == ["ok", "ok", "InjectedError", "ok"]


def test_a_key_function_that_raises_in_scatter_fails_every_member_with_a_routing_error():
    def key(item):
        raise InjectedError(item)

    kinds, _ = _run(_function(lambda xs: scatter({x: x for x in xs}, key=key)))
    assert kinds == ["ok", "BatchRoutingError", "BatchRoutingError", "BatchRoutingError"]


def test_a_results_generator_that_raises_is_the_leaders_fault_for_every_member():
    def results(xs):
        def generate():
            yield xs[0]
            raise InjectedError(xs)

        return scatter(generate())

    kinds, _ = _run(_function(results))
    assert kinds == ["ok", "InjectedError", "InjectedError", "InjectedError"]


def test_an_exception_after_scatter_fails_the_leader_alone():
    def after(xs):
        scatter(xs)
        raise InjectedError(xs)

    kinds, outcomes = _run(_function(after))
    assert kinds == ["ok", "InjectedError", "ok", "ok"]
    assert [value for _, value in outcomes[2:]] == [2, 3]


def test_an_observer_that_raises_is_logged_and_every_caller_gets_its_result(caplog):
    def observe(record):
        raise InjectedError(record)

    with caplog.at_level(logging.ERROR, logger="concresce"):
        kinds, _ = _run(_function(scatter, observer=observe))
    assert kinds == ["ok", "ok", "ok", "ok"]
    assert "raised for a batch of" in caplog.text
    caplog.clear()


def test_a_bulk_section_that_raises_routing_errors_twice_still_ends_every_call():
    def twice(xs):
        with contextlib.suppress(BatchRoutingError):
            scatter([*xs, 0])
        return scatter(xs)  # the batch already failed: scatter() refuses

    kinds, _ = _run(_function(twice))
    assert kinds == ["ok", "RuntimeError", "BatchRoutingError", "BatchRoutingError"]


def test_stats_taken_while_threads_hammer_the_function_are_always_consistent():
    stop = threading.Event()
    snapshots = []

    @batch(max_concurrency=2, max_size=5)
    def work(x: int) -> int:
        return scatter(collect(x))

    def call_many() -> None:
        for i in range(300):
            assert work(i) == i

    def watch() -> None:
        while not stop.is_set():
            snapshots.append(work.stats())

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=call_many) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(PATIENCE)
    stop.set()
    watcher.join(PATIENCE)
    for stats in [*snapshots, work.stats()]:
        assert stats.items <= stats.calls
        assert stats.batches <= stats.calls
        assert stats.batch_size.count <= stats.batches
        assert stats.batch_size.total == stats.items
        assert stats.in_flight_now <= 2
        assert sum(stats.flushes.values()) == stats.batches
    final = work.stats()
    assert (final.calls, final.items, final.open_now, final.in_flight_now) == (2400, 2400, 0, 0)
