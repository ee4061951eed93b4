"""Cancellation on every runtime (SPEC.md "Cancellation and time-outs"; docs/decisions.md 6, 9, 10).

Each test cancels calls (their own ``anyio.CancelScope``, :class:`tests.runtimes.callers.Caller`)
at one point of a batch's life: while it is open, during the leader's bulk call, after
``scatter()``. It asserts every call's events and outcome: only a cancelled call may end
cancelled, and every other one gets its own result. Batches are flushed by size and members
join one after the other, so who leads is known on every backend.
"""

from __future__ import annotations

import gc
import sys
import weakref

import anyio
import pytest
from tests.runtimes import kit
from tests.runtimes.callers import NEVER, Journal, callers, start_in_order
from tests.support import partitions_of

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


def times_ten(journal, *, gates=None, max_size):
    """A batched function whose leader awaits ``gates[x]`` (if given) as its bulk call.

    It records, per call: leading (with the items), being cancelled in collect() or in the
    bulk call, and scattering.
    """
    cancelled = anyio.get_cancelled_exc_class()

    @batch(max_window=NEVER, max_size=max_size)
    async def fn(x):
        try:
            items = await collect(x)
        except cancelled:
            journal(x, "cancelled in collect")
            raise
        journal(x, "lead", items)
        if gates is not None:
            try:
                await gates[x].wait()
            except cancelled:
                journal(x, "cancelled in bulk")
                raise
        journal(x, "scatter")
        return scatter([item * 10 for item in items])

    return fn


def gates_for(*xs):
    return {x: anyio.Event() for x in xs}


# --------------------------------------------------------------------------------------
# While the batch is open
# --------------------------------------------------------------------------------------


async def test_a_member_cancelled_while_open_leaves_and_its_item_is_not_passed_on():
    """A member cancelled in the open batch leaves it: the leader never sees its item."""
    journal = Journal()
    fn = times_ten(journal, max_size=3)
    calls = callers(fn, 1, 2, 3, 4)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls[:2])
        calls[1].cancel()
        await start_in_order(tg, *calls[2:])

    assert journal.calls() == {1: [("lead", [1, 3, 4]), "scatter"], 2: ["cancelled in collect"]}
    assert [call.outcome for call in calls] == [("returned", 10), "cancelled", ("returned", 30), ("returned", 40)]


async def test_the_first_member_cancelled_while_open_lets_the_next_member_lead():
    """If the member cancelled in the open batch was to lead, the next member leads."""
    journal = Journal()
    fn = times_ten(journal, max_size=3)
    calls = callers(fn, 1, 2, 3, 4)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls[:2])
        calls[0].cancel()
        await start_in_order(tg, *calls[2:])

    assert journal.calls() == {1: ["cancelled in collect"], 2: [("lead", [2, 3, 4]), "scatter"]}
    assert [call.outcome for call in calls] == ["cancelled", ("returned", 20), ("returned", 30), ("returned", 40)]


@pytest.mark.virtual_clock
async def test_a_batch_whose_members_all_left_while_open_runs_nothing_even_when_its_window_ends():
    """Every member cancelled while open: the batch is dropped, its window never flushes anything."""
    journal = Journal()

    @batch(max_window=1.0)
    async def fn(x):
        items = await collect(x)
        journal(x, "lead", items, kit.now())
        return scatter(items)

    calls = callers(fn, 1, 2)
    start = kit.now()
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        for call in calls:
            call.cancel()
        await kit.quiesce()
        assert partitions_of(fn) == {}
        await anyio.sleep(2.0)  # past the window of the dropped batch
        late = callers(fn, 3)
        await start_in_order(tg, *late)

    assert journal.calls() == {3: [("lead", [3], start + 3.0)]}
    assert [call.outcome for call in calls + late] == ["cancelled", "cancelled", ("returned", 3)]


# --------------------------------------------------------------------------------------
# After the flush
# --------------------------------------------------------------------------------------


