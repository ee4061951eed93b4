"""Runtime controls: ``configure()``, ``flush()``, ``drain()``, weighted batches and load shedding (issue 5).

Every test asserts the batches the leaders received (in order), what every caller got, and,
where it is the point, the virtual time. Windows that must not expire are an hour long, so
on the virtual clock a test that waited for one instead of flushing would show it in the time.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import pickle
import threading
from datetime import timedelta

import pytest
from tests.support import Recorder, batcher_of, call_open_on_another_loop, make_echo, wait_all_tasks_blocked

from concresce import OverloadedError, batch, collect, scatter

pytestmark = pytest.mark.anyio

#: A window that never expires during a test.
NEVER = 3600.0


def ended(task):
    assert task.done()
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if error is not None:
        return ("raised", type(error))
    return ("returned", task.result())


async def started(*coros):
    """Start each coroutine in a task; return the tasks once they all are blocked."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    await wait_all_tasks_blocked()
    return tasks


# --------------------------------------------------------------------------------------
# configure(): changing options at run time
# --------------------------------------------------------------------------------------


async def test_configure_max_size_applies_from_the_next_batch():
    """The open batch keeps the size it opened with; the next one closes at the new size."""
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_size=10)

    tasks = await started(echo(1))
    echo.configure(max_size=2)
    tasks += await started(echo(2))
    assert record == []  # two items, but this batch opened with max_size=10
    assert echo.flush() == 1
    tasks += await started(echo(3), echo(4))

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3), ("ok", 4)]
    assert record == [[1, 2], [3, 4]]
    assert echo.stats().flushes["size"] == 1
    assert batcher_of(echo).max_size == 2


async def test_configure_max_window_applies_from_the_next_batch(clock):
    record = Recorder()
    echo = make_echo(record, max_window=NEVER)

    tasks = await started(echo(1))
    echo.configure(max_window=0.25)
    await asyncio.sleep(1.0)
    assert record == []  # the open batch keeps its hour
    assert echo.flush() == 1
    await asyncio.wait(tasks)

    start = clock.now()
    assert await echo(2) == ("ok", 2)
    assert clock.now() - start == pytest.approx(0.25)
    echo.configure(max_window=0)
    assert await asyncio.gather(echo(3), echo(4)) == [("ok", 3), ("ok", 4)]
    assert clock.now() - start == pytest.approx(0.25)
    assert record == [[1], [2], [3, 4]]
    assert echo.stats().flushes == {"size": 0, "window": 1, "tick": 1, "weight": 0, "flush": 1}


async def test_configure_accepts_a_timedelta_window(clock):
    """``configure(max_window=timedelta(...))`` sets that many seconds, like the decorator."""
    record = Recorder()
    echo = make_echo(record)

    echo.configure(max_window=timedelta(milliseconds=125))
    start = clock.now()
    assert await echo(1) == ("ok", 1)
    assert clock.now() - start == pytest.approx(0.125)
    assert batcher_of(echo).max_window == 0.125


async def test_lowering_max_concurrency_lets_running_batches_finish_and_queues_the_next():
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER, max_size=1)

    tasks = await started(echo(1), echo(2))  # two batches run at once
    assert record == [[1], [2]]
    echo.configure(max_concurrency=1)
    tasks += await started(echo(3))  # full, but both slots of the old limit are taken
    assert record == [[1], [2]]
    assert echo.stats().open_now == 1
    gate.set()
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert record == [[1], [2], [3]]


@pytest.mark.parametrize("raised_to", [2, None])
async def test_raising_max_concurrency_dispatches_queued_batches_at_once(raised_to):
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER, max_size=1, max_concurrency=1)

    tasks = await started(echo(1), echo(2), echo(3))
    assert record == [[1]]
    assert echo.stats().open_now == 2

    echo.configure(max_concurrency=raised_to)
    # Dispatched within configure(): the leaders are woken, no window or tick involved.
    assert echo.stats().in_flight_now == (2 if raised_to == 2 else 3)
    await wait_all_tasks_blocked()
    assert record == ([[1], [2]] if raised_to == 2 else [[1], [2], [3]])
    gate.set()
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert sorted(record) == [[1], [2], [3]]


async def test_raising_max_concurrency_from_another_thread_dispatches_on_the_batches_loop():
    """configure() from a thread without a loop hands the release to each batch's own loop."""
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER, max_size=1, max_concurrency=1)

    tasks = await started(echo(1), echo(2))
    assert record == [[1]]
    await asyncio.to_thread(echo.configure, max_concurrency=2)
    await wait_all_tasks_blocked()

    assert record == [[1], [2]]
    gate.set()
    assert await asyncio.gather(*tasks) == [("ok", 1), ("ok", 2)]


