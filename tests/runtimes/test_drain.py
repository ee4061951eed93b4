"""``await fn.drain()`` on every runtime (SPEC.md "Cancellation and time-outs"; docs/decisions.md 23).

``drain()`` flushes the function's open batches on the running loop (run) and returns once
every call that had joined a batch when it was called has its outcome: the batches that
exist then (open, queued for a slot or in flight). Calls that arrive later open batches it
does not wait for, so steady traffic never delays it. Awaited inside a call of the same
function it would wait for itself: a ``RuntimeError``.
"""

from __future__ import annotations

import functools

import anyio
import pytest
from tests.runtimes import kit

from concresce import batch, collect, scatter

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
