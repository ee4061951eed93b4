"""The seam between the batching logic and the event loop.

Everything concresce needs from an event loop goes through the names below: the identity of
the running loop and task, a waiter (a future a suspended member awaits), "call soon" and
"call later". The batching state machine in ``_state`` only ever calls these, so another
backend (trio, threads for plain ``def`` functions) can provide the same few operations
without touching it.
"""

from __future__ import annotations

from asyncio import AbstractEventLoop, Future, Handle, Task
from asyncio import current_task as _current_task
from asyncio import get_running_loop as running_loop
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Handle",
    "Loop",
    "Task",
    "Waiter",
    "call_later",
    "call_soon",
    "current_task",
    "new_waiter",
    "running_loop",
]

Loop = AbstractEventLoop
Waiter = Future[None]


def current_task(loop: Loop) -> Task[Any] | None:
    """Return the task running on ``loop`` (None outside a task)."""
    return _current_task(loop)


def new_waiter(loop: Loop) -> Waiter:
    """Return a fresh waiter bound to ``loop``."""
    return loop.create_future()


def call_soon(loop: Loop, callback: Callable[[], object]) -> Handle:
    """Run ``callback`` on the next turn of ``loop``."""
    return loop.call_soon(callback)


def call_later(loop: Loop, delay: float, callback: Callable[[], object]) -> Handle:
    """Run ``callback`` on ``loop`` after ``delay`` seconds of the loop's clock."""
    return loop.call_later(delay, callback)