async def test_a_call_from_a_bulk_section_waits_for_a_slot_raised_from_another_thread():
    """A slot is free but its release has not run yet: a nested call is not refused, it waits for it."""
    record = Recorder()

    @batch(max_size=1, max_concurrency=1)
    async def work(item):
        items = await collect(item)
        record(items)
        if item == "a":
            await asyncio.sleep(0)  # b joins, and queues for the only slot
            # b waits for the only slot. A thread raises the limit; until its release runs
            # on this loop, b stays queued with a slot free: the nested call joins behind b.
            thread = threading.Thread(target=work.configure, kwargs={"max_concurrency": 3})
            thread.start()
            thread.join()
            assert await work("nested") == "nested"
        return scatter(items)

    tasks = await started(work("a"), work("b"))

    assert await asyncio.gather(*tasks) == ["a", "b"]
    assert record[0] == ["a"]
    assert sorted(record[1:]) == [["b"], ["nested"]]  # released together, in order; who resumes first is the loop's


def test_raising_max_concurrency_from_another_loop_releases_each_loop_on_itself():
    """configure() on a loop in another thread dispatches a batch queued here on this loop."""
    record = Recorder()

    async def configure(fn):
        fn.configure(max_concurrency=3)

    async def main():
        gate = asyncio.Event()
        echo = make_echo(record, gate=gate, max_window=NEVER, max_size=1, max_concurrency=1)
        tasks = await started(echo(1), echo(2))
        assert record == [[1]]
        thread = threading.Thread(target=asyncio.run, args=(configure(echo),))
        thread.start()
        await asyncio.to_thread(thread.join, 10)
        await wait_all_tasks_blocked()
        assert record == [[1], [2]]
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [("ok", 1), ("ok", 2)]


CONFIGURE_ERRORS = [
    ({"max_window": -1}, ValueError, "max_window must be >= 0 and finite, got -1"),
    ({"max_window": math.inf}, ValueError, "max_window must be >= 0 and finite, got inf"),
    (
        {"max_window": "1"},
        TypeError,
        (
            "max_window must be a number of seconds or a datetime.timedelta (>= 0 and finite), "
            "\"auto\" or an Auto(), got '1'"
        ),
    ),
    ({"max_window": None}, TypeError, "max_window must be a number"),
    ({"max_size": 0}, ValueError, "max_size must be >= 1 or None, got 0"),
    ({"max_size": 2.5}, TypeError, "max_size must be an int >= 1 or None, got 2.5"),
    ({"max_size": True}, TypeError, "max_size must be an int >= 1 or None, got True"),
    ({"max_concurrency": 0}, ValueError, "max_concurrency must be >= 1 or None, got 0"),
    ({"max_concurrency": "2"}, TypeError, "max_concurrency must be an int >= 1 or None, got '2'"),
    ({"max_pending": 0}, ValueError, "max_pending must be >= 1 or None, got 0"),
    ({"max_pending": 1.0}, TypeError, "max_pending must be an int >= 1 or None, got 1.0"),
    ({"max_weight": 0}, ValueError, "max_weight must be > 0 and finite, or None, got 0"),
    ({"max_weight": -3}, ValueError, "max_weight must be > 0 and finite, or None, got -3"),
    ({"max_weight": math.nan}, ValueError, "max_weight must be > 0 and finite, or None, got nan"),
    ({"max_weight": math.inf}, ValueError, "max_weight must be > 0 and finite, or None, got inf"),
    ({"max_weight": "9"}, TypeError, "max_weight must be a number > 0 or None, got '9'"),
    ({"max_weight": False}, TypeError, "max_weight must be a number > 0 or None, got False"),
]


@pytest.mark.parametrize(("options", "error", "message"), CONFIGURE_ERRORS)
def test_configure_validates_like_the_decorator_and_changes_nothing(options, error, message):
    """An invalid option is refused with a message naming it, and no option changes, valid ones included."""

    @batch(max_window=0.5, max_size=7, max_concurrency=3, max_pending=9, weight=len, max_weight=100)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    state = batcher_of(work)
    before = (state.max_window, state.max_size, state.max_concurrency, state.max_weight, state.max_pending)
    others = {"max_window": 0.1, "max_size": 2, "max_concurrency": 1, "max_pending": 1, "max_weight": 5}
    others = {name: value for name, value in others.items() if name not in options}

    with pytest.raises(error) as info:
        work.configure(**others, **options)

    assert message in str(info.value)
    assert (state.max_window, state.max_size, state.max_concurrency, state.max_weight, state.max_pending) == before


