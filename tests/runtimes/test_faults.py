"""Faults on every runtime (SPEC.md "Faults and misuse"; docs/decisions.md 2, 6, 8).

Fault propagation from the leader to every follower, departure (a real cancellation of the
leader) versus fault (anything else the bulk code raises), the shared work that runs in the
leader's context, and user callbacks that raise. Batches are flushed by size and their
members join one after the other (:func:`tests.runtimes.callers.start_in_order`), so who
leads is known on every backend; each test asserts every call's events and outcome.
"""

from __future__ import annotations

import contextvars
import sys

import anyio
import anyio.lowlevel
import pytest
from tests.runtimes import kit
from tests.runtimes.callers import NEVER, Abort, Caller, Journal, callers, run_in_order, start_in_order
from tests.support import Recorder, copy_of

from concresce import BatchRoutingError, MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


class LeaderError(Exception):
    """What a leader's bulk call raises."""


class DriverError(Exception):
    """The error a database driver raises for a query it was told to cancel."""


def on_asyncio_310() -> bool:
    """Python 3.10 without Task.cancelling(): a CancelledError hands over once (decisions.md 6)."""
    return kit.runtime() == "asyncio" and sys.version_info < (3, 11)


# --------------------------------------------------------------------------------------
# Fault propagation
# --------------------------------------------------------------------------------------


async def test_a_leader_fault_is_raised_from_every_followers_collect_and_in_the_leaders_caller():
    """The leader's caller gets its exception; each follower a copy (type, args, message), from its collect()."""
    journal = Journal()
    raised = []

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        try:
            items = await collect(x)
        except LeaderError as error:
            journal(x, "raised from collect", str(error))
            raise
        finally:
            journal(x, "left collect")
        journal(x, "lead", items)
        raised.append(LeaderError(f"bulk call for {items} failed", 503))
        raise raised[0]

    calls = callers(fetch, 0, 1, 2)
    outcomes = await run_in_order(*calls)

    message = "('bulk call for [0, 1, 2] failed', 503)"
    assert journal.calls() == {
        0: ["left collect", ("lead", [0, 1, 2])],
        1: [("raised from collect", message), "left collect"],
        2: [("raised from collect", message), "left collect"],
    }
    [original] = raised
    assert outcomes[0] == ("raised", original)
    for kind, error in outcomes[1:]:
        assert kind == "raised"
        assert copy_of(error, original)
    assert outcomes[1][1] is not outcomes[2][1]  # each follower its own copy


async def test_a_followers_copy_keeps_the_cause_of_the_leaders_exception():
    """The copy's __cause__ is a copy of the leader's cause: same type and message, not the leader's object."""
    raised = []

    @batch(max_window=NEVER, max_size=2)
    async def fetch(x):
        items = await collect(x)
        raised.append(LeaderError(f"bulk call for {items} failed"))
        raise raised[0] from KeyError("row 7")

    (_, original), (kind, copy) = await run_in_order(*callers(fetch, 0, 1))

    assert kind == "raised"
    assert copy_of(copy, original)
    assert copy_of(copy.__cause__, original.__cause__)
    assert copy.__cause__.args == ("row 7",)


async def test_after_scatter_followers_keep_their_results_and_only_the_leaders_caller_sees_a_later_error():
    """An exception the leader raises after scatter() reaches its own caller only."""
    journal = Journal()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        own = scatter([item * 10 for item in items])
        journal(x, "scattered", own)
        await anyio.lowlevel.checkpoint()  # the followers may run now: they have their results
        raise LeaderError(x)

    outcomes = await run_in_order(*callers(fetch, 1, 2, 3))

    assert journal.calls() == {1: [("scattered", 10)]}
    assert outcomes[0][0] == "raised"
    assert type(outcomes[0][1]) is LeaderError
    assert outcomes[1:] == [("returned", 20), ("returned", 30)]


# --------------------------------------------------------------------------------------
# Departure or fault
# --------------------------------------------------------------------------------------


async def unrequested_cancellation():
    """A cancellation exception caught in a scope that has since exited: raised with no request."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except anyio.get_cancelled_exc_class() as error:
            caught = error
    return caught


async def test_a_cancellation_exception_the_bulk_code_raises_without_a_request_is_a_fault_run_once():
    """A backend cancellation exception with no cancellation request of the leader's task fails every member once."""
    runs = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        runs(list(items))
        raise await unrequested_cancellation()  # a driver's future cancelled under it

    calls = callers(fetch, 0, 1, 2)
    outcomes = await run_in_order(*calls)

    cancelled = anyio.get_cancelled_exc_class()
    assert [call.scope.cancel_called for call in calls] == [False] * 3
    assert [kind for kind, _ in outcomes] == ["raised"] * 3  # not "cancelled": no call was
    assert isinstance(outcomes[0][1], cancelled)  # the leader's caller: what its bulk code raised
    if kit.runtime() == "trio":
        # trio would take a Cancelled raised in a follower for its own cancellation (decision
        # 41): the followers get a RuntimeError that says so, caused by the leader's.
        for _, error in outcomes[1:]:
            assert type(error) is RuntimeError
            assert "raised trio.Cancelled while its task was not cancelled" in str(error)
            assert isinstance(error.__cause__, cancelled)
    else:
        assert all(isinstance(error, cancelled) for _, error in outcomes[1:])
    if on_asyncio_310():
        # decisions.md 6: on 3.10 it hands the batch over once, then it is a fault.
        assert runs == [[0, 1, 2], [1, 2]]
    else:
        assert runs == [[0, 1, 2]]


