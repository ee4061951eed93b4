"""collect(): leader and followers, faults and misuse (SPEC.md "Leader and followers", "Faults and misuse").

Every test runs its calls concurrently and asserts the whole history: the events each call
recorded, in order, and what each call returned or raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import traceback

import pytest
from tests.support import Recorder, copy_of, wait_all_tasks_blocked

from concresce import MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


class Abort(BaseException):
    """A BaseException that is not an Exception, like KeyboardInterrupt or SystemExit."""


async def outcome(awaitable):
    """Await ``awaitable``; return ``("returned", value)`` or ``("raised", exception)``."""
    try:
        value = await awaitable
    except (Exception, Abort) as error:  # noqa: BLE001 -- the outcome is what the test asserts
        return ("raised", error)
    return ("returned", value)


async def outcomes(*awaitables):
    """Run the awaitables concurrently, in order, and return the outcome of each."""
    return list(await asyncio.gather(*(outcome(awaitable) for awaitable in awaitables)))


def frame_names(error):
    """The function names of ``error``'s traceback, outermost first."""
    return [frame.name for frame in traceback.extract_tb(error.__traceback__)]


# --------------------------------------------------------------------------------------
# Leader and followers
# --------------------------------------------------------------------------------------


async def test_code_after_collect_runs_once_per_batch():
    """Exactly one member of a batch resumes from collect(); the others never run the code after it."""
    after_collect = Recorder()

    @batch
    async def work(x):
        items = await collect(x)
        after_collect(x, items)
        return scatter([item * 10 for item in items])

    results = await asyncio.gather(*(work(x) for x in range(5)))

    assert after_collect == [(0, [0, 1, 2, 3, 4])]
    assert results == [0, 10, 20, 30, 40]


async def test_leader_is_first_arrival_and_gets_items_in_arrival_order():
    """The earliest member leads, and collect() returns every item in the order the calls reached collect()."""
    record = Recorder()
    gates = {x: asyncio.Event() for x in range(5)}

    # A size-flushed batch: arrival is spread over several loop turns, the window never fires.
    @batch(max_window=60, max_size=5)
    async def work(x):
        await gates[x].wait()
        items = await collect(x)
        record("leader", x, items)
        return scatter([f"r{item}" for item in items])

    tasks = [asyncio.create_task(work(x)) for x in range(5)]
    for x in (3, 1, 4, 0, 2):
        gates[x].set()
        await wait_all_tasks_blocked()
    results = await asyncio.gather(*tasks)

    assert record == [("leader", 3, [3, 1, 4, 0, 2])]
    assert results == ["r0", "r1", "r2", "r3", "r4"]


async def test_followers_stay_in_collect_until_their_result_is_routed():
    """Followers' finally blocks run when scatter() routes their results, after the leader's bulk code, not before."""
    record = Recorder()
    release = asyncio.Event()

    @batch
    async def work(x):
        record("enter", x)
        try:
            items = await collect(x)
            record("bulk start", items)
            await release.wait()
            record("scatter")
            return scatter([item * 10 for item in items])
        finally:
            record("exit", x)

    tasks = [asyncio.create_task(work(x)) for x in range(3)]
    await wait_all_tasks_blocked()
    assert record.take() == [("enter", 0), ("enter", 1), ("enter", 2), ("bulk start", [0, 1, 2])]
    assert [task.done() for task in tasks] == [False, False, False]

    release.set()
    results = await asyncio.gather(*tasks)

    assert record == ["scatter", ("exit", 0), ("exit", 1), ("exit", 2)]
    assert results == [0, 10, 20]


async def test_follower_returns_exactly_its_routed_result():
    """Each follower's call returns the very object routed to it, not a copy."""
    shares = [object() for _ in range(4)]

    @batch
    async def work(x):
        items = await collect(x)
        return scatter([shares[item] for item in items])

    results = await asyncio.gather(*(work(x) for x in range(4)))

    assert all(result is share for result, share in zip(results, shares, strict=True))