def test_configure_max_weight_needs_a_weight_function():
    @batch(max_size=7)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    with pytest.raises(ValueError, match=r"max_weight needs a weight function.*@batch\(weight=") as info:
        work.configure(max_size=3, max_weight=10)

    assert work.__qualname__ in str(info.value)
    assert batcher_of(work).max_size == 7
    assert batcher_of(work).guarded is False
    work.configure(max_weight=None)  # None is always fine
    assert batcher_of(work).max_weight is None


def test_configure_shows_its_defaults_as_unchanged():
    """The options' default is a marker shown as ``<unchanged>`` (in help() and signatures)."""

    @batch
    async def work(item):
        items = await collect(item)
        return scatter(items)

    signature = inspect.signature(work.configure)

    names = ["max_window", "max_size", "max_concurrency", "max_weight", "max_pending", "unknown"]
    assert list(signature.parameters) == names  # `unknown` only catches other spellings
    options = list(signature.parameters.values())[:-1]
    assert {repr(parameter.default) for parameter in options} == {"<unchanged>"}


def test_configure_with_no_option_changes_nothing():
    @batch(max_window=0.5, max_size=7, max_concurrency=3)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    work.configure()

    state = batcher_of(work)
    assert (state.max_window, state.max_size, state.max_concurrency, state.max_weight, state.max_pending) == (
        0.5,
        7,
        3,
        None,
        None,
    )


async def test_configure_max_weight_applies_from_the_next_batch():
    record = Recorder()

    @batch(max_window=NEVER, max_size=None, weight=lambda item: item, max_weight=100)
    async def work(item):
        items = await collect(item)
        record(items)
        return scatter(items)

    tasks = await started(work(6))
    work.configure(max_weight=10)
    tasks += await started(work(6))  # the open batch keeps its budget of 100
    assert record == []
    assert work.flush() == 1
    tasks += await started(work(6), work(6))  # 12 > 10: the second starts a new batch
    assert record == [[6, 6], [6]]
    work.configure(max_weight=None)  # weights no longer matter from the next batch...
    tasks += await started(work(60), work(60))  # ...but the open [6] keeps its budget: 60 tips it
    assert record == [[6, 6], [6], [6]]
    assert work.flush() == 1
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [6, 6, 6, 6, 60, 60]
    assert record == [[6, 6], [6], [6], [60, 60]]
    assert work.stats().flushes["weight"] == 2


async def test_a_call_joining_a_weighed_batch_after_max_weight_was_removed_can_be_cancelled():
    """Regression: the open batch keeps its budget, so the new member is weighed and may leave cleanly."""
    record = Recorder()

    @batch(max_window=NEVER, max_size=None, weight=lambda item: item, max_weight=10)
    async def work(item):
        items = await collect(item)
        record(items)
        return scatter(items)

    tasks = await started(work(2))
    work.configure(max_weight=None)
    tasks += await started(work(3))  # 2 + 3 <= 10: joins the open batch, weighed
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    tasks += await started(work(8))  # 2 + 8 = 10 once the 3 has left: full
    await asyncio.wait(tasks)

    assert [ended(task) for task in tasks] == [("returned", 2), "cancelled", ("returned", 8)]
    assert record == [[2, 8]]
    assert work.stats().flushes["weight"] == 1


async def test_configure_max_pending_applies_to_the_next_call():
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_size=None)

    tasks = await started(echo(1), echo(2))
    echo.configure(max_pending=2)
    with pytest.raises(OverloadedError):
        await echo(3)
    echo.configure(max_pending=None)
    tasks += await started(echo(4))
    assert echo.flush() == 1
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 4)]
    assert record == [[1, 2, 4]]
    assert echo.stats().shed == 1
    assert batcher_of(echo).guarded is False


# --------------------------------------------------------------------------------------
# flush(): closing open batches now
# --------------------------------------------------------------------------------------


async def test_flush_closes_every_open_batch_now_and_returns_how_many(clock):
    record = Recorder()

    @batch(max_window=NEVER, group_by=lambda item, tenant: tenant)
    async def work(item, tenant):
        items = await collect(item)
        record(tenant, items)
        return scatter([(tenant, x) for x in items])

    assert work.flush() == 0
    tasks = await started(work(1, "a"), work(2, "b"), work(3, "a"))
    start = clock.now()

    assert work.flush() == 2
    assert work.flush() == 0  # closed already (the leaders have not resumed yet)
    later = await started(work(4, "a"))  # opens a new batch
    await asyncio.wait(tasks)

    assert clock.now() == start
    assert [task.result() for task in tasks] == [("a", 1), ("b", 2), ("a", 3)]
    assert sorted(record) == [("a", [1, 3]), ("b", [2])]
    assert work.flush() == 1
    assert await later[0] == ("a", 4)
    assert work.stats().flushes == {"size": 0, "window": 0, "tick": 0, "weight": 0, "flush": 3}


