"""The seam between the batching logic and the event loop.

The batching state machine needs a few things from an event loop and takes all of them from
here: the identity of the running loop (``running_loop()``, which also keys the per-loop
state), the task running on it (``current_task()``, which keys the call that task is
running), and a few methods of the loop object, the ``Loop`` protocol: ``create_future()``
(the waiter a suspended member awaits), ``call_soon(callback)``, ``call_later(delay,
callback)``, ``call_soon_threadsafe(callback)`` (``configure()`` from another thread) and
``time()`` (for the statistics). Another backend (trio, threads for plain ``def``
functions) provides the same operations without touching the batching logic.

The asyncio implementations are bound directly (C functions): the hot path pays no extra
Python call for the indirection.
"""

from __future__ import annotations

from asyncio import Future, Handle, Task, current_task
from asyncio import get_running_loop as running_loop
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Handle", "Loop", "Task", "Waiter", "current_task", "running_loop"]

Waiter = Future[None]


class Loop(Protocol):
    """What the batching logic uses of an event loop."""

    def create_future(self) -> Future[Any]:
        """Return a new waiter bound to this loop."""
        ...

    def call_soon(self, callback: Callable[[], object], /) -> Handle:
        """Run ``callback`` on the next turn of the loop."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Handle:
        """Run ``callback`` after ``delay`` seconds of the loop's clock."""
        ...

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> Handle:
        """Run ``callback`` on the loop's next turn, from any thread (``configure()`` only)."""
        ...

    def time(self) -> float:
        """Return the loop's clock, in seconds."""
        ...