async def test_a_follower_cancelled_during_the_bulk_call_leaves_and_nobody_else_is_affected():
    """A follower cancelled after the flush stops waiting; its result is dropped; the others get theirs."""
    journal = Journal()
    gates = gates_for(1)
    fn = times_ten(journal, gates=gates, max_size=3)
    calls = callers(fn, 1, 2, 3)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        calls[1].cancel()
        await kit.quiesce()
        assert calls[1].outcome == "cancelled"  # at once, before the bulk call ends
        gates[1].set()

    assert journal.calls() == {1: [("lead", [1, 2, 3]), "scatter"], 2: ["cancelled in collect"]}
    assert [call.outcome for call in calls] == [("returned", 10), "cancelled", ("returned", 30)]


async def test_a_follower_cancelled_right_after_scatter_routed_its_result_affects_nobody_else():
    """A follower cancelled once its result was routed, before it resumed: cancelled or its result, alone.

    Whether the cancellation still reaches it depends on the runtime (a task woken with its
    result has no checkpoint left before it returns); either way nobody else is affected.
    """
    journal = Journal()

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        items = await collect(x)
        own = scatter([item * 10 for item in items])
        calls[1].cancel()  # the follower whose result was just routed
        journal(x, "cancelled 2 after scatter")
        return own

    calls = callers(fn, 1, 2, 3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)

    assert journal.calls() == {1: ["cancelled 2 after scatter"]}
    assert [calls[0].outcome, calls[2].outcome] == [("returned", 10), ("returned", 30)]
    assert calls[1].outcome in ("cancelled", ("returned", 20))


async def test_a_leader_cancelled_in_its_bulk_call_hands_the_batch_to_the_earliest_follower():
    """The earliest follower still waiting runs the bulk section again, without the cancelled leader's item."""
    journal = Journal()
    gates = gates_for(1, 2)
    fn = times_ten(journal, gates=gates, max_size=3)
    calls = callers(fn, 1, 2, 3)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        calls[0].cancel()
        await kit.quiesce()
        gates[2].set()

    assert journal.calls() == {1: [("lead", [1, 2, 3]), "cancelled in bulk"], 2: [("lead", [2, 3]), "scatter"]}
    assert [call.outcome for call in calls] == ["cancelled", ("returned", 20), ("returned", 30)]


async def test_a_handover_skips_the_followers_cancelled_meanwhile():
    """The batch goes to the earliest follower still waiting, with the items of the members still waiting."""
    journal = Journal()
    gates = gates_for(1, 2, 3)
    fn = times_ten(journal, gates=gates, max_size=4)
    calls = callers(fn, 1, 2, 3, 4)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        calls[1].cancel()
        await kit.quiesce()
        calls[0].cancel()
        await kit.quiesce()
        gates[3].set()

    assert journal.calls() == {
        1: [("lead", [1, 2, 3, 4]), "cancelled in bulk"],
        2: ["cancelled in collect"],
        3: [("lead", [3, 4]), "scatter"],
    }
    assert [call.outcome for call in calls] == ["cancelled", "cancelled", ("returned", 30), ("returned", 40)]


async def test_each_cancelled_leader_hands_the_batch_over_again():
    """Leaders cancelled one after the other in their bulk call: each time the next member takes over."""
    journal = Journal()
    gates = gates_for(1, 2, 3)
    fn = times_ten(journal, gates=gates, max_size=3)
    calls = callers(fn, 1, 2, 3)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        calls[0].cancel()
        await kit.quiesce()
        calls[1].cancel()
        await kit.quiesce()
        gates[3].set()

    cancelled_twice = {1: [("lead", [1, 2, 3]), "cancelled in bulk"], 2: [("lead", [2, 3]), "cancelled in bulk"]}
    if kit.runtime() == "asyncio" and sys.version_info < (3, 11):
        # decisions.md 6: without Task.cancelling(), a second leader's cancellation is a fault.
        assert journal.calls() == {**cancelled_twice, 3: ["cancelled in collect"]}
        assert [call.outcome[0] for call in calls] == ["cancelled", "cancelled", "raised"]
    else:
        assert journal.calls() == {**cancelled_twice, 3: [("lead", [3]), "scatter"]}
        assert [call.outcome for call in calls] == ["cancelled", "cancelled", ("returned", 30)]


