"""Misuse on every runtime (SPEC.md "Faults and misuse"; docs/semantics.md "Faults and misuse").

``collect()`` and ``scatter()`` used where they do not belong, a leader that forgets
``scatter()``, and a call that never collects: each misuse is a ``RuntimeError`` with a
message that says what to do, in the calls it concerns. Members join one after the other
(:func:`tests.runtimes.callers.start_in_order`), so who leads is known on every backend.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from tests.runtimes.callers import NEVER, Caller, callers, run_in_order

from concresce import batch, collect, scatter

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
