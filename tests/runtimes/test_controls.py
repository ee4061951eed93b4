"""The run-time controls of a decorated function on every runtime: ``configure()`` and ``flush()``.

(docs/operating.md "Tuning at run time" and "Shutdown"; docs/decisions.md 22 and 23.)

* ``configure()`` validates every option first and changes nothing if one is invalid; window,
  size and weight limits apply from the next batch (a batch collecting keeps its own);
  ``max_pending`` from the next call; a raised ``max_concurrency`` dispatches queued batches
  at once, a lowered one lets the running batches finish.
* ``flush()`` closes every open batch of the function on the running loop now (reason
  ``flush``) and returns how many; with every slot busy the batch queues.

``drain()`` is in ``test_drain.py``.
"""

from __future__ import annotations

import functools

import anyio
import pytest
from tests.runtimes import kit

from concresce import OverloadedError, batch, collect, scatter

pytestmark = pytest.mark.anyio

NEVER = 3600.0


class Script:
    """Runs timed steps (calls and control actions) and records leader runs and returns, in virtual time."""

    def __init__(self):
        self.t0 = kit.now()
        self.runs = []
        self.returned = {}

    def at(self):
        return round(kit.now() - self.t0, 6)

    def work(self, *, bulk=0.0, **options):
        @batch(**options)
        async def work(item):
            items = await collect(item)
            self.runs.append((items, self.at()))
            if bulk:
                await anyio.sleep(bulk)
            return scatter(items)

        return work

    async def call(self, fn, item):
        try:
            return await fn(item)
        except Exception as error:  # noqa: BLE001 -- the outcome under test
            return error
        finally:
            self.returned[item] = self.at()

    async def play(self, *steps):
        """Run every ``(at, action)`` at its virtual time, each in a task; return their results."""

        async def step(at, action):
            await anyio.sleep_until(self.t0 + at)
            return await action()

        return await kit.gather(*(functools.partial(step, at, action) for at, action in steps))


def sync(action):
    async def run():
        return action()

    return run


# --------------------------------------------------------------------------------------
# configure: limits, validation, concurrency, shedding
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_configure_limits_apply_from_the_next_batch():
    """A batch collecting when configure() runs keeps its window and size; the next batch has the new ones."""
    s = Script()
    work = s.work(max_window=0.05, max_size=10)
    call = functools.partial(s.call, work)

    await s.play(
        (0.0, lambda: call("a")),
        (0.01, sync(lambda: work.configure(max_size=2, max_window=0.02))),
        (0.02, lambda: call("b")),
        (0.03, lambda: call("c")),  # a third member: the open batch's max_size is still 10
        (0.06, lambda: call("d")),
        (0.07, lambda: call("e")),  # fills the new batch: max_size=2
        (0.08, lambda: call("f")),  # alone: flushed by the new window, .02
    )

    assert s.runs == [(["a", "b", "c"], 0.05), (["d", "e"], 0.07), (["f"], 0.1)]


@pytest.mark.virtual_clock
async def test_an_invalid_configure_changes_nothing():
    """configure() checks every option before it changes one: after the errors the old limits still hold."""
    s = Script()
    work = s.work(max_window=0.05, max_size=3)

    errors = []
    for options in ({"max_window": 0.5, "max_size": 0}, {"max_size": 2, "max_window": -1}, {"window": 1}):
        with pytest.raises((TypeError, ValueError)) as caught:
            work.configure(**options)
        errors.append((type(caught.value), str(caught.value)))
    call = functools.partial(s.call, work)
    await s.play(*((0.01 * i, functools.partial(call, i)) for i in range(4)))

    assert errors == [
        (ValueError, "max_size must be >= 1 or None, got 0"),
        (ValueError, "max_window must be >= 0 and finite, got -1"),
        (TypeError, f"{work.__qualname__}.configure() has no option window=; it is called max_window= here"),
    ]
    assert s.runs == [([0, 1, 2], 0.02), ([3], 0.08)]  # size 3, window .05: unchanged


