"""The fault paths real systems take (issue 10): each defect found there, pinned by a test.

Drivers that raise ``CancelledError`` when a pool closes, decorator stacks built with
``functools.wraps``, keys with odd ``__hash__``/``__repr__``, observers that fail, shutdown
hooks that drain under traffic, re-entrant bulk sections, loops closed by hand, weights with
members cancelled in the same turn, and what the shared work inherits from the leader.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import logging
import sys
import traceback
import weakref

import pytest
from tests.support import (
    Recorder,
    batcher_of,
    copy_of,
    make_echo,
    partitions_of,
    wait_all_tasks_blocked,
)

from concresce import BatchRoutingError, MissingResultError, batch, collect, scatter
from concresce._calls import OUTER
from concresce._closed_loops import sweep_closed_loops

pytestmark = pytest.mark.anyio

NEVER = 3600.0
ON_311 = sys.version_info >= (3, 11)


async def outcomes(*tasks):
    """Wait for the tasks; return ``("returned", value)``, ``("raised", error)`` or ``"cancelled"`` for each."""
    await asyncio.wait(tasks)
    ends = []
    for task in tasks:
        if task.cancelled():
            ends.append("cancelled")
        elif task.exception() is not None:
            ends.append(("raised", task.exception()))
        else:
            ends.append(("returned", task.result()))
    return ends


# --------------------------------------------------------------------------------------
# 1. Departure or fault: a CancelledError that nobody requested
# --------------------------------------------------------------------------------------


def make_closing_pool_fetch(runs):
    """A batched fetch whose bulk call awaits a future that a 'closing pool' cancels."""
    pool: dict[str, asyncio.Future[None]] = {}

    @batch(max_window=NEVER, max_size=4)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        pool["query"] = asyncio.get_running_loop().create_future()
        await pool["query"]  # the pool closes: this future is cancelled, the task is not
        return scatter(items)

    return fetch, pool


@pytest.mark.skipif(not ON_311, reason="Task.cancelling() is new in Python 3.11")
async def test_an_unrequested_cancelled_error_is_a_fault_and_the_bulk_section_runs_once():
    """A driver's future cancelled by a closing pool: one run, and every member gets a CancelledError."""
    runs = Recorder()
    fetch, pool = make_closing_pool_fetch(runs)
    tasks = [asyncio.create_task(fetch(x)) for x in range(4)]
    await wait_all_tasks_blocked()

    pool["query"].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert runs == [[0, 1, 2, 3]]
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert all(copy_of(result, results[0]) for result in results[1:])
    stats = fetch.stats()
    assert (stats.batches, stats.leader_failures, stats.handovers) == (1, 1, 0)
    assert partitions_of(fetch) == {}


@pytest.mark.skipif(ON_311, reason="the Python 3.10 rule (no Task.cancelling())")
async def test_on_310_an_unrequested_cancelled_error_hands_over_once_then_is_a_fault():
    """Without Task.cancelling(), a CancelledError hands the batch over on the first run only: two runs at most."""
    runs = Recorder()
    fetch, pool = make_closing_pool_fetch(runs)
    tasks = [asyncio.create_task(fetch(x)) for x in range(4)]
    await wait_all_tasks_blocked()

    pool["query"].cancel()
    await wait_all_tasks_blocked()
    pool["query"].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert runs == [[0, 1, 2, 3], [1, 2, 3]]
    assert all(isinstance(result, asyncio.CancelledError) for result in results)


async def test_a_requested_cancellation_of_the_leader_still_hands_the_batch_over():
    """The leader's task really cancelled (Task.cancel) in its bulk call: the next member reruns it for the rest."""
    runs = Recorder()
    gate = asyncio.Event()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        if x == 0:
            await gate.wait()
        return scatter([item * 10 for item in items])

    tasks = [asyncio.create_task(fetch(x)) for x in range(3)]
    await wait_all_tasks_blocked()
    tasks[0].cancel()

    assert await outcomes(*tasks) == ["cancelled", ("returned", 10), ("returned", 20)]
    assert runs == [[0, 1, 2], [1, 2]]
    assert fetch.stats().handovers == 1


@pytest.mark.skipif(not ON_311, reason="Task.cancelling() is new in Python 3.11")
async def test_a_cancellation_the_bulk_code_turns_into_an_error_of_its_own_still_hands_over():
    """The leader's task was cancelled, and a driver raised its own error for it: a departure, not a fault."""
    runs = Recorder()
    gate = asyncio.Event()

    class QueryCanceledError(Exception):
        pass

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        if x == 0:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                message = "canceling statement due to user request"
                raise QueryCanceledError(message) from None
        return scatter([item * 10 for item in items])

    tasks = [asyncio.create_task(fetch(x)) for x in range(3)]
    await wait_all_tasks_blocked()
    tasks[0].cancel()
    ends = await outcomes(*tasks)

    assert type(ends[0][1]) is QueryCanceledError
    assert ends[1:] == [("returned", 10), ("returned", 20)]
    assert runs == [[0, 1, 2], [1, 2]]


