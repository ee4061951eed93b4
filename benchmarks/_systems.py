"""The systems under test, the backend they share, and the hand-written ``floor`` coalescer.

Every system is reduced to a *factory*: ``make(loop, backend, max_size, window)`` returns
``f``, where ``await f(i)`` gives ``backend([..., i, ...])``'s result for ``i``, that is
``i * 2``. The benchmark wraps ``f`` in the same caller task for every system, so the
systems differ only in how they turn many ``f(i)`` into few ``backend(ids)`` calls.
``loop`` is the running asyncio loop, or ``None`` when the callers are trio tasks (only the
systems marked ``trio`` are measured there; ``floor`` is then ``_trio_floor.TrioFloor``).

Imports of the systems are deferred to :func:`load_factory`: a worker process imports only
the system it measures (the original ``concresce`` 0.1.0 and this repository's ``concresce``
share an import name and never meet in one process).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable, Coroutine
    from types import ModuleType

    Backend = Callable[[list[int]], Coroutine[Any, Any, list[int]]]
    Loaded = Callable[[int], Awaitable[int]]
    Factory = Callable[["asyncio.AbstractEventLoop | None", Backend, "int | None", float], Loaded]


@dataclass(frozen=True)
class System:
    """What the orchestrator needs to know about a system without importing it."""

    name: str
    description: str
    windows: bool  # has a time-window flush option (else: tick flush only)
    batches: bool  # coalesces calls at all (False for the unbatched baseline)
    trio: bool = False  # also measured with trio tasks as callers (else: asyncio only)


SYSTEMS: Final[tuple[System, ...]] = (
    System("concresce", "this repository: @batch + collect()/scatter()", windows=True, batches=True, trio=True),
    System(
        "floor",
        "hand-written minimal coalescer (benchmarks/_systems.py; on trio, benchmarks/_trio_floor.py)",
        windows=True,
        batches=True,
        trio=True,
    ),
    System("baseline_unbatched", "one backend call per caller, no coalescing", windows=True, batches=False, trio=True),
    System("aiodataloader", "aiodataloader.DataLoader(cache=False)", windows=False, batches=True),
    System("strawberry", "strawberry.dataloader.DataLoader(cache=False)", windows=False, batches=True),
    System("concresce-0.1.0", "the original concresce 0.1.0, same inline API", windows=True, batches=True),
)
SYSTEM_NAMES: Final[tuple[str, ...]] = tuple(system.name for system in SYSTEMS)


# --- the shared backend ------------------------------------------------------------------


@final
class BackendStats:
    """What the backend saw during one measurement: proof that batching happened."""

    __slots__ = ("calls", "items", "largest")

    def __init__(self) -> None:
        self.calls = 0
        self.items = 0
        self.largest = 0


def make_backend(stats: BackendStats) -> Backend:
    """Return the bulk operation every system calls: trivial work, no I/O, no suspension."""

    async def bulk(ids: list[int]) -> list[int]:
        # Bookkeeping once per backend call, so batching systems pay it once per batch and
        # the unbatched baseline once per call: exactly what batching is meant to save.
        size = len(ids)
        stats.calls += 1
        stats.items += size
        stats.largest = max(stats.largest, size)
        return [i * 2 for i in ids]

    return bulk


# --- floor: the hand-written minimal coalescer ------------------------------------------


@final
class _FloorBatch:
    __slots__ = ("futures", "handle", "items", "wake")

    def __init__(self, item: int, wake: asyncio.Future[None]) -> None:
        self.items = [item]
        self.futures: list[asyncio.Future[int]] = []  # the followers', in item order after the leader's
        self.wake = wake  # the leader waits on this until the flush
        self.handle: asyncio.Handle | asyncio.TimerHandle | None = None


@final
class Floor:
    """The least a coalescer can do: the cost floor every system is compared with.

    The first caller leads: it opens a batch and waits for the flush; every later caller
    appends its item and a future, and awaits the future. The batch flushes on the next loop
    turn (``call_soon``) or after ``window`` seconds (``call_later``), or at once when it
    holds ``max_size`` items. The leader then makes the bulk call and sets each follower's
    future. No cancellation handling beyond skipping followers whose future is done (a
    cancelled *leader* would strand its followers), no error routing, one loop only: that
    is what makes it a floor, not a library.
    """

    __slots__ = ("_backend", "_loop", "_max_size", "_open", "_window")

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: Backend, max_size: int | None, window: float) -> None:
        self._loop = loop
        self._backend = backend
        self._max_size = max_size
        self._window = window
        self._open: _FloorBatch | None = None

    async def load(self, item: int) -> int:
        """Return ``backend([..., item, ...])``'s result for ``item``."""
        batch = self._open
        if batch is not None:
            batch.items.append(item)
            future: asyncio.Future[int] = self._loop.create_future()
            batch.futures.append(future)
            if len(batch.items) == self._max_size:
                self._flush(batch)
            return await future
        batch = self._open = _FloorBatch(item, self._loop.create_future())
        if self._window == 0:
            batch.handle = self._loop.call_soon(self._flush, batch)
        else:
            batch.handle = self._loop.call_later(self._window, self._flush, batch)
        await batch.wake
        results = await self._backend(batch.items)
        for future, result in zip(batch.futures, results[1:], strict=True):
            if not future.done():  # a follower cancelled since it joined
                future.set_result(result)
        return results[0]

    def _flush(self, batch: _FloorBatch) -> None:
        if self._open is batch:
            self._open = None
            if batch.handle is not None:
                batch.handle.cancel()  # flushed by size: the turn/window callback is moot
            batch.wake.set_result(None)


