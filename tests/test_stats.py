"""``fn.stats()``: the ``BatchStats`` snapshot of a decorated function (issue 5, "statistics").

Every scenario is deterministic and asserts whole snapshots: the counters, the flush reasons,
the gauges and the three summaries with their histograms. Times are virtual where they are the
point (a wait equals the window, a bulk duration equals the leader's virtual sleep); the loop's
clock does not restart at 0 between tests, so seconds are compared with ``pytest.approx``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
from tests.support import Recorder, call_open_on_another_loop, make_echo, run_virtual, wait_all_tasks_blocked

from concresce import BatchRoutingError, BatchStats, Summary, batch, collect, scatter

pytestmark = pytest.mark.anyio

#: A window that never expires during a test.
NEVER = 3600.0

#: The histogram bounds, as documented on ``Summary`` (upper bounds; the last one unbounded).
SIZE_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, math.inf)
SECONDS_BOUNDS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, math.inf)

NO_FLUSHES = {"size": 0, "window": 0, "tick": 0, "weight": 0, "flush": 0}


def summary(bounds, *values):
    """The ``Summary`` expected for ``values`` (each must lie well inside its bucket)."""
    counts = dict.fromkeys(bounds, 0)
    for value in values:
        counts[next(bound for bound in bounds if value <= bound)] += 1
    total = sum(values)
    return Summary(
        count=len(values),
        total=pytest.approx(total, abs=1e-9),
        max=pytest.approx(max(values, default=0.0), abs=1e-9),
        buckets=tuple(counts.items()),
    )


def sizes(*values):
    return summary(SIZE_BOUNDS, *values)


def seconds(*values):
    return summary(SECONDS_BOUNDS, *values)


def expected(**fields):
    """A whole ``BatchStats`` with every field zero or empty unless given."""
    flushes = {**NO_FLUSHES, **fields.pop("flushes", {})}
    defaults = {
        "calls": 0,
        "batches": 0,
        "items": 0,
        "leader_failures": 0,
        "handovers": 0,
        "cancellations": 0,
        "shed": 0,
        "open_now": 0,
        "in_flight_now": 0,
        "batch_size": sizes(),
        "wait_time": seconds(),
        "bulk_duration": seconds(),
    }
    return BatchStats(flushes=flushes, **{**defaults, **fields})


# --------------------------------------------------------------------------------------
# The shape of a snapshot
# --------------------------------------------------------------------------------------


def test_a_function_never_called_has_empty_stats():
    """Before any call every counter is 0, every reason is a key, every summary is empty."""
    echo = make_echo()

    stats = echo.stats()

    assert stats == expected()
    assert dict(stats.flushes) == NO_FLUSHES
    assert stats.batch_size == Summary(0, 0.0, 0.0, tuple((bound, 0) for bound in SIZE_BOUNDS))
    assert stats.wait_time.mean == 0.0
    assert stats.bulk_duration.buckets[-1] == (math.inf, 0)


def test_the_snapshot_is_frozen():
    """BatchStats and Summary refuse assignment; the flushes mapping is read-only."""
    stats = make_echo().stats()

    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.batch_size.count = 1
    with pytest.raises(TypeError):
        stats.flushes["size"] = 1  # type: ignore[index]
    assert stats.flushes["size"] == 0


async def test_a_snapshot_does_not_change_afterwards():
    """A snapshot taken earlier keeps its values while the function goes on batching."""
    echo = make_echo(max_size=2)
    before = echo.stats()

    assert await asyncio.gather(echo(1), echo(2)) == [("ok", 1), ("ok", 2)]

    assert before == expected()
    assert echo.stats().batches == 1
    assert before.flushes["size"] == 0


# --------------------------------------------------------------------------------------
# Counters and summaries
# --------------------------------------------------------------------------------------


async def test_a_windowed_batch_waits_its_window_and_lasts_its_bulk_call(clock):
    """wait_time is the window, bulk_duration the leader's (virtual) sleep, batch_size the item count."""
    echo = make_echo(bulk=0.2, max_window=0.03, max_size=10)

    assert await asyncio.gather(*(echo(x) for x in (1, 2, 3))) == [("ok", 1), ("ok", 2), ("ok", 3)]

    assert echo.stats() == expected(
        calls=3,
        batches=1,
        items=3,
        flushes={"window": 1},
        batch_size=sizes(3),
        wait_time=seconds(0.03),
        bulk_duration=seconds(0.2),
    )

    start = clock.now()
    assert await echo(4) == ("ok", 4)
    assert clock.now() - start == pytest.approx(0.23)

    stats = echo.stats()
    assert stats == expected(
        calls=4,
        batches=2,
        items=4,
        flushes={"window": 2},
        batch_size=sizes(3, 1),
        wait_time=seconds(0.03, 0.03),
        bulk_duration=seconds(0.2, 0.2),
    )
    assert stats.batch_size.mean == 2.0
    assert stats.wait_time.mean == pytest.approx(0.03)
    assert stats.bulk_duration.max == pytest.approx(0.2)


