"""One measured run for ``instructions.py``, in a process of its own under callgrind.

``python _count.py SYSTEM CASE CALLS [--path DIR]`` builds the system's ``f`` (see
``_systems.py``), warms it up, pauses the garbage collector and then makes CALLS calls the
way CASE says: ``batches`` gathers CALLS caller tasks at once (batches of 100, tick flush),
``lone`` awaits CALLS lone calls one after the other (N = 1: every call is a batch of its
own). With CALLS = 0 it does everything but the measured calls: ``instructions.py`` subtracts
that run's count, so what is left is the cost of the calls alone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _systems import BackendStats, load_factory, make_backend

WARM_UP = 300  # calls before the measured ones: imports, caches and specialisation settle


def main() -> int:
    """Make the calls of one measurement; exit non-zero if a result is wrong."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("case", choices=("batches", "lone"))
    parser.add_argument("calls", type=int)
    parser.add_argument("--path", help="directory to import the system from, ahead of everything else")
    args = parser.parse_args()
    if args.path:
        sys.path.insert(0, args.path)
    make, _ = load_factory(args.system)
    loop = asyncio.new_event_loop()
    loop.set_debug(False)
    f = make(loop, make_backend(BackendStats()), 100, 0.0)

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


if __name__ == "__main__":
    raise SystemExit(main())