async def test_leader_returns_its_own_share_from_scatter():
    """scatter() returns the leader's own share, which the leader's call returns."""
    shares = [object() for _ in range(3)]
    record = Recorder()

    @batch
    async def work(x):
        items = await collect(x)
        own = scatter([shares[item] for item in items])
        record("own is share 0", own is shares[0])
        return own

    results = await asyncio.gather(*(work(x) for x in range(3)))

    assert record == [("own is share 0", True)]
    assert results[0] is shares[0]


async def test_leader_code_after_scatter_cannot_change_what_followers_received():
    """After scatter(), the leader may replace its own return value; changing `results` no longer reaches followers."""

    @batch
    async def work(x):
        items = await collect(x)
        results = [f"r{item}" for item in items]
        own = scatter(results)
        results[1] = results[2] = "overwritten"
        results = ["rebound"] * len(items)
        await asyncio.sleep(0)
        return ("replaced", own)

    results = await asyncio.gather(*(work(x) for x in range(3)))

    assert results == [("replaced", "r0"), "r1", "r2"]


async def test_scatter_resumes_followers_before_the_leader_awaits_again():
    """scatter() delivers followers at once: their finally blocks run before the leader's next await returns."""
    record = Recorder()

    @batch
    async def work(x):
        try:
            items = await collect(x)
            own = scatter(items)
            record("scattered")
            await asyncio.sleep(0)
            record("leader resumed")
            return own
        finally:
            record("exit", x)

    results = await asyncio.gather(*(work(x) for x in range(3)))

    assert record == ["scattered", ("exit", 1), ("exit", 2), "leader resumed", ("exit", 0)]
    assert results == [0, 1, 2]


# --------------------------------------------------------------------------------------
# Fault propagation
# --------------------------------------------------------------------------------------


async def test_leader_error_before_scatter_is_raised_in_every_member():
    """A leader's exception before scatter() reaches its caller, and a copy of it each follower's collect()."""
    record = Recorder()
    boom = ValueError("bulk call failed")

    @batch
    async def work(x):
        try:
            items = await collect(x)
        except ValueError as error:
            record("caught", x, copy_of(error, boom), frame_names(error)[:2])
            raise
        finally:
            record("exit", x)
        record("bulk", items)
        raise boom

    outs = await outcomes(*(work(x) for x in range(3)))

    assert outs[0] == ("raised", boom)
    assert [kind for kind, _ in outs] == ["raised"] * 3
    assert all(copy_of(error, boom) for _, error in outs[1:])
    assert record == [
        ("exit", 0),
        ("bulk", [0, 1, 2]),
        ("caught", 1, True, ["work", "collect"]),
        ("exit", 1),
        ("caught", 2, True, ["work", "collect"]),
        ("exit", 2),
    ]


async def test_leader_error_tracebacks_do_not_grow_with_batch_size():
    """Each of 50 followers sees the leader's exception with the same short traceback, however many came before it."""
    lengths = Recorder()
    boom = ValueError("bulk call failed")

    @batch
    async def work(x):
        try:
            await collect(x)
        except ValueError as error:
            lengths.append(len(traceback.extract_tb(error.__traceback__)))
            raise
        raise boom

    outs = await outcomes(*(work(x) for x in range(51)))

    assert outs[0] == ("raised", boom)
    assert all(copy_of(error, boom) for _, error in outs[1:])
    assert len(lengths) == 50
    assert len(set(lengths)) == 1
    assert lengths[0] < 20


async def test_leader_error_after_scatter_reaches_only_the_leaders_caller():
    """An exception the leader raises after scatter() leaves the followers' results alone."""
    boom = ValueError("after scatter")

    @batch
    async def work(x):
        items = await collect(x)
        scatter([item * 10 for item in items])
        raise boom

    outs = await outcomes(*(work(x) for x in range(3)))

    assert outs == [("raised", boom), ("returned", 10), ("returned", 20)]


async def test_leader_returning_without_scatter_fails_every_member():
    """A leader that returns without scatter() fails every member, its own caller included, with a RuntimeError."""

    @batch
    async def work(x):
        await collect(x)
        return "forgot to scatter"

    outs = await outcomes(*(work(x) for x in range(3)))

    kinds = [kind for kind, _ in outs]
    errors = [error for _, error in outs]
    assert kinds == ["raised"] * 3
    assert all(copy_of(error, errors[0]) for error in errors[1:])
    assert type(errors[0]) is RuntimeError
    message = str(errors[0])
    assert message.startswith(f"{work.__qualname__}: the leader returned without calling scatter()")
    assert "return scatter(results)" in message


