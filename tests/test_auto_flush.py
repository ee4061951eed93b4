"""``max_window="auto"`` through ``@batch``, on the virtual clock (issue 13).

The tuner's own decisions are tests/test_tuner.py; here the engine applies them: a batch
opens as a tick batch, is held while the in-flight limit is reached (until a running batch
ends, its hold expires, or it fills), and ``stats()`` and observers show the choices.
Tests that need estimates set them by reporting scripted batch ends to the function's tuner.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support import batcher_of, property_examples, run_virtual, wait_all_tasks_blocked

from concresce import Auto, BatchRecord, Tuning, batch, collect, scatter

pytestmark = pytest.mark.anyio


def make(record, *, bulk=1.0, **options):
    """An ``"auto"`` function whose leader records ``(time, items)`` and works ``bulk`` seconds."""
    options.setdefault("max_window", "auto")

    @batch(**options)
    async def work(item):
        items = await collect(item)
        record.append((asyncio.get_running_loop().time(), items))
        await asyncio.sleep(bulk)
        return scatter(items)

    return work


def warm(fn, *, limit=1, duration=1.0, size=10, gap=0.01):
    """Give ``fn``'s tuner estimates: batches of ``duration`` s, ``size / gap`` items per second."""
    tuner = batcher_of(fn).tuner
    for index in range(3):
        tuner.ended(size, duration, duration, -10.0 + index * gap, 1)
    tuner.limit = limit
    return tuner


async def calls_at(fn, schedule):
    """Call ``fn(item)`` at each ``(time, item)``; return every result, in schedule order."""

    async def one(at, item):
        await asyncio.sleep(at - asyncio.get_running_loop().time())
        return await fn(item)

    return await asyncio.gather(*(one(at, item) for at, item in schedule))


@pytest.mark.virtual_clock
async def test_a_lone_caller_never_waits():
    """Sequential calls: each batch goes on the next loop turn, nothing is ever held."""
    record = []
    records: list[BatchRecord] = []
    work = make(record, bulk=0.5, observer=records.append)

    assert [await work(item) for item in range(3)] == [0, 1, 2]

    assert record == [(0.0, [0]), (0.5, [1]), (1.0, [2])]
    assert [(r.reason, r.waited) for r in records] == [("tick", 0.0)] * 3
    assert [r.tuning.in_flight_limit for r in records if r.tuning] == [2, 2, 2]
    tuning = work.stats().tuning
    assert tuning is not None
    assert tuning.batches == 3
    assert tuning.round_trip == pytest.approx(0.5)
    assert tuning.arrival_rate == pytest.approx(2.0)  # one item every 0.5 s


@pytest.mark.virtual_clock
async def test_a_batch_due_at_the_limit_is_held_until_a_running_batch_ends():
    """Group commit: calls at 0.1 and 0.5 share the batch that goes when the first ends at 1.0."""
    record = []
    work = make(record)
    warm(work, limit=1)

    results = await calls_at(work, [(0.0, "a"), (0.1, "b"), (0.1, "c"), (0.5, "d")])

    assert results == ["a", "b", "c", "d"]
    assert record == [(0.0, ["a"]), (1.0, ["b", "c", "d"])]


@pytest.mark.virtual_clock
async def test_below_the_limit_a_due_batch_goes_at_once():
    """With a limit of 2, the second batch runs beside the first, as with tick batching."""
    record = []
    work = make(record)
    warm(work, limit=2)

    await calls_at(work, [(0.0, "a"), (0.1, "b"), (0.5, "c")])

    # The third is due with two in flight: held until the first ends at 1.0.
    assert record == [(0.0, ["a"]), (0.1, ["b"]), (1.0, ["c"])]


@pytest.mark.virtual_clock
async def test_the_hold_expires_at_the_ceiling():
    """``Auto(ceiling=0.25)``: the held batch goes at 0.1 + 0.25 though the first still runs."""
    record = []
    records: list[BatchRecord] = []
    work = make(record, max_window=Auto(ceiling=timedelta(milliseconds=250)), observer=records.append)
    warm(work, limit=1)

    await calls_at(work, [(0.0, "a"), (0.1, "b")])

    assert record == [(0.0, ["a"]), (0.35, ["b"])]
    assert [(r.reason, r.waited) for r in records] == [("tick", 0.0), ("tick", pytest.approx(0.25))]
    assert [r.tuning.in_flight_limit for r in records if r.tuning] == [1, 1]
    assert records[1].tuning.hold_limit == 0.25


