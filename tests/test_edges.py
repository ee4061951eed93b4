"""Edge cases of the state machine: queued batches, dedupe bookkeeping, odd exits."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import sys

import pytest
from tests.support import Recorder, copy_of, partitions_of, wait_all_tasks_blocked

from concresce import MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


def test_scatter_signature_shows_default_as_missing():
    """scatter()'s signature shows its `default` sentinel readably."""
    assert "= <missing>" in str(inspect.signature(scatter))


def test_missing_result_error_survives_pickling():
    """MissingResultError keeps its message and key across a pickle round trip."""
    error = MissingResultError("f: scatter() has no result for key 3", 3)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own object
    assert type(clone) is MissingResultError
    assert str(clone) == "f: scatter() has no result for key 3"
    assert clone.key == 3


async def test_scatter_by_a_leader_that_was_handed_over_is_a_runtime_error():
    """A leader cancelled before it resumed that swallows it and calls scatter() is told why it can't."""
    record = Recorder()

    @batch(max_size=3)
    async def work(x):
        try:
            items = await collect(x)
        except asyncio.CancelledError:
            try:
                scatter([])
            except RuntimeError as error:
                record("refused", str(error))
            return "gave up"
        record("leader", x, list(items))
        return scatter([item * 10 for item in items])

    tasks = [asyncio.create_task(work(x)) for x in range(3)]
    if asyncio.get_running_loop().get_task_factory() is None:
        await asyncio.sleep(0)  # the three calls join; the third fills the batch and wakes task 0
    # Eager tasks joined inside create_task(). Either way task 0 leads but has not resumed yet.
    tasks[0].cancel()
    results = await asyncio.gather(*tasks)

    assert results == ["gave up", 10, 20]
    [refused, leader] = record
    assert refused[0] == "refused"
    assert "work: scatter() was called by a leader that was cancelled" in refused[1]
    assert leader == ("leader", 1, [1, 2])


async def test_follower_turning_the_resume_signal_into_its_own_error_raises_that_error():
    """A follower whose code replaces the resume signal with its own exception raises that exception."""

    @batch
    async def work(x):
        try:
            items = await collect(x)
        except BaseException as signal:
            if x == 1:
                message = "replaced"
                raise LookupError(message) from signal
            raise
        return scatter([item * 10 for item in items])

    results = await asyncio.gather(work(0), work(1), work(2), return_exceptions=True)

    assert results[0] == 0
    assert results[2] == 20
    assert type(results[1]) is LookupError


@pytest.mark.skipif(sys.version_info < (3, 11), reason="BaseExceptionGroup is new in Python 3.11")
async def test_follower_group_without_the_resume_signal_propagates():
    """A follower whose code raises an unrelated exception group after its result was routed raises that group."""

    @batch
    async def work(x):
        try:
            items = await collect(x)
        except BaseException:
            if x == 1:
                message = "unrelated"
                group_message = "mine"
                raise ExceptionGroup(group_message, [ValueError(message)]) from None  # noqa: F821 -- 3.11+
            raise
        return scatter([item * 10 for item in items])

    results = await asyncio.gather(work(0), work(1), work(2), return_exceptions=True)

    assert results[0] == 0
    assert results[2] == 20
    assert type(results[1]).__name__ == "ExceptionGroup"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is new in Python 3.11")
async def test_follower_in_a_task_group_whose_child_fails_on_unwinding_raises_the_childs_error():
    """A follower whose TaskGroup child fails while the group unwinds raises the child's error, not the signal."""

    async def failing_child():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            message = "child failed"
            raise ValueError(message) from None

    @batch
    async def work(x):
        async with asyncio.TaskGroup() as group:
            if x == 1:
                group.create_task(failing_child())
            items = await collect(x)
        return scatter([item * 10 for item in items])

    results = await asyncio.gather(work(0), work(1), work(2), return_exceptions=True)

    assert results[0] == 0
    assert results[2] == 20
    error = results[1]
    assert isinstance(error, BaseException)
    assert type(error).__name__ in {"ExceptionGroup", "BaseExceptionGroup"}
    leaves = []
    stack = [error]
    while stack:
        current = stack.pop()
        inner = getattr(current, "exceptions", None)
        if inner is None:
            leaves.append(current)
        else:
            stack.extend(inner)
    assert [type(leaf) for leaf in leaves] == [ValueError]


async def test_method_detection_survives_a_function_without_a_signature():
    """A class-body function whose signature cannot be read is batched as a plain function (one shared batch)."""

    async def get(self, x):
        items = await collect(x)
        return scatter(items)

    get.__qualname__ = "Repo.get"
    get.__signature__ = "not a signature"  # inspect.signature raises TypeError on this
    batched = batch(get)

    class Repo:
        pass

    first, second = Repo(), Repo()
    seen = []

    async def spy(repo, x):
        seen.append(x)
        return await batched(repo, x)

    assert await asyncio.gather(spy(first, 1), spy(second, 2)) == [1, 2]


