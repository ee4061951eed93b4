"""Threads as a runtime: the ``Loop`` of a function decorated with ``concresce.threads.batch``.

There is no event loop: each thread-batched function has a ``ThreadLoop`` of its own, whose
lock guards every partition and batch of that function (and its counters). Every entry into
the engine from a thread (joining, leaving, taking the items, routing, the controls) holds
it; the engine's code is the same as on asyncio and trio, run under that lock. Nothing
relies on the GIL: the only state shared across threads outside the lock is the table of
current calls, keyed by thread, where each thread writes only its own entry.

``with loop.lock:`` holds it (a C-level re-entrant lock: no exception can leave it held).
A member parks on its ``ThreadWaiter`` (a lock of its own, released to wake it). What the
engine schedules maps onto threads without any thread of ours:

* ``call_soon`` (the tick of ``max_window=0``) runs right after the join that opened the
  batch, in the joining thread: the batch is due at once (group commit: it is dispatched if
  a ``max_concurrency`` slot is free, else it collects until one frees);
* ``call_later`` (the window) is kept by one member of the batch, its *host*, which parks
  with a timeout at the window's end and runs the timer when it wakes; a host that stops
  waiting hands the timer to another member still waiting.

Waiting goes through the loop's ``clock`` (``time()`` and ``wait()``), so tests can swap in a
virtual one (tests/threads/clock.py).
"""

from __future__ import annotations

from _thread import RLock, allocate_lock
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, Protocol, final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SOON", "Clock", "ThreadLoop", "ThreadTimer", "ThreadWaiter"]

#: The deadline of a tick: due as soon as the join that opened its batch is done.
SOON: Final = float("-inf")


class Clock(Protocol):
    """How a ``ThreadLoop`` tells the time and parks a thread (swapped for a virtual one in tests)."""

    def time(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def wait(self, waiter: ThreadWaiter, until: float | None) -> bool:
        """Park until ``waiter`` is signalled (True) or the clock reaches ``until`` (False).

        Called without the loop's lock. ``until`` is None: no time limit.
        """
        ...


@final
class _RealClock:
    """``time.monotonic()``, and a lock acquired with a timeout."""

    __slots__ = ()

    def time(self) -> float:
        return monotonic()

    def wait(self, waiter: ThreadWaiter, until: float | None) -> bool:
        if until is None:
            return waiter.lock.acquire()
        return waiter.lock.acquire(timeout=max(until - monotonic(), 0.0))


_REAL_CLOCK: Final = _RealClock()


@final
class ThreadWaiter:
    """What a thread parks on in ``collect()`` or ``drain()``; the ``Waiter`` of threads.

    ``lock`` is held from the start; releasing it (``signal()``) lets the parked thread
    through. ``signalled`` says a release is pending (not consumed by the parked thread yet),
    so that a second signal never releases twice. Both are changed under the loop's lock.
    """

    __slots__ = ("lock", "loop", "signalled", "woken")

    def __init__(self, loop: ThreadLoop) -> None:
        self.loop = loop
        self.lock = allocate_lock()
        self.lock.acquire()
        self.woken = False
        self.signalled = False

    def done(self) -> bool:
        """Whether it has its outcome, or its thread stopped waiting (a time-out, an interrupt)."""
        return self.woken

    def set_result(self, result: None, /) -> None:  # noqa: ARG002 -- the Waiter protocol
        """Wake the thread parked on it with an outcome (its call's state says which)."""
        self.woken = True
        if not self.signalled:  # signal(), inline: once per follower of every batch
            self.signalled = True
            self.lock.release()

    def signal(self) -> None:
        """Wake the parked thread without an outcome: it looks again (a timer to keep)."""
        if not self.signalled:
            self.signalled = True
            self.lock.release()

    def consumed(self) -> None:
        """The parked thread went through a signal: the next one releases the lock again."""
        self.signalled = False

    def get_loop(self) -> ThreadLoop:
        """The loop that made it."""
        return self.loop


@final
class ThreadTimer:
    """A tick or a window of a thread-batched function's batch (the ``Handle`` of threads).

    A window is run by its ``host``, a member of its batch parked until ``deadline``.
    """

    __slots__ = ("callback", "deadline", "host")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback: Callable[[], object] | None = callback
        self.host: Any = None  # the Call that keeps the window

    def cancel(self) -> None:
        """Do not run the callback."""
        self.callback = None

    def run(self) -> None:
        """Run the callback, once, unless it was cancelled."""
        callback = self.callback
        if callback is not None:
            self.callback = None
            callback()


@final
class ThreadLoop:
    """The lock, clock and timers of one thread-batched function: its ``Loop``.

    ``with loop.lock:`` holds the lock: a C-level re-entrant lock, so that an exception raised
    in the holding thread (a ``KeyboardInterrupt``) can never leave it held, and so that code
    run under it may take it again (``stats()`` from an observer). The engine calls user code
    under it (observers, tracing, a weight function, an item's ``__hash__``); a call of the
    same function from there could never be served, and ``refuse_reentry()`` refuses it.
    """

    __slots__ = ("clock", "holds", "lock", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.reset_lock()
        self.clock: Clock = _REAL_CLOCK

    def reset_lock(self) -> None:
        """Take a new lock (at creation, and in a child process after ``os.fork()``)."""
        self.lock = RLock()
        #: Whether the current thread holds the lock (``_thread.RLock``'s own test, in C).
        self.holds: Callable[[], bool] = getattr(self.lock, "_is_owned")  # noqa: B009 -- not in typeshed

    def refuse_reentry(self, what: str) -> None:
        """Refuse ``what``, which would wait, when the current thread holds the lock."""
        if self.holds():
            msg = (
                f"{self.name}: {what} from code that concresce runs while it holds this function's lock "
                "(an observer, a tracing hook, a weight function, an item's __hash__ or __eq__, a key= "
                "function of scatter()); it would wait for ever: make it elsewhere"
            )
            raise RuntimeError(msg)

    # -- the Loop protocol ------------------------------------------------------------

    def create_future(self) -> ThreadWaiter:
        """A waiter for one member (or one ``drain()``)."""
        return ThreadWaiter(self)

    def call_soon(self, callback: Callable[[], object], /) -> ThreadTimer:
        """A tick: run by the thread whose join opened the batch, once it has joined."""
        return ThreadTimer(SOON, callback)

    def call_later(self, delay: float, callback: Callable[[], object], /) -> ThreadTimer:
        """A window: run by a member of the batch parked until it ends."""
        return ThreadTimer(self.clock.time() + delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> None:
        """Run ``callback`` under the lock now (``configure()`` from any thread)."""
        with self.lock:
            callback()

    def time(self) -> float:
        """The clock's time, in seconds."""
        return self.clock.time()

    def is_closed(self) -> bool:
        """Never: threads come and go, the function's loop stays."""
        return False