async def test_a_timeout_around_the_leaders_call_hands_the_batch_over(clock):
    """A per-call deadline (wait_for around the call) that expires in the leader's bulk call affects that call only."""
    runs = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        await asyncio.sleep(1.0)
        return scatter([item * 10 for item in items])

    first = asyncio.create_task(asyncio.wait_for(fetch(0), 0.5))
    await wait_all_tasks_blocked()
    others = [asyncio.create_task(fetch(x)) for x in (1, 2)]

    ends = await outcomes(first, *others)

    assert type(ends[0][1]) is asyncio.TimeoutError
    assert ends[1:] == [("returned", 10), ("returned", 20)]
    assert runs == [[0, 1, 2], [1, 2]]


# --------------------------------------------------------------------------------------
# 2. Decorators built with functools.wraps that change the signature
# --------------------------------------------------------------------------------------


def with_retries(fn):
    """A decorator that takes one more keyword than the function it wraps."""

    @functools.wraps(fn)
    async def wrapper(*a, retries=0, **kw):
        for _ in range(retries):
            pass
        return await fn(*a, **kw)

    return wrapper


CONTEXTS: list[str] = []


def with_context(fn):
    """A decorator that takes a leading positional argument the wrapped function does not."""

    @functools.wraps(fn)
    async def wrapper(context, *args, **kwargs):
        CONTEXTS.append(context)
        return await fn(*args, **kwargs)

    return wrapper


async def test_batch_over_a_wraps_decorator_accepts_the_decorators_parameters():
    """@batch over a functools.wraps decorator behaves exactly like the decorated (outer) function."""
    runs = Recorder()

    @batch
    @with_retries
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        return scatter([item * 10 for item in items])

    results = await asyncio.gather(fetch(1, retries=2), fetch(2), fetch(x=3, retries=1))

    assert results == [10, 20, 30]
    assert runs == [[1, 2, 3]]


async def test_batch_over_a_wraps_decorator_with_an_extra_positional_parameter():
    """A decorator that adds a leading parameter: calls pass it, and the wrapper forwards it."""

    @batch
    @with_context
    async def fetch(x):
        items = await collect(x)
        return scatter([item * 10 for item in items])

    CONTEXTS.clear()
    assert await asyncio.gather(fetch("a", 1), fetch("b", 2)) == [10, 20]
    assert CONTEXTS == ["a", "b"]
    with pytest.raises(TypeError):
        await fetch(1)  # the decorator's own signature: `context` and `x` are both needed


class Shard:
    """Each instance answers for its own data: batches must never mix instances."""

    def __init__(self, name):
        self.name = name
        self.runs = []

    @batch(max_window=NEVER, group_by=lambda self, key, **_: key % 2)
    async def get(self, key):
        keys = await collect(key)
        self.runs.append(list(keys))
        return scatter([(self.name, k) for k in keys])

    @batch(max_window=NEVER)
    @with_retries
    async def get_wrapped(self, key):
        keys = await collect(key)
        self.runs.append(list(keys))
        return scatter([(self.name, k) for k in keys])


@pytest.mark.parametrize("method", ["get", "get_wrapped"])
async def test_methods_batch_per_instance_when_self_is_passed_by_keyword(method):
    """Shard.get(self=east, ...) and Shard.get(west, ...) never share a batch, with group_by or under a decorator."""
    east, west = Shard("east"), Shard("west")
    unbound = getattr(Shard, method)
    tasks = [
        asyncio.create_task(unbound(self=east, key=2)),
        asyncio.create_task(unbound(west, key=4)),
        asyncio.create_task(unbound(self=west, key=6)),
        asyncio.create_task(getattr(east, method)(key=8)),
    ]
    await wait_all_tasks_blocked()
    assert unbound.flush() == 2

    assert await asyncio.gather(*tasks) == [
        ("east", 2),
        ("west", 4),
        ("west", 6),
        ("east", 8),
    ]
    assert east.runs == [[2, 8]]
    assert west.runs == [[4, 6]]


# --------------------------------------------------------------------------------------
# 3. dedupe with items whose __hash__ or __eq__ raise
# --------------------------------------------------------------------------------------


class HashFails:
    def __hash__(self):
        msg = "hash failed"
        raise ValueError(msg)


class EqFails:
    """Equal hashes, and an __eq__ that raises: never merged."""

    def __init__(self, n):
        self.n = n

    def __hash__(self):
        return 0

    def __eq__(self, other):
        msg = "eq failed"
        raise ValueError(msg)

    def __repr__(self):
        return f"EqFails({self.n})"


