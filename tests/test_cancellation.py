"""Cancellation and time-outs (SPEC.md, "Cancellation and time-outs"; docs/decisions.md 6, 9, 10).

Each test cancels calls at one exact point of a batch's life: while it is open, between the
flush and the leader's resumption, during the leader's bulk call, after scatter() routed the
results. Every test records what each call did, in order, and asserts the whole record and
how every task ended: only the cancelled task may end cancelled.

Batches are flushed by size (with a window that never expires) so that the tests run on every
backend; the tests that cancel at an exact point of a window use the virtual clock.
"""

from __future__ import annotations

import asyncio
import sys
import weakref

import pytest
from tests.support import Recorder, gc_collect_harder, partitions_of, wait_all_tasks_blocked

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio

#: A window that never expires during a test: these batches are flushed by size.
NEVER = 3600.0


class Abort(BaseException):
    """A BaseException that is not an Exception, like KeyboardInterrupt or SystemExit."""


def ended(task):
    """How a finished task ended: ``("returned", value)``, ``("raised", type)`` or ``"cancelled"``."""
    assert task.done()
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if error is not None:
        return ("raised", type(error))
    return ("returned", task.result())


def live_timers():
    """The running virtual-clock loop's timers that are not cancelled."""
    loop = asyncio.get_running_loop()
    return [handle for handle in loop._scheduled if not handle.cancelled()]


async def spawn_until_joined(record, coro, event):
    """Start ``coro`` in a task and return it as soon as ``event`` is recorded, without an extra loop turn.

    The caller gets control back right after the task recorded ``event`` (which it does just
    before it awaits collect()): in the very turn where a filling call flushed the batch,
    before the leader it woke has resumed. With eager tasks that is at once; otherwise after
    one ``sleep(0)``, which queues this task right behind the new one.
    """
    task = asyncio.create_task(coro)
    while event not in record:  # noqa: ASYNC110 -- one loop turn at a time is the point
        await asyncio.sleep(0)
    return task


def make_times_ten(record, *, gates=None, **options):
    """A batched function whose leader awaits ``gates[x]`` (if given) as its bulk call.

    It records entering, leading (with the items), the bulk call being cancelled,
    scattering, and a call being cancelled in collect().
    """

    @batch(**options)
    async def times_ten(x):
        record("enter", x)
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x)
            raise
        record("lead", x, items)
        if gates is not None:
            try:
                await gates[x].wait()
            except asyncio.CancelledError:
                record("cancelled in bulk", x)
                raise
        record("scatter", x)
        return scatter([item * 10 for item in items])

    return times_ten


# --------------------------------------------------------------------------------------
# Cancelled before or while the batch is open
# --------------------------------------------------------------------------------------


async def test_call_cancelled_before_reaching_collect_never_joins_a_batch():
    """A call cancelled before it awaits collect() contributes no item and fails no one."""
    record = Recorder()
    gate = asyncio.Event()

    @batch(max_window=NEVER, max_size=2)
    async def times_ten(x):
        record("enter", x)
        if x == 1:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                record("cancelled before collect", x)
                raise
        items = await collect(x)
        record("lead", x, items)
        return scatter([item * 10 for item in items])

    first = asyncio.create_task(times_ten(1))
    await wait_all_tasks_blocked()
    first.cancel()
    await wait_all_tasks_blocked()
    others = [asyncio.create_task(times_ten(x)) for x in (2, 3)]
    await asyncio.wait([first, *others])

    assert record == [
        ("enter", 1),
        ("cancelled before collect", 1),
        ("enter", 2),
        ("enter", 3),
        ("lead", 2, [2, 3]),
    ]
    assert [ended(task) for task in (first, *others)] == ["cancelled", ("returned", 20), ("returned", 30)]


async def test_member_cancelled_while_open_is_left_out_of_the_batch():
    """A member cancelled while its batch is open leaves it: the leader never receives its item."""
    record = Recorder()
    times_ten = make_times_ten(record, max_window=NEVER, max_size=3)

    a, b = (asyncio.create_task(times_ten(x)) for x in (1, 2))
    await wait_all_tasks_blocked()
    record("cancel", 2)
    b.cancel()
    await wait_all_tasks_blocked()
    c, d = (asyncio.create_task(times_ten(x)) for x in (3, 4))
    await asyncio.wait([a, b, c, d])

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("cancel", 2),
        ("cancelled in collect", 2),
        ("enter", 3),
        ("enter", 4),
        ("lead", 1, [1, 3, 4]),
        ("scatter", 1),
    ]
    assert [ended(task) for task in (a, b, c, d)] == [
        ("returned", 10),
        "cancelled",
        ("returned", 30),
        ("returned", 40),
    ]
    assert partitions_of(times_ten) == {}