async def test_leader_returning_its_list_of_results_is_told_to_scatter_it():
    """A leader that returns the bulk results as a list (concresce 1.x-5.x style) is told the exact fix."""

    @batch
    async def work(x):
        items = await collect(x)
        return [item * 10 for item in items]  # 1.x-5.x routed a returned list by position

    outs = await outcomes(*(work(x) for x in range(3)))

    message = str(outs[0][1])
    assert "`return scatter(results)`" in message
    assert "returning the list of results itself" in message
    assert "1.x-5.x" in message


async def test_leader_ending_with_base_exception_without_a_cancellation_fails_every_member():
    """A non-Exception BaseException the bulk code raises, with no cancellation request, is a fault: it ran once."""
    record = Recorder()
    abort = Abort("interrupted")

    @batch
    async def work(x):
        items = await collect(x)
        record("bulk", x, items)
        if x == 0:
            raise abort
        return scatter([item * 10 for item in items])

    outs = await outcomes(*(work(x) for x in range(3)))

    assert record == [("bulk", 0, [0, 1, 2])]
    assert outs[0] == ("raised", abort)
    assert all(copy_of(error, abort) for _, error in outs[1:])


# --------------------------------------------------------------------------------------
# Misuse
# --------------------------------------------------------------------------------------


async def test_collect_outside_a_batch_call_raises():
    """collect() in a function that is not decorated with @batch is a RuntimeError saying where it belongs."""

    async def not_batched(x):
        return await collect(x)

    with pytest.raises(RuntimeError) as info:
        await not_batched(1)

    message = str(info.value)
    assert message.startswith("collect() was used outside a call of a @batch function")
    assert "in the body of an `async def` decorated with @batch" in message


def test_collect_in_a_call_outside_any_task_raises():
    """collect() in a batched call driven by hand, outside any event loop task, is a RuntimeError."""

    @batch
    async def work(x):
        return scatter(await collect(x))

    coro = work(1)
    with pytest.raises(RuntimeError, match=r"collect\(\)") as info:
        coro.send(None)
    assert "No asyncio event loop or trio run is running here" in str(info.value)
    assert "coroutine driven by hand" in str(info.value)


async def test_collect_twice_in_one_call_raises():
    """A second collect() in the same call is a RuntimeError that says to collect one item per call."""

    @batch
    async def work(x):
        items = await collect(x)
        await collect(items)
        return scatter(items)

    outs = await outcomes(work(1))

    [(kind, error)] = outs
    assert kind == "raised"
    assert type(error) is RuntimeError
    assert str(error).startswith(f"{work.__qualname__}: collect() was awaited twice in one call")
    assert "collect a tuple or a list to contribute several" in str(error)


async def test_scatter_outside_a_batch_call_raises():
    """scatter() in a task that is not running a @batch call is a RuntimeError."""
    with pytest.raises(RuntimeError, match=r"^scatter\(\) was used outside a call of a @batch function"):
        scatter([1])


async def test_scatter_before_collect_raises():
    """scatter() in a batched call that has not awaited collect() is a RuntimeError saying to collect first."""

    @batch
    async def work(x):
        return scatter([x])

    outs = await outcomes(work(1))

    [(kind, error)] = outs
    assert kind == "raised"
    assert type(error) is RuntimeError
    assert str(error).startswith(f"{work.__qualname__}: scatter() was called before this call awaited collect()")
    assert "`items = await collect(item)`" in str(error)


async def test_scatter_after_a_collect_that_was_not_awaited_asks_whether_await_is_missing():
    """A forgotten ``await`` before collect() surfaces in scatter() as a question about the missing await."""

    @batch
    async def work(x):
        items = collect(x)  # the bug: no await
        items.close()  # (the test closes the coroutine, so it does not warn when collected)
        return scatter([x])

    outs = await outcomes(work(1))

    [(kind, error)] = outs
    assert kind == "raised"
    assert type(error) is RuntimeError
    assert "is `await` missing before collect(item)?" in str(error)


