"""trio as a runtime: what is specific to it (the shared contract is tests/runtimes/).

Each test runs its own ``trio.run`` on a ``MockClock`` with autojump (time jumps to the next
deadline whenever every task is blocked), so windows are exact and instant. trio runs the
tasks of a scheduler round in a random order; tests that depend on an order seed trio's
scheduler (``seeded()``) or make it irrelevant by recording the join order.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types

import pytest
import trio
import trio.testing
from tests.support import Recorder
from trio._core import _run as trio_run  # the scheduler's random order, seeded by tests

from concresce import batch, collect, scatter
from concresce._runtime import running
from concresce._trio import TrioLoop

#: Every test drives its own run; a deadlock fails on the suite's time-out.

if sys.version_info >= (3, 11):
    Group = BaseExceptionGroup  # noqa: F821 -- a builtin from 3.11 on
else:  # trio's dependency on 3.10
    from exceptiongroup import BaseExceptionGroup as Group


def run(main, *args):
    """``trio.run(main, *args)`` on a fresh MockClock with autojump."""
    return trio.run(main, *args, clock=trio.testing.MockClock(autojump_threshold=0))


@contextlib.contextmanager
def seeded(seed):
    """Make trio's random scheduling order a function of ``seed``."""
    state = trio_run._r.getstate()
    trio_run._r.seed(seed)
    try:
        yield
    finally:
        trio_run._r.setstate(state)


def echo(record, **options):
    """A ``@batch(**options)`` function recording ``(time, items)`` per batch, returning ``item * 10``."""

    @batch(**options)
    async def fn(item):
        joined = await collect(item)
        record(trio.current_time(), joined)
        return scatter([x * 10 for x in joined])

    return fn


async def call_all(fn, items, results):
    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(lambda item=item: _store(fn, item, results))


async def _store(fn, item, results):
    results[item] = await fn(item)


# --------------------------------------------------------------------------------------
# Tick, window, size on trio's scheduler and clock
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_tick_batches_every_call_of_one_scheduler_round_in_join_order(seed):
    batches = Recorder()
    joins = []
    fn_calls = echo(batches)

    @batch
    async def tracked(item):
        joins.append(item)
        return await fn_calls(item)

    async def main():
        results = {}
        await call_all(tracked, range(8), results)
        return results

    with seeded(seed):
        results = run(main)
    assert results == {item: item * 10 for item in range(8)}
    # One scheduler round: all eight tasks ran up to collect() before the tick.
    assert batches == [(0.0, joins)]
    assert sorted(joins) == list(range(8))


def test_a_call_in_a_later_round_opens_the_next_batch():
    batches = Recorder()
    fn = echo(batches)

    async def main():
        results = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, fn, 1, results)
            await trio.testing.wait_all_tasks_blocked()  # the first batch has run
            nursery.start_soon(_store, fn, 2, results)
        return results

    assert run(main) == {1: 10, 2: 20}
    assert batches == [(0.0, [1]), (0.0, [2])]


def test_window_follows_trios_clock():
    batches = Recorder()
    fn = echo(batches, max_window=0.5)

    async def main():
        results = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, fn, 1, results)
            await trio.sleep(0.2)
            nursery.start_soon(_store, fn, 2, results)
            await trio.sleep(0.4)  # t=0.6: the first window ended at 0.5
            nursery.start_soon(_store, fn, 3, results)
        return results

    assert run(main) == {1: 10, 2: 20, 3: 30}
    assert batches == [(0.5, [1, 2]), (pytest.approx(1.1), [3])]


def test_size_flushes_at_once_and_cancels_the_window():
    batches = Recorder()
    fn = echo(batches, max_window=10, max_size=3)

    async def main():
        results = {}
        await call_all(fn, range(3), results)
        return results, trio.current_time()

    results, end = run(main)
    assert results == {0: 0, 1: 10, 2: 20}
    assert [items for _, items in batches] == [sorted(batches[0][1], key=batches[0][1].index)]
    assert batches[0][0] == 0.0
    assert sorted(batches[0][1]) == [0, 1, 2]
    assert end == 0.0  # nobody waited for the cancelled window