async def test_a_leader_cancelled_with_no_follower_left_ends_its_batch():
    """A cancelled leader whose followers all left: nothing runs again, and later calls open a new batch."""
    journal = Journal()
    gates = gates_for(1, 3)
    fn = times_ten(journal, gates=gates, max_size=2)
    calls = callers(fn, 1, 2, 3, 4)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls[:2])
        calls[1].cancel()
        await kit.quiesce()
        calls[0].cancel()
        await kit.quiesce()
        assert partitions_of(fn) == {}
        gates[3].set()
        await start_in_order(tg, *calls[2:])

    assert journal.calls() == {
        1: [("lead", [1, 2]), "cancelled in bulk"],
        2: ["cancelled in collect"],
        3: [("lead", [3, 4]), "scatter"],
    }
    assert [call.outcome for call in calls] == ["cancelled", "cancelled", ("returned", 30), ("returned", 40)]


async def test_a_leader_cancelled_after_scatter_leaves_its_followers_results_alone():
    """A leader cancelled after scatter() is cancelled alone: its followers keep their results."""
    journal = Journal()
    after = anyio.Event()

    @batch(max_window=NEVER, max_size=3)
    async def fn(x):
        items = await collect(x)
        own = scatter([item * 10 for item in items])
        try:
            await after.wait()
        except anyio.get_cancelled_exc_class():
            journal(x, "cancelled after scatter")
            raise
        return own

    calls = callers(fn, 1, 2, 3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        assert [call.outcome for call in calls] == [None, ("returned", 20), ("returned", 30)]
        calls[0].cancel()

    assert journal.calls() == {1: ["cancelled after scatter"]}
    assert [call.outcome for call in calls] == ["cancelled", ("returned", 20), ("returned", 30)]


async def test_only_the_cancelled_calls_see_a_cancellation():
    """Members cancelled at every stage of one batch end cancelled; every other call gets its own result."""
    journal = Journal()
    gates = gates_for(1, 2)
    fn = times_ten(journal, gates=gates, max_size=6)
    calls = callers(fn, 1, 2, 3, 4, 5, 6, 7)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls[:4])
        calls[2].cancel()  # 3, while open
        await start_in_order(tg, *calls[4:])  # 7 fills the batch
        calls[4].cancel()  # 5, a follower, during the bulk call
        await kit.quiesce()
        calls[0].cancel()  # 1, the leader, during its bulk call
        await kit.quiesce()
        gates[2].set()

    assert journal.calls() == {
        1: [("lead", [1, 2, 4, 5, 6, 7]), "cancelled in bulk"],
        2: [("lead", [2, 4, 6, 7]), "scatter"],
        3: ["cancelled in collect"],
        5: ["cancelled in collect"],
    }
    assert [call.outcome for call in calls] == [
        "cancelled",
        ("returned", 20),
        "cancelled",
        ("returned", 40),
        "cancelled",
        ("returned", 60),
        ("returned", 70),
    ]


# --------------------------------------------------------------------------------------
# Nothing kept alive
# --------------------------------------------------------------------------------------


class Item:
    """An item that can be weakly referenced."""

    def __init__(self, n):
        self.n = n


async def test_items_of_cancelled_members_and_results_are_freed_once_every_caller_returned():
    """After the batch ends, no item (of cancelled members included) and no result is kept alive."""
    gate = anyio.Event()
    made = []

    @batch(max_window=NEVER, max_size=4)
    async def fn(n):
        item = Item(n)
        made.append(weakref.ref(item))
        items = await collect(item)
        del item
        await gate.wait()
        results = [Item(10 * it.n) for it in items]
        made.extend(weakref.ref(result) for result in results)
        return scatter(results)

    calls = callers(fn, 1, 2, 3, 4, 5)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls[:2])
        calls[1].cancel()  # while open
        await start_in_order(tg, *calls[2:])  # 5 fills the batch
        calls[2].cancel()  # after the flush
        await kit.quiesce()
        gate.set()

    outcomes = [call.outcome if call.outcome == "cancelled" else call.outcome[1].n for call in calls]
    assert outcomes == [10, "cancelled", "cancelled", 40, 50]
    del calls
    gc.collect()
    assert [ref() for ref in made] == [None] * len(made)
    assert partitions_of(fn) == {}