async def test_collect_in_a_task_of_its_own_says_to_put_the_timeout_around_the_call():
    """collect() run as a task (what wait_for does on 3.10/3.11) says so and where the time-out goes, not "outside"."""

    @batch
    async def work(x):
        items = await asyncio.create_task(collect(x))
        return scatter(items)

    outs = await outcomes(work(1))

    [(kind, error)] = outs
    assert kind == "raised"
    assert type(error) is RuntimeError
    message = str(error)
    assert message.startswith("collect() was awaited in a task of its own, where no @batch call runs")
    assert "asyncio.wait_for(collect(item), timeout) does that on Python 3.10 and 3.11" in message
    assert "asyncio.wait_for(fn(item), timeout)" in message
    assert "outside a call" not in message


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for runs the awaitable in the caller's task on 3.12+")
async def test_wait_for_around_collect_on_python_3_10_and_3_11_says_what_happened():
    """On Python 3.10 and 3.11, asyncio.wait_for(collect(x), t) gets the task-of-its-own message."""

    @batch
    async def work(x):
        items = await asyncio.wait_for(collect(x), 1)
        return scatter(items)

    outs = await outcomes(work(1))

    [(_, error)] = outs
    assert str(error).startswith("collect() was awaited in a task of its own")


async def test_scatter_twice_raises_in_the_leader_only():
    """A second scatter() is a RuntimeError for the leader's caller; followers keep what the first one routed."""

    @batch
    async def work(x):
        items = await collect(x)
        own = scatter([item * 10 for item in items])
        scatter([item * 100 for item in items])
        return own

    outs = await outcomes(*(work(x) for x in range(3)))

    (kind, error), *followers = outs
    assert kind == "raised"
    assert type(error) is RuntimeError
    assert str(error) == (
        f"{work.__qualname__}: scatter() was already called for this batch; call it once, with every result"
    )
    assert followers == [("returned", 10), ("returned", 20)]


async def test_scatter_in_a_follower_that_caught_its_error_raises():
    """A follower that catches the leader's exception and calls scatter() gets a RuntimeError: only leaders scatter."""
    boom = ValueError("bulk call failed")

    @batch
    async def work(x):
        try:
            await collect(x)
        except ValueError:
            return scatter([x])
        raise boom

    outs = await outcomes(*(work(x) for x in range(2)))

    assert outs[0] == ("raised", boom)
    kind, error = outs[1]
    assert kind == "raised"
    assert type(error) is RuntimeError
    assert str(error) == f"{work.__qualname__}: scatter() can only be called by the leader of a batch"


async def test_collect_under_wait_for_depends_on_whether_wait_for_starts_a_task():
    """wait_for(collect(x)) works on 3.12+, where it stays in the task; on 3.10/3.11 it is a RuntimeError."""

    @batch
    async def work(x):
        items = await asyncio.wait_for(collect(x), timeout=60)
        return scatter([item * 10 for item in items])

    outs = await outcomes(*(work(x) for x in range(3)))

    if sys.version_info >= (3, 12):
        assert outs == [("returned", 0), ("returned", 10), ("returned", 20)]
    else:
        assert [kind for kind, _ in outs] == ["raised"] * 3
        assert all(type(error) is RuntimeError and "task" in str(error) for _, error in outs)


async def test_follower_swallowing_the_resume_signal_raises():
    """A follower whose `except BaseException` swallows the resume signal and returns gets a RuntimeError."""

    @batch
    async def work(x):
        try:
            items = await collect(x)
        except BaseException:
            if x == 1:
                return "swallowed"
            raise
        return scatter([item * 10 for item in items])

    outs = await outcomes(*(work(x) for x in range(3)))

    assert outs[0] == ("returned", 0)
    assert outs[2] == ("returned", 20)
    kind, error = outs[1]
    assert kind == "raised"
    assert type(error) is RuntimeError
    message = str(error)
    assert message.startswith(f"{work.__qualname__}: this call was a follower whose result had been routed")
    assert "swallowed the internal signal" in message
    assert "let BaseException propagate" in message


