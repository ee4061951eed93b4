"""``fn.stats()`` on every runtime: counters, flush reasons, sizes and gauges (docs/operating.md).

Counters run from the decoration (or the last ``stats(reset=True)``): ``calls`` that joined a
batch, ``batches`` dispatched with the reason each stopped collecting, ``items`` passed to the
(last) leader, failures, handovers, cancellations and shed calls, and summaries of batch
sizes, waits and bulk durations. The gauges ``open_now`` and ``in_flight_now`` are read when
the snapshot is taken, and never reset. Each test asserts the whole snapshot.
"""

from __future__ import annotations

import contextlib
import functools

import anyio
import pytest
from tests.runtimes import kit

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio

NEVER = 3600.0
NO_FLUSHES = dict.fromkeys(("size", "window", "tick", "weight", "flush"), 0)


def shape(summary):
    """A Summary as (count, total, max, {bucket bound: count} for the non-empty buckets)."""
    buckets = {bound: count for bound, count in summary.buckets if count}
    return summary.count, round(summary.total, 6), round(summary.max, 6), buckets


def counters(stats):
    """Every field of a snapshot, the summaries by their shape."""
    return {
        "calls": stats.calls,
        "batches": stats.batches,
        "items": stats.items,
        "flushes": dict(stats.flushes),
        "leader_failures": stats.leader_failures,
        "handovers": stats.handovers,
        "cancellations": stats.cancellations,
        "shed": stats.shed,
        "open_now": stats.open_now,
        "in_flight_now": stats.in_flight_now,
        "batch_size": shape(stats.batch_size),
        "wait_time": shape(stats.wait_time),
        "bulk_duration": shape(stats.bulk_duration),
    }


EMPTY = (0, 0.0, 0.0, {})


async def play(*steps):
    """Run every ``(at, action)`` at its virtual time, each in a task of its own."""
    t0 = kit.now()

    async def step(at, action):
        await anyio.sleep_until(t0 + at)
        with contextlib.suppress(Exception):  # each test asserts what the stats say about it
            await action()

    async with anyio.create_task_group() as tg:
        for at, action in steps:
            tg.start_soon(step, at, action)


def sync(action):
    async def run():
        action()

    return run


@pytest.mark.virtual_clock
async def test_counters_reasons_sizes_and_times_of_four_batches():
    """A batch flushed by size, one by its window, one by flush() and one by the tick: every field."""

    @batch(max_window=0.04, max_size=3)
    async def work(item):
        items = await collect(item)
        await anyio.sleep(0.07)
        return scatter(items)

    await play(
        *((0.01 * i, functools.partial(work, f"a{i}")) for i in range(3)),  # full at .02
        (0.03, functools.partial(work, "b1")),
        (0.04, functools.partial(work, "b2")),  # window: .07
        (0.2, functools.partial(work, "c1")),
        (0.215, sync(work.flush)),
        (0.3, sync(lambda: work.configure(max_window=0))),
        (0.31, functools.partial(work, "d1")),  # tick: dispatched at .31
    )

    assert counters(work.stats()) == {
        "calls": 7,
        "batches": 4,
        "items": 7,
        "flushes": {**NO_FLUSHES, "size": 1, "window": 1, "flush": 1, "tick": 1},
        "leader_failures": 0,
        "handovers": 0,
        "cancellations": 0,
        "shed": 0,
        "open_now": 0,
        "in_flight_now": 0,
        "batch_size": (4, 7.0, 3.0, {1.0: 2, 2.0: 1, 5.0: 1}),
        "wait_time": (4, 0.075, 0.04, {0.0001: 1, 0.05: 3}),  # .02, .04, .015 and 0
        "bulk_duration": (4, 0.28, 0.07, {0.1: 4}),
    }


