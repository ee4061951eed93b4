"""Followers and the internal resume signal, on every runtime (SPEC.md "Faults and misuse").

A follower unwinds from ``collect()`` by an internal signal when its result is routed. A
follower that swallows it gets a ``RuntimeError``; one that catches its *own* error returns
what it likes; ``except Exception`` never sees the signal; and the signal gets through user
structure around ``collect()``: task groups (as an exception group, with the group's other
tasks cancelled), context managers, cancel scopes. Members join one after the other, so who
leads is known on every backend.
"""

from __future__ import annotations

import contextlib

import anyio
import pytest
from tests.runtimes.callers import NEVER, Journal, callers, run_in_order

from concresce import MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


class LeaderError(Exception):
    """What a leader's bulk call raises."""


# --------------------------------------------------------------------------------------
# Followers and the resume signal
# --------------------------------------------------------------------------------------


async def test_a_follower_swallowing_the_resume_signal_gets_a_runtime_error():
    """`except BaseException` that swallows the signal and returns is a RuntimeError; the others are unaffected."""

    @batch(max_window=NEVER, max_size=3)
    async def work(x):
        try:
            items = await collect(x)
        except BaseException:  # the misuse under test
            if x == 2:
                return "swallowed"
            raise
        return scatter([item * 10 for item in items])

    outcomes = await run_in_order(*callers(work, 1, 2, 3))

    assert [outcomes[0], outcomes[2]] == [("returned", 10), ("returned", 30)]
    kind, error = outcomes[1]
    assert (kind, type(error)) == ("raised", RuntimeError)
    assert str(error) == (
        f"{work.__qualname__}: this call was a follower whose result had been routed, but its code swallowed "
        "the internal signal that unwinds it from collect() (an `except BaseException` around collect()?) "
        "and returned; let BaseException propagate"
    )


@pytest.mark.parametrize("fault", ["leader error", "missing key", "exception result"])
async def test_a_follower_that_catches_its_own_error_returns_its_value(fault):
    """A follower that catches the error raised from its collect() and returns a value returns that value."""
    journal = Journal()

    @batch(max_window=NEVER, max_size=2)
    async def work(x):
        try:
            await collect(x)
        except (LeaderError, MissingResultError, ValueError) as error:
            journal(x, "caught", type(error).__name__)
            return "recovered"
        if fault == "leader error":
            raise LeaderError(x)
        if fault == "missing key":
            return scatter({1: "r1"})
        return scatter(["r1", ValueError("no result for 2")])

    outcomes = await run_in_order(*callers(work, 1, 2))

    caught = {"leader error": "LeaderError", "missing key": "MissingResultError", "exception result": "ValueError"}
    assert journal.calls() == {2: [("caught", caught[fault])]}
    assert outcomes[1] == ("returned", "recovered")
    if fault == "leader error":
        assert type(outcomes[0][1]) is LeaderError
    else:
        assert outcomes[0] == ("returned", "r1")


async def test_except_exception_around_collect_never_catches_the_resume_signal():
    """An `except Exception` handler around collect() does not run when a follower's result is routed."""
    journal = Journal()

    @batch(max_window=NEVER, max_size=3)
    async def work(x):
        try:
            items = await collect(x)
        except Exception:  # noqa: BLE001 -- the point: it must not catch the signal
            journal(x, "caught")
            return "wrong"
        return scatter([item * 10 for item in items])

    assert await run_in_order(*callers(work, 1, 2, 3)) == [("returned", 10), ("returned", 20), ("returned", 30)]
    assert journal.calls() == {}


# --------------------------------------------------------------------------------------
# User structure around collect()
# --------------------------------------------------------------------------------------


async def test_collect_inside_a_task_group_with_a_running_child_works_for_leader_and_followers():
    """The signal gets out of a task group block (as an exception group) and the group's child is cancelled."""
    journal = Journal()

    async def heartbeat(x):
        try:
            await anyio.sleep_forever()
        finally:
            journal(x, "heartbeat ended")

    async def bulk(items, box):
        box.extend(item * 10 for item in items)

    @batch(max_window=NEVER, max_size=3)
    async def work(x):
        async with anyio.create_task_group() as group:
            group.start_soon(heartbeat, x)
            items = await collect(x)
            box = []
            async with anyio.create_task_group() as inner:
                inner.start_soon(bulk, items, box)  # the bulk call in a child task
            journal(x, "lead", items)
            group.cancel_scope.cancel()
            return scatter(box)

    outcomes = await run_in_order(*callers(work, 1, 2, 3))

    assert outcomes == [("returned", 10), ("returned", 20), ("returned", 30)]
    assert journal.calls() == {
        1: [("lead", [1, 2, 3]), "heartbeat ended"],
        2: ["heartbeat ended"],
        3: ["heartbeat ended"],
    }


@pytest.mark.parametrize("kind", ["asynccontextmanager", "contextmanager", "AsyncExitStack", "CancelScope"])
async def test_collect_inside_context_managers_unwinds_each_follower_when_its_result_is_routed(kind):
    """Each follower's context managers exit when its result is routed (after the bulk section), not before."""
    journal = Journal()

    @contextlib.asynccontextmanager
    async def async_tracked(x):
        journal(x, "enter")
        try:
            yield
        finally:
            journal(x, "exit")

    @contextlib.contextmanager
    def tracked(x):
        journal(x, "enter")
        try:
            yield
        finally:
            journal(x, "exit")

    def bulk(x, items):
        journal(x, "bulk", items)
        return scatter([item * 10 for item in items])

    @batch(max_window=NEVER, max_size=3)
    async def work(x):
        if kind == "asynccontextmanager":
            async with async_tracked(x):
                return bulk(x, await collect(x))
        if kind == "contextmanager":
            with tracked(x):
                return bulk(x, await collect(x))
        if kind == "CancelScope":
            with anyio.CancelScope(), tracked(x), anyio.move_on_after(NEVER):
                return bulk(x, await collect(x))
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(journal, x, "exit")
            journal(x, "enter")
            return bulk(x, await collect(x))

    outcomes = await run_in_order(*callers(work, 1, 2, 3))

    assert outcomes == [("returned", 10), ("returned", 20), ("returned", 30)]
    assert journal.calls() == {1: ["enter", ("bulk", [1, 2, 3]), "exit"], 2: ["enter", "exit"], 3: ["enter", "exit"]}
    bulk_step = journal.step(1, ("bulk", [1, 2, 3]))
    assert journal.step(2, "exit") > bulk_step
    assert journal.step(3, "exit") > bulk_step
