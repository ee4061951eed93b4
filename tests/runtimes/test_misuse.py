"""Misuse and the resume signal on every runtime (SPEC.md "Faults and misuse"; docs/semantics.md).

``collect()``/``scatter()`` used where they do not belong, a leader that forgets
``scatter()``, followers that catch what ``collect()`` raises, and user structure (task
groups, context managers, cancel scopes) around ``collect()``: the internal signal that
unwinds a follower must get through it. Members join one after the other
(:func:`tests.runtimes.callers.start_in_order`), so who leads is known on every backend.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.lowlevel
import pytest
from tests.runtimes.callers import NEVER, Caller, Journal, callers, run_in_order

from concresce import MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


class LeaderError(Exception):
    """What a leader's bulk call raises."""


# --------------------------------------------------------------------------------------
# collect() and scatter() where they do not belong
# --------------------------------------------------------------------------------------


async def test_collect_outside_a_batch_call_says_where_it_belongs():
    """collect() in a function that is not decorated with @batch is a RuntimeError saying what to do."""

    async def not_batched(x):
        return await collect(x)

    [(kind, error)] = await run_in_order(Caller(1, lambda: not_batched(1)))

    assert (kind, type(error)) == ("raised", RuntimeError)
    message = str(error)
    assert message.startswith("collect() was used outside a call of a @batch function")
    assert "await collect(item) in the body of an `async def` decorated with @batch" in message


async def test_collect_in_a_task_the_call_started_is_refused_and_the_call_fails():
    """collect() awaited by a child task of the call (not the call's own task) is a RuntimeError."""

    @batch
    async def work(x):
        box = []

        async def child():
            box.append(await collect(x))

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        return scatter(box[0])

    [(kind, error)] = await run_in_order(Caller(1, lambda: work(1)))

    assert kind == "raised"
    [inner] = error.exceptions  # from the task group
    assert type(inner) is RuntimeError
    assert "in the task that made the call" in str(inner)


async def test_collect_twice_in_one_call_fails_the_leader_and_its_followers():
    """A second collect() is a RuntimeError saying to collect one item: before scatter(), a fault for all."""

    @batch(max_window=NEVER, max_size=2)
    async def work(x):
        items = await collect(x)
        await collect(items)
        return scatter(items)

    outcomes = await run_in_order(*callers(work, 1, 2))

    message = (
        f"{work.__qualname__}: collect() was awaited twice in one call; each call contributes one item "
        "(collect a tuple or a list to contribute several)"
    )
    assert [(kind, type(error), str(error)) for kind, error in outcomes] == [("raised", RuntimeError, message)] * 2


async def test_scatter_outside_a_batch_call_says_where_it_belongs():
    """scatter() in a task that runs no @batch call is a RuntimeError."""
    with pytest.raises(RuntimeError, match=r"^scatter\(\) was used outside a call of a @batch function"):
        scatter([1])


async def test_scatter_before_collect_asks_to_collect_first():
    """scatter() in a call that has not awaited collect() says to write `items = await collect(item)`."""

    @batch
    async def work(x):
        return scatter([x])

    [(kind, error)] = await run_in_order(Caller(1, lambda: work(1)))

    assert (kind, type(error)) == ("raised", RuntimeError)
    assert str(error) == (
        f"{work.__qualname__}: scatter() was called before this call awaited collect(): is `await` missing "
        "before collect(item)? Write `items = await collect(item)`, then `return scatter(results)`"
    )


async def test_scatter_twice_fails_the_leaders_caller_only():
    """A second scatter() is a RuntimeError in the leader; the followers keep what the first one routed."""

    @batch(max_window=NEVER, max_size=3)
    async def work(x):
        items = await collect(x)
        own = scatter([item * 10 for item in items])
        scatter([item * 100 for item in items])
        return own

    (kind, error), *followers = await run_in_order(*callers(work, 1, 2, 3))

    assert (kind, type(error)) == ("raised", RuntimeError)
    assert str(error) == (
        f"{work.__qualname__}: scatter() was already called for this batch; call it once, with every result"
    )
    assert followers == [("returned", 20), ("returned", 30)]


async def test_scatter_in_a_follower_that_caught_its_error_is_for_leaders_only():
    """A follower that catches the leader's fault and calls scatter() gets a RuntimeError."""

    @batch(max_window=NEVER, max_size=2)
    async def work(x):
        try:
            await collect(x)
        except LeaderError:
            return scatter([x])
        raise LeaderError(x)

    (kind, error), (follower_kind, follower_error) = await run_in_order(*callers(work, 1, 2))

    assert (kind, type(error)) == ("raised", LeaderError)
    assert (follower_kind, type(follower_error)) == ("raised", RuntimeError)
    assert str(follower_error) == f"{work.__qualname__}: scatter() can only be called by the leader of a batch"


async def test_a_leader_returning_without_scatter_fails_every_member_with_a_runtime_error():
    """Contextual safety: no scatter() is a RuntimeError for every member, the leader's caller included."""

    @batch(max_window=NEVER, max_size=3)
    async def work(x):
        items = await collect(x)
        return [item * 10 for item in items]  # the bug: no scatter()

    outcomes = await run_in_order(*callers(work, 1, 2, 3))

    assert [(kind, type(error)) for kind, error in outcomes] == [("raised", RuntimeError)] * 3
    for _, error in outcomes:
        assert str(error).startswith(
            f"{work.__qualname__}: the leader returned without calling scatter(), so the other members of "
            "its batch got no result; end the leader's code with `return scatter(results)`"
        )


async def test_a_call_that_never_collects_is_an_ordinary_call():
    """A call that never awaits collect() returns or raises whatever its body does."""

    @batch
    async def work(x):
        await anyio.lowlevel.checkpoint()
        if x < 0:
            raise LeaderError(x)
        return x * 10

    outcomes = await run_in_order(*callers(work, 1, -1, 2))

    assert outcomes[0::2] == [("returned", 10), ("returned", 20)]
    assert (outcomes[1][0], type(outcomes[1][1]), str(outcomes[1][1])) == ("raised", LeaderError, "-1")


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
