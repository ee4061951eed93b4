"""Cancelled members and followers on every runtime (SPEC.md "Cancellation and time-outs"; docs/decisions.md 9, 10).

Each test cancels calls (their own ``anyio.CancelScope``, :class:`tests.runtimes.callers.Caller`)
at one point of a batch's life: while it is open, or as followers after the flush (leaders
cancelled after the flush: ``test_handover.py``). It asserts every call's events and
outcome: only a cancelled call may end cancelled, and every other one gets its own result;
and that nothing is kept alive once every caller returned. Batches are flushed by size and
members join one after the other, so who leads is known on every backend.
"""

from __future__ import annotations

import gc
import weakref

import anyio
import pytest
from tests.runtimes import kit
from tests.runtimes.callers import NEVER, Journal, callers, gates_for, start_in_order, times_ten
from tests.support import partitions_of

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


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
        await kit.quiesce()  # it has left when the next calls join
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
        await kit.quiesce()
        await start_in_order(tg, *calls[2:])

    assert journal.calls() == {1: ["cancelled in collect"], 2: [("lead", [2, 3, 4]), "scatter"]}
    assert [call.outcome for call in calls] == ["cancelled", ("returned", 20), ("returned", 30), ("returned", 40)]


@pytest.mark.parametrize("cancelled", [1, 2])
async def test_a_member_cancelled_in_the_turn_another_call_joins_is_never_passed_on(cancelled):
    """Cancelled while open, in the very turn (scheduler round) the next call joins: its item is not passed on.

    Whether the batch still counts it towards ``max_size`` until its task has run depends on
    the order the runtime runs that turn's tasks in (on trio, at random): the remaining
    members share one batch, or the first batch is flushed one item short and the last call
    leads a batch of its own. Either way it never leads, and everyone else gets their result.
    """
    journal = Journal()
    fn = times_ten(journal, max_size=3)
    calls = callers(fn, 1, 2, 3, 4)

    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls[:2])
        calls[cancelled - 1].cancel()
        await start_in_order(tg, *calls[2:])
        fn.flush()  # a batch of 4 alone, if any: flushed now, not after its window

    rest = [x for x in (1, 2, 3, 4) if x != cancelled]
    together = {rest[0]: [("lead", rest), "scatter"]}
    one_short = {rest[0]: [("lead", rest[:2]), "scatter"], 4: [("lead", [4]), "scatter"]}
    assert journal.calls() in (
        {cancelled: ["cancelled in collect"], **together},
        {cancelled: ["cancelled in collect"], **one_short},
    )
    assert [call.outcome for call in calls] == [
        "cancelled" if x == cancelled else ("returned", 10 * x) for x in (1, 2, 3, 4)
    ]


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
    """A follower whose scope is cancelled once its result was routed returns that result; nobody else is affected.

    A cancel scope cancels a task at its next checkpoint, and a follower woken with its result
    has none left: it unwinds from collect() and returns (on asyncio too: anyio does not cancel
    a task whose wait is over, where ``Task.cancel()`` would).
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
    assert [call.outcome for call in calls] == [("returned", 10), ("returned", 20), ("returned", 30)]


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