@pytest.mark.virtual_clock
async def test_failures_handovers_cancellations_and_shed_calls_are_counted_once_each():
    scopes = {}

    @batch(max_window=0.04, max_pending=2)
    async def work(item):
        items = await collect(item)
        await anyio.sleep(0.07)
        if "boom" in items:
            raise LookupError(items)
        return scatter(items)

    def call(item):
        async def run():
            with anyio.CancelScope() as scopes[item]:
                await work(item)

        return run

    await play(
        (0.0, call("boom")),  # its batch runs .04-.11 and fails
        (0.01, call("x")),
        (0.02, sync(lambda: scopes["x"].cancel())),  # noqa: PLW0108 -- no scope yet  # leaves the open batch: a cancellation
        (0.2, call("b1")),
        (0.21, call("b2")),
        (0.22, call("b3")),  # two calls wait already: shed
        (0.3, sync(lambda: scopes["b1"].cancel())),  # noqa: PLW0108 -- no scope yet  # the leader, in its bulk call from .24: a handover
    )

    assert counters(work.stats()) == {
        "calls": 4,  # boom, x, b1, b2: b3 never joined
        "batches": 2,
        "items": 2,  # what each batch's last leader received
        "flushes": {**NO_FLUSHES, "window": 2},
        "leader_failures": 1,
        "handovers": 1,
        "cancellations": 1,
        "shed": 1,
        "open_now": 0,
        "in_flight_now": 0,
        "batch_size": (2, 2.0, 1.0, {1.0: 2}),
        "wait_time": (2, 0.08, 0.04, {0.05: 2}),
        "bulk_duration": (2, 0.2, 0.13, {0.1: 1, 0.5: 1}),  # .07, and .24 to .37 for the handed-over one
    }


async def test_gauges_count_batches_open_queued_and_in_flight_now():
    release = anyio.Event()

    @batch(max_window=NEVER, max_size=2, max_concurrency=1)
    async def work(item):
        items = await collect(item)
        await release.wait()
        return scatter(items)

    snapshots = []
    async with anyio.create_task_group() as tg:
        for item in ("a1", "a2", "b1", "b2", "c1"):  # [a1 a2] runs, [b1 b2] is queued, [c1] open
            tg.start_soon(work, item)
            await kit.quiesce()
        snapshots.append(work.stats())
        release.set()
        await kit.quiesce()  # [a1 a2] and [b1 b2] ran; [c1] waits for its window
        snapshots.append(work.stats())
        await work.drain()
        snapshots.append(work.stats())

    shapes = [(s.calls, s.batches, s.items, s.open_now, s.in_flight_now, dict(s.flushes)) for s in snapshots]
    assert shapes == [
        (5, 1, 0, 2, 1, {**NO_FLUSHES, "size": 1}),  # calls: 2 dispatched + 3 waiting
        (5, 2, 4, 1, 0, {**NO_FLUSHES, "size": 2}),
        (5, 3, 5, 0, 0, {**NO_FLUSHES, "size": 2, "flush": 1}),
    ]


async def test_reset_returns_the_snapshot_then_restarts_the_counters_but_not_the_gauges():
    """A batch in flight at the reset counts its dispatch before it and its end after it."""
    release = anyio.Event()

    @batch(max_window=NEVER, max_size=2)
    async def work(item):
        items = await collect(item)
        await release.wait()
        return scatter(items)

    async with anyio.create_task_group() as tg:
        for item in ("a", "b"):
            tg.start_soon(work, item)
            await kit.quiesce()
        before = work.stats(reset=True)
        after = work.stats()
        release.set()
    ended = work.stats()

    assert [(s.calls, s.batches, s.items, s.in_flight_now, s.flushes["size"]) for s in (before, after, ended)] == [
        (2, 1, 0, 1, 1),
        (0, 0, 0, 1, 0),  # counters restarted; the gauge is not
        (0, 0, 2, 0, 0),  # its end counts in the new interval
    ]
    assert [s.batch_size.count for s in (before, after, ended)] == [0, 0, 1]
    assert [shape(s.wait_time)[0] for s in (before, after, ended)] == [1, 0, 0]