@pytest.mark.virtual_clock
async def test_a_held_batch_that_fills_goes_at_once():
    """``max_size`` bounds a held batch: the call that fills it dispatches it."""
    record = []
    records: list[BatchRecord] = []
    work = make(record, max_size=2, observer=records.append)
    warm(work, limit=1)

    await calls_at(work, [(0.0, "a"), (0.1, "b"), (0.3, "c"), (0.4, "d")])

    # d is held too; when a ends, b and c still run, at the limit: d goes when they end.
    assert record == [(0.0, ["a"]), (0.3, ["b", "c"]), (1.3, ["d"])]
    assert [r.reason for r in records] == ["tick", "size", "tick"]


@pytest.mark.virtual_clock
async def test_a_batch_is_not_held_when_no_other_call_is_expected():
    """Sparse arrivals (a call every 2 s, batches of 1 s): the second batch runs beside the first."""
    record = []
    work = make(record)
    warm(work, limit=1, size=1, gap=2.0)

    await calls_at(work, [(0.0, "a"), (0.1, "b")])

    assert record == [(0.0, ["a"]), (0.1, ["b"])]


@pytest.mark.virtual_clock
async def test_max_concurrency_stays_a_hard_bound():
    """A hold that expires with every ``max_concurrency`` slot busy queues the batch for a slot."""
    record = []
    work = make(record, max_window=Auto(ceiling=0.25), max_concurrency=1)
    warm(work, limit=1)

    await calls_at(work, [(0.0, "a"), (0.1, "b"), (0.2, "c")])

    assert record == [(0.0, ["a"]), (1.0, ["b", "c"])]


@pytest.mark.virtual_clock
async def test_flush_and_cancellation_of_a_held_batch():
    """``flush()`` dispatches a held batch now; a held batch whose members all leave is dropped."""
    record = []
    work = make(record)
    warm(work, limit=1)
    first = asyncio.create_task(work("a"))
    await wait_all_tasks_blocked()
    held = asyncio.create_task(work("b"))
    await asyncio.sleep(0.1)  # b's batch is due (tick) and held
    assert batcher_of(work).partitions[asyncio.get_running_loop()].held is not None
    held.cancel()
    await wait_all_tasks_blocked()
    assert work.stats().open_now == 0
    second = asyncio.create_task(work("c"))
    await asyncio.sleep(0.1)
    assert work.flush() == 1

    assert [await first, await second] == ["a", "c"]
    assert held.cancelled()
    assert record == [(0.0, ["a"]), (0.2, ["c"])]