def test_the_windows_keeper_cancelled_hands_the_window_to_a_member_still_waiting():
    batches = Recorder()
    fn = echo(batches, max_window=1.0)
    outcomes = {}

    async def first():
        with trio.move_on_after(0.3):
            outcomes["first"] = await fn(1)
            return
        outcomes["first"] = "cancelled"

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)  # joins first: it keeps the window
            await trio.sleep(0.1)
            nursery.start_soon(_store, fn, 2, outcomes)
            nursery.start_soon(_store, fn, 3, outcomes)

    run(main)
    assert outcomes == {"first": "cancelled", 2: 20, 3: 30}
    assert len(batches) == 1
    assert batches[0][0] == 1.0  # the window still ends when it was due
    assert sorted(batches[0][1]) == [2, 3]


def test_the_windows_keeper_routed_by_another_batch_hands_its_timers_on():
    """A member keeping a window (here of another function) that is woken hands it on."""
    long_batches = Recorder()
    slow = echo(long_batches, max_window=5.0)
    quick_batches = Recorder()
    quick = echo(quick_batches, max_window=1.0)
    results = {}

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, quick, 1, results)  # keeps quick's window (ends at 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_store, slow, 2, results)  # opens slow's window (ends at 5)
            nursery.start_soon(_store, slow, 3, results)

    run(main)
    assert results == {1: 10, 2: 20, 3: 30}
    assert quick_batches == [(1.0, [1])]
    assert len(long_batches) == 1
    assert long_batches[0][0] == 5.0


# --------------------------------------------------------------------------------------
# Departure and faults: trio's level-triggered cancellation
# --------------------------------------------------------------------------------------


def test_a_leader_in_a_cancelled_scope_hands_the_batch_over():
    runs = Recorder()
    outcomes = {}

    @batch(max_window=1.0)
    async def fn(item):
        joined = await collect(item)
        runs(item, sorted(joined))
        await trio.sleep(1.0)
        return scatter([x * 10 for x in joined])

    async def leader():
        with trio.move_on_after(1.5):  # during the bulk section
            outcomes[1] = await fn(1)
            return
        outcomes[1] = "cancelled"

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_store, fn, 2, outcomes)

    run(main)
    assert outcomes == {1: "cancelled", 2: 20}
    assert runs == [(1, [1, 2]), (2, [2])]
    assert fn.stats().handovers == 1


def test_a_cancelled_exception_nobody_requested_is_a_fault_of_the_bulk_section():
    runs = Recorder()
    outcomes = {}

    @batch(max_window=1.0)
    async def fn(item):
        await collect(item)
        runs(item)
        # What a closing connection pool might raise: no scope of this task is cancelled.
        raise trio.Cancelled._create()

    async def caller(item):
        try:
            await fn(item)
        except (trio.Cancelled, RuntimeError) as error:
            outcomes[item] = (type(error).__name__, type(error.__cause__).__name__)
        else:
            outcomes[item] = "returned"

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(caller, 2)

    run(main)
    assert runs == [1]  # ran once, not once per member
    # The leader's caller gets what its bulk code raised; the follower a RuntimeError caused
    # by it, which no nursery of the follower's can mistake for its own cancellation.
    assert outcomes == {1: ("Cancelled", "NoneType"), 2: ("RuntimeError", "Cancelled")}


def test_a_deadline_the_body_opened_and_left_is_a_fault():
    runs = Recorder()
    outcomes = {}

    @batch(max_window=1.0)
    async def fn(item):
        joined = await collect(item)
        runs(item)
        with trio.fail_after(0.5):
            await trio.sleep(1.0)
        return scatter(joined)

    async def caller(item):
        try:
            await fn(item)
        except trio.TooSlowError as error:
            outcomes[item] = type(error).__name__

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(caller, 2)

    run(main)
    assert runs == [1]
    assert outcomes == {1: "TooSlowError", 2: "TooSlowError"}