async def test_a_batch_flushed_by_size_waited_no_time(clock):
    """A batch that fills up at once is dispatched with a wait of 0 (the first bucket)."""
    echo = make_echo(bulk=2.0, max_window=NEVER, max_size=2)

    await asyncio.gather(echo(1), echo(2))

    assert echo.stats() == expected(
        calls=2,
        batches=1,
        items=2,
        flushes={"size": 1},
        batch_size=sizes(2),
        wait_time=seconds(0.0),
        bulk_duration=seconds(2.0),
    )
    assert echo.stats().wait_time.buckets[0] == (0.0001, 1)


async def test_wait_time_includes_the_wait_for_a_concurrency_slot(clock):
    """A batch queued for a max_concurrency slot waited from its first collect() to its dispatch."""
    echo = make_echo(bulk=1.0, max_window=0.01, max_size=100, max_concurrency=1)

    first = asyncio.create_task(echo(1))
    await asyncio.sleep(0.5)  # the first batch runs until 1.01
    assert await echo(2) == ("ok", 2)  # opened at 0.5, due at 0.51, dispatched at 1.01
    await first

    assert echo.stats() == expected(
        calls=2,
        batches=2,
        items=2,
        flushes={"window": 2},
        batch_size=sizes(1, 1),
        wait_time=seconds(0.01, 0.51),
        bulk_duration=seconds(1.0, 1.0),
    )


async def test_histograms_put_each_value_in_its_bucket(clock):
    """Values land in the bucket whose upper bound they do not exceed; huge ones in the last."""
    echo = make_echo(max_window=0, max_size=None)

    for count in (1, 2, 3, 7, 1500):
        await asyncio.gather(*(echo(x) for x in range(count)))

    stats = echo.stats()
    assert stats.batch_size == sizes(1, 2, 3, 7, 1500)
    assert dict(stats.batch_size.buckets) == {
        **dict.fromkeys(SIZE_BOUNDS, 0),
        1.0: 1,
        2.0: 1,
        5.0: 1,
        10.0: 1,
        math.inf: 1,
    }
    assert stats.batch_size.total == 1513.0
    assert stats.batch_size.max == 1500.0
    assert stats.items == stats.calls == 1513
    assert stats.flushes == {**NO_FLUSHES, "tick": 5}


async def test_dedupe_counts_calls_and_distinct_items():
    """Under dedupe, calls counts every caller and items counts what the leader received."""
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_size=3, dedupe=True)

    results = await asyncio.gather(echo("a"), echo("a"), echo("b"), echo("c"))

    assert results == [("ok", "a"), ("ok", "a"), ("ok", "b"), ("ok", "c")]
    assert record == [["a", "b", "c"]]
    stats = echo.stats()
    assert (stats.calls, stats.batches, stats.items) == (4, 1, 3)
    assert stats.flushes == {**NO_FLUSHES, "size": 1}
    assert stats.batch_size == sizes(3)


# --------------------------------------------------------------------------------------
# Flush reasons
# --------------------------------------------------------------------------------------


async def test_each_flush_reason_is_counted(clock):
    """size, window, tick, weight and flush: each dispatched batch counts under the reason that closed it."""
    record = Recorder()

    @batch(max_window=0.05, max_size=3, weight=lambda item: item, max_weight=10)
    async def work(item):
        items = await collect(item)
        record(items)
        return scatter(items)

    def flushes():
        return {reason: count for reason, count in work.stats().flushes.items() if count}

    assert await asyncio.gather(work(1), work(1), work(1)) == [1, 1, 1]
    assert flushes() == {"size": 1}

    assert await work(2) == 2
    assert flushes() == {"size": 1, "window": 1}

    assert await asyncio.gather(work(6), work(4)) == [6, 4]
    assert flushes() == {"size": 1, "window": 1, "weight": 1}

    task = asyncio.create_task(work(1))
    await wait_all_tasks_blocked()
    assert work.flush() == 1
    assert await task == 1
    assert flushes() == {"size": 1, "window": 1, "weight": 1, "flush": 1}

    work.configure(max_window=0)
    assert await asyncio.gather(work(1), work(2)) == [1, 2]
    assert flushes() == {"size": 1, "window": 1, "weight": 1, "flush": 1, "tick": 1}

    assert record == [[1, 1, 1], [2], [6, 4], [1], [1, 2]]
    assert work.stats().batches == 5