async def test_a_base_exception_from_the_bulk_code_is_a_fault_for_every_member_and_runs_once():
    """A BaseException that is not a cancellation (like KeyboardInterrupt) reaches every member; one run."""
    runs = Recorder()
    raised = []

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        runs(list(items))
        raised.append(Abort("interrupted"))
        raise raised[0]

    outcomes = await run_in_order(*callers(fetch, 0, 1, 2))

    assert runs == [[0, 1, 2]]
    assert outcomes[0] == ("raised", raised[0])
    assert all(kind == "raised" and copy_of(error, raised[0]) for kind, error in outcomes[1:])


async def test_a_cancelled_leader_whose_bulk_code_raises_an_error_of_its_own_still_hands_over():
    """The leader's call really was cancelled; a driver turned that into its own error: a departure, not a fault."""
    runs = Recorder()
    gate = anyio.Event()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        runs(list(items))
        if x == 0:
            try:
                await gate.wait()
            except anyio.get_cancelled_exc_class():
                raise DriverError(x) from None
        return scatter([item * 10 for item in items])

    calls = callers(fetch, 0, 1, 2)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
        calls[0].cancel()

    assert type(calls[0].outcome[1]) is DriverError
    if on_asyncio_310():
        # decisions.md 6: without Task.cancelling(), only a CancelledError can tell a
        # departure: the driver's own error is a fault for every member.
        assert runs == [[0, 1, 2]]
        assert [(call.outcome[0], type(call.outcome[1])) for call in calls[1:]] == [("raised", DriverError)] * 2
    else:
        assert runs == [[0, 1, 2], [1, 2]]
        assert [call.outcome for call in calls[1:]] == [("returned", 10), ("returned", 20)]


# --------------------------------------------------------------------------------------
# Shared work
# --------------------------------------------------------------------------------------

tenant = contextvars.ContextVar("tenant", default="none")


async def test_the_shared_work_runs_in_the_leaders_context_for_the_whole_batch():
    """Context variables after collect() are the leader's: every member's result is computed in its context."""
    seen = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        seen(tenant.get(), list(items))
        return scatter([f"{item} as {tenant.get()}" for item in items])

    async def as_tenant(name, x):
        tenant.set(name)
        return await fetch(x)

    calls = [
        Caller(x, lambda x=x, name=name: as_tenant(name, x)) for x, name in ((1, "acme"), (2, "globex"), (3, "initech"))
    ]
    outcomes = await run_in_order(*calls)

    assert seen == [("acme", [1, 2, 3])]
    assert outcomes == [("returned", "1 as acme"), ("returned", "2 as acme"), ("returned", "3 as acme")]


async def test_group_by_on_a_context_variable_keeps_each_tenants_shared_work_apart():
    """group_by runs in each caller's context: each tenant's batch runs with its own tenant."""
    seen = Recorder()

    @batch(max_window=NEVER, max_size=2, group_by=lambda x: tenant.get())
    async def fetch(x):
        items = await collect(x)
        seen(tenant.get(), list(items))
        return scatter([f"{item} as {tenant.get()}" for item in items])

    async def as_tenant(name, x):
        tenant.set(name)
        return await fetch(x)

    plan = ((1, "acme"), (2, "globex"), (3, "acme"), (4, "globex"))
    outcomes = await run_in_order(*(Caller(x, lambda x=x, name=name: as_tenant(name, x)) for x, name in plan))

    assert seen == [("acme", [1, 3]), ("globex", [2, 4])]
    assert outcomes == [("returned", f"{x} as {name}") for x, name in plan]


# --------------------------------------------------------------------------------------
# User callbacks that raise
# --------------------------------------------------------------------------------------


async def test_group_by_raising_fails_that_call_alone_before_its_body_runs():
    """A group_by that raises fails that call, before it joins; the others batch without it."""
    journal = Journal()

    def group(x):
        if x == 2:
            raise LookupError(x)
        return "all"

    @batch(max_window=NEVER, max_size=2, group_by=group)
    async def fetch(x):
        journal(x, "body")
        items = await collect(x)
        journal(x, "lead", items)
        return scatter([item * 10 for item in items])

    outcomes = await run_in_order(*callers(fetch, 1, 2, 3))

    assert journal.calls() == {1: ["body", ("lead", [1, 3])], 3: ["body"]}
    assert type(outcomes[1][1]) is LookupError
    assert outcomes[1][1].args == (2,)
    assert [outcomes[0], outcomes[2]] == [("returned", 10), ("returned", 30)]


async def test_scatters_key_raising_is_a_batch_routing_error_for_every_member():
    """A key function that raises is a BatchRoutingError in every member, the leader's caller included."""

    def key(item):
        if item == 2:
            raise ValueError(item)
        return item

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        return scatter({item: item * 10 for item in items}, key=key)

    outcomes = await run_in_order(*callers(fetch, 1, 2, 3))

    message = f"{fetch.__qualname__}: scatter()'s key function raised ValueError for item 2: 2"
    assert [(kind, type(error), str(error)) for kind, error in outcomes] == [("raised", BatchRoutingError, message)] * 3
    assert not any(isinstance(error, MissingResultError) for _, error in outcomes)