async def test_first_member_cancelled_while_open_lets_the_next_member_lead():
    """The would-be leader cancelled while the batch is open leaves it; the next member leads."""
    record = Recorder()
    times_ten = make_times_ten(record, max_window=NEVER, max_size=3)

    a, b = (asyncio.create_task(times_ten(x)) for x in (1, 2))
    await wait_all_tasks_blocked()
    record("cancel", 1)
    a.cancel()
    await wait_all_tasks_blocked()
    c, d = (asyncio.create_task(times_ten(x)) for x in (3, 4))
    await asyncio.wait([a, b, c, d])

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("cancel", 1),
        ("cancelled in collect", 1),
        ("enter", 3),
        ("enter", 4),
        ("lead", 2, [2, 3, 4]),
        ("scatter", 2),
    ]
    assert [ended(task) for task in (a, b, c, d)] == [
        "cancelled",
        ("returned", 20),
        ("returned", 30),
        ("returned", 40),
    ]


async def test_batch_whose_members_all_left_while_open_runs_nothing():
    """When every member leaves an open batch, nothing runs and the next call opens a fresh batch."""
    record = Recorder()
    times_ten = make_times_ten(record, max_window=NEVER, max_size=3)

    a, b = (asyncio.create_task(times_ten(x)) for x in (1, 2))
    await wait_all_tasks_blocked()
    record("cancel all")
    a.cancel()
    await wait_all_tasks_blocked()
    assert partitions_of(times_ten) != {}  # b still waits in the open batch
    b.cancel()
    await wait_all_tasks_blocked()
    assert partitions_of(times_ten) == {}  # the emptied batch was discarded at once
    c, d, e = (asyncio.create_task(times_ten(x)) for x in (3, 4, 5))
    await asyncio.wait([a, b, c, d, e])

    assert record == [
        ("enter", 1),
        ("enter", 2),
        "cancel all",
        ("cancelled in collect", 1),
        ("cancelled in collect", 2),
        ("enter", 3),
        ("enter", 4),
        ("enter", 5),
        ("lead", 3, [3, 4, 5]),
        ("scatter", 3),
    ]
    assert [ended(task) for task in (a, b, c, d, e)] == [
        "cancelled",
        "cancelled",
        ("returned", 30),
        ("returned", 40),
        ("returned", 50),
    ]


@pytest.mark.virtual_clock
async def test_batch_whose_members_all_left_has_its_window_timer_cancelled(clock):
    """An emptied open batch is discarded at once: its timer is cancelled; a later call gets a window of its own."""
    record = Recorder()

    @batch(max_window=1.0)
    async def times_ten(x):
        record("enter", x, clock.now())
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x, clock.now())
            raise
        record("lead", x, items, clock.now())
        return scatter([item * 10 for item in items])

    a, b = (asyncio.create_task(times_ten(x)) for x in (1, 2))
    await asyncio.sleep(0.5)
    assert len(live_timers()) == 1  # the window of the open batch
    a.cancel()
    b.cancel()
    await wait_all_tasks_blocked()
    assert live_timers() == []
    assert partitions_of(times_ten) == {}
    await asyncio.sleep(0.25)
    # Had the empty batch stayed open, this call would join it and be flushed at 1.0.
    c = asyncio.create_task(times_ten(3))
    await asyncio.wait([a, b, c])

    assert record == [
        ("enter", 1, 0.0),
        ("enter", 2, 0.0),
        ("cancelled in collect", 1, 0.5),
        ("cancelled in collect", 2, 0.5),
        ("enter", 3, 0.75),
        ("lead", 3, [3], 1.75),
    ]
    assert [ended(task) for task in (a, b, c)] == ["cancelled", "cancelled", ("returned", 30)]


