"""anyio cancel scopes around calls, on every runtime (SPEC.md "Cancellation and time-outs";
docs/semantics.md "Shared work": per-call deadlines belong around the call).

``fail_after``, ``move_on_after``, ``CancelScope.cancel()`` (every ``Caller``'s own scope) and
a task group whose other task fails, around one call: a per-call deadline or cancellation,
which affects that call only. A member leaves its open batch, a follower stops waiting, a
leader hands its batch over. Times are virtual (``kit.now()``), relative to the test's start.
"""

from __future__ import annotations

import anyio
import pytest
from tests.runtimes import kit
from tests.runtimes.callers import NEVER, Caller, Journal, callers, clock, run_all, start_in_order

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


class SiblingError(Exception):
    """What the other task of a caller's task group raises."""


def slow_times_ten(journal, now, *, bulk, **options):
    """A batched function whose bulk call sleeps ``bulk`` seconds; it records leads and scatters, with times."""

    @batch(**options)
    async def fn(x):
        items = await collect(x)
        journal(x, "lead", items, now())
        try:
            await anyio.sleep(bulk)
        except anyio.get_cancelled_exc_class():
            journal(x, "cancelled in bulk", now())
            raise
        journal(x, "scatter", now())
        return scatter([item * 10 for item in items])

    return fn


def timed(journal, now, x, call, *, delay=0.0, fail_after=None, move_on_after=None):
    """A Caller that arrives after ``delay`` and makes ``call()`` under the given per-call scope."""

    async def run():
        await anyio.sleep(delay)
        if fail_after is not None:
            try:
                with anyio.fail_after(fail_after):
                    return await call()
            except TimeoutError:
                journal(x, "timed out", now())
                raise
        with anyio.move_on_after(move_on_after) as scope:
            return await call()
        journal(x, "moved on", now(), scope.cancelled_caught)
        return "moved on"

    return Caller(x, run)


# --------------------------------------------------------------------------------------
# Around calls: per-call deadlines and cancellations
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_fail_after_around_a_followers_call_times_out_that_call_alone():
    """A follower's per-call deadline that expires in the bulk call: TimeoutError for it, results for the rest."""
    journal, now = Journal(), clock()
    fn = slow_times_ten(journal, now, bulk=1.0, max_window=NEVER, max_size=3)

    calls = [
        timed(journal, now, x, lambda x=x: fn(x), fail_after=0.5 if x == 2 else None, move_on_after=NEVER)
        for x in (1, 2, 3)
    ]
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)

    assert journal.calls() == {1: [("lead", [1, 2, 3], 0.0), ("scatter", 1.0)], 2: [("timed out", 0.5)]}
    assert [calls[0].outcome, calls[2].outcome] == [("returned", 10), ("returned", 30)]
    assert type(calls[1].outcome[1]) is TimeoutError


@pytest.mark.virtual_clock
async def test_move_on_after_around_a_member_in_the_open_batch_leaves_it():
    """A per-call scope that expires while the batch is open takes the member out: its item is not passed on."""
    journal, now = Journal(), clock()
    fn = slow_times_ten(journal, now, bulk=0.0, max_window=1.0)

    outcomes = await run_all(
        timed(journal, now, 1, lambda: fn(1), move_on_after=NEVER),
        timed(journal, now, 2, lambda: fn(2), delay=0.25, move_on_after=0.25),
        timed(journal, now, 3, lambda: fn(3), delay=0.75, move_on_after=NEVER),
    )

    assert journal.calls() == {1: [("lead", [1, 3], 1.0), ("scatter", 1.0)], 2: [("moved on", 0.5, True)]}
    assert outcomes == [("returned", 10), ("returned", "moved on"), ("returned", 30)]


@pytest.mark.virtual_clock
async def test_fail_after_around_the_leaders_call_hands_its_batch_over_at_once():
    """The leader's per-call deadline expires mid-bulk: it times out alone and the next member leads at once."""
    journal, now = Journal(), clock()
    fn = slow_times_ten(journal, now, bulk=1.0, max_window=1.0)

    outcomes = await run_all(
        timed(journal, now, 1, lambda: fn(1), fail_after=1.5),
        timed(journal, now, 2, lambda: fn(2), delay=0.25, move_on_after=NEVER),
        timed(journal, now, 3, lambda: fn(3), delay=0.25, move_on_after=NEVER),
    )

    assert journal.calls() == {
        1: [("lead", [1, 2, 3], 1.0), ("cancelled in bulk", 1.5), ("timed out", 1.5)],
        2: [("lead", [2, 3], 1.5), ("scatter", 2.5)],
    } or journal.calls() == {
        # 2 and 3 arrive at the same time: on trio, in either order.
        1: [("lead", [1, 3, 2], 1.0), ("cancelled in bulk", 1.5), ("timed out", 1.5)],
        3: [("lead", [3, 2], 1.5), ("scatter", 2.5)],
    }
    assert type(outcomes[0][1]) is TimeoutError
    assert outcomes[1:] == [("returned", 20), ("returned", 30)]


@pytest.mark.parametrize("role", ["follower", "leader"])
async def test_a_task_group_whose_other_task_fails_cancels_its_call_alone(role):
    """A caller's task group cancels the call when a sibling task fails: a follower leaves, a leader hands over."""
    journal = Journal()
    gate, sibling_may_fail = anyio.Event(), anyio.Event()
    grouped = 1 if role == "leader" else 2
    message = "sibling failed"

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        try:
            items = await collect(x)
        except anyio.get_cancelled_exc_class():
            journal(x, "cancelled in collect")
            raise
        journal(x, "lead", items)
        try:
            await gate.wait()
        except anyio.get_cancelled_exc_class():
            journal(x, "cancelled in bulk")
            raise
        return scatter([item * 10 for item in items])

    async def in_a_group_with_a_failing_sibling():
        async def sibling():
            await sibling_may_fail.wait()
            raise SiblingError(message)

        async with anyio.create_task_group() as group:
            group.start_soon(fn, grouped)
            group.start_soon(sibling)

    calls = callers(fn, 1, 2, 3)
    calls[grouped - 1] = Caller(grouped, in_a_group_with_a_failing_sibling)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        sibling_may_fail.set()
        await kit.quiesce()
        gate.set()

    kind, error = calls[grouped - 1].outcome
    assert kind == "raised"
    assert [(type(inner), str(inner)) for inner in error.exceptions] == [(SiblingError, "sibling failed")]
    if role == "follower":
        assert journal.calls() == {1: [("lead", [1, 2, 3])], 2: ["cancelled in collect"]}
        assert [calls[0].outcome, calls[2].outcome] == [("returned", 10), ("returned", 30)]
    else:
        assert journal.calls() == {1: [("lead", [1, 2, 3]), "cancelled in bulk"], 2: [("lead", [2, 3])]}
        assert [calls[1].outcome, calls[2].outcome] == [("returned", 20), ("returned", 30)]