async def test_dedupe_with_an_item_whose_hash_raises_fails_that_call_alone_before_it_joins():
    """The call whose item's __hash__ raises fails with that exception at once; the batch goes on without it."""
    runs = Recorder()

    @batch(max_window=NEVER, dedupe=True)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        return scatter([repr(item) for item in items])

    bad = asyncio.create_task(fetch(HashFails()))
    good = [asyncio.create_task(fetch(x)) for x in (1, 1, 2)]
    await wait_all_tasks_blocked()
    assert bad.done()
    assert type(bad.exception()) is ValueError
    assert str(bad.exception()) == "hash failed"
    assert fetch.flush() == 1

    assert await asyncio.gather(*good) == ["1", "1", "2"]
    assert runs == [[1, 2]]


async def test_dedupe_with_items_whose_eq_raises_keeps_them_apart():
    """Items with equal hashes whose __eq__ raises are simply never merged."""
    runs = Recorder()

    @batch(dedupe=True)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        return scatter([item.n for item in items])

    assert await asyncio.gather(*(fetch(EqFails(n)) for n in range(3))) == [0, 1, 2]
    assert [len(run) for run in runs] == [3]


# --------------------------------------------------------------------------------------
# 5. Failures while reporting a finished batch
# --------------------------------------------------------------------------------------


class BadRepr:
    def __hash__(self):
        return 1

    def __eq__(self, other):
        return isinstance(other, BadRepr)

    def __repr__(self):
        msg = "repr failed"
        raise RuntimeError(msg)


class ObserverAbort(BaseException):
    """An observer's BaseException that is not an Exception."""


async def test_reporting_failures_never_reach_a_caller_nor_wedge_the_partition(caplog):
    """A group key whose repr() raises and an observer raising a BaseException: results, slots and records survive."""
    seen = Recorder()

    def observer(record):
        seen.append(record.partition)
        raise ObserverAbort

    @batch(max_size=2, max_concurrency=1, group_by=lambda x: BadRepr(), observer=observer)
    async def fetch(x):
        items = await collect(x)
        return scatter([item * 10 for item in items])

    with caplog.at_level(logging.ERROR, logger="concresce"):
        results = await asyncio.gather(*(fetch(x) for x in range(5)))
        assert fetch.stats().in_flight_now == 0
        assert partitions_of(fetch) == {}
        assert await fetch(9) == 90  # the partition is not wedged

    assert results == [0, 10, 20, 30, 40]
    assert seen == ["<BadRepr key, repr() raised RuntimeError>"] * 4
    assert [record.levelname for record in caplog.records] == ["ERROR"] * 4
    caplog.clear()  # the records' tracebacks hold the frames of the batches' last moments


# --------------------------------------------------------------------------------------
# 6. drain() and several threads' drainers
# --------------------------------------------------------------------------------------


class RemovingFuture:
    """Stands for another thread's drain() waiter that removes itself while the list is walked."""

    def __init__(self, drainers):
        self.drainers = drainers

    def get_loop(self):
        self.drainers.remove(self)  # what another thread's `finally` does meanwhile

    def done(self):
        return True


async def test_waking_drainers_skips_none_when_another_thread_removes_one_meanwhile(clock):
    """The drainer list is walked over a copy: a removal by another thread cannot skip a waiter."""
    echo = make_echo(bulk=1.0, max_window=NEVER)
    task = asyncio.create_task(echo(1))
    await wait_all_tasks_blocked()
    drainers = batcher_of(echo).drainers
    loop = asyncio.get_running_loop()
    mine = [loop.create_future(), loop.create_future()]
    drainers.extend([mine[0], RemovingFuture(drainers), mine[1]])

    echo.flush()
    await task

    assert [fut.done() for fut in mine] == [True, True]
    drainers.clear()


# --------------------------------------------------------------------------------------
# 7. Re-entrancy under max_concurrency
# --------------------------------------------------------------------------------------


async def test_calling_itself_from_its_bulk_section_under_max_concurrency_1_is_a_runtime_error():
    """The nested call would wait for the slot its own leader holds: a RuntimeError at once, not a deadlock."""

    @batch(max_concurrency=1)
    async def load(x):
        items = await collect(x)
        if x == 0:
            await load(100)  # re-entrant, from the bulk section
        return scatter(items)

    results = await asyncio.wait_for(asyncio.gather(load(0), load(1), return_exceptions=True), 5)

    assert [type(result) for result in results] == [RuntimeError, RuntimeError]
    message = str(results[0])
    assert message.startswith(f"{load.__qualname__}: called from its own bulk section")
    assert "max_concurrency=1" in message
    assert "before collect() or after scatter()" in message
    assert partitions_of(load) == {}