# --------------------------------------------------------------------------------------
# Leader failures, handovers, cancellations
# --------------------------------------------------------------------------------------


class BoomError(Exception):
    pass


def make_failing(how):
    @batch(max_window=NEVER, max_size=2)
    async def work(item):
        items = await collect(item)
        await asyncio.sleep(0)
        if how == "raise":
            raise BoomError(items)
        if how == "no_scatter":
            return "no scatter"
        if how == "routing":
            return scatter([1, 2, 3])
        own = scatter([x * 10 for x in items])
        if how == "after":
            raise BoomError(own)
        return own

    return work


@pytest.mark.parametrize(
    ("how", "errors", "failures"),
    [
        ("raise", [BoomError, BoomError], 1),
        ("no_scatter", [RuntimeError, RuntimeError], 1),
        ("routing", [BatchRoutingError, BatchRoutingError], 1),
        ("after", [BoomError, None], 0),
        ("ok", [None, None], 0),
    ],
)
async def test_leader_failures_count_batches_that_ended_in_an_error(how, errors, failures):
    """Raising before scatter(), returning without it, or a routing error count; raising after scatter() does not."""
    work = make_failing(how)

    results = await asyncio.gather(work(1), work(2), return_exceptions=True)

    assert [type(r) if isinstance(r, Exception) else None for r in results] == errors
    stats = work.stats()
    assert stats.leader_failures == failures
    assert (stats.calls, stats.batches, stats.items, stats.handovers, stats.cancellations) == (2, 1, 2, 0, 0)
    assert stats.batch_size == sizes(2)
    assert stats.bulk_duration.count == 1
    assert (stats.open_now, stats.in_flight_now) == (0, 0)


async def test_a_leader_cancelled_in_its_bulk_call_counts_a_handover(clock):
    """The batch is dispatched once; the handover is counted; the final leader's items are the batch's items."""
    record = Recorder()
    echo = make_echo(record, bulk=1.0, max_window=NEVER, max_size=3)

    tasks = [asyncio.create_task(echo(x)) for x in (1, 2, 3)]
    await asyncio.sleep(0.5)
    tasks[0].cancel()
    await asyncio.wait(tasks)

    assert tasks[0].cancelled()
    assert [task.result() for task in tasks[1:]] == [("ok", 2), ("ok", 3)]
    assert record == [[1, 2, 3], [2, 3]]
    assert echo.stats() == expected(
        calls=3,
        batches=1,
        items=2,
        flushes={"size": 1},
        handovers=1,
        batch_size=sizes(2),
        wait_time=seconds(0.0),
        bulk_duration=seconds(1.5),
    )


async def test_a_leader_cancelled_before_it_resumed_counts_a_cancellation_only():
    """Chosen as the leader but cancelled in collect(): one cancellation; it never ran, so no handover."""
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_size=2)

    first = asyncio.create_task(echo(1))
    await wait_all_tasks_blocked()
    second = asyncio.create_task(echo(2))
    while not echo.stats().in_flight_now:  # noqa: ASYNC110 -- one loop turn at a time is the point
        await asyncio.sleep(0)
    first.cancel()  # flushed by the second call, the first was woken but has not resumed
    await asyncio.wait([first, second])

    assert first.cancelled()
    assert second.result() == ("ok", 2)
    assert record == [[2]]
    stats = echo.stats()
    assert (stats.calls, stats.batches, stats.items, stats.handovers, stats.cancellations) == (2, 1, 1, 0, 1)
    assert stats.leader_failures == 0


async def test_a_batch_whose_only_member_was_cancelled_before_it_led_counts_one_cancellation_and_no_batch():
    """The sole member, woken to lead and cancelled before it resumed: one cancellation, no batch, no record."""
    records = Recorder()
    echo = make_echo(max_window=NEVER, observer=records)

    task = asyncio.create_task(echo(1))
    await wait_all_tasks_blocked()
    assert echo.flush() == 1  # dispatched: its only member is woken to lead
    task.cancel()  # before it resumed
    await asyncio.wait([task])

    assert task.cancelled()
    assert records == []
    stats = echo.stats()
    assert (stats.calls, stats.batches, stats.items, stats.handovers, stats.cancellations) == (1, 0, 0, 0, 1)
    assert (stats.batch_size.count, stats.wait_time.count, stats.bulk_duration.count) == (0, 0, 0)
    assert sum(stats.flushes.values()) == 0
    assert (stats.open_now, stats.in_flight_now) == (0, 0)