def test_a_follower_cancelled_by_its_scope_leaves_alone():
    batches = Recorder()
    fn = echo(batches, max_window=1.0)
    outcomes = {}

    async def impatient():
        with trio.move_on_after(0.5):
            outcomes[2] = await fn(2)
            return
        outcomes[2] = "cancelled"

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, fn, 1, outcomes)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(impatient)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_store, fn, 3, outcomes)

    run(main)
    assert outcomes == {1: 10, 2: "cancelled", 3: 30}
    assert batches == [(1.0, [1, 3])]


# --------------------------------------------------------------------------------------
# Runs, threads and the loop of a run
# --------------------------------------------------------------------------------------


def test_successive_runs_keep_separate_state_and_leave_none():
    batches = Recorder()
    fn = echo(batches)
    loops = []

    async def main(items):
        loops.append(running()[1])
        results = {}
        await call_all(fn, items, results)
        return results

    assert run(main, [1, 2]) == {1: 10, 2: 20}
    assert run(main, [3]) == {3: 30}
    assert [sorted(items) for _, items in batches] == [[1, 2], [3]]
    assert loops[0] is not loops[1]
    assert all(isinstance(loop, TrioLoop) and loop.is_closed() for loop in loops)
    assert fn.stats().open_now == 0


def test_runs_in_two_threads_never_share_a_batch():
    batches = Recorder()
    fn = echo(batches, max_size=2, max_window=60)
    started = threading.Barrier(2)
    results = {}

    def thread(items):
        async def main():
            started.wait(5)
            await call_all(fn, items, results)

        run(main)

    threads = [threading.Thread(target=thread, args=(items,)) for items in ([1, 2], [3, 4])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {1: 10, 2: 20, 3: 30, 4: 40}
    assert sorted(sorted(items) for _, items in batches) == [[1, 2], [3, 4]]


def test_configure_from_another_thread_releases_queued_batches_in_the_run():
    """A raised max_concurrency lets queued batches run, through the run's trio token."""
    runs = Recorder()
    gate = threading.Event()
    results = {}

    @batch(max_concurrency=1)
    async def fn(item):
        joined = await collect(item)
        runs(sorted(joined))
        if joined == [1]:
            await trio.to_thread.run_sync(gate.wait, abandon_on_cancel=True)
        return scatter(joined)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, fn, 1, results)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_store, fn, 2, results)  # queued: the only slot is busy
            await trio.testing.wait_all_tasks_blocked()
            assert runs == [[1]]
            await trio.to_thread.run_sync(functools.partial(fn.configure, max_concurrency=2))  # from a thread
            await trio.testing.wait_all_tasks_blocked()
            assert runs == [[1], [2]]
            gate.set()

    try:
        run(main)
    finally:
        gate.set()
    assert results == {1: 1, 2: 2}


def test_configure_after_the_run_ended_leaves_its_batches_alone():
    loop_of_run = []

    async def main():
        loop_of_run.append(running()[1])

    run(main)
    loop = loop_of_run[0]
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(lambda: None)


def test_drain_waits_for_the_batches_of_its_run():
    batches = Recorder()
    fn = echo(batches, max_window=30)
    results = {}

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, fn, 1, results)
            await trio.testing.wait_all_tasks_blocked()
            await fn.drain()
            assert results == {1: 10}
            assert trio.current_time() == 0.0  # flushed, not waited out

    run(main)
    assert batches == [(0.0, [1])]


# --------------------------------------------------------------------------------------
# Detection: trio is never imported by concresce; curio is named
# --------------------------------------------------------------------------------------