@pytest.mark.parametrize("fan_out", ["gather", "create_task", "await"])
async def test_a_tree_walk_from_the_bulk_section_under_max_concurrency_1_is_a_runtime_error(fan_out):
    """Calls made from the bulk section in tasks it starts (gather, create_task) are refused like direct ones."""

    @batch(max_concurrency=1)
    async def node(n):
        ids = await collect(n)
        children = [i - 1 for i in ids if i > 0]
        if children:  # load the next level of the tree from the bulk section
            if fan_out == "gather":
                await asyncio.gather(*(node(child) for child in children))
            elif fan_out == "create_task":
                await asyncio.create_task(node(children[0]))
            else:
                await node(children[0])
        return scatter(ids)

    with pytest.raises(RuntimeError) as info:
        await asyncio.wait_for(node(1), 5)

    message = str(info.value)
    assert message.startswith(f"{node.__qualname__}: called from its own bulk section")
    assert "or in a task started there" in message
    assert "max_concurrency=1" in message
    assert partitions_of(node) == {}


async def test_a_task_started_from_the_bulk_section_and_not_awaited_runs_once_the_slot_frees(backend_id):
    """A call in a task the bulk section starts but does not wait for is no deadlock: it waits its turn.

    With eager tasks the task's first step runs at once, while the slot is still held, and
    its call is refused instead (decision 33).
    """
    record = Recorder()
    started = []

    @batch(max_concurrency=1)
    async def load(x):
        items = await collect(x)
        if x == 0:
            started.append(asyncio.create_task(load(7)))  # not awaited here
        record("bulk", list(items))
        return scatter(items)

    assert await asyncio.wait_for(load(0), 5) == 0
    if backend_id == "asyncio+eager":
        with pytest.raises(RuntimeError, match="called from its own bulk section"):
            await started[0]
        assert record == [("bulk", [0])]
    else:
        assert await asyncio.wait_for(started[0], 5) == 7
        assert record == [("bulk", [0]), ("bulk", [7])]


async def test_a_nested_call_before_collect_or_after_scatter_is_fine_under_max_concurrency_1():
    """Outside the bulk section the call holds no slot: nesting is allowed."""

    @batch(max_concurrency=1)
    async def load(x):
        if x < 0:
            return await load(-x) + 1
        items = await collect(x)
        own = scatter([item * 10 for item in items])
        if x == 1:
            own += await load(2)
        return own

    assert await asyncio.wait_for(load(-3), 5) == 31  # nested before collect()
    assert await asyncio.wait_for(load(1), 5) == 30  # nested after scatter()


async def test_a_nested_call_with_a_free_slot_runs_under_max_concurrency_2():
    """With a second slot free, a re-entrant call is not a deadlock, so it is not refused."""
    nested = Recorder()

    @batch(max_concurrency=2)
    async def load(x):
        items = await collect(x)
        if x == 0:
            nested.append(await load(5))
        return scatter(items)

    assert await asyncio.wait_for(asyncio.gather(load(0), load(1)), 5) == [0, 1]
    assert nested == [5]


async def test_a_nested_call_waits_for_a_slot_another_leader_will_free():
    """Both slots busy, but one leader is not waiting for a nested call: the nested call waits, then runs."""
    record = Recorder()
    gate = asyncio.Event()

    @batch(max_window=NEVER, max_size=1, max_concurrency=2)
    async def load(x):
        items = await collect(x)
        if x == 0:
            await gate.wait()
        if x == 1:
            record("nested", await load(5))
        record("done", x)
        return scatter(items)

    first = asyncio.create_task(load(0))  # holds a slot until the gate opens
    await wait_all_tasks_blocked()
    second = asyncio.create_task(load(1))  # holds the other slot, calls load(5) from its bulk section
    await wait_all_tasks_blocked()
    assert record == []  # load(5) waits for a slot
    gate.set()

    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [0, 1]
    assert record == [("done", 0), ("done", 5), ("nested", 5), ("done", 1)]


# --------------------------------------------------------------------------------------
# 8. A loop closed by hand with calls pending
# --------------------------------------------------------------------------------------