async def test_flush_with_every_slot_busy_queues_the_batch_and_new_calls_open_the_next():
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER, max_size=10, max_concurrency=1)

    tasks = await started(echo(1))
    assert echo.flush() == 1  # dispatched: takes the only slot
    await wait_all_tasks_blocked()
    tasks += await started(echo(2), echo(3))
    assert echo.flush() == 1  # closed and queued for the slot
    tasks += await started(echo(4))  # does not join the queued batch
    stats = echo.stats()
    assert (stats.open_now, stats.in_flight_now) == (2, 1)
    assert record == [[1]]

    gate.set()
    await asyncio.wait(tasks[:3])
    assert record == [[1], [2, 3]]
    assert echo.flush() == 1
    await asyncio.wait(tasks)
    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3), ("ok", 4)]
    assert record == [[1], [2, 3], [4]]


async def test_flush_stops_a_due_batch_that_waits_for_a_slot_from_collecting():
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=0, max_size=10, max_concurrency=1)

    tasks = await started(echo(1))
    tasks += await started(echo(2))  # due, queued: would keep collecting
    assert echo.flush() == 1
    tasks += await started(echo(3))
    gate.set()
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert record == [[1], [2], [3]]


def test_flush_acts_on_the_running_loop_only():
    """A batch open on another loop is left alone by flush() on this one."""
    record = Recorder()
    echo = make_echo(record, max_window=NEVER)

    async def flush_there():
        assert echo.flush() == 1

    async def here():
        assert echo.flush() == 0
        assert echo.stats().open_now == 1
        task = asyncio.create_task(echo("here"))
        await wait_all_tasks_blocked()
        assert echo.flush() == 1
        return await task

    with call_open_on_another_loop(echo, flush_there) as results:
        assert asyncio.run(here()) == ("ok", "here")
    assert results == [("ok", "other")]
    assert record == [["here"], ["other"]]


def test_flush_without_a_running_loop_is_a_runtime_error():
    echo = make_echo(Recorder())
    with pytest.raises(RuntimeError):
        echo.flush()


# --------------------------------------------------------------------------------------
# drain(): waiting until nothing is open or in flight
# --------------------------------------------------------------------------------------


async def test_drain_returns_at_once_when_idle(clock):
    echo = make_echo(Recorder())
    start = clock.now()

    await echo.drain()

    assert clock.now() == start
    assert batcher_of(echo).drainers == []


async def test_drain_flushes_a_long_window_and_waits_for_the_results(clock):
    record = Recorder()
    echo = make_echo(record, bulk=0.5, max_window=NEVER)
    tasks = await started(echo(1), echo(2), echo(3))
    start = clock.now()

    await echo.drain()

    assert clock.now() - start == pytest.approx(0.5)  # the bulk call, not the hour
    assert all(task.done() for task in tasks)
    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert record == [[1, 2, 3]]
    assert echo.stats().flushes["flush"] == 1
    assert batcher_of(echo).drainers == []


async def test_drain_waits_for_batches_in_flight_and_queued(clock):
    record = Recorder()
    echo = make_echo(record, bulk=1.0, max_window=NEVER, max_size=1, max_concurrency=1)
    tasks = await started(echo(1), echo(2), echo(3))
    start = clock.now()

    await echo.drain()

    assert clock.now() - start == pytest.approx(3.0)
    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert record == [[1], [2], [3]]


async def test_drain_does_not_wait_for_batches_opened_after_it_was_called(clock):
    """A batch opened (with an hour's window) while drain() waits for a running one neither delays it nor is flushed."""
    record = Recorder()
    echo = make_echo(record, bulk=1.0, max_window=NEVER)
    first = await started(echo(1))
    drain = asyncio.create_task(echo.drain())
    await asyncio.sleep(0.5)  # the first batch is in its bulk call
    second = await started(echo(2))
    start = clock.now()

    await drain

    assert clock.now() - start == pytest.approx(0.5)  # the end of the first batch
    assert [ended(task) for task in first] == [("returned", ("ok", 1))]
    assert not second[0].done()
    assert echo.stats().open_now == 1
    assert record == [[1]]
    assert echo.flush() == 1
    await asyncio.wait(second)
    assert record == [[1], [2]]