@pytest.mark.virtual_clock
async def test_member_cancelled_at_an_exact_time_in_the_window_keeps_the_window(clock):
    """A member cancelled mid-window leaves; the batch still flushes when the window that opened with it ends."""
    record = Recorder()

    @batch(max_window=1.0)
    async def times_ten(x):
        record("enter", x, clock.now())
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x, clock.now())
            raise
        record("lead", x, items, clock.now())
        return scatter([item * 10 for item in items])

    a = asyncio.create_task(times_ten(1))
    await asyncio.sleep(0.25)
    b = asyncio.create_task(times_ten(2))
    await asyncio.sleep(0.25)
    a.cancel()
    await asyncio.sleep(0.25)
    c = asyncio.create_task(times_ten(3))
    await asyncio.wait([a, b, c])

    assert record == [
        ("enter", 1, 0.0),
        ("enter", 2, 0.25),
        ("cancelled in collect", 1, 0.5),
        ("enter", 3, 0.75),
        ("lead", 2, [2, 3], 1.0),
    ]
    assert [ended(task) for task in (a, b, c)] == ["cancelled", ("returned", 20), ("returned", 30)]


@pytest.mark.virtual_clock
async def test_member_timed_out_while_open_leaves_the_batch(clock):
    """A member whose asyncio.wait_for() expires while its batch is open gets TimeoutError and is left out."""
    record = Recorder()

    @batch(max_window=1.0)
    async def times_ten(x):
        record("enter", x, clock.now())
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x, clock.now())
            raise
        record("lead", x, items, clock.now())
        return scatter([item * 10 for item in items])

    a = asyncio.create_task(times_ten(1))
    b = asyncio.create_task(asyncio.wait_for(times_ten(2), 0.5))
    await asyncio.sleep(0.75)
    c = asyncio.create_task(times_ten(3))
    await asyncio.wait([a, b, c])

    assert record == [
        ("enter", 1, 0.0),
        ("enter", 2, 0.0),
        ("cancelled in collect", 2, 0.5),
        ("enter", 3, 0.75),
        ("lead", 1, [1, 3], 1.0),
    ]
    assert [ended(task) for task in (a, b, c)] == [("returned", 10), ("raised", asyncio.TimeoutError), ("returned", 30)]


# --------------------------------------------------------------------------------------
# Followers cancelled after the flush
# --------------------------------------------------------------------------------------


async def test_follower_cancelled_before_the_leader_resumed_is_left_out():
    """A follower cancelled between the flush and the leader's resumption is not in the items the leader receives."""
    record = Recorder()
    times_ten = make_times_ten(record, max_window=NEVER, max_size=3)

    a, b = (asyncio.create_task(times_ten(x)) for x in (1, 2))
    await wait_all_tasks_blocked()
    c = await spawn_until_joined(record, times_ten(3), ("enter", 3))  # flushes the batch
    record("cancel", 2)
    b.cancel()
    await asyncio.wait([a, b, c])

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("cancel", 2),
        ("lead", 1, [1, 3]),
        ("scatter", 1),
        ("cancelled in collect", 2),
    ]
    assert [ended(task) for task in (a, b, c)] == [("returned", 10), "cancelled", ("returned", 30)]