async def test_cancellations_count_members_cancelled_while_waiting():
    """A member cancelled while open and a follower cancelled after the flush both count."""
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER, max_size=3)

    tasks = [asyncio.create_task(echo(x)) for x in (1, 2)]
    await wait_all_tasks_blocked()
    tasks[1].cancel()  # leaves the open batch
    await wait_all_tasks_blocked()
    assert echo.stats().cancellations == 1
    tasks += [asyncio.create_task(echo(x)) for x in (3, 4)]  # fills the batch: 1, 3, 4
    await wait_all_tasks_blocked()
    tasks[3].cancel()  # a follower, after the flush
    await wait_all_tasks_blocked()
    gate.set()
    await asyncio.wait(tasks)

    assert [task.cancelled() for task in tasks] == [False, True, False, True]
    assert record == [[1, 3, 4]]
    stats = echo.stats()
    assert (stats.calls, stats.batches, stats.items, stats.cancellations, stats.handovers) == (4, 1, 3, 2, 0)


async def test_a_batch_whose_members_all_left_counts_calls_but_no_batch():
    """Every member cancelled while open: the calls and cancellations count, no batch was dispatched."""
    echo = make_echo(max_window=NEVER, max_size=10)

    tasks = [asyncio.create_task(echo(x)) for x in (1, 2)]
    await wait_all_tasks_blocked()
    assert echo.stats() == expected(calls=2, open_now=1)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)

    assert echo.stats() == expected(calls=2, cancellations=2)


# --------------------------------------------------------------------------------------
# Gauges
# --------------------------------------------------------------------------------------


async def test_gauges_count_open_queued_and_running_batches():
    """A running batch is in flight; batches closed and queued for a slot, and the open one, are open."""
    gate = asyncio.Event()
    echo = make_echo(gate=gate, max_window=NEVER, max_size=2, max_concurrency=1)

    tasks = [asyncio.create_task(echo(x)) for x in (1, 2)]  # dispatched, waits for the gate
    await wait_all_tasks_blocked()
    stats = echo.stats()
    assert (stats.open_now, stats.in_flight_now, stats.calls, stats.batches) == (0, 1, 2, 1)
    assert (stats.items, stats.batch_size.count, stats.wait_time.count) == (0, 0, 1)  # items count at the end
    tasks += [asyncio.create_task(echo(x)) for x in (3, 4, 5)]  # 3, 4: full and queued; 5: open
    await wait_all_tasks_blocked()
    stats = echo.stats()
    assert (stats.open_now, stats.in_flight_now, stats.calls, stats.batches) == (2, 1, 5, 1)

    gate.set()
    results = await asyncio.gather(*tasks[:4])
    assert results == [("ok", 1), ("ok", 2), ("ok", 3), ("ok", 4)]
    stats = echo.stats()
    assert (stats.open_now, stats.in_flight_now, stats.calls, stats.batches, stats.items) == (1, 0, 5, 2, 4)
    assert echo.flush() == 1
    assert await tasks[4] == ("ok", 5)
    stats = echo.stats()
    assert (stats.open_now, stats.in_flight_now, stats.calls, stats.batches, stats.items) == (0, 0, 5, 3, 5)
    assert stats.flushes == {**NO_FLUSHES, "size": 2, "flush": 1}


async def test_an_open_batch_due_and_waiting_for_a_slot_counts_once():
    """A tick batch that is due but waits for a slot (and keeps collecting) is one open batch."""
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=0, max_size=100, max_concurrency=1)

    tasks = [asyncio.create_task(echo(1))]
    await wait_all_tasks_blocked()  # dispatched on the next turn, waits for the gate
    tasks.append(asyncio.create_task(echo(2)))
    await wait_all_tasks_blocked()  # due on the next turn, but the slot is busy
    tasks.append(asyncio.create_task(echo(3)))  # joins the waiting batch
    await wait_all_tasks_blocked()

    stats = echo.stats()
    assert (stats.open_now, stats.in_flight_now, stats.calls, stats.batches) == (1, 1, 3, 1)
    gate.set()
    assert await asyncio.gather(*tasks) == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert record == [[1], [2, 3]]
    assert echo.stats().flushes == {**NO_FLUSHES, "tick": 2}


