"""One measured run for ``instructions.py``, in a process of its own under callgrind.

``python _count.py SYSTEM CASE CALLS [--path DIR] [--runtime trio]`` builds the system's ``f``
(see ``_systems.py``), warms it up, pauses the garbage collector and then makes CALLS calls the
way CASE says: ``batches`` gathers CALLS caller tasks at once (batches of 100, tick flush),
``lone`` awaits CALLS lone calls one after the other (N = 1: every call is a batch of its
own). ``--window auto`` measures ``max_window="auto"`` instead of the tick flush. With
CALLS = 0 it does everything but the measured calls: ``instructions.py`` subtracts that run's
count, so what is left is the cost of the calls alone.

``--runtime trio`` makes the callers trio tasks, started in a nursery, all in one ``trio.run``
(for the systems that run on trio: ``floor`` is then the trio floor, ``_trio_floor.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _systems import SYSTEMS, BackendStats, load_factory, make_backend

if TYPE_CHECKING:
    from _systems import Factory

WARM_UP = 300  # calls before the measured ones: imports, caches and specialisation settle


def main() -> int:
    """Make the calls of one measurement; exit non-zero if a result is wrong."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("case", choices=("batches", "lone"))
    parser.add_argument("calls", type=int)
    parser.add_argument("--path", help="directory to import the system from, ahead of everything else")
    parser.add_argument("--runtime", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--window", default="0", help='the flush: seconds, or "auto" (concresce only)')
    args = parser.parse_args()
    window: Any = args.window if args.window == "auto" else float(args.window)
    if args.path:
        sys.path.insert(0, args.path)
    if args.runtime == "trio" and not any(system.trio for system in SYSTEMS if system.name == args.system):
        parser.error(f"{args.system} is not measured on trio (asyncio only)")
    make, _ = load_factory(args.system)
    if args.runtime == "trio":
        return 0 if on_trio(make, args.case, args.calls) else 1
    loop = asyncio.new_event_loop()
    loop.set_debug(False)
    f = make(loop, make_backend(BackendStats()), 100, window)

    async def caller(i: int) -> int:
        return await f(i)

    async def batches(n: int) -> bool:
        return await asyncio.gather(*map(caller, range(n))) == [i * 2 for i in range(n)]

    async def lone(n: int) -> bool:
        gather = asyncio.gather
        ok = True
        for i in range(n):
            ok &= await gather(caller(i)) == [i * 2]
        return ok

    run = batches if args.case == "batches" else lone
    ok = loop.run_until_complete(run(WARM_UP))
    gc.collect()
    gc.disable()
    if args.calls:
        ok &= loop.run_until_complete(run(args.calls))
    loop.close()
    return 0 if ok else 1


def on_trio(make: Factory, case: str, calls: int) -> bool:
    """``main()`` with trio tasks as the callers; whether every result was right."""
    import trio  # noqa: PLC0415 -- only for --runtime trio

    f = make(None, make_backend(BackendStats()), 100, 0.0)

    # A nursery task returns nothing: the caller stores its result at ``slot``.
    async def caller(i: int, results: list[int], slot: int) -> None:
        results[slot] = await f(i)

    async def batches(n: int) -> bool:
        results = [-1] * n
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(caller, i, results, i)
        return results == [i * 2 for i in range(n)]

    async def lone(n: int) -> bool:
        ok = True
        for i in range(n):
            results = [-1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller, i, results, 0)
            ok &= results == [i * 2]
        return ok

    run = batches if case == "batches" else lone

    async def measured() -> bool:
        ok = await run(WARM_UP)
        gc.collect()
        gc.disable()
        if calls:
            ok &= await run(calls)
        return ok

    return trio.run(measured)


if __name__ == "__main__":
    raise SystemExit(main())