async def test_cancelled_follower_does_not_affect_others():
    """A follower cancelled during the bulk call stops waiting; its result is dropped, the others get theirs."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in (1, 2, 3)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=3)

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3)]
    await wait_all_tasks_blocked()
    record("cancel", 2)
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    gates[1].set()
    await asyncio.wait(tasks)

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("lead", 1, [1, 2, 3]),
        ("cancel", 2),
        ("cancelled in collect", 2),
        ("scatter", 1),
    ]
    assert [ended(task) for task in tasks] == [("returned", 10), "cancelled", ("returned", 30)]


async def test_follower_cancelled_during_the_bulk_call_does_not_break_keyed_routing():
    """Keyed results with a ``key`` function still reach the others after a follower of the batch was cancelled."""
    record = Recorder()
    gate = asyncio.Event()

    @batch(max_window=NEVER, max_size=3)
    async def times_ten(x):
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x)
            raise
        record("lead", x, items)
        await gate.wait()
        # key() is called for every item the leader received, the cancelled follower's too.
        return scatter({item * 10: item * 10 for item in items}, key=lambda item: item * 10)

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3)]
    await wait_all_tasks_blocked()
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    gate.set()
    await asyncio.wait(tasks)

    assert record == [("lead", 1, [1, 2, 3]), ("cancelled in collect", 2)]
    assert [ended(task) for task in tasks] == [("returned", 10), "cancelled", ("returned", 30)]


async def test_follower_cancelled_after_its_result_was_routed_sees_cancelled_error():
    """A follower cancelled after scatter() routed its result, before it resumed, is cancelled; the others are not."""
    record = Recorder()
    tasks = []

    @batch(max_window=NEVER, max_size=3)
    async def times_ten(x):
        record("enter", x)
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x)
            raise
        record("lead", x, items)
        own = scatter([item * 10 for item in items])
        record("cancel", 2)
        tasks[1].cancel()
        return own

    tasks.extend(asyncio.create_task(times_ten(x)) for x in (1, 2, 3))
    await asyncio.wait(tasks)

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("lead", 1, [1, 2, 3]),
        ("cancel", 2),
        ("cancelled in collect", 2),
    ]
    assert [ended(task) for task in tasks] == [("returned", 10), "cancelled", ("returned", 30)]


@pytest.mark.virtual_clock
async def test_follower_timed_out_with_wait_for_gets_timeout_error_alone(clock):
    """A follower whose asyncio.wait_for() expires during the bulk call gets TimeoutError; the others get results."""
    record = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def times_ten(x):
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x, clock.now())
            raise
        record("lead", x, items, clock.now())
        await asyncio.sleep(1.0)
        record("scatter", x, clock.now())
        return scatter([item * 10 for item in items])

    a = asyncio.create_task(times_ten(1))
    b = asyncio.create_task(asyncio.wait_for(times_ten(2), 0.5))
    await wait_all_tasks_blocked()
    c = asyncio.create_task(times_ten(3))
    await asyncio.wait([a, b, c])

    assert record == [
        ("lead", 1, [1, 2, 3], 0.0),
        ("cancelled in collect", 2, 0.5),
        ("scatter", 1, 1.0),
    ]
    assert [ended(task) for task in (a, b, c)] == [("returned", 10), ("raised", asyncio.TimeoutError), ("returned", 30)]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in Python 3.11")
@pytest.mark.virtual_clock
async def test_follower_timed_out_with_asyncio_timeout_gets_timeout_error_alone(clock):
    """A follower whose asyncio.timeout() expires during the bulk call gets TimeoutError; the others get results."""
    record = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def times_ten(x):
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x, clock.now())
            raise
        record("lead", x, items, clock.now())
        await asyncio.sleep(1.0)
        record("scatter", x, clock.now())
        return scatter([item * 10 for item in items])

    async def with_timeout(x):
        async with asyncio.timeout(0.5):
            return await times_ten(x)

    a = asyncio.create_task(times_ten(1))
    b = asyncio.create_task(with_timeout(2))
    await wait_all_tasks_blocked()
    c = asyncio.create_task(times_ten(3))
    await asyncio.wait([a, b, c])

    assert record == [
        ("lead", 1, [1, 2, 3], 0.0),
        ("cancelled in collect", 2, 0.5),
        ("scatter", 1, 1.0),
    ]
    assert [ended(task) for task in (a, b, c)] == [("returned", 10), ("raised", asyncio.TimeoutError), ("returned", 30)]


# --------------------------------------------------------------------------------------
# Leaders cancelled after the flush
# --------------------------------------------------------------------------------------


async def test_leader_cancelled_before_it_resumed_hands_the_batch_to_the_next_member():
    """A leader cancelled after the flush but before it resumed from collect() hands over; its item is dropped."""
    record = Recorder()
    times_ten = make_times_ten(record, max_window=NEVER, max_size=3)

    a, b = (asyncio.create_task(times_ten(x)) for x in (1, 2))
    await wait_all_tasks_blocked()
    c = await spawn_until_joined(record, times_ten(3), ("enter", 3))  # flushes the batch, wakes 1
    record("cancel", 1)
    a.cancel()
    await asyncio.wait([a, b, c])

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("cancel", 1),
        ("cancelled in collect", 1),
        ("lead", 2, [2, 3]),
        ("scatter", 2),
    ]
    assert [ended(task) for task in (a, b, c)] == ["cancelled", ("returned", 20), ("returned", 30)]


async def test_leader_cancelled_during_its_bulk_call_hands_the_batch_to_the_earliest_follower():
    """A leader cancelled in its bulk call fails nobody: the earliest one runs the bulk section again without it."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in (1, 2, 3)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=3)

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3)]
    await wait_all_tasks_blocked()
    record("cancel", 1)
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    gates[2].set()
    await asyncio.wait(tasks)

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("lead", 1, [1, 2, 3]),
        ("cancel", 1),
        ("cancelled in bulk", 1),
        ("lead", 2, [2, 3]),
        ("scatter", 2),
    ]
    assert [ended(task) for task in tasks] == ["cancelled", ("returned", 20), ("returned", 30)]