@pytest.mark.parametrize("fault", ["leader error", "missing key", "exception result"])
async def test_follower_that_catches_its_own_error_returns_its_value(fault):
    """A follower that catches the error raised from its collect() and returns a value returns that value."""
    boom = ValueError("bulk call failed")
    caught = Recorder()

    @batch
    async def work(x):
        try:
            await collect(x)
        except (ValueError, MissingResultError) as error:
            caught(x, type(error).__name__)
            return "recovered"
        if fault == "leader error":
            raise boom
        if fault == "missing key":
            return scatter({0: "r0"})
        return scatter(["r0", ValueError("no result for 1")])

    outs = await outcomes(*(work(x) for x in range(2)))

    if fault == "leader error":
        assert outs == [("raised", boom), ("returned", "recovered")]
        assert caught == [(1, "ValueError")]
    elif fault == "missing key":
        assert outs == [("returned", "r0"), ("returned", "recovered")]
        assert caught == [(1, "MissingResultError")]
    else:
        assert outs == [("returned", "r0"), ("returned", "recovered")]
        assert caught == [(1, "ValueError")]


async def test_except_exception_around_collect_does_not_catch_the_resume_signal():
    """An `except Exception` handler around collect() in a follower never runs when its result is routed."""
    record = Recorder()

    @batch
    async def work(x):
        try:
            items = await collect(x)
        except Exception:  # noqa: BLE001 -- the point: it must not catch the resume signal
            record("caught", x)
            return "wrong"
        return scatter([item * 10 for item in items])

    results = await asyncio.gather(*(work(x) for x in range(3)))

    assert results == [0, 10, 20]
    assert record == []


# --------------------------------------------------------------------------------------
# User structure around collect()
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in Python 3.11")
async def test_collect_inside_a_task_group_works_for_leader_and_followers():
    """collect() inside `async with asyncio.TaskGroup()` works for the leader (bulk call in the group) and followers."""
    record = Recorder()

    async def bulk(items):
        record("bulk", items)
        return [item * 10 for item in items]

    @batch
    async def work(x):
        async with asyncio.TaskGroup() as group:
            record("enter", x)
            items = await collect(x)
            return scatter(await group.create_task(bulk(items)))

    async def caller(x):
        result = await work(x)
        record("returned", x, result)
        return result

    results = await asyncio.gather(*(caller(x) for x in range(3)))

    assert results == [0, 10, 20]
    assert record == [
        ("enter", 0),
        ("enter", 1),
        ("enter", 2),
        ("bulk", [0, 1, 2]),
        ("returned", 0, 0),
        ("returned", 1, 10),
        ("returned", 2, 20),
    ]


@pytest.mark.parametrize("kind", ["asynccontextmanager", "contextmanager", "AsyncExitStack"])
async def test_collect_inside_context_managers_works_for_leader_and_followers(kind):
    """collect() inside a context manager works, and each follower's context exits when its result is routed."""
    record = Recorder()

    @contextlib.asynccontextmanager
    async def async_tracked(x):
        record("enter", x)
        try:
            yield
        finally:
            record("exit", x)

    @contextlib.contextmanager
    def tracked(x):
        record("enter", x)
        try:
            yield
        finally:
            record("exit", x)

    def bulk(items):
        record("bulk", items)
        return scatter([item * 10 for item in items])

    @batch
    async def work(x):
        if kind == "asynccontextmanager":
            async with async_tracked(x):
                return bulk(await collect(x))
        if kind == "contextmanager":
            with tracked(x):
                return bulk(await collect(x))
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(record, "exit", x)
            record("enter", x)
            return bulk(await collect(x))

    results = await asyncio.gather(*(work(x) for x in range(3)))

    assert results == [0, 10, 20]
    assert record == [
        ("enter", 0),
        ("enter", 1),
        ("enter", 2),
        ("bulk", [0, 1, 2]),
        ("exit", 0),
        ("exit", 1),
        ("exit", 2),
    ]


# --------------------------------------------------------------------------------------
# Calls that never collect, nested calls
# --------------------------------------------------------------------------------------