def test_a_loop_closed_by_hand_with_calls_pending_keeps_nothing_alive(caplog):
    """loop.close() without cancelling, then gc: no task, call, batch, partition or the loop itself survives."""
    gate_holder = []

    @batch(max_window=NEVER, max_size=2)
    async def fetch(x):
        items = await collect(x)
        gate_holder.append(asyncio.get_running_loop().create_future())
        await gate_holder[-1]  # never set: the leader waits for ever
        return scatter(items)

    tasks = []

    async def main():
        # A running batch (0, 1), another (2, 3), and an open one (4).
        tasks.extend(weakref.ref(asyncio.create_task(fetch(x))) for x in range(5))
        await wait_all_tasks_blocked()
        tasks.append(weakref.ref(asyncio.create_task(fetch.drain())))  # waits for ever too
        await wait_all_tasks_blocked()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    assert len(partitions_of(fetch)) == 1
    loop_ref = weakref.ref(loop)
    loop.close()
    del loop
    gate_holder.clear()

    with caplog.at_level(logging.CRITICAL, logger="asyncio"):  # "Task was destroyed but it is pending!"
        gc.collect()
        gc.collect()

    assert loop_ref() is None
    assert [task() for task in tasks] == [None] * 6
    assert partitions_of(fetch) == {}
    assert batcher_of(fetch).drainers == []
    # ... and the hygiene fixture checks that no call, batch or partition is alive.


async def test_the_sweep_of_closed_loops_leaves_running_loops_alone(clock):
    """A full collection while a call and a drain() wait on a running loop removes nothing of theirs."""
    echo = make_echo(bulk=1.0, max_window=NEVER)
    task = asyncio.create_task(echo(1))
    await wait_all_tasks_blocked()
    echo.flush()
    drain = asyncio.create_task(echo.drain())
    await wait_all_tasks_blocked()

    sweep_closed_loops()

    assert len(partitions_of(echo)) == 1
    assert len(batcher_of(echo).drainers) == 1
    await drain
    assert task.done()
    assert await task == ("ok", 1)


# --------------------------------------------------------------------------------------
# 9. max_weight, a member cancelled in this turn, and a heavy arrival
# --------------------------------------------------------------------------------------


async def test_a_heavy_arrival_after_a_cancellation_in_the_same_turn_opens_its_batch_in_the_live_partition():
    """The open batch ends at once (its only member just left); the heavy call's batch is still visible and runs."""
    runs = Recorder()

    @batch(max_window=NEVER, weight=float, max_weight=10.0, max_concurrency=1)
    async def fetch(x):
        items = await collect(x)
        runs.append(list(items))
        return scatter(items)

    light = asyncio.create_task(fetch(2))
    await wait_all_tasks_blocked()
    heavy = asyncio.create_task(fetch(9))  # runs before the cancelled call's task resumes
    light.cancel()
    await wait_all_tasks_blocked()

    assert len(partitions_of(fetch)) == 1
    assert fetch.stats().open_now == 1
    assert fetch.flush() == 1
    assert await heavy == 9
    assert light.cancelled()
    assert runs == [[9]]
    assert partitions_of(fetch) == {}


# --------------------------------------------------------------------------------------
# 10. Tracebacks that stay each caller's own
# --------------------------------------------------------------------------------------


class AwaitingExit:
    """An async context manager whose __aexit__ awaits, like a connection release."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await asyncio.sleep(0)


class Rows:
    """Stands for what the leader's bulk call fetched."""


async def test_follower_tracebacks_stay_short_and_their_own_through_awaiting_exits():
    """Followers unwinding through awaiting finally/__aexit__ each get a short traceback of their own frames."""
    leader_rows = []

    @batch(max_size=None)
    async def fetch(x):
        async with AwaitingExit():
            try:
                items = await collect(x)
            finally:
                await asyncio.sleep(0)
        rows = Rows()
        leader_rows.append(weakref.ref(rows))
        message = f"bulk failed for {len(items)} items"
        raise LookupError(message)

    for size in (3, 30):
        leader_rows.clear()
        tasks = [asyncio.create_task(fetch(x)) for x in range(size)]
        await asyncio.wait(tasks)
        leader, followers = tasks[0].exception(), [task.exception() for task in tasks[1:]]
        lengths = {len(traceback.extract_tb(error.__traceback__)) for error in followers}
        assert all(copy_of(error, leader) for error in followers)
        assert len({id(error) for error in followers}) == size - 1
        assert max(lengths) <= 3, lengths  # collect(), the body, the wrapper
        for error in followers:
            names = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
            assert names.count("fetch") == 1
        del leader, tasks
        gc.collect()
        assert leader_rows[0]() is None  # the followers' exceptions keep none of the leader's frames
        if ON_311:
            assert "raised by the leader" in followers[0].__notes__[-1]


class KeywordOnlyError(Exception):
    """An exception that cannot be rebuilt from its arguments."""

    def __new__(cls, *, code):
        error = super().__new__(cls, code)
        error.code = code
        return error

    def __init__(self, *, code):
        super().__init__(code)


def raised(error, cause):
    """``error`` as raised ``from cause``: with a traceback and its cause set."""
    try:
        raise error from cause  # noqa: TRY301 -- to give it a traceback
    except BaseException as caught:  # noqa: BLE001 -- handed back to the caller
        return caught


