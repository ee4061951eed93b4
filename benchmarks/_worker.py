"""One benchmark worker: measures a single system, on request, in its own process.

``run.py`` starts one worker per system and sends it one JSON request per line on stdin;
the worker answers each with one JSON line on stdout. Each request runs on a fresh event
loop (``"loop"``: ``asyncio``, ``uvloop``, or ``trio``: a fresh ``trio.run``), after a full
garbage collection, with the collector paused while it runs; the results every caller got
are checked before the answer is sent.

Requests (``op``):

* ``time``: ``rounds`` times, ``n`` caller tasks gathered; answers the elapsed seconds (wall
  clock, and the CPU time of this process, which other processes on the machine disturb less).
  On trio the callers are started in a nursery, which waits for them as ``gather()`` does.
* ``growth``: ``n`` caller tasks; after one loop turn (every caller now waits in its batch)
  the odd-numbered ones are cancelled if ``cancel``; answers the elapsed seconds.
* ``memory``: ``n`` caller tasks under tracemalloc; after one loop turn, the peak traced
  bytes so far and how many callers are still pending.

``growth`` and ``memory`` run on asyncio only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _systems import BackendStats, load_factory, make_backend

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from _systems import Factory


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """Return a fresh event loop of ``kind`` ("asyncio" or "uvloop"), debug mode off."""
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415 -- only when asked for

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    elif kind == "asyncio":
        loop = asyncio.new_event_loop()
    else:
        msg = f"unknown loop {kind!r}"
        raise ValueError(msg)
    loop.set_debug(False)  # PYTHONASYNCIODEBUG in the environment must not skew timings
    return loop


def run_trio_paused(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``trio.run(function, *args)``, with the garbage collector paused."""
    import trio  # noqa: PLC0415 -- only in a worker asked to measure on trio

    gc.collect()
    gc.disable()
    try:
        return trio.run(function, *args)
    finally:
        gc.enable()