# --------------------------------------------------------------------------------------
# reset, several loops, methods
# --------------------------------------------------------------------------------------


async def test_reset_returns_the_snapshot_then_restarts_the_counters_but_not_the_gauges():
    """stats(reset=True) returns the counts so far; then counters restart and the gauges still read live state."""
    gate = asyncio.Event()
    gate.set()
    echo = make_echo(gate=gate, max_window=NEVER, max_size=2)
    assert await asyncio.gather(echo(1), echo(2)) == [("ok", 1), ("ok", 2)]
    gate.clear()
    running = asyncio.create_task(echo(3))
    await wait_all_tasks_blocked()
    assert echo.flush() == 1
    await wait_all_tasks_blocked()  # in its bulk call, waiting for the gate

    snapshot = echo.stats(reset=True)

    assert (snapshot.calls, snapshot.batches, snapshot.items, snapshot.in_flight_now) == (3, 2, 2, 1)
    assert snapshot.flushes == {**NO_FLUSHES, "size": 1, "flush": 1}
    assert snapshot.batch_size == sizes(2)
    assert echo.stats() == expected(in_flight_now=1)
    gate.set()
    assert await running == ("ok", 3)
    # The batch in flight at the reset was dispatched before it: only its end counts after it.
    after = echo.stats()
    assert (after.calls, after.batches, after.items, after.in_flight_now) == (0, 0, 1, 0)
    assert after.batch_size == sizes(1)
    assert after.bulk_duration.count == 1
    assert after.wait_time.count == 0


def test_counters_add_up_across_event_loops():
    """One function run on two successive loops: one set of counters for both."""
    echo = make_echo(max_window=0.01, max_size=10)

    async def calls(count):
        return await asyncio.gather(*(echo(x) for x in range(count)))

    assert run_virtual(lambda: calls(2)) == [("ok", 0), ("ok", 1)]
    assert run_virtual(lambda: calls(3)) == [("ok", 0), ("ok", 1), ("ok", 2)]

    assert echo.stats() == expected(
        calls=5,
        batches=2,
        items=5,
        flushes={"window": 2},
        batch_size=sizes(2, 3),
        wait_time=seconds(0.01, 0.01),
        bulk_duration=seconds(0.0, 0.0),
    )


def test_gauges_cover_the_batches_of_every_loop():
    """A batch open on a loop in another thread shows in the snapshot taken from this one (no loop here)."""
    echo = make_echo(max_window=NEVER, max_size=10)

    async def flush_there():
        assert echo.flush() == 1

    with call_open_on_another_loop(echo, flush_there) as results:
        stats = echo.stats()
        assert (stats.calls, stats.open_now, stats.in_flight_now, stats.batches) == (1, 1, 0, 0)
        with pytest.raises(RuntimeError):
            echo.flush()  # no running event loop in this thread
    assert results == [("ok", "other")]
    assert echo.stats() == expected(
        calls=1,
        batches=1,
        items=1,
        flushes={"flush": 1},
        batch_size=sizes(1),
        wait_time=echo.stats().wait_time,  # real time: only its count is known
        bulk_duration=echo.stats().bulk_duration,
    )
    assert echo.stats().wait_time.count == 1


async def test_instances_of_a_decorated_method_share_one_set_of_stats():
    """Stats belong to the function: read through the class or any instance, they count every instance."""
    record = Recorder()

    class Store:
        def __init__(self, name):
            self.name = name

        @batch(max_window=NEVER, max_size=2)
        async def get(self, key):
            keys = await collect(key)
            record(self.name, keys)
            return scatter([f"{self.name}-{k}" for k in keys])

    a, b = Store("a"), Store("b")
    results = await asyncio.gather(a.get(1), b.get(1), a.get(2), b.get(2))

    assert results == ["a-1", "b-1", "a-2", "b-2"]
    assert sorted(record) == [("a", [1, 2]), ("b", [1, 2])]
    assert a.get.stats() == b.get.stats() == Store.get.stats()
    stats = Store.get.stats()
    assert (stats.calls, stats.batches, stats.items) == (4, 2, 4)
    assert stats.batch_size == sizes(2, 2)
    assert Store.get.stats(reset=True).batches == 2
    assert a.get.stats().batches == 0
