"""anyio cancel scopes inside bodies, on every runtime (SPEC.md "Faults and misuse: shared work",
"Cancellation and time-outs"; docs/semantics.md "Shared work", docs/decisions.md 6 and 39).

The code after ``collect()`` is shared work: the leader's scopes, around the bulk call or
opened before ``collect()``, apply to the whole batch. A deadline that expires there is a
``TimeoutError`` fault for every member (its cancellation request is withdrawn as the scope
exits: not a hand-over), a scope that gives up lets the leader scatter a fallback to all, a
shielded scope finishes the bulk call for all. A follower's own scope around ``collect()``
affects that follower only. Times are virtual (``kit.now()``), relative to the test's start.
"""

from __future__ import annotations

import anyio
import pytest
from tests.runtimes.callers import NEVER, Caller, Journal, callers, clock, run_all, start_in_order
from tests.support import copy_of

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------------------
# Inside the body: the leader's scopes bound the shared work
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_fail_after_around_the_bulk_call_in_the_body_is_a_fault_for_every_member():
    """A deadline the leader's body puts on the bulk call: TimeoutError for all, once, when it expires."""
    journal, now = Journal(), clock()

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        try:
            items = await collect(x)
        except TimeoutError:
            journal(x, "timed out in collect", now())
            raise
        journal(x, "lead", items, now())
        with anyio.fail_after(1.0):
            await anyio.sleep(10)
        return scatter(items)

    calls = callers(fn, 1, 2, 3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)

    assert journal.calls() == {
        1: [("lead", [1, 2, 3], 0.0)],
        2: [("timed out in collect", 1.0)],
        3: [("timed out in collect", 1.0)],
    }
    (kind, original), *followers = [call.outcome for call in calls]
    assert (kind, type(original)) == ("raised", TimeoutError)
    assert all(kind == "raised" and copy_of(error, original) for kind, error in followers)


@pytest.mark.virtual_clock
async def test_fail_after_opened_before_collect_bounds_the_leaders_shared_work_for_all():
    """The leader's deadline around collect() and the bulk call expires first: a fault for all, not a handover."""
    journal, now = Journal(), clock()

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        with anyio.fail_after(1.0):  # each caller's own deadline, from its arrival
            try:
                items = await collect(x)
            except TimeoutError:
                journal(x, "timed out in collect", now())
                raise
            journal(x, "lead", items, now())
            await anyio.sleep(10)
        return scatter(items)

    async def arrive(x):
        await anyio.sleep((x - 1) * 0.25)
        return await fn(x)

    outcomes = await run_all(*(Caller(x, lambda x=x: arrive(x)) for x in (1, 2, 3)))

    assert journal.calls() == {
        1: [("lead", [1, 2, 3], 0.5)],
        2: [("timed out in collect", 1.0)],  # the leader's deadline, before its own at 1.25
        3: [("timed out in collect", 1.0)],
    }
    (kind, original), *followers = outcomes
    assert (kind, type(original)) == ("raised", TimeoutError)
    assert all(kind == "raised" and copy_of(error, original) for kind, error in followers)


@pytest.mark.virtual_clock
async def test_move_on_after_around_the_bulk_call_in_the_body_applies_to_the_whole_batch():
    """The leader's scope that gives up on the bulk call: every member gets the fallback the leader scatters."""
    journal, now = Journal(), clock()

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        items = await collect(x)
        rows = None
        with anyio.move_on_after(0.5):
            await anyio.sleep(10)
            rows = [item * 10 for item in items]
        journal(x, "scatter", now(), rows)
        return scatter(rows or [f"stale {item}" for item in items])

    calls = callers(fn, 1, 2, 3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)

    assert journal.calls() == {1: [("scatter", 0.5, None)]}
    assert [call.outcome for call in calls] == [
        ("returned", "stale 1"),
        ("returned", "stale 2"),
        ("returned", "stale 3"),
    ]


@pytest.mark.virtual_clock
async def test_a_shielded_bulk_call_finishes_for_the_whole_batch_though_the_leaders_call_was_cancelled():
    """The leader's shield covers the shared work: its call is cancelled mid-bulk, the batch still gets its results."""
    journal, now = Journal(), clock()

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        items = await collect(x)
        with anyio.CancelScope(shield=True):
            await anyio.sleep(1.0)
            journal(x, "bulk done", now())
        return scatter([item * 10 for item in items])

    calls = callers(fn, 1, 2, 3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        await anyio.sleep(0.5)
        calls[0].cancel()

    assert journal.calls() == {1: [("bulk done", 1.0)]}  # once: no hand-over
    # The leader's own call returns too: no checkpoint between the shield's end and its return.
    assert [call.outcome for call in calls] == [("returned", 10), ("returned", 20), ("returned", 30)]


# --------------------------------------------------------------------------------------
# Inside the body: a member's own scope around collect()
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
@pytest.mark.parametrize("scope", ["fail_after", "move_on_after", "CancelScope.cancel()"])
async def test_a_followers_own_scope_around_collect_takes_it_out_alone(scope):
    """A follower's scope around collect() that ends while it waits: it leaves, its body goes on; others unaffected."""
    journal, now = Journal(), clock()
    scopes = {}

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        if scope == "fail_after":
            cancel_scope = anyio.fail_after(0.5 if x == 2 else NEVER)
        elif scope == "move_on_after":
            cancel_scope = anyio.move_on_after(0.5 if x == 2 else NEVER)
        else:
            cancel_scope = scopes[x] = anyio.CancelScope()
        try:
            with cancel_scope as entered:
                items = await collect(x)
        except TimeoutError:
            journal(x, "timed out", now())
            raise
        if entered.cancelled_caught:
            journal(x, "gave up", now())
            return "gave up"
        journal(x, "lead", items, now())
        await anyio.sleep(1.0)
        return scatter([item * 10 for item in items])

    calls = callers(fn, 1, 2, 3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        if scope == "CancelScope.cancel()":
            await anyio.sleep(0.5)
            scopes[2].cancel()

    gave_up = "timed out" if scope == "fail_after" else "gave up"
    assert journal.calls() == {1: [("lead", [1, 2, 3], 0.0)], 2: [(gave_up, 0.5)]}
    expected = ("raised", TimeoutError) if scope == "fail_after" else ("returned", "gave up")
    kind, value = calls[1].outcome
    assert (kind, type(value) if kind == "raised" else value) == expected
    assert [calls[0].outcome, calls[2].outcome] == [("returned", 10), ("returned", 30)]


@pytest.mark.virtual_clock
async def test_the_first_members_own_deadline_around_collect_expiring_while_open_lets_the_next_lead():
    """A deadline the first member's body put around collect() expires in the open batch: it leaves, the next leads."""
    journal, now = Journal(), clock()

    @batch(max_window=1.0)
    async def fn(x):
        try:
            with anyio.fail_after(0.5 if x == 1 else NEVER):
                items = await collect(x)
        except TimeoutError:
            journal(x, "timed out", now())
            raise
        journal(x, "lead", items, now())
        return scatter([item * 10 for item in items])

    async def arrive(x):
        await anyio.sleep((x - 1) * 0.25)
        return await fn(x)

    outcomes = await run_all(*(Caller(x, lambda x=x: arrive(x)) for x in (1, 2, 3)))

    assert journal.calls() == {1: [("timed out", 0.5)], 2: [("lead", [2, 3], 1.0)]}
    assert type(outcomes[0][1]) is TimeoutError
    assert outcomes[1:] == [("returned", 20), ("returned", 30)]