@pytest.mark.virtual_clock
async def test_raising_max_concurrency_dispatches_queued_batches_at_once_and_lowering_lets_running_ones_finish():
    s = Script()
    work = s.work(bulk=0.1, max_concurrency=1)
    call = functools.partial(s.call, work)

    await s.play(
        (0.0, lambda: call("a")),  # runs 0-.1
        (0.01, lambda: call("b")),  # queued behind it
        (0.02, sync(lambda: work.configure(max_concurrency=2))),  # b runs now, .02-.12
        (0.03, sync(lambda: work.configure(max_concurrency=1))),  # both keep running
        (0.04, lambda: call("c")),  # a slot frees when a ends (.1), but b still holds the only one
    )

    assert s.runs == [(["a"], 0.0), (["b"], 0.02), (["c"], 0.12)]
    assert s.returned == {"a": 0.1, "b": 0.12, "c": 0.22}


async def test_raising_max_concurrency_from_another_thread_dispatches_on_the_batches_run():
    """configure() in a worker thread: the queued batch is let into the new slot by its own run."""
    runs = []
    release = anyio.Event()

    @batch(max_concurrency=1)
    async def work(item):
        items = await collect(item)
        runs.append(items)
        await release.wait()
        return scatter(items)

    async with anyio.create_task_group() as tg:
        for item in ("a", "b"):  # a runs and waits; b is queued behind it
            tg.start_soon(work, item)
            await kit.quiesce()
        queued = list(runs)
        await anyio.to_thread.run_sync(lambda: work.configure(max_concurrency=2))
        await kit.quiesce()
        raised = list(runs)
        release.set()

    assert (queued, raised) == ([["a"]], [["a"], ["b"]])


@pytest.mark.virtual_clock
async def test_configure_max_pending_applies_to_the_next_call():
    s = Script()
    work = s.work(max_window=0.05)
    call = functools.partial(s.call, work)

    results = await s.play(
        (0.0, lambda: call("a")),
        (0.01, lambda: call("b")),
        (0.015, sync(lambda: work.configure(max_pending=2))),
        (0.02, lambda: call("c")),  # a and b wait: refused
        (0.025, sync(lambda: work.configure(max_pending=None))),
        (0.03, lambda: call("d")),
    )

    assert [r if isinstance(r, str) or r is None else type(r) for r in results] == [
        "a",
        "b",
        None,
        OverloadedError,
        None,
        "d",
    ]
    assert s.runs == [(["a", "b", "d"], 0.05)]


# --------------------------------------------------------------------------------------
# flush: closing open batches now
# --------------------------------------------------------------------------------------


async def test_flush_closes_every_open_batch_now_and_returns_how_many():
    runs = []
    records = []

    @batch(max_window=NEVER, group_by=lambda item: item[0], observer=records.append)
    async def work(item):
        items = await collect(item)
        runs.append(items)
        return scatter(items)

    flushed = []
    async with anyio.create_task_group() as tg:
        for item in ("x1", "y1", "x2"):
            tg.start_soon(work, item)
            await kit.quiesce()
        flushed.append(work.flush())  # x and y: both go now
        await kit.quiesce()
        tg.start_soon(work, "x3")  # opens a new batch
        await kit.quiesce()
        flushed.append(work.flush())
    flushed.append(work.flush())  # nothing open

    assert flushed == [2, 1, 0]
    assert sorted(runs) == [["x1", "x2"], ["x3"], ["y1"]]
    assert runs[-1] == ["x3"]
    assert [record.reason for record in records] == ["flush"] * 3


async def test_flush_with_every_slot_busy_queues_the_batch_and_later_calls_open_the_next():
    runs = []
    release = anyio.Event()

    @batch(max_window=NEVER, max_concurrency=1)
    async def work(item):
        items = await collect(item)
        runs.append(items)
        if items == ["a"]:
            await release.wait()
        return scatter(items)

    flushed = []
    async with anyio.create_task_group() as tg:
        for item in ("a", "b", "c"):  # each flushed alone: a runs, b and c queue in turn
            tg.start_soon(work, item)
            await kit.quiesce()
            flushed.append(work.flush())
            await kit.quiesce()
        queued = work.stats()
        release.set()

    assert flushed == [1, 1, 1]
    assert (queued.open_now, queued.in_flight_now) == (2, 1)
    assert runs == [["a"], ["b"], ["c"]]