@pytest.mark.virtual_clock
async def test_configure_switches_between_auto_and_a_fixed_window():
    """``configure(max_window=...)`` keeps the estimates while it stays auto, drops them when not."""
    record = []
    work = make(record, max_window=0.5)
    assert work.stats().tuning is None
    work.configure(max_window="auto")
    tuner = warm(work, limit=1)
    work.configure(max_size=10, max_concurrency=3)  # still auto, same tuner, new bounds
    assert batcher_of(work).tuner is tuner
    assert tuner.bound == 3
    work.configure(max_window=Auto(ceiling=0.1))
    assert batcher_of(work).tuner is tuner
    assert tuner.ceiling == 0.1
    first = asyncio.create_task(work("a"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(work("b"))
    await asyncio.sleep(0.01)  # b is held
    work.configure(max_window=0.2)  # a number again: the held batch goes when the first ends
    assert work.stats().tuning is None

    assert [await first, await second] == ["a", "b"]
    assert record == [(0.0, ["a"]), (pytest.approx(0.15), ["b"])]


@pytest.mark.virtual_clock
async def test_a_held_batch_waits_on_when_the_limit_went_down():
    """A batch ends while the limit is lower than what still runs: the held batch keeps waiting."""
    record = []
    # Two batches in flight, then the limit drops to 1 and a third is held.
    gate = asyncio.Event()

    @batch(max_window="auto")
    async def gated(item):
        items = await collect(item)
        record.append((asyncio.get_running_loop().time(), items))
        await gate.wait() if item != "c" else await asyncio.sleep(0.2)
        return scatter(items)

    tuner = warm(gated, limit=2)
    tasks = [asyncio.create_task(gated("a"))]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(gated("c")))
    await asyncio.sleep(0.01)
    tuner.limit = 1
    tasks.append(asyncio.create_task(gated("d")))
    await asyncio.sleep(0.3)  # c ended at 0.21; 1 batch still runs, limit 1: d is still held
    assert [items for _, items in record] == [["a"], ["c"]]
    gate.set()

    assert await asyncio.gather(*tasks) == ["a", "c", "d"]
    assert [items for _, items in record] == [["a"], ["c"], ["d"]]


def test_auto_is_validated():
    """``"auto"`` is the only string; a ceiling must be > 0 and finite."""
    assert Auto() == Auto(None)
    assert Auto(0.5).seconds == 0.5
    assert Auto().seconds is None
    with pytest.raises(ValueError, match=r"Auto\(ceiling=...\) must be > 0 and finite, or None, got 0"):
        Auto(0)
    with pytest.raises(ValueError, match=r"ceiling must be >= 0 and finite, got inf"):
        Auto(math.inf)
    with pytest.raises(TypeError, match=r"max_window must be a number of seconds .* \"auto\" or an Auto\(\)"):
        batch(max_window="Auto")


def test_tuning_is_frozen():
    """``Tuning`` is a frozen record."""
    tuning = Tuning(1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    with pytest.raises(AttributeError):
        tuning.in_flight_limit = 2  # type: ignore[misc]


# -- properties -------------------------------------------------------------------------

schedules = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30)), min_size=1, max_size=40)


@settings(deadline=None, max_examples=property_examples(200), suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=schedules,
    max_size=st.none() | st.integers(1, 6),
    max_concurrency=st.none() | st.integers(1, 3),
    ceiling=st.none() | st.integers(1, 20),
)
def test_auto_never_crosses_its_bounds(schedule, max_size, max_concurrency, ceiling):
    """Any arrivals and bulk durations (ms): every call gets its result, no batch exceeds
    ``max_size``, no more than ``max_concurrency`` run at once, and without a slot limit no
    batch waits longer than its ceiling."""
    window = Auto(None if ceiling is None else ceiling / 1000)
    records: list[BatchRecord] = []
    running = [0, 0]  # now, most

    @batch(max_window=window, max_size=max_size, max_concurrency=max_concurrency, observer=records.append)
    async def work(item):
        items = await collect(item)
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(items[0][1] / 1000)
        running[0] -= 1
        return scatter(items)

    async def main():
        async def one(at, item):
            await asyncio.sleep(at / 1000)
            return await work(item)

        calls = [(at, (index, bulk)) for index, (at, bulk) in enumerate(schedule)]
        return await asyncio.gather(*(one(at, item) for at, item in calls))

    results = run_virtual(main)

    assert results == [(index, bulk) for index, (_, bulk) in enumerate(schedule)]
    assert sum(r.size for r in records) == len(schedule)
    assert all(r.size <= (max_size or math.inf) for r in records)
    assert running[1] <= (max_concurrency or math.inf)
    for r in records:
        assert r.tuning is not None
        assert 1 <= r.tuning.in_flight_limit <= (max_concurrency or math.inf)
        if ceiling is not None and max_concurrency is None:
            assert r.waited <= ceiling / 1000 + 1e-9


def test_auto_on_trio_holds_and_releases_like_on_asyncio():
    """On trio (MockClock): a lone call goes at once; a batch due at the limit goes when the first ends."""
    record = []

    @batch(max_window="auto")
    async def work(item):
        items = await collect(item)
        record.append((trio.current_time(), items))
        await trio.sleep(1.0)
        return scatter(items)

    async def at(when, item, results):
        await trio.sleep_until(when)
        results[item] = await work(item)

    async def main():
        results = {}
        warm(work, limit=1)
        await work("lone")  # nothing in flight: it goes at once
        async with trio.open_nursery() as nursery:
            for when, item in [(1.0, "a"), (1.1, "b"), (1.5, "c")]:
                nursery.start_soon(at, when, item, results)
        return results

    results = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert results == {"a": "a", "b": "b", "c": "c"}
    assert record == [(0.0, ["lone"]), (1.0, ["a"]), (2.0, ["b", "c"])]