async def test_handover_skips_followers_cancelled_meanwhile():
    """The batch goes to the earliest follower still waiting, without the items of followers cancelled before."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in (1, 2, 3, 4)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=4)

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3, 4)]
    await wait_all_tasks_blocked()
    record("cancel", 2)
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    record("cancel", 1)
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    gates[3].set()
    await asyncio.wait(tasks)

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("enter", 4),
        ("lead", 1, [1, 2, 3, 4]),
        ("cancel", 2),
        ("cancelled in collect", 2),
        ("cancel", 1),
        ("cancelled in bulk", 1),
        ("lead", 3, [3, 4]),
        ("scatter", 3),
    ]
    assert [ended(task) for task in tasks] == ["cancelled", "cancelled", ("returned", 30), ("returned", 40)]


async def cancel_two_leaders_in_a_row(record):
    """Cancel the leader of a batch of three in its bulk call, then the next one; return the tasks."""
    gates = {x: asyncio.Event() for x in (1, 2, 3)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=3)

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3)]
    await wait_all_tasks_blocked()
    record("cancel", 1)
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    record("cancel", 2)
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    gates[3].set()
    await asyncio.wait(tasks)
    return tasks


TWO_LEADERS_CANCELLED = [
    ("enter", 1),
    ("enter", 2),
    ("enter", 3),
    ("lead", 1, [1, 2, 3]),
    ("cancel", 1),
    ("cancelled in bulk", 1),
    ("lead", 2, [2, 3]),
    ("cancel", 2),
    ("cancelled in bulk", 2),
]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is new in Python 3.11")
async def test_repeated_leader_cancellations_hand_the_batch_over_each_time():
    """When the next leader is cancelled in its bulk call too, the batch is handed over again, to the one after it."""
    record = Recorder()

    tasks = await cancel_two_leaders_in_a_row(record)

    assert record == [*TWO_LEADERS_CANCELLED, ("lead", 3, [3]), ("scatter", 3)]
    assert [ended(task) for task in tasks] == ["cancelled", "cancelled", ("returned", 30)]


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="the Python 3.10 rule (no Task.cancelling())")
async def test_on_310_a_second_leader_cancellation_in_one_batch_is_a_fault():
    """Without Task.cancelling(), only the first leader's CancelledError hands over: two runs of the bulk at most."""
    record = Recorder()

    tasks = await cancel_two_leaders_in_a_row(record)

    assert record == [*TWO_LEADERS_CANCELLED, ("cancelled in collect", 3)]
    assert [ended(task) for task in tasks] == ["cancelled", "cancelled", "cancelled"]