async def test_drain_returns_under_steady_traffic(clock):
    """Calls arriving all the time (a new batch every 10 ms) never delay drain() past the batches it found."""
    record = Recorder()
    echo = make_echo(record, bulk=0.05, max_window=0.01)
    stop = asyncio.Event()
    calls: list[asyncio.Task] = []

    async def traffic():
        item = 0
        while not stop.is_set():
            calls.append(asyncio.create_task(echo(item)))
            item += 1
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(traffic())
    await asyncio.sleep(0.1)
    before = list(calls)
    start = clock.now()

    await echo.drain()

    waited = clock.now() - start
    stop.set()
    await producer
    await asyncio.wait(calls)
    assert all(task.done() for task in before)  # drained: every call that had joined has its outcome
    assert waited <= 0.05 + 1e-9  # the longest bulk call in flight, not the traffic after it
    assert [task.result() for task in calls] == [("ok", item) for item in range(len(calls))]


async def test_drain_of_several_partitions_waits_for_all(clock):
    record = Recorder()

    @batch(max_window=NEVER, group_by=lambda item, pause: pause)
    async def work(item, pause):
        items = await collect(item)
        record(items)
        await asyncio.sleep(pause)
        return scatter(items)

    tasks = await started(work(1, 0.2), work(2, 0.7), work(3, 0.2))
    start = clock.now()

    await work.drain()

    assert clock.now() - start == pytest.approx(0.7)
    assert [task.result() for task in tasks] == [1, 2, 3]
    assert sorted(record) == [[1, 3], [2]]


async def test_drain_woken_by_partitions_ending_in_the_same_turn_returns_once_all_are_idle(clock):
    record = Recorder()

    @batch(max_window=NEVER, group_by=lambda item, tenant: tenant)
    async def work(item, tenant):
        items = await collect(item)
        record(tenant, items)
        await asyncio.sleep(0.3)
        return scatter(items)

    tasks = await started(work(1, "a"), work(2, "b"), work(3, "c"))
    start = clock.now()

    await work.drain()

    assert clock.now() - start == pytest.approx(0.3)
    assert [task.result() for task in tasks] == [1, 2, 3]
    assert sorted(record) == [("a", [1]), ("b", [2]), ("c", [3])]
    assert batcher_of(work).partitions == {}


async def test_drain_inside_a_call_of_the_same_function_is_a_runtime_error():
    @batch(max_window=NEVER, max_size=1)
    async def work(item):
        items = await collect(item)
        await work.drain()
        return scatter(items)

    with pytest.raises(RuntimeError, match=r"drain\(\) was awaited inside a call of the same function") as info:
        await work(1)

    assert work.__qualname__ in str(info.value)
    assert work.stats().leader_failures == 1


async def test_drain_inside_a_call_of_another_function_waits_for_that_function():
    record = Recorder()
    echo = make_echo(record, max_window=NEVER)

    @batch(max_size=1)
    async def shutdown(item):
        items = await collect(item)
        await echo.drain()
        return scatter(items)

    tasks = await started(echo(1), echo(2))
    assert await shutdown("now") == "now"

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2)]
    assert record == [[1, 2]]


async def test_cancelling_drain_leaves_the_batches_alone(clock):
    record = Recorder()
    echo = make_echo(record, bulk=5.0, max_window=NEVER)
    tasks = await started(echo(1))
    drain = asyncio.create_task(echo.drain())
    await asyncio.sleep(1.0)

    drain.cancel()
    await asyncio.wait([drain])

    assert drain.cancelled()
    assert batcher_of(echo).drainers == []
    assert not tasks[0].done()
    assert await tasks[0] == ("ok", 1)
    assert record == [[1]]


async def test_two_drains_at_once_both_return():
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER)
    tasks = await started(echo(1), echo(2))

    drains = await started(echo.drain(), echo.drain())
    assert not any(drain.done() for drain in drains)
    assert len(batcher_of(echo).drainers) == 2
    gate.set()
    await asyncio.gather(*drains)

    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2)]
    assert batcher_of(echo).drainers == []


def test_drain_does_not_wait_for_another_loops_batches():
    record = Recorder()
    echo = make_echo(record, max_window=NEVER)

    async def here():
        task = asyncio.create_task(echo("here"))
        await wait_all_tasks_blocked()
        await echo.drain()  # flushes and waits for this loop's batch only
        return task.result()

    with call_open_on_another_loop(echo, echo.drain) as results:
        assert asyncio.run(here()) == ("ok", "here")
        assert record == [["here"]]
    assert results == [("ok", "other")]


# --------------------------------------------------------------------------------------
# Weighted batches
# --------------------------------------------------------------------------------------


