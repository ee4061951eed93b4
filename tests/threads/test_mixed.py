"""Mixed worlds: thread-batched functions called from asyncio's worker threads, and the reverse."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.threads.kit import PATIENCE, Gate, virtual_clock

import concresce
from concresce.threads import batch, collect, scatter


def test_calls_from_asyncio_to_thread_workers_share_batches():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def lookup(x: int) -> int:
        xs = collect(x)
        gate("bulk", xs)
        return scatter([v * 10 for v in xs])

    clock = virtual_clock(lookup)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(8))
        first = asyncio.ensure_future(asyncio.to_thread(lookup, 0))
        await asyncio.to_thread(gate.wait_reached)
        rest = [asyncio.ensure_future(asyncio.to_thread(lookup, item)) for item in range(1, 5)]
        await asyncio.to_thread(clock.wait_parked, 4)
        gate.open()
        return await asyncio.wait_for(asyncio.gather(first, *rest), PATIENCE)

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert log[0] == ("bulk", [0])
    assert sorted(log[1][1]) == [1, 2, 3, 4]  # one batch, in the order the workers joined
    assert len(log) == 2


def test_threads_call_async_batched_code_on_a_loop_of_its_own_with_run_coroutine_threadsafe():
    sizes: list[int] = []

    @concresce.batch(max_window=0.01)
    async def lookup(x: int) -> int:
        xs = await concresce.collect(x)
        sizes.append(len(xs))
        return concresce.scatter([v * 2 for v in xs])

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        barrier = threading.Barrier(6)

        def call(x: int) -> int:
            barrier.wait(PATIENCE)
            return asyncio.run_coroutine_threadsafe(lookup(x), loop).result(PATIENCE)

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(call, range(6)))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(PATIENCE)
        loop.close()
    assert results == [0, 2, 4, 6, 8, 10]
    assert sum(sizes) == 6


def test_a_thread_batched_call_inside_an_asyncio_task_is_keyed_by_its_thread_not_the_task():
    @batch
    def lookup(x: int) -> int:
        return scatter([v + 1 for v in collect(x)])

    @concresce.batch
    async def outer(x: int) -> int:
        xs = await concresce.collect(x)
        # A blocking call in the event loop's thread: a lone call leads at once.
        return concresce.scatter([lookup(v) for v in xs])

    async def main() -> int:
        return await outer(1)

    assert asyncio.run(main()) == 2


def test_a_child_process_forked_while_a_batch_runs_starts_afresh():
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    from tests.threads.kit import gated  # noqa: PLC0415

    get, gate, _ = gated(max_concurrency=1)
    leader = threading.Thread(target=get, args=(0,))
    leader.start()
    gate.wait_reached()  # its batch runs, holding the only slot, as the process forks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking a process with threads
        pid = os.fork()
    if pid == 0:  # the child: a new thread's call must not wait for the parent's batch
        code = 1
        try:
            gate.open()  # the gate's events are the child's copies now
            done = threading.Event()
            worker = threading.Thread(target=lambda: (get(5), done.set()))
            worker.start()
            code = 0 if done.wait(PATIENCE) and get.stats().in_flight_now == 0 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 2 * PATIENCE
    while (status := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.open()
    leader.join(PATIENCE)
    assert status[0] == pid, "the child did not end"
    assert os.waitstatus_to_exitcode(status[1]) == 0
