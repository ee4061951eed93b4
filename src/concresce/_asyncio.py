"""asyncio as a runtime: the default loop, eager tasks (3.12+) and uvloop.

The loop object is the ``Loop`` of ``_runtime.py`` as it is (its futures are the waiters,
its handles the timers), so asyncio costs the engine no adapter.
"""

from __future__ import annotations

import sys
from asyncio import CancelledError, Task, current_task
from asyncio import _get_running_loop as running_loop_or_none  # pyright: ignore[reportPrivateUsage]
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

__all__ = ["current_task", "departs", "loop_of", "misplaced", "running_loop_or_none"]


def departs(error: BaseException, handovers: int) -> bool:
    """Whether the current task has a cancellation request (``Task.cancelling()``, 3.11+).

    A ``CancelledError`` that nobody requested (a driver's future cancelled by a closing
    pool) is not one; a deadline the body opened (``asyncio.timeout()``) withdraws its
    request as it turns the cancellation into ``TimeoutError``. Python 3.10 has no
    ``cancelling()``: there a ``CancelledError`` hands the batch over only if no leader of
    the batch did so before, so the bulk section runs at most twice.
    """
    if sys.version_info >= (3, 11):
        task = current_task()
        if task is None or not task.cancelling():
            return False
        # Python 3.11 and 3.12: a TaskGroup whose child failed leaves the cancellation it
        # requested of its own task behind as it raises the group (3.13 withdraws it). The
        # group is the child's fault, not a departure (decision 43).
        return sys.version_info >= (3, 13) or not isinstance(error, BaseExceptionGroup)  # noqa: F821 -- 3.11+
    return isinstance(error, CancelledError) and not handovers  # pragma: no cover -- 3.10


def loop_of(task: object) -> AbstractEventLoop | None:
    """The loop of an asyncio task (None for anything else)."""
    if isinstance(task, Task):
        loop: AbstractEventLoop = task.get_loop()
        return loop
    return None


def misplaced() -> str | None:
    """Explain a collect() awaited in a task of its own (``wait_for`` on 3.10/3.11)."""
    if running_loop_or_none() is None:
        return None
    task: Task[Any] | None = current_task()
    frame = None if task is None else getattr(task.get_coro(), "cr_frame", None)
    if frame is None or frame.f_code.co_name != "collect" or frame.f_globals["__name__"] != "concresce._collect":
        return None
    return (
        "collect() was awaited in a task of its own, where no @batch call runs: "
        "asyncio.wait_for(collect(item), timeout) does that on Python 3.10 and 3.11, as do "
        "create_task(), ensure_future() and gather(). Await collect(item) directly in the "
        "body of an `async def` decorated with @batch, in the task that made the call, and put "
        "a time-out around the whole call: asyncio.wait_for(fn(item), timeout)"
    )