def make_weighed(record, *, weight=lambda item: item, max_weight=10, **options):
    options.setdefault("max_window", NEVER)
    options.setdefault("max_size", None)

    @batch(weight=weight, max_weight=max_weight, **options)
    async def work(item):
        items = await collect(item)
        record(items)
        return scatter(items)

    return work


async def test_a_batch_closes_when_its_weight_reaches_max_weight():
    record = Recorder()
    work = make_weighed(record)

    assert await asyncio.gather(work(3), work(3), work(4)) == [3, 3, 4]

    assert record == [[3, 3, 4]]
    assert work.stats().flushes["weight"] == 1


async def test_an_item_that_would_tip_the_open_batch_over_closes_it_and_starts_the_next():
    record = Recorder()
    work = make_weighed(record)

    tasks = await started(work(6), work(5), work(4))
    assert record == [[6]]  # 6 + 5 > 10: [6] went as it was; 5 + 4 = 9 stays open
    assert work.flush() == 1
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [6, 5, 4]
    assert record == [[6], [5, 4]]
    assert work.stats().flushes == {"size": 0, "window": 0, "tick": 0, "weight": 1, "flush": 1}


async def test_an_item_heavier_than_max_weight_forms_a_batch_of_one():
    record = Recorder()
    work = make_weighed(record)

    tasks = await started(work(3), work(15), work(12), work(1))

    # 15 closed [3] and went alone; so did 12; 1 waits. A lone leader resumes at once.
    assert sorted(record) == [[3], [12], [15]]
    assert work.flush() == 1
    await asyncio.wait(tasks)
    assert [task.result() for task in tasks] == [3, 15, 12, 1]
    assert record[-1] == [1]
    assert work.stats().flushes["weight"] == 3


async def test_weightless_items_never_close_a_batch():
    record = Recorder()
    work = make_weighed(record, max_size=4)

    assert await asyncio.gather(*(work(0) for _ in range(6)), work(10)) == [0] * 6 + [10]

    assert record == [[0, 0, 0, 0], [0, 0, 10]]
    assert work.stats().flushes == {"size": 1, "window": 0, "tick": 0, "weight": 1, "flush": 0}


async def test_fractional_weights_add_up():
    record = Recorder()
    work = make_weighed(record, max_weight=1.0)

    assert await asyncio.gather(*(work(0.25) for _ in range(4))) == [0.25] * 4

    assert record == [[0.25] * 4]


async def test_duplicates_under_dedupe_count_their_weight():
    record = Recorder()
    work = make_weighed(record, weight=len, max_weight=10, dedupe=True)

    tasks = await started(work("aaaa"), work("aaaa"), work("aaaa"))

    assert record == [["aaaa"]]  # 4 + 4 = 8; the third duplicate would make it 12
    assert work.flush() == 1
    await asyncio.wait(tasks)
    assert [task.result() for task in tasks] == ["aaaa"] * 3
    assert record == [["aaaa"], ["aaaa"]]


async def test_a_member_cancelled_while_open_gives_its_weight_back():
    record = Recorder()
    work = make_weighed(record)

    tasks = await started(work(6), work(3))
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    tasks += await started(work(6))  # 3 + 6 = 9: joins (with the cancelled 6 it would tip)
    assert record == []
    assert batcher_of(work).partitions  # still open
    tasks += await started(work(1))  # 9 + 1 = 10: full
    await asyncio.wait(tasks)

    assert [ended(task) for task in tasks] == ["cancelled", ("returned", 3), ("returned", 6), ("returned", 1)]
    assert record == [[3, 6, 1]]
    assert work.stats().flushes["weight"] == 1


async def test_a_weighed_batch_queued_for_a_slot_closes_when_heavy_enough():
    """While it waits for a slot a due batch keeps collecting, up to its weight budget."""
    record = Recorder()
    gate = asyncio.Event()

    @batch(max_window=0, max_size=None, max_concurrency=1, weight=lambda item: item, max_weight=10)
    async def work(item):
        items = await collect(item)
        record(items)
        await gate.wait()
        return scatter(items)

    tasks = await started(work(1))
    tasks += await started(work(4))  # due, queued, still collecting
    tasks += await started(work(5))  # 4 + 5 = 9
    tasks += await started(work(2))  # 9 + 2 > 10: the queued batch stops; 2 opens the next
    tasks += await started(work(8))  # 2 + 8 = 10: closed, queued behind
    gate.set()
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [1, 4, 5, 2, 8]
    assert record == [[1], [4, 5], [2, 8]]


async def test_max_size_still_applies_to_weighed_batches():
    record = Recorder()
    work = make_weighed(record, max_size=2, max_weight=100)

    assert await asyncio.gather(work(1), work(2), work(3), work(4)) == [1, 2, 3, 4]

    assert record == [[1, 2], [3, 4]]
    assert work.stats().flushes["size"] == 2