def chained(depth):
    """A LookupError whose cause is a chain of ``depth`` ValueErrors, each raised in turn."""
    error = None
    for level in range(depth):
        error = raised(ValueError(level), error)
    return raised(LookupError("top"), error)


def causes(error):
    chain = []
    while error.__cause__ is not None:
        error = error.__cause__
        chain.append((type(error), error.args, error.__traceback__))
    return chain


async def test_an_exception_that_cannot_be_copied_is_shared_with_the_followers():
    """A leader's exception type that cannot be rebuilt from its args reaches every follower as the same object."""

    @batch
    async def fetch(x):
        await collect(x)
        raise KeywordOnlyError(code=7)

    results = await asyncio.gather(*(fetch(x) for x in range(3)), return_exceptions=True)

    assert all(result is results[0] for result in results)
    assert results[0].code == 7


async def test_a_followers_copy_keeps_the_cause_chain_without_tracebacks():
    """The copy's causes read like the leader's (types, arguments), carry no traceback, and stop after 8 links."""
    for depth in (2, 12):
        original = chained(depth)

        @batch
        async def fetch(x, original=original):
            await collect(x)
            raise original

        results = await asyncio.gather(*(fetch(x) for x in range(2)), return_exceptions=True)

        leader, follower = results
        assert leader is original
        assert copy_of(follower, original)
        expected = [(kind, args) for kind, args, _ in causes(original)][:8]
        assert [(kind, args) for kind, args, _ in causes(follower)] == expected
        assert all(tb is None for _, _, tb in causes(follower))
        assert follower.__suppress_context__ is True


async def test_a_cause_that_cannot_be_copied_is_left_out_of_the_followers_copy():
    """A link of the chain that cannot be rebuilt is dropped rather than shared (it holds the leader's frames)."""

    @batch
    async def fetch(x):
        await collect(x)
        raise raised(LookupError("wrapped"), raised(KeywordOnlyError(code=1), None))

    leader, follower = await asyncio.gather(*(fetch(x) for x in range(2)), return_exceptions=True)

    assert type(leader.__cause__) is KeywordOnlyError
    assert copy_of(follower, leader)
    assert follower.__cause__ is None
    assert follower.__context__ is None


# --------------------------------------------------------------------------------------
# Shared work: what the code after collect() inherits from the leader
# --------------------------------------------------------------------------------------


tenant = contextvars.ContextVar("tenant", default="none")


async def test_the_shared_work_runs_in_the_leaders_context():
    """Context variables seen after collect() are the leader's, for the whole batch."""
    seen = Recorder()

    @batch
    async def fetch(x):
        items = await collect(x)
        seen.append(tenant.get())
        return scatter(items)

    async def as_tenant(name, x):
        tenant.set(name)
        return await fetch(x)

    assert await asyncio.gather(as_tenant("a", 1), as_tenant("b", 2)) == [1, 2]
    assert seen == ["a"]  # one run, in the first caller's (the leader's) context


async def test_group_by_on_a_context_variable_keeps_tenants_in_separate_batches():
    """group_by reads the caller's context, so each tenant's shared work runs with its own tenant."""
    seen = Recorder()

    @batch(group_by=lambda x: tenant.get())
    async def fetch(x):
        items = await collect(x)
        seen.append((tenant.get(), list(items)))
        return scatter([(tenant.get(), item) for item in items])

    async def as_tenant(name, x):
        tenant.set(name)
        return await fetch(x)

    results = await asyncio.gather(as_tenant("a", 1), as_tenant("b", 2), as_tenant("a", 3), as_tenant("b", 4))

    assert results == [("a", 1), ("b", 2), ("a", 3), ("b", 4)]
    assert sorted(seen) == [("a", [1, 3]), ("b", [2, 4])]


async def test_a_deadline_in_the_body_around_the_bulk_call_bounds_the_shared_work(clock):
    """A time-out the leader's body puts on the bulk call fails the whole batch with TimeoutError."""

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        items = await collect(x)
        await asyncio.wait_for(asyncio.sleep(10), timeout=1.0)
        return scatter(items)

    results = await asyncio.gather(*(fetch(x) for x in range(3)), return_exceptions=True)

    assert [type(result) for result in results] == [asyncio.TimeoutError] * 3
    assert clock.now() == pytest.approx(1.0)


@pytest.mark.skipif(not ON_311, reason="asyncio.timeout() is new in Python 3.11")
async def test_a_timeout_block_around_collect_in_the_body_bounds_the_shared_work(clock):
    """asyncio.timeout() opened before collect() in the body applies to the leader's bulk section: a fault for all."""
    runs = Recorder()

    @batch(max_window=NEVER, max_size=3)
    async def fetch(x):
        async with asyncio.timeout(1.0):
            items = await collect(x)
            runs.append(list(items))
            await asyncio.sleep(10)
        return scatter(items)

    results = await asyncio.gather(*(fetch(x) for x in range(3)), return_exceptions=True)

    assert [type(result) for result in results] == [TimeoutError] * 3
    assert runs == [[0, 1, 2]]  # not a handover: the leader's task had no cancellation request left