async def test_call_without_collect_returns_its_value():
    """A batched call that never awaits collect() runs its whole body and returns its value, as an ordinary call."""
    record = Recorder()

    @batch
    async def plain(x):
        record("start", x)
        await asyncio.sleep(0)
        record("end", x)
        return x + 1

    results = await asyncio.gather(*(plain(x) for x in range(3)))

    assert results == [1, 2, 3]
    assert record == [("start", 0), ("start", 1), ("start", 2), ("end", 0), ("end", 1), ("end", 2)]


async def test_call_without_collect_raises_its_exception():
    """A batched call that never awaits collect() raises its own exception, without affecting concurrent calls."""
    boom = ValueError("plain failure")

    @batch
    async def plain(x):
        await asyncio.sleep(0)
        if x == 1:
            raise boom
        return x

    outs = await outcomes(*(plain(x) for x in range(3)))

    assert outs == [("returned", 0), ("raised", boom), ("returned", 2)]


async def test_call_without_collect_can_call_a_batched_function():
    """A batched body that never collects may await another batched function, whose calls still share one batch."""
    record = Recorder()

    @batch
    async def inner(x):
        items = await collect(x)
        record("inner bulk", items)
        return scatter([item * 10 for item in items])

    @batch
    async def outer(x):
        return await inner(x) + 1

    results = await asyncio.gather(*(outer(x) for x in range(3)))

    assert results == [1, 11, 21]
    assert record == [("inner bulk", [0, 1, 2])]


def test_call_outside_any_task_is_an_ordinary_call():
    """A batched call driven by hand, outside any event loop task, runs as an ordinary coroutine."""

    @batch
    async def plain(x):
        return x * 2

    coro = plain(21)
    with pytest.raises(StopIteration) as info:
        coro.send(None)

    assert info.value.value == 42


async def test_leader_may_fan_out_to_another_batched_function():
    """The leader's bulk code may call another batched function from several tasks; those calls form their own batch."""
    record = Recorder()

    @batch
    async def inner(x):
        items = await collect(x)
        record("inner bulk", items)
        return scatter([item * 10 for item in items])

    @batch
    async def outer(x):
        items = await collect(x)
        record("outer bulk", items)
        return scatter(await asyncio.gather(*(inner(item) for item in items)))

    results = await asyncio.gather(*(outer(x) for x in range(3)))

    assert results == [0, 10, 20]
    assert record == [("outer bulk", [0, 1, 2]), ("inner bulk", [0, 1, 2])]


async def test_leader_may_await_a_batched_function_before_scattering():
    """A batched call awaited in the leader's task between collect() and scatter() leaves the leader's batch intact."""
    record = Recorder()

    @batch
    async def total(x):
        items = await collect(x)
        record("total bulk", items)
        return scatter([sum(item) for item in items])

    @batch
    async def outer(x):
        items = await collect(x)
        offset = await total(tuple(items))
        record("outer scatter", offset)
        return scatter([item + offset for item in items])

    results = await asyncio.gather(*(outer(x) for x in range(3)))

    assert results == [3, 4, 5]
    assert record == [("total bulk", [(0, 1, 2)]), ("outer scatter", 3)]


async def test_batched_call_before_collect_does_not_disturb_the_outer_call():
    """A batched body may await another batched function before its own collect(); both functions batch their calls."""
    record = Recorder()

    @batch
    async def inner(x):
        items = await collect(x)
        record("inner bulk", items)
        return scatter([item * 10 for item in items])

    @batch
    async def outer(x):
        y = await inner(x)
        items = await collect(y)
        record("outer bulk", items)
        return scatter([item + 1 for item in items])

    results = await asyncio.gather(*(outer(x) for x in range(3)))

    assert results == [1, 11, 21]
    assert record == [("inner bulk", [0, 1, 2]), ("outer bulk", [0, 10, 20])]


def test_collect_run_as_a_task_without_any_batch_call_says_where_it_belongs():
    """asyncio.run(collect(1)): the message does not claim there is a @batch call, and says where collect() goes."""
    with pytest.raises(RuntimeError) as info:
        asyncio.run(collect(1))

    message = str(info.value)
    assert "where no @batch call runs" in message
    assert "in the body of an `async def` decorated with @batch" in message