# --- factories ---------------------------------------------------------------------------


def _floor() -> Factory:
    def make(loop: asyncio.AbstractEventLoop | None, backend: Backend, max_size: int | None, window: float) -> Loaded:
        if loop is None:  # trio tasks: the same floor written for trio
            from _trio_floor import TrioFloor  # noqa: PLC0415 -- trio only where it is measured

            return TrioFloor(backend, max_size, window).load
        return Floor(loop, backend, max_size, window).load

    return make


def _baseline() -> Factory:
    def make(loop: asyncio.AbstractEventLoop | None, backend: Backend, max_size: int | None, window: float) -> Loaded:
        del loop, max_size, window  # nothing to configure: every call is its own backend call

        async def f(i: int) -> int:
            return (await backend([i]))[0]

        return f

    return make


def _inline(module: ModuleType, *, unbounded: int | None) -> Factory:
    """Factory for the collect()/scatter() API (this repo's concresce and 0.1.0)."""
    batch: Any = module.batch
    collect: Any = module.collect
    scatter: Any = module.scatter

    def make(loop: asyncio.AbstractEventLoop | None, backend: Backend, max_size: int | None, window: float) -> Loaded:
        del loop  # per-loop (per-run on trio) state is the library's business

        @batch(max_window=window, max_size=unbounded if max_size is None else max_size)
        async def f(i: int) -> int:
            ids = await collect(i)
            return scatter(await backend(ids))

        return f

    return make


def _aiodataloader() -> Factory:
    from aiodataloader import DataLoader  # noqa: PLC0415 -- only in the worker that measures it

    def make(loop: asyncio.AbstractEventLoop, backend: Backend, max_size: int | None, window: float) -> Loaded:
        assert window == 0, "aiodataloader has no time window"
        return DataLoader(backend, max_batch_size=max_size, cache=False, loop=loop).load

    return make


def _strawberry() -> Factory:
    from strawberry.dataloader import DataLoader  # noqa: PLC0415 -- only in the worker that measures it

    def make(loop: asyncio.AbstractEventLoop, backend: Backend, max_size: int | None, window: float) -> Loaded:
        assert window == 0, "strawberry's DataLoader has no time window"
        return DataLoader(backend, max_batch_size=max_size, cache=False, loop=loop).load

    return make


def load_factory(name: str) -> tuple[Factory, str]:
    """Import system ``name`` and return its factory and its version string."""
    from importlib.metadata import version  # noqa: PLC0415

    if name == "floor":
        return _floor(), "-"
    if name == "baseline_unbatched":
        return _baseline(), "-"
    if name == "aiodataloader":
        return _aiodataloader(), version("aiodataloader")
    if name == "strawberry":
        return _strawberry(), version("strawberry-graphql")
    import concresce  # noqa: PLC0415 -- which concresce depends on the worker's sys.path

    if name == "concresce":
        return _inline(concresce, unbounded=None), f"{concresce.__version__} (this repository)"
    if name == "concresce-0.1.0":
        # 0.1.0 has no max_size=None: a size it can never reach means unbounded.
        return _inline(concresce, unbounded=sys.maxsize), version("concresce")
    msg = f"unknown system {name!r}; choose from {', '.join(SYSTEM_NAMES)}"
    raise ValueError(msg)