async def test_leader_cancelled_with_no_follower_left_ends_the_batch_and_frees_its_slot():
    """A cancelled leader with no follower still waiting ends its batch, and the next batch takes the freed slot."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in (1, 2, 3, 4)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=2, max_concurrency=1)

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2)]
    await wait_all_tasks_blocked()
    tasks += [asyncio.create_task(times_ten(x)) for x in (3, 4)]  # full, queued for the slot
    await wait_all_tasks_blocked()
    record("cancel", 2)
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    record("cancel", 1)
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    gates[3].set()
    await asyncio.wait(tasks)

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("lead", 1, [1, 2]),
        ("enter", 3),
        ("enter", 4),
        ("cancel", 2),
        ("cancelled in collect", 2),
        ("cancel", 1),
        ("cancelled in bulk", 1),
        ("lead", 3, [3, 4]),
        ("scatter", 3),
    ]
    assert [ended(task) for task in tasks] == ["cancelled", "cancelled", ("returned", 30), ("returned", 40)]
    assert partitions_of(times_ten) == {}


async def test_leader_cancelled_after_scatter_keeps_followers_results():
    """A leader cancelled after scatter() is cancelled alone: its followers keep the results they were routed."""
    record = Recorder()
    after = asyncio.Event()

    @batch(max_window=NEVER, max_size=3)
    async def times_ten(x):
        try:
            items = await collect(x)
        finally:
            record("leave collect", x)
        own = scatter([item * 10 for item in items])
        try:
            await after.wait()
        except asyncio.CancelledError:
            record("cancelled after scatter", x)
            raise
        return own

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3)]
    await wait_all_tasks_blocked()
    assert [task.done() for task in tasks] == [False, True, True]
    tasks[0].cancel()
    await asyncio.wait(tasks)

    assert record == [
        ("leave collect", 1),
        ("leave collect", 2),
        ("leave collect", 3),
        ("cancelled after scatter", 1),
    ]
    assert [ended(task) for task in tasks] == ["cancelled", ("returned", 20), ("returned", 30)]


@pytest.mark.virtual_clock
async def test_leader_timed_out_in_its_bulk_call_hands_over_at_once(clock):
    """A leader whose wait_for() expires mid-bulk gets TimeoutError; the next leader starts then, with no new window."""
    record = Recorder()

    @batch(max_window=1.0)
    async def times_ten(x):
        items = await collect(x)
        record("lead", x, items, clock.now())
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            record("cancelled in bulk", x, clock.now())
            raise
        record("scatter", x, clock.now())
        return scatter([item * 10 for item in items])

    a = asyncio.create_task(asyncio.wait_for(times_ten(1), 1.5))
    await asyncio.sleep(0.25)
    b, c = (asyncio.create_task(times_ten(x)) for x in (2, 3))
    await asyncio.wait([a, b, c])

    assert record == [
        ("lead", 1, [1, 2, 3], 1.0),
        ("cancelled in bulk", 1, 1.5),
        ("lead", 2, [2, 3], 1.5),
        ("scatter", 2, 2.5),
    ]
    assert [ended(task) for task in (a, b, c)] == [("raised", asyncio.TimeoutError), ("returned", 20), ("returned", 30)]


async def test_leader_ending_with_a_base_exception_and_no_cancellation_request_is_a_fault():
    """A BaseException that is not an Exception, raised with no cancellation request, reaches every member once."""
    record = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def times_ten(x):
        items = await collect(x)
        record("lead", x, items)
        if x == 1:
            raise Abort
        return scatter([item * 10 for item in items])

    tasks = [asyncio.create_task(times_ten(x)) for x in (1, 2, 3)]
    await asyncio.wait(tasks)

    assert record == [("lead", 1, [1, 2, 3])]
    assert [ended(task) for task in tasks] == [("raised", Abort)] * 3


async def test_only_the_cancelled_tasks_see_cancelled_error():
    """Cancelling members at every stage of one batch cancels exactly them; every other call gets its own result."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in range(1, 8)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=6)
    tasks = {}

    for x in (1, 2, 3, 4):
        tasks[x] = asyncio.create_task(times_ten(x))
    await wait_all_tasks_blocked()
    tasks[3].cancel()  # while open
    await wait_all_tasks_blocked()
    for x in (5, 6, 7):
        tasks[x] = asyncio.create_task(times_ten(x))  # 7 fills the batch
    await wait_all_tasks_blocked()
    tasks[5].cancel()  # a follower, during the bulk call
    await wait_all_tasks_blocked()
    tasks[1].cancel()  # the leader, during its bulk call
    await wait_all_tasks_blocked()
    gates[2].set()
    await asyncio.wait(tasks.values())

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("enter", 4),
        ("cancelled in collect", 3),
        ("enter", 5),
        ("enter", 6),
        ("enter", 7),
        ("lead", 1, [1, 2, 4, 5, 6, 7]),
        ("cancelled in collect", 5),
        ("cancelled in bulk", 1),
        ("lead", 2, [2, 4, 6, 7]),
        ("scatter", 2),
    ]
    assert {x: ended(task) for x, task in tasks.items()} == {
        1: "cancelled",
        2: ("returned", 20),
        3: "cancelled",
        4: ("returned", 40),
        5: "cancelled",
        6: ("returned", 60),
        7: ("returned", 70),
    }


