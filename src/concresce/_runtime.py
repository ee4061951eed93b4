"""The seam between the engine and the runtime it runs on: the only place that dispatches.

The engine needs little from a runtime, and takes all of it from here:

* ``running()``: the task running now and its ``Loop``, or ``(None, None)`` outside any
  runtime. The task keys the table of current calls; the loop keys the per-loop state
  (partitions) and does the rest:
* a ``Loop``: ``create_future()`` (the ``Waiter`` a member parks on, woken with
  ``set_result(None)``; ``done()`` once it was woken or its task was cancelled),
  ``call_soon(callback)`` (the tick: one scheduler round), ``call_later(delay, callback)``
  (the window), ``call_soon_threadsafe(callback)`` (``configure()`` from another thread),
  ``time()`` and ``is_closed()``;
* ``departs(error, handovers)``: whether a leader that raised ``error`` before scatter()
  really has a cancellation request, so that it leaves its batch (a handover);
* ``loop_of(task)`` for the sweep of closed loops, and ``misplaced()`` for error messages.

asyncio (the default loop, eager tasks, uvloop) is ``_asyncio.py``: its loop object is the
``Loop`` itself. trio is ``_trio.py``. Another runtime is a module with the functions of
``Runtime``, listed in ``_OTHERS``; asyncio is asked first (docs/performance.md).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _asyncio, _trio

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = [
    "Handle",
    "Loop",
    "Waiter",
    "current_task",
    "departs",
    "follower_fault",
    "loop_of",
    "misplaced",
    "running",
    "running_loop",
]


class Handle(Protocol):
    """A scheduled callback (a tick or a window)."""

    def cancel(self) -> None:
        """Do not run the callback."""


class Waiter(Protocol):
    """What a member parks on until it is routed an outcome or chosen to lead."""

    def done(self) -> bool:
        """Whether it was woken, or its task was cancelled while it waited."""
        ...

    def set_result(self, result: None, /) -> None:
        """Wake the task parked on it."""

    def get_loop(self) -> Any:
        """The loop that made it."""

    # Parking: an async task awaits it (asyncio's futures, trio's waiters: ``__await__``
    # raises if the task is cancelled); a thread parks through ``ThreadLoop.clock``.


class Loop(Protocol):
    """What the engine uses of an event loop (an asyncio loop, or one per trio run)."""

    def create_future(self) -> Any:
        """Return a new waiter bound to this loop."""

    def call_soon(self, callback: Callable[[], object], /) -> Handle:
        """Run ``callback`` after the tasks that can run now (the next scheduler round)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Handle:
        """Run ``callback`` after ``delay`` seconds of the loop's clock."""
        ...

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> object:
        """Run ``callback`` on the loop soon, from any thread; RuntimeError if it is closed."""
        ...

    def time(self) -> float:
        """The loop's clock, in seconds."""
        ...

    def is_closed(self) -> bool:
        """Whether the loop (or run) has ended: nothing can run on it any more."""
        ...


class Runtime(Protocol):
    """A runtime other than asyncio: a module with these functions."""

    def running(self) -> tuple[Hashable, Loop] | None:
        """The current task and loop, or None when this runtime does not run here."""
        ...

    def current_task(self) -> Hashable | None:
        """The current task, or None when this runtime does not run here."""
        ...

    def departs(self, error: BaseException, handovers: int) -> bool:
        """Whether the current task has a cancellation request (see ``departs()``)."""
        ...

    def loop_of(self, task: object) -> Loop | None:
        """The loop of one of this runtime's tasks, or None if ``task`` is not one."""
        ...

    def follower_fault(self, error: BaseException, name: str) -> BaseException | None:
        """What followers get instead of ``error``, if this runtime cannot raise it in them."""
        ...


#: The runtimes asked after asyncio, in order. A new runtime: a module, and a line here.
_OTHERS: Final[tuple[Runtime, ...]] = (_trio,)

_asyncio_loop: Final = _asyncio.running_loop_or_none
_asyncio_task: Final = _asyncio.current_task


def running() -> tuple[Any, Any]:
    """The task running now and its loop, or ``(None, None)`` outside every runtime."""
    loop = _asyncio_loop()
    if loop is not None:
        task = _asyncio_task(loop)
        if task is not None:
            return task, loop
        # An asyncio loop without a task: a callback, or trio's guest run on an asyncio host.
    for runtime in _OTHERS:
        found = runtime.running()
        if found is not None:
            return found
    return None, None


def current_task() -> Any:
    """The task running now, or None outside every runtime."""
    loop = _asyncio_loop()
    if loop is not None:
        task = _asyncio_task(loop)
        if task is not None:
            return task
    for runtime in _OTHERS:
        other = runtime.current_task()
        if other is not None:
            return other
    return None


def running_loop() -> Loop:
    """The running loop, whatever the runtime.

    Raises:
        RuntimeError: No runtime runs in this thread.
    """
    loop: Loop | None = running()[1]
    if loop is None:
        msg = "no running event loop (concresce runs on asyncio, uvloop and trio)"
        raise RuntimeError(msg)
    return loop


def departs(error: BaseException, handovers: int) -> bool:
    """Whether a leader that raised ``error`` before scatter() leaves its batch (a handover).

    It leaves when its task really has a cancellation request, whatever the bulk code made
    of it (a coroutine closed outside its task is ``_wrapper.ended_by_error()``'s to tell).
    Anything else is a fault of the bulk section (docs/semantics.md, "Departure or fault").
    ``handovers`` is how many leaders of the batch left before (Python 3.10's asyncio rule).
    """
    loop = _asyncio_loop()
    if loop is not None and _asyncio_task(loop) is not None:
        return _asyncio.departs(error, handovers)
    return any(runtime.running() is not None and runtime.departs(error, handovers) for runtime in _OTHERS)


def follower_fault(error: BaseException, name: str) -> BaseException:
    """What the followers of a leader that raised ``error`` (a fault) get.

    ``error`` itself, unless the runtime cannot raise it in another task (trio's ``Cancelled``).
    """
    for runtime in _OTHERS:
        fault = runtime.follower_fault(error, name)
        if fault is not None:
            return fault
    return error


def loop_of(task: object) -> Loop | None:
    """The loop of ``task``, a task of any runtime (None for a task of no known runtime)."""
    loop: Loop | None = _asyncio.loop_of(task)
    for runtime in _OTHERS:
        if loop is None:
            loop = runtime.loop_of(task)
    return loop


def misplaced() -> str | None:
    """Why no call could be found here, when the runtime can tell (else None)."""
    why = _asyncio.misplaced()
    if why is not None:
        return why
    running_now = getattr(getattr(sys.modules.get("curio"), "meta", None), "curio_running", None)
    if callable(running_now) and running_now():
        return (
            "concresce does not run on curio, which runs here: it runs on asyncio (the default "
            "loop, eager tasks, uvloop) and trio, and under anyio on either"
        )
    return None
