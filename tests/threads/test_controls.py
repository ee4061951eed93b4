"""stats(), configure(), flush() and drain() of a thread-batched function, from any thread."""

from __future__ import annotations

import threading

import pytest
from tests.threads.kit import PATIENCE, Caller, gated, loop_of, virtual_clock

from concresce.threads import batch, collect, scatter


def test_stats_count_calls_batches_items_and_the_gauges_while_batches_wait_and_run():
    get, gate, _ = gated(max_concurrency=1)
    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    callers = [Caller(get, 1)]
    clock.wait_parked(1)
    callers.append(Caller(get, 2))
    clock.wait_parked(2)
    now = get.stats()
    assert (now.calls, now.batches, now.open_now, now.in_flight_now) == (3, 1, 1, 1)
    gate.open()
    assert [c.join() for c in (leader, *callers)] == [0, 1, 2]
    done = get.stats(reset=True)
    assert (done.calls, done.batches, done.items, done.open_now, done.in_flight_now) == (3, 2, 3, 0, 0)
    assert done.batch_size.max == 2
    assert get.stats().calls == 0


def test_flush_dispatches_an_open_batch_before_its_window_with_the_reason_flush():
    log: list[object] = []

    @batch(max_window=60.0)
    def get(x: int) -> int:
        xs = collect(x)
        log.append(xs)
        return scatter(xs)

    clock = virtual_clock(get)
    callers = [Caller(get, 1)]
    clock.wait_parked(1)
    callers.append(Caller(get, 2))
    clock.wait_parked(2)
    assert get.flush() == 1
    assert [c.join() for c in callers] == [1, 2]
    assert log == [[1, 2]]
    assert get.flush() == 0
    assert get.stats().flushes["flush"] == 1


def test_drain_flushes_and_blocks_until_every_joined_call_has_its_outcome():
    get, gate, log = gated(max_concurrency=1)
    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    follower = Caller(get, 1)
    clock.wait_parked(1)
    drained = threading.Event()

    def drain() -> None:
        get.drain()
        drained.set()

    drainer = threading.Thread(target=drain)
    drainer.start()
    clock.wait_parked(2)  # the drain waits too
    assert not drained.is_set()
    gate.open()
    assert drained.wait(PATIENCE)
    drainer.join(PATIENCE)
    # When drain() returned, both calls had their outcomes.
    assert leader.join() == 0
    assert follower.join() == 1
    assert log == [("bulk", [0]), ("bulk", [1])]
    assert get.stats().open_now == 0


def test_drain_with_nothing_in_flight_returns_at_once_and_a_timeout_bounds_it():
    get, gate, _ = gated(max_concurrency=1)
    clock = virtual_clock(get)
    get.drain()
    leader = Caller(get, 0)
    gate.wait_reached()
    outcome: list[object] = []

    def drain() -> None:
        try:
            get.drain(timeout=1.0)
        except TimeoutError as error:
            outcome.append(error)

    drainer = threading.Thread(target=drain)
    drainer.start()
    clock.wait_parked(1)
    clock.advance(1.0)
    drainer.join(PATIENCE)
    assert [type(error) for error in outcome] == [TimeoutError]
    assert loop_of(get).lock.locked() is False
    assert get.stats.__self__.batcher.drainers == []
    gate.open()
    assert leader.join() == 0
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        get.drain(timeout=-1)


def test_drain_inside_a_call_of_the_same_function_is_refused():
    @batch
    def get(x: int) -> int:
        get.drain()
        return scatter(collect(x))

    with pytest.raises(RuntimeError, match="drain\\(\\) was called inside a call of the same function"):
        get(1)


def test_configure_from_another_thread_raises_max_concurrency_and_dispatches_the_waiting_batch():
    get, gate, log = gated(max_concurrency=1, max_size=2)
    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    waiting = [Caller(get, 1)]
    clock.wait_parked(1)
    waiting.append(Caller(get, 2))
    clock.wait_parked(2)  # [1, 2] is full, queued for the slot
    configurer = threading.Thread(target=get.configure, kwargs={"max_concurrency": 2})
    configurer.start()
    configurer.join(PATIENCE)
    gate.wait_reached()  # [1, 2] runs beside [0]
    gate.open()
    assert [c.join() for c in (leader, *waiting)] == [0, 1, 2]
    assert log == [("bulk", [0]), ("bulk", [1, 2])]


def test_configure_validates_like_the_decorator_and_changes_nothing_on_an_error():
    get, _, _ = gated()
    with pytest.raises(TypeError, match="max_size"):
        get.configure(max_size="big")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_window"):
        get.configure(window=1)  # type: ignore[call-arg]
    get.configure(max_size=3, max_window=0.5)
    batcher = get.stats.__self__.batcher
    assert (batcher.max_size, batcher.max_window, batcher.max_concurrency) == (3, 0.5, 4)