# --------------------------------------------------------------------------------------
# With max_concurrency: batches waiting for a slot
# --------------------------------------------------------------------------------------


async def test_queued_batch_whose_members_all_left_is_dropped_from_the_queue():
    """A full batch waiting for a slot is discarded when all its members leave; the slot goes to the next batch."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in range(1, 7)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=2, max_concurrency=1)

    tasks = {x: asyncio.create_task(times_ten(x)) for x in (1, 2)}
    await wait_all_tasks_blocked()
    tasks.update((x, asyncio.create_task(times_ten(x))) for x in (3, 4))
    await wait_all_tasks_blocked()
    (part,) = partitions_of(times_ten).values()
    assert len(part.pending) == 1
    tasks[3].cancel()
    tasks[4].cancel()
    await wait_all_tasks_blocked()
    assert len(part.pending) == 0
    tasks.update((x, asyncio.create_task(times_ten(x))) for x in (5, 6))
    await wait_all_tasks_blocked()
    gates[1].set()
    gates[5].set()
    await asyncio.wait(tasks.values())

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("lead", 1, [1, 2]),
        ("enter", 3),
        ("enter", 4),
        ("cancelled in collect", 3),
        ("cancelled in collect", 4),
        ("enter", 5),
        ("enter", 6),
        ("scatter", 1),
        ("lead", 5, [5, 6]),
        ("scatter", 5),
    ]
    assert {x: ended(task) for x, task in tasks.items()} == {
        1: ("returned", 10),
        2: ("returned", 20),
        3: "cancelled",
        4: "cancelled",
        5: ("returned", 50),
        6: ("returned", 60),
    }
    assert partitions_of(times_ten) == {}


async def test_member_of_a_queued_batch_cancelled_while_it_waits_for_a_slot_is_left_out():
    """A member cancelled while its full batch waits for a slot leaves it; the others run when the slot frees."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in range(1, 7)}
    times_ten = make_times_ten(record, gates=gates, max_window=NEVER, max_size=3, max_concurrency=1)

    tasks = {x: asyncio.create_task(times_ten(x)) for x in (1, 2, 3)}
    await wait_all_tasks_blocked()
    tasks.update((x, asyncio.create_task(times_ten(x))) for x in (4, 5, 6))
    await wait_all_tasks_blocked()
    tasks[4].cancel()
    await wait_all_tasks_blocked()
    gates[1].set()
    gates[5].set()
    await asyncio.wait(tasks.values())

    assert record == [
        ("enter", 1),
        ("enter", 2),
        ("enter", 3),
        ("lead", 1, [1, 2, 3]),
        ("enter", 4),
        ("enter", 5),
        ("enter", 6),
        ("cancelled in collect", 4),
        ("scatter", 1),
        ("lead", 5, [5, 6]),
        ("scatter", 5),
    ]
    assert {x: ended(task) for x, task in tasks.items()} == {
        1: ("returned", 10),
        2: ("returned", 20),
        3: ("returned", 30),
        4: "cancelled",
        5: ("returned", 50),
        6: ("returned", 60),
    }


@pytest.mark.virtual_clock
async def test_open_batch_waiting_for_a_slot_whose_members_all_left_is_discarded(clock):
    """A due batch still collecting while it waits for a slot is discarded when all its members leave."""
    record = Recorder()

    @batch(max_window=0, max_concurrency=1)
    async def times_ten(x):
        record("enter", x, clock.now())
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            record("cancelled in collect", x, clock.now())
            raise
        record("lead", x, items, clock.now())
        await asyncio.sleep(1.0)
        return scatter([item * 10 for item in items])

    tasks = {1: asyncio.create_task(times_ten(1))}
    await asyncio.sleep(0.25)
    tasks.update((x, asyncio.create_task(times_ten(x))) for x in (2, 3))
    await asyncio.sleep(0.25)
    (part,) = partitions_of(times_ten).values()
    assert part.open is not None
    assert list(part.pending) == [part.open]
    tasks[2].cancel()
    tasks[3].cancel()
    await wait_all_tasks_blocked()
    assert part.open is None
    assert list(part.pending) == []
    await asyncio.sleep(0.25)
    tasks[4] = asyncio.create_task(times_ten(4))
    await asyncio.wait(tasks.values())

    assert record == [
        ("enter", 1, 0.0),
        ("lead", 1, [1], 0.0),
        ("enter", 2, 0.25),
        ("enter", 3, 0.25),
        ("cancelled in collect", 2, 0.5),
        ("cancelled in collect", 3, 0.5),
        ("enter", 4, 0.75),
        ("lead", 4, [4], 1.0),
    ]
    assert {x: ended(task) for x, task in tasks.items()} == {
        1: ("returned", 10),
        2: "cancelled",
        3: "cancelled",
        4: ("returned", 40),
    }