def test_trio_is_not_imported_by_concresce():
    code = (
        "import asyncio, sys, concresce\n"
        "@concresce.batch\n"
        "async def f(x):\n"
        "    return concresce.scatter(await concresce.collect(x))\n"
        "assert asyncio.run(f(1)) == 1\n"
        "assert 'trio' not in sys.modules, 'trio was imported'\n"
    )
    import subprocess  # noqa: PLC0415

    done = subprocess.run(  # noqa: S603 -- our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_without_trio_in_sys_modules_no_trio_run_is_seen(monkeypatch):
    from concresce import _trio  # noqa: PLC0415

    monkeypatch.delitem(sys.modules, "trio")
    assert _trio.running() is None
    assert _trio.current_task() is None


def test_collect_under_curio_says_concresce_does_not_run_on_curio(monkeypatch):
    fake = types.ModuleType("curio")
    fake.meta = types.SimpleNamespace(curio_running=lambda: True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "curio", fake)

    @batch
    async def fn(item):
        return scatter(await collect(item))

    coro = fn(1)
    with pytest.raises(RuntimeError, match=r"does not run on curio.*asyncio.*trio"):
        coro.send(None)


def test_collect_outside_every_runtime_says_it_was_used_outside_a_call():
    coro = collect(1)
    with pytest.raises(RuntimeError, match=r"outside a call of a @batch function"):
        coro.send(None)


def test_the_sweep_of_closed_loops_leaves_the_calls_of_a_trio_run_alone():
    """A trio run ends only after its tasks: its calls are never the sweep's to drop."""
    from concresce._calls import CALLS  # noqa: PLC0415
    from concresce._closed_loops import sweep_closed_loops  # noqa: PLC0415
    from concresce._runtime import loop_of  # noqa: PLC0415

    seen = []

    @batch
    async def fn(item):
        task = trio.lowlevel.current_task()
        seen.append(loop_of(task))
        sweep_closed_loops()
        seen.append(CALLS.get(task) is not None)
        return scatter(await collect(item))

    assert run(fn, 1) == 1
    assert seen == [None, True]
    assert loop_of(object()) is None


def test_a_trio_guest_run_on_an_asyncio_host_batches_its_calls():
    """trio in guest mode runs its tasks from asyncio callbacks: the calls are trio's, and batch."""
    import asyncio  # noqa: PLC0415

    batches = Recorder()
    fn = echo(batches)
    results = {}

    async def trio_main():
        await call_all(fn, range(3), results)

    async def host():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe, done_callback=done.set_result
        )
        (await done).unwrap()

    asyncio.run(host())
    assert results == {0: 0, 1: 10, 2: 20}
    assert len(batches) == 1
    assert sorted(batches[0][1]) == [0, 1, 2]


def test_an_exception_group_holding_a_stray_cancelled_reaches_followers_as_a_runtime_error():
    """Decision 41 for groups: a follower's nursery would swallow the Cancelled and run code after collect()."""
    after = Recorder()
    outcomes = {}

    @batch(max_window=0.01)
    async def fn(item):
        async with trio.open_nursery():
            await collect(item)
        after(item)
        raise Group("bulk", [trio.Cancelled._create(source="unknown"), ValueError("x")])  # noqa: EM101

    async def caller(item):
        try:
            await fn(item)
        except BaseException as error:  # noqa: BLE001 -- the outcome under test
            # A follower's nursery wraps what collect() raised in a group of its own.
            outcomes[item] = [type(inner).__name__ for inner in error.exceptions]

    async def main():
        async with trio.open_nursery() as nursery:
            for item in range(3):
                nursery.start_soon(caller, item)

    run(main)
    assert len(after) == 1  # the leader's code after collect(), once
    (leader,) = after
    expected = {item: ["RuntimeError"] for item in range(3)}
    expected[leader] = ["Cancelled", "ValueError"]
    assert outcomes == expected


def test_a_module_named_curio_without_its_meta_module_changes_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "curio", types.ModuleType("curio"))
    coro = collect(1)
    with pytest.raises(RuntimeError, match=r"outside a call of a @batch function"):
        coro.send(None)