class WeightError(Exception):
    pass


def failing_weight(item):
    if item == "bad":
        raise WeightError(item)
    return 1


@pytest.mark.parametrize(
    ("weight", "error", "message"),
    [
        (failing_weight, WeightError, "bad"),
        (lambda item: "3", TypeError, "weight('bad') returned '3'; it must return a number >= 0"),
        (lambda item: None, TypeError, "weight('bad') returned None; it must return a number >= 0"),
        (lambda item: True, TypeError, "weight('bad') returned True; it must return a number >= 0"),
        (lambda item: -1, ValueError, "weight('bad') returned -1; it must return a finite number >= 0"),
        (lambda item: math.inf, ValueError, "weight('bad') returned inf; it must return a finite number >= 0"),
        (lambda item: math.nan, ValueError, "weight('bad') returned nan; it must return a finite number >= 0"),
    ],
    ids=["raises", "str", "none", "bool", "negative", "inf", "nan"],
)
async def test_a_bad_weight_fails_that_call_alone_before_it_joins(weight, error, message):
    record = Recorder()

    def weigh(item):
        return 1 if item != "bad" else weight(item)

    work = make_weighed(record, weight=weigh, max_weight=10)

    with pytest.raises(error) as info:
        await work("bad")
    assert message in str(info.value)
    assert batcher_of(work).partitions == {}  # it joined nothing, opened nothing

    tasks = await started(work(1))
    with pytest.raises(error):
        await work("bad")
    tasks += await started(work(2))
    assert work.flush() == 1
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [1, 2]
    assert record == [[1, 2]]
    stats = work.stats()
    assert (stats.calls, stats.batches, stats.items, stats.leader_failures) == (2, 1, 2, 0)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"weight": len}, ValueError, "weight needs max_weight: pass both, e.g. @batch(weight=len, max_weight=4096)"),
        ({"max_weight": 10}, ValueError, "max_weight needs weight: pass both"),
        ({"weight": len, "max_weight": 0}, ValueError, "max_weight must be > 0 and finite, or None, got 0"),
        ({"weight": len, "max_weight": math.inf}, ValueError, "max_weight must be > 0 and finite, or None, got inf"),
        ({"weight": len, "max_weight": "10"}, TypeError, "max_weight must be a number > 0 or None, got '10'"),
        ({"weight": 3, "max_weight": 10}, TypeError, "weight must be a callable or None, got 3"),
        ({"max_pending": 0}, ValueError, "max_pending must be >= 1 or None, got 0"),
        ({"max_pending": "5"}, TypeError, "max_pending must be an int >= 1 or None, got '5'"),
    ],
)
def test_weight_and_pending_options_are_validated_at_decoration(options, error, message):
    with pytest.raises(error) as info:
        batch(**options)
    assert message in str(info.value)


# --------------------------------------------------------------------------------------
# Load shedding (max_pending)
# --------------------------------------------------------------------------------------


async def test_max_pending_refuses_the_call_beyond_the_limit_and_keeps_the_others():
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_size=None, max_pending=3)

    tasks = await started(echo(1), echo(2), echo(3))
    with pytest.raises(OverloadedError) as info:
        await echo(4)

    error = info.value
    assert (error.function, error.limit) == (echo.__qualname__, 3)
    assert str(error) == (
        f"{echo.__qualname__}: 3 calls are already waiting for a batch (max_pending=3); "
        "this call was refused instead of queueing without bound"
    )
    assert not any(task.done() for task in tasks)
    assert echo.flush() == 1
    await asyncio.wait(tasks)
    assert [task.result() for task in tasks] == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert record == [[1, 2, 3]]
    stats = echo.stats()
    assert (stats.calls, stats.shed, stats.items) == (3, 1, 3)
    assert await echo.drain() is None


async def test_a_shed_call_fails_at_once_from_collect_and_its_body_may_catch_it():
    echo = make_echo(Recorder(), max_window=NEVER, max_pending=1)

    @batch(max_window=NEVER, max_pending=1)
    async def careful(item):
        try:
            items = await collect(item)
        except OverloadedError as error:
            return ("busy", error.limit)
        return scatter(items)

    tasks = await started(careful(1), echo(1))
    assert await careful(2) == ("busy", 1)
    assert careful.flush() == echo.flush() == 1
    assert await asyncio.gather(*tasks) == [1, ("ok", 1)]
    assert careful.stats().shed == 1