def renaming_self(fn):
    """A decorator whose own first parameter is not called `self`."""

    @functools.wraps(fn)
    async def wrapper(inst, key):
        return await fn(inst, key)

    return wrapper


class Renamed:
    def __init__(self, name):
        self.name = name

    @batch(max_window=NEVER)
    @renaming_self
    async def get(self, key):
        keys = await collect(key)
        return scatter([f"{self.name}:{k}/{len(keys)}" for k in keys])

    @batch(max_window=NEVER, group_by=lambda inst, key: 0)
    @renaming_self
    async def grouped(self, key):
        keys = await collect(key)
        return scatter([f"{self.name}:{k}/{len(keys)}" for k in keys])


@pytest.mark.parametrize("method", ["get", "grouped"])
async def test_methods_batch_per_instance_under_a_decorator_that_renames_self(method):
    """The instance passed as the decorator's own `inst=` keyword still picks its partition."""
    east, west = Renamed("east"), Renamed("west")
    unbound = getattr(Renamed, method)
    tasks = [
        asyncio.create_task(unbound(inst=east, key=1)),
        asyncio.create_task(unbound(inst=west, key=2)),
        asyncio.create_task(unbound(east, 3)),
        asyncio.create_task(getattr(west, method)(4)),
    ]
    await wait_all_tasks_blocked()
    assert unbound.flush() == 2

    assert await asyncio.gather(*tasks) == ["east:1/2", "west:2/2", "east:3/2", "west:4/2"]


class CancellingRepr:
    """A group key whose repr() raises a BaseException (here CancelledError)."""

    def __hash__(self):
        return 1

    def __eq__(self, other):
        return isinstance(other, CancellingRepr)

    def __repr__(self):
        raise asyncio.CancelledError


async def test_a_group_key_whose_repr_raises_a_base_exception_neither_fails_nor_wedges():
    """Reporting catches whatever the key's repr() raises: results arrive, the one slot is freed."""
    seen = Recorder()

    @batch(max_size=2, max_concurrency=1, group_by=lambda x: CancellingRepr(), observer=lambda r: seen(r.partition))
    async def fetch(x):
        items = await collect(x)
        return scatter([item * 10 for item in items])

    assert await asyncio.wait_for(asyncio.gather(*(fetch(x) for x in range(3))), 5) == [0, 10, 20]
    assert await asyncio.wait_for(fetch(4), 5) == 40
    assert seen == ["<CancellingRepr key, repr() raised CancelledError>"] * 3
    assert partitions_of(fetch) == {}


async def test_calls_nested_two_deep_in_one_task_batch_unwind_and_are_seen_by_drain():
    """a() calls b() calls c() in one task: each batches; drain() of the outermost from inside is refused."""
    refused = Recorder()

    @batch
    async def c(x):
        try:
            await a.drain()
        except RuntimeError as error:
            refused.append("inside a call of the same function" in str(error))
        items = await collect(x)
        return scatter([item + 1 for item in items])

    @batch
    async def b(x):
        items = await collect(await c(x))
        return scatter(items)

    @batch
    async def a(x):
        items = await collect(await b(x))
        return scatter(items)

    assert await asyncio.gather(a(1), a(2)) == [2, 3]
    assert refused == [True, True]
    assert OUTER == {}


async def test_a_refused_call_leaves_the_other_members_of_its_batch_waiting():
    """The re-entrant call is refused; an unrelated call waiting in the same batch runs once the slot frees."""
    gate = asyncio.Event()

    @batch(max_concurrency=1)
    async def load(x):
        items = await collect(x)
        if x == 0:
            await gate.wait()
            await load(2)  # joins the batch where load(1) waits: refused
        return scatter(items)

    leader = asyncio.create_task(load(0))
    await wait_all_tasks_blocked()
    other = asyncio.create_task(load(1))  # waits for the slot in the next batch
    await wait_all_tasks_blocked()
    gate.set()

    with pytest.raises(RuntimeError, match="called from its own bulk section"):
        await asyncio.wait_for(leader, 5)
    assert await asyncio.wait_for(other, 5) == 1


class SlottedError(Exception):
    """An exception whose fields live in slots (as attrs makes them): one set, one never set."""

    __slots__ = ("code", "detail")

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class OneSlotError(SlottedError):
    __slots__ = "hint"  # noqa: PLC0205 -- a single slot may be named by a string: copied too

    def __init__(self, message: str, code: int, hint: str) -> None:
        super().__init__(message, code)
        self.hint = hint