def run_paused(kind: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop of ``kind``, with the garbage collector paused."""
    loop = new_loop(kind)
    try:
        gc.collect()
        gc.disable()
        try:
            return loop.run_until_complete(coro)
        finally:
            gc.enable()
    finally:
        loop.close()


async def timed(make: Factory, n: int, rounds: int, max_size: int | None, window: float) -> dict[str, Any]:
    """Gather ``n`` caller tasks ``rounds`` times; check every result."""
    stats = BackendStats()
    f = make(asyncio.get_running_loop(), make_backend(stats), max_size, window)

    async def caller(i: int) -> int:
        return await f(i)

    gather = asyncio.gather
    ids = range(n)
    cpu_start = time.process_time()
    start = time.perf_counter()
    outcomes = [await gather(*map(caller, ids)) for _ in range(rounds)]
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start

    check_outcomes(outcomes, n)
    return {"seconds": elapsed, "cpu_seconds": cpu, **check_batches(stats, n * rounds, max_size)}


def check_outcomes(outcomes: list[list[int]], n: int) -> None:
    """Check that caller ``i`` got ``i * 2`` in every round."""
    expected = [i * 2 for i in range(n)]
    for outcome in outcomes:
        if outcome != expected:
            wrong = next(i for i, (got, want) in enumerate(zip(outcome, expected, strict=True)) if got != want)
            msg = f"caller {wrong} got {outcome[wrong]!r}, expected {expected[wrong]!r}"
            raise AssertionError(msg)


async def timed_trio(make: Factory, n: int, rounds: int, max_size: int | None, window: float) -> dict[str, Any]:
    """``timed`` with trio tasks: ``rounds`` times, ``n`` callers started in a nursery."""
    import trio  # noqa: PLC0415

    stats = BackendStats()
    f = make(None, make_backend(stats), max_size, window)

    # The trio spelling of ``timed``'s caller: a nursery task returns nothing, so the caller
    # stores its result where gather() would have put it.
    async def caller(i: int, results: list[int]) -> None:
        results[i] = await f(i)

    open_nursery = trio.open_nursery
    ids = range(n)
    outcomes: list[list[int]] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    for _ in range(rounds):
        results = [-1] * n
        async with open_nursery() as nursery:
            start_soon = nursery.start_soon
            for i in ids:
                start_soon(caller, i, results)
        outcomes.append(results)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start

    check_outcomes(outcomes, n)
    return {"seconds": elapsed, "cpu_seconds": cpu, **check_batches(stats, n * rounds, max_size)}


async def growth(make: Factory, n: int, max_size: int | None, window: float, *, cancel: bool) -> dict[str, Any]:
    """Start ``n`` caller tasks, let them all join, cancel the odd ones if ``cancel``."""
    loop = asyncio.get_running_loop()
    stats = BackendStats()
    f = make(loop, make_backend(stats), max_size, window)

    async def caller(i: int) -> int:
        return await f(i)

    cpu_start = time.process_time()
    start = time.perf_counter()
    tasks = [loop.create_task(caller(i)) for i in range(n)]
    # One loop turn: every caller runs up to its join and suspends in the open batch. The
    # flush (next turn, or the window's timer) has not run yet, so the cancellations below
    # reach members of a batch that is still open. Both variants take this turn.
    await asyncio.sleep(0)
    if cancel:
        for task in tasks[1::2]:
            task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start

    for i, outcome in enumerate(outcomes):
        # A value from a cancelled caller would mean it finished before it could be cancelled.
        ok = isinstance(outcome, asyncio.CancelledError) if cancel and i % 2 else outcome == i * 2
        if not ok:
            msg = f"caller {i} ended with {outcome!r} (cancelled: {cancel and bool(i % 2)})"
            raise AssertionError(msg)
    return {"seconds": elapsed, "cpu_seconds": cpu, "backend_calls": stats.calls, "backend_items": stats.items}


async def memory(make: Factory, n: int, max_size: int | None, window: float) -> dict[str, Any]:
    """Peak traced bytes from before the ``n`` callers start until all of them wait."""
    loop = asyncio.get_running_loop()
    stats = BackendStats()
    f = make(loop, make_backend(stats), max_size, window)

    async def caller(i: int) -> int:
        return await f(i)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        tasks = [loop.create_task(caller(i)) for i in range(n)]
        # One loop turn: every caller has run up to its join and is suspended; no flush ran.
        await asyncio.sleep(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pending = sum(not task.done() for task in tasks)
    outcomes = await asyncio.gather(*tasks)
    if outcomes != [i * 2 for i in range(n)]:
        msg = "wrong results in the memory run"
        raise AssertionError(msg)
    return {"peak_bytes": peak - base, "pending": pending}


def check_batches(stats: BackendStats, calls: int, max_size: int | None) -> dict[str, int]:
    """Check the backend saw every item once and no batch over ``max_size``."""
    if stats.items != calls:
        msg = f"the backend saw {stats.items} items for {calls} calls"
        raise AssertionError(msg)
    if max_size is not None and stats.largest > max_size:
        msg = f"a batch of {stats.largest} items exceeds max_size={max_size}"
        raise AssertionError(msg)
    return {"backend_calls": stats.calls, "largest_batch": stats.largest}


def handle(make: Factory, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request on a fresh loop."""
    op = request["op"]
    loop = request["loop"]
    n, max_size, window = request["n"], request["max_size"], request["window"]
    if loop == "trio":
        if op != "time":
            msg = f"op {op!r} runs on asyncio only"
            raise ValueError(msg)
        return run_trio_paused(timed_trio, make, n, request["rounds"], max_size, window)
    if op == "time":
        return run_paused(loop, timed(make, n, request["rounds"], max_size, window))
    if op == "growth":
        return run_paused(loop, growth(make, n, max_size, window, cancel=request["cancel"]))
    if op == "memory":
        return run_paused(loop, memory(make, n, max_size, window))
    msg = f"unknown op {op!r}"
    raise ValueError(msg)


def main() -> int:
    """Serve requests for one system until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True)
    parser.add_argument("--path", help="directory to import the system from, ahead of everything else")
    args = parser.parse_args()
    if args.path:
        sys.path.insert(0, args.path)

    # The protocol owns the real stdout; anything a system prints goes to stderr.
    protocol = sys.stdout
    sys.stdout = sys.stderr

    make, version = load_factory(args.system)
    if args.system.startswith("concresce"):
        # Prove which concresce this process measures: the two share an import name.
        module_file = Path(sys.modules["concresce"].__file__ or "").resolve()
        from_cache = bool(args.path) and module_file.is_relative_to(Path(args.path).resolve())
        if from_cache != (args.system == "concresce-0.1.0"):
            msg = f"{args.system}: imported the wrong concresce ({version})"
            raise RuntimeError(msg)

    def send(reply: dict[str, Any]) -> None:
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()

    send({"ready": True, "version": version, "python": sys.version.split()[0]})
    for line in sys.stdin:
        try:
            reply = handle(make, json.loads(line))
        except Exception as error:  # noqa: BLE001 -- reported to run.py, which stops the run
            reply = {"error": f"{type(error).__name__}: {error}"}
        send(reply)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
