"""A leader cancelled after the flush, on every runtime (SPEC.md "Cancellation and time-outs"; docs/decisions.md 6, 39).

The leader's call is cancelled (its own ``anyio.CancelScope``) during its bulk call, or after
``scatter()``: it leaves, and the earliest follower still waiting runs the bulk section again
for the members still waiting (at-least-once execution); after ``scatter()`` nothing changes
for the followers. Each test asserts every call's events and outcome. Batches are flushed by
size and members join one after the other, so who leads is known on every backend.
"""

from __future__ import annotations

import sys

import anyio
import pytest
from tests.runtimes import kit
from tests.runtimes.callers import NEVER, Journal, callers, gates_for, start_in_order, times_ten
from tests.support import partitions_of

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


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
        assert [call.outcome if call.outcome == "cancelled" else call.outcome[0] for call in calls] == [
            "cancelled",
            "cancelled",
            "raised",
        ]
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