async def test_a_place_freed_by_a_cancelled_member_is_taken_by_the_next_call():
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_pending=2)

    tasks = await started(echo(1), echo(2))
    with pytest.raises(OverloadedError):
        await echo(3)
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    tasks += await started(echo(4))
    assert echo.flush() == 1
    await asyncio.wait(tasks)

    assert [ended(task) for task in tasks] == ["cancelled", ("returned", ("ok", 2)), ("returned", ("ok", 4))]
    assert record == [[2, 4]]


async def test_queued_batches_count_as_waiting_and_dispatched_ones_do_not():
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=NEVER, max_size=2, max_concurrency=1, max_pending=3)

    tasks = await started(echo(1), echo(2))  # dispatched: not waiting any more
    tasks += await started(echo(3), echo(4))  # full, queued for the slot: 2 waiting
    tasks += await started(echo(5))  # open: 3 waiting
    with pytest.raises(OverloadedError):
        await echo(6)
    assert record == [[1, 2]]
    gate.set()
    await asyncio.wait(tasks[:4])
    tasks += await started(echo(7))  # joins [5], which waited alone: full
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [("ok", x) for x in (1, 2, 3, 4, 5, 7)]
    assert record == [[1, 2], [3, 4], [5, 7]]
    assert echo.stats().shed == 1


async def test_a_due_batch_waiting_for_a_slot_counts_once():
    record = Recorder()
    gate = asyncio.Event()
    echo = make_echo(record, gate=gate, max_window=0, max_size=None, max_concurrency=1, max_pending=2)

    tasks = await started(echo(1))  # running
    tasks += await started(echo(2))  # due and queued, still open
    tasks += await started(echo(3))
    with pytest.raises(OverloadedError):
        await echo(4)
    gate.set()
    await asyncio.wait(tasks)

    assert record == [[1], [2, 3]]


async def test_max_pending_counts_each_partition_apart():
    record = Recorder()

    @batch(max_window=NEVER, max_pending=1, group_by=lambda item, tenant: tenant)
    async def work(item, tenant):
        items = await collect(item)
        record(tenant, items)
        return scatter(items)

    tasks = await started(work(1, "a"), work(2, "b"))
    with pytest.raises(OverloadedError):
        await work(3, "a")
    with pytest.raises(OverloadedError):
        await work(4, "b")
    assert work.flush() == 2
    await asyncio.wait(tasks)

    assert [task.result() for task in tasks] == [1, 2]
    assert sorted(record) == [("a", [1]), ("b", [2])]
    assert work.stats().shed == 2


async def test_duplicates_under_dedupe_count_as_waiting_calls():
    echo = make_echo(Recorder(), max_window=NEVER, dedupe=True, max_pending=2)

    tasks = await started(echo("x"), echo("x"))
    with pytest.raises(OverloadedError):
        await echo("x")
    assert echo.flush() == 1
    assert await asyncio.gather(*tasks) == [("ok", "x"), ("ok", "x")]


async def test_weights_and_shedding_together():
    record = Recorder()
    work = make_weighed(record, max_weight=10, max_pending=2)

    tasks = await started(work(3), work(3))
    with pytest.raises(OverloadedError):
        await work(9)  # refused before its weight could close the open batch
    assert record == []
    assert work.flush() == 1
    await asyncio.wait(tasks)
    assert record == [[3, 3]]


def test_overloaded_error_survives_pickling():
    error = OverloadedError("fetch", 8)

    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own data

    assert type(copy) is OverloadedError
    assert (copy.function, copy.limit, str(copy)) == ("fetch", 8, str(error))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"window": 0.1}, "configure() has no option window=; it is called max_window= here"),
        ({"max_windw": 0.1}, "did you mean max_window=?"),
        ({"dedupe": True}, "its options are: max_window, max_size, max_concurrency, max_weight, max_pending"),
    ],
    ids=["other-release", "typo", "not-configurable"],
)
def test_configure_with_an_option_it_does_not_have_names_the_one_meant(options, words):
    """configure(window=...) and typos are a TypeError naming the option, and nothing changes."""
    echo = make_echo(max_window=0.5)

    with pytest.raises(TypeError) as info:
        echo.configure(**options)

    assert words in str(info.value)
    assert str(info.value).startswith(f"{echo.__qualname__}.configure()")
    assert batcher_of(echo).max_window == 0.5


async def test_drain_waits_for_a_member_cancelled_in_the_turn_it_was_called(clock):
    """The flush ends a batch whose only member was just cancelled: drain() still waits for it to leave."""
    echo = make_echo(max_window=NEVER)
    task = asyncio.create_task(echo(1))
    await wait_all_tasks_blocked()

    task.cancel()  # its task has not run yet: it is still a member
    await echo.drain()

    assert task.cancelled()
    assert echo.stats().cancellations == 1