# --------------------------------------------------------------------------------------
# Nothing is kept alive
# --------------------------------------------------------------------------------------


class Item:
    """An item that can be weakly referenced."""

    def __init__(self, x):
        self.x = x

    def __repr__(self):
        return f"Item({self.x})"


def make_ident(record, gate):
    """A batched function of Items whose leader waits for ``gate`` before it scatters each item's ``x``."""

    @batch(max_window=NEVER, max_size=3)
    async def ident(item):
        try:
            items = await collect(item)
        except asyncio.CancelledError:
            record("cancelled in collect", item.x)
            raise
        record("lead", [it.x for it in items])
        try:
            await gate.wait()
        except asyncio.CancelledError:
            record("cancelled in bulk", item.x)
            raise
        return scatter([it.x for it in items])

    return ident


class Spawner:
    """Starts calls on fresh Items, keeping only weak references to the items."""

    def __init__(self, fn):
        self.fn = fn
        self.refs = {}

    def __call__(self, x):
        item = Item(x)
        self.refs[x] = weakref.ref(item)
        return asyncio.create_task(self.fn(item))

    def alive(self):
        """The ``x`` of the items still alive after garbage collection."""
        gc_collect_harder()
        return sorted(x for x, ref in self.refs.items() if ref() is not None)


async def test_items_of_cancelled_members_are_freed_after_the_batch_ends():
    """Once every call has ended, no item is alive, whether cancelled while open, as a follower or as the leader."""
    record = Recorder()
    gate = asyncio.Event()
    spawn = Spawner(make_ident(record, gate))

    tasks = {x: spawn(x) for x in (1, 2)}
    await wait_all_tasks_blocked()
    tasks[2].cancel()  # while open
    await wait_all_tasks_blocked()
    tasks.update((x, spawn(x)) for x in (3, 4, 5))  # 4 fills the batch, 5 opens the next
    await wait_all_tasks_blocked()
    tasks[3].cancel()  # a follower, during the bulk call
    await wait_all_tasks_blocked()
    tasks[1].cancel()  # the leader, during its bulk call
    await wait_all_tasks_blocked()
    tasks[5].cancel()  # the only member of the next open batch
    await wait_all_tasks_blocked()
    gate.set()
    await asyncio.wait(tasks.values())
    outcomes = {x: ended(task) for x, task in tasks.items()}
    del tasks

    assert spawn.alive() == []
    assert outcomes == {1: "cancelled", 2: "cancelled", 3: "cancelled", 4: ("returned", 4), 5: "cancelled"}
    assert record == [
        ("cancelled in collect", 2),
        ("lead", [1, 3, 4]),
        ("cancelled in collect", 3),
        ("cancelled in bulk", 1),
        ("lead", [4]),
        ("cancelled in collect", 5),
    ]


async def test_item_of_a_member_cancelled_while_open_is_freed_while_the_batch_is_still_open():
    """A cancelled member's item is freed once its call has ended, without waiting for the batch (decisions.md 11)."""
    record = Recorder()
    gate = asyncio.Event()
    spawn = Spawner(make_ident(record, gate))

    tasks = {x: spawn(x) for x in (1, 2)}
    await wait_all_tasks_blocked()
    tasks.pop(2).cancel()
    await wait_all_tasks_blocked()
    alive_while_open = spawn.alive()
    tasks.update((x, spawn(x)) for x in (3, 4))
    await wait_all_tasks_blocked()
    gate.set()
    await asyncio.wait(tasks.values())

    assert alive_while_open == [1]
    assert {x: task.result() for x, task in tasks.items()} == {1: 1, 3: 3, 4: 4}
    assert record == [("cancelled in collect", 2), ("lead", [1, 3, 4])]
