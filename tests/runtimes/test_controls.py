"""The run-time controls of a decorated function on every runtime: ``configure()``, ``flush()``, ``drain()``.

(docs/operating.md "Tuning at run time" and "Shutdown"; docs/decisions.md 22 and 23.)

* ``configure()`` validates every option first and changes nothing if one is invalid; window,
  size and weight limits apply from the next batch (a batch collecting keeps its own);
  ``max_pending`` from the next call; a raised ``max_concurrency`` dispatches queued batches
  at once, a lowered one lets the running batches finish.
* ``flush()`` closes every open batch of the function on the running loop now (reason
  ``flush``) and returns how many; with every slot busy the batch queues.
* ``await drain()`` returns once every call that had joined a batch when it was called has
  its outcome; arrivals after that never delay it; inside a call of the same function it is a
  ``RuntimeError``.
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


# --------------------------------------------------------------------------------------
# drain: waiting for the batches of now
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_drain_returns_at_once_when_idle():
    s = Script()
    work = s.work()

    await work.drain()

    assert s.at() == 0.0


@pytest.mark.virtual_clock
async def test_drain_waits_for_exactly_the_batches_that_exist_when_it_is_called():
    """It flushes the open batches and waits for them and those running or queued; later calls never delay it."""
    s = Script()
    work = s.work(bulk=0.1, max_window=0.05, max_concurrency=1)
    call = functools.partial(s.call, work)

    async def drain():
        await work.drain()
        s.returned["drain"] = s.at()

    await s.play(
        (0.0, lambda: call("a")),  # runs .05-.15
        (0.06, lambda: call("b")),  # due at .11, queued
        (0.12, lambda: call("c")),  # joins b's batch while it waits
        (0.13, drain),  # closes [b c]: it runs .15-.25
        (0.14, lambda: call("d")),  # a new batch, due .19, runs .25-.35: not waited for
    )

    assert s.runs == [(["a"], 0.05), (["b", "c"], 0.15), (["d"], 0.25)]
    assert s.returned == {"a": 0.15, "b": 0.25, "c": 0.25, "drain": 0.25, "d": 0.35}


@pytest.mark.virtual_clock
async def test_drain_returns_under_steady_traffic():
    """Calls keep arriving every .01 until .3; drain() at .1 returns when the batches of then have ended."""
    s = Script()
    work = s.work(bulk=0.05, max_window=0.025)
    call = functools.partial(s.call, work)
    arrivals = [round(0.005 + 0.01 * i, 3) for i in range(30)]

    async def drain():
        await work.drain()
        s.returned["drain"] = s.at()

    await s.play(*((at, functools.partial(call, at)) for at in arrivals), (0.1, drain))

    # Batches open at .005, .035, .065, .095; the last one is flushed by drain() at .1 and
    # ends at .15. Every call made before .1 has returned by then.
    assert s.returned["drain"] == 0.15
    assert max(s.returned[at] for at in arrivals if at < 0.1) == 0.15
    assert s.runs[:5] == [
        ([0.005, 0.015, 0.025], 0.03),
        ([0.035, 0.045, 0.055], 0.06),
        ([0.065, 0.075, 0.085], 0.09),
        ([0.095], 0.1),  # flushed by drain()
        ([0.105, 0.115, 0.125], 0.13),  # calls after drain() open batches it does not wait for
    ]
    assert s.returned[arrivals[-1]] == 0.36  # [.285 .295]: .31-.36


async def test_drain_inside_a_call_of_the_same_function_is_a_runtime_error():
    """In the body before collect() or in the bulk section, drain() would wait for itself: RuntimeError."""
    errors = []

    @batch
    async def work(item):
        try:
            await work.drain()
        except RuntimeError as error:
            errors.append(("body", str(error)))
        items = await collect(item)
        try:
            await work.drain()
        except RuntimeError as error:
            errors.append(("bulk", str(error)))
        return scatter(items)

    with anyio.fail_after(10):
        assert await work("x") == "x"

    message = (
        f"{work.__qualname__}: drain() was awaited inside a call of the same function; it would wait "
        "for its own batch forever (drain from outside, e.g. at shutdown)"
    )
    assert errors == [("body", message), ("bulk", message)]


async def test_drain_inside_a_call_of_another_function_waits_for_that_function():
    s = Script()
    other = s.work(max_window=NEVER)

    @batch
    async def outer(item):
        items = await collect(item)
        await other.drain()  # flushes other's open batch and waits for it
        return scatter(items)

    async with anyio.create_task_group() as tg:
        tg.start_soon(s.call, other, "o")
        await kit.quiesce()
        with anyio.fail_after(10):
            assert await outer("x") == "x"
        drained = dict(s.returned)

    assert [items for items, _ in s.runs] == [["o"]]
    assert list(drained) == ["o"]  # "o" had its result when outer's drain() returned