async def test_a_followers_copy_keeps_the_fields_of_an_exception_with_slots():
    """Decision 42: slots are copied (a slot never set stays unset), so the copy reads like the original."""

    @batch
    async def fetch(x):
        await collect(x)
        raise OneSlotError("no row", 404, "retry later")  # noqa: EM101, TRY003

    leader, follower = await asyncio.gather(*(fetch(x) for x in range(2)), return_exceptions=True)

    assert copy_of(follower, leader)
    assert (follower.code, follower.hint) == (404, "retry later")
    assert not hasattr(follower, "detail")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in Python 3.11")
async def test_a_followers_copy_of_an_exception_group_copies_its_members_without_their_frames():
    """Decision 42: the members of a group hold the frames of the tasks that raised them; each follower gets copies."""

    async def fetch_rows(keys):
        raise ConnectionError(f"database down ({len(keys)} keys)")  # noqa: EM102, TRY003

    @batch
    async def fetch(x):
        keys = await collect(x)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fetch_rows(keys))
        return scatter(keys)

    results = await asyncio.gather(*(fetch(x) for x in range(3)), return_exceptions=True)

    leader, *followers = results
    (original,) = leader.exceptions
    assert original.__traceback__ is not None
    for follower in followers:
        assert copy_of(follower, leader) is False  # a group's args hold its members: rebuilt, not equal
        assert type(follower) is type(leader)
        assert str(follower) == str(leader)
        (member,) = follower.exceptions
        assert member is not original
        assert copy_of(member, original)
        assert member.__traceback__ is None
    assert followers[0].exceptions[0] is not followers[1].exceptions[0]


@pytest.mark.parametrize("how", ["dedupe", "one object in two slots"])
async def test_one_exception_result_for_several_callers_is_raised_as_a_copy_in_all_but_one(how):
    """Decision 42: each caller raises an object of its own, so no traceback gathers another caller's frames."""
    error = LookupError("no such user")

    @batch(dedupe=how == "dedupe")
    async def fetch(x):
        items = await collect(x)
        return scatter([error for _ in items])

    items = ["same"] * 4 if how == "dedupe" else ["a", "b", "c", "d"]
    results = await asyncio.gather(*(fetch(x) for x in items), return_exceptions=True)

    assert sum(result is error for result in results) == 1  # the leader's own
    assert all(result is error or copy_of(result, error) for result in results)
    assert len({id(result) for result in results}) == 4
    for result in results:
        frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(result.__traceback__)]
        assert frames.count("wrapper") == 1, frames  # its own call's frames only


async def test_a_generator_exit_the_bulk_code_raises_in_its_task_is_a_fault_run_once():
    """Only a coroutine closed outside its task departs; a GeneratorExit raised by the bulk code is a fault."""
    runs = Recorder()

    @batch
    async def fetch(x):
        items = await collect(x)
        runs(items)
        await asyncio.sleep(0)
        raise GeneratorExit("the driver raised it")  # noqa: EM101, TRY003

    results = await asyncio.gather(*(fetch(x) for x in range(4)), return_exceptions=True)

    assert runs == [[0, 1, 2, 3]]
    assert [type(result) for result in results] == [GeneratorExit] * 4


class UnprintableItem:
    """A hashable item whose repr() raises."""

    def __init__(self, n):
        self.n = n

    def __hash__(self):
        return hash(self.n)

    def __eq__(self, other):
        return isinstance(other, UnprintableItem) and other.n == self.n

    def __repr__(self):
        raise RuntimeError("repr boom")  # noqa: EM101, TRY003


async def test_an_item_whose_repr_raises_still_gets_its_own_missing_result_error():
    """The message of a per-caller error must not turn it into a fault of the batch."""

    @batch
    async def fetch(item):
        items = await collect(item)
        return scatter({it: it.n for it in items if it.n != 1})

    results = await asyncio.gather(*(fetch(UnprintableItem(n)) for n in range(3)), return_exceptions=True)

    assert results[0] == 0
    assert results[2] == 2
    assert type(results[1]) is MissingResultError
    assert "its repr() raised RuntimeError" in str(results[1])


async def test_a_key_function_error_whose_str_raises_is_still_a_routing_error():
    class UnprintableError(Exception):
        def __str__(self):
            raise RuntimeError("str boom")  # noqa: EM101, TRY003

    def key(item):
        raise UnprintableError

    @batch
    async def fetch(item):
        items = await collect(item)
        return scatter({item: item for item in items}, key=key)

    results = await asyncio.gather(*(fetch(n) for n in range(2)), return_exceptions=True)

    assert [type(result) for result in results] == [BatchRoutingError] * 2
    assert "<str() raised RuntimeError>" in str(results[0])
