"""Backend-neutral helpers for the contract suite (anyio on asyncio, uvloop and trio)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import sniffio
from tests import support

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")


def now() -> float:
    """The running backend's clock: virtual on asyncio and trio (MockClock), real on uvloop."""
    return anyio.current_time()


def runtime() -> str:
    """``"asyncio"`` (uvloop included) or ``"trio"``."""
    return sniffio.current_async_library()


async def quiesce() -> None:
    """Return once every other task is blocked and nothing can run before time passes."""
    if runtime() == "trio":
        import trio.testing  # noqa: PLC0415

        await trio.testing.wait_all_tasks_blocked()
    else:
        await support.settle()
        await support.wait_all_tasks_blocked()


async def gather(*calls: Callable[[], Awaitable[T]]) -> list[T]:
    """Start every call in a task of its own, in order; return their results in that order.

    Like ``asyncio.gather`` without ``return_exceptions``: the first exception cancels the
    others and propagates (on trio and anyio task groups, inside an exception group).
    """
    results: list[Any] = [None] * len(calls)

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(run, index, call)
    return results


async def outcomes(*calls: Callable[[], Awaitable[T]]) -> list[Any]:
    """Like ``gather`` but each task's exception is its result (``return_exceptions=True``)."""
    results: list[Any] = [None] * len(calls)

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        try:
            results[index] = await call()
        except Exception as error:  # noqa: BLE001 -- the outcome under test
            results[index] = error

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(run, index, call)
    return results