@pytest.mark.virtual_clock
async def test_dedupe_counts_go_down_when_members_leave_while_open():
    """With dedupe, a duplicate or unhashable member leaving an open batch frees room under max_size accordingly."""
    record = Recorder()

    @batch(dedupe=True, max_size=3, max_window=1.0)
    async def work(x):
        items = await collect(x)
        record(list(items))
        return scatter([repr(item) for item in items])

    first_a = asyncio.create_task(work("a"))
    second_a = asyncio.create_task(work("a"))
    unhashable = asyncio.create_task(work(["u"]))
    await wait_all_tasks_blocked()
    second_a.cancel()  # "a" is still wanted by first_a: two distinct items remain
    unhashable.cancel()  # one distinct item remains
    await wait_all_tasks_blocked()
    lone = asyncio.create_task(work("z"))
    await wait_all_tasks_blocked()
    lone.cancel()  # back to one distinct item
    await wait_all_tasks_blocked()
    late = [asyncio.create_task(work(x)) for x in ("b", "c")]  # fills the batch: a, b, c
    results = await asyncio.gather(first_a, *late)

    assert results == ["'a'", "'b'", "'c'"]
    assert record == [["a", "b", "c"]]
    assert second_a.cancelled()
    assert unhashable.cancelled()
    assert lone.cancelled()


async def test_queued_open_batch_closes_when_full_and_the_next_one_queues_behind_it():
    """With max_concurrency=1, a due batch waiting for the slot closes at max_size; later calls form the next batch."""
    record = Recorder()
    release = asyncio.Event()

    @batch(max_concurrency=1, max_size=2)
    async def work(x):
        items = await collect(x)
        record("start", list(items))
        if items == [0]:
            await release.wait()
        record("scatter", list(items))
        return scatter([item * 10 for item in items])

    first = asyncio.create_task(work(0))
    await wait_all_tasks_blocked()  # batch [0] runs and holds the only slot
    second = asyncio.create_task(work(1))
    await wait_all_tasks_blocked()  # batch [1] is due (tick) and queued, still open
    rest = [asyncio.create_task(work(x)) for x in (2, 3, 4)]  # 2 fills [1, 2]; 3, 4 form [3, 4]
    await wait_all_tasks_blocked()
    release.set()
    results = await asyncio.gather(first, second, *rest)

    assert results == [0, 10, 20, 30, 40]
    assert record == [
        ("start", [0]),
        ("scatter", [0]),
        ("start", [1, 2]),
        ("scatter", [1, 2]),
        ("start", [3, 4]),
        ("scatter", [3, 4]),
    ]


async def test_queued_batch_whose_members_were_all_cancelled_at_dispatch_is_skipped():
    """A queued batch whose members are cancelled just before a slot frees runs nothing; the partition is cleaned up."""
    record = Recorder()
    queued = []

    @batch(max_concurrency=1)
    async def work(x):
        items = await collect(x)
        record("start", list(items))
        if items == [0]:
            await wait_all_tasks_blocked()
            for task in queued:  # cancelled, but their tasks have not run yet when the slot frees
                task.cancel()
        return scatter([item * 10 for item in items])

    first = asyncio.create_task(work(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    queued.extend(asyncio.create_task(work(x)) for x in (1, 2))
    result = await first
    outcomes = await asyncio.gather(*queued, return_exceptions=True)

    assert result == 0
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert record == [("start", [0])]
    assert partitions_of(work) == {}


async def test_leader_fault_skips_a_follower_cancelled_after_the_flush():
    """A leader's fault reaches the followers still waiting; one cancelled after the flush sees its cancellation."""
    gate = asyncio.Event()

    @batch
    async def work(x):
        items = await collect(x)
        await gate.wait()
        message = f"bulk failed for {items}"
        raise RuntimeError(message)

    tasks = [asyncio.create_task(work(x)) for x in range(3)]
    await wait_all_tasks_blocked()  # the leader waits on the gate
    tasks[1].cancel()
    await wait_all_tasks_blocked()
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[1], asyncio.CancelledError)
    assert type(results[0]) is RuntimeError
    assert copy_of(results[2], results[0])
    assert str(results[0]) == "bulk failed for [0, 1, 2]"


def test_scatter_outside_any_event_loop_is_a_runtime_error():
    """scatter() called with no running event loop says it belongs in a @batch call."""
    with pytest.raises(RuntimeError, match=r"scatter\(\) was used outside a call of a @batch function"):
        scatter([1])
