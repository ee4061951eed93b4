"""What the thread API's tests share: a virtual clock, callers in threads, a record of events.

Threads are scheduled by the OS, so the tests never guess when a thread got somewhere: they
wait for it to be *parked* (the virtual clock counts the threads parked in ``collect()`` or
``drain()``), or for an event the bulk code records, each with a time-out that fails the test
instead of hanging it. Time moves only when a test advances the virtual clock.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from concresce.threads import batch, collect, scatter

if TYPE_CHECKING:
    from collections.abc import Callable

    from concresce._threads import ThreadWaiter

#: Seconds a test waits for a thread to get somewhere before it fails (never reached when the
#: code is right).
PATIENCE = 10.0


def loop_of(fn: Any) -> Any:
    """The ThreadLoop of a thread-batched function."""
    return fn.stats.__self__.batcher.home


class VirtualClock:
    """A ``Clock`` for a function's ThreadLoop whose time moves only in ``advance()``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.changed = threading.Condition()
        # Parked waiters and the time each wakes at (inf: only a signal wakes it).
        self.sleepers: dict[ThreadWaiter, float] = {}

    def time(self) -> float:
        return self.now

    def wait(self, waiter: ThreadWaiter, until: float | None) -> bool:
        with self.changed:
            if until is not None and until <= self.now:
                return False
            self.sleepers[waiter] = float("inf") if until is None else until
            self.changed.notify_all()
        try:
            return waiter.lock.acquire()
        finally:
            with self.changed:
                del self.sleepers[waiter]
                self.changed.notify_all()

    def parked(self) -> int:
        """Threads parked now."""
        with self.changed:
            return len(self.sleepers)

    def wait_parked(self, count: int) -> None:
        """Block until exactly ``count`` threads are parked (fails after PATIENCE seconds)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.sleepers) == count, PATIENCE):
                msg = f"expected {count} parked threads, have {len(self.sleepers)}"
                raise AssertionError(msg)

    def advance(self, seconds: float) -> None:
        """Move time on, and wake every thread parked until then (it looks again)."""
        with self.changed:
            self.now += seconds
            due = [waiter for waiter, until in self.sleepers.items() if until <= self.now]
        for waiter in due:
            with waiter.loop:
                waiter.signal()


def virtual_clock(*fns: Any) -> VirtualClock:
    """Give the thread-batched functions ``fns`` one virtual clock; return it."""
    clock = VirtualClock()
    for fn in fns:
        loop_of(fn).clock = clock
    return clock


class Caller:
    """One call made in a thread of its own: its result or exception once it ends."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 -- the test looks at it
            self.error = error

    def join(self) -> Any:
        """Wait for the call to end (failing after PATIENCE seconds); return its result or raise."""
        self.thread.join(PATIENCE)
        if self.thread.is_alive():
            msg = "the call did not end: a thread blocked for ever"
            raise AssertionError(msg)
        if self.error is not None:
            raise self.error
        return self.result

    def outcome(self) -> tuple[str, Any]:
        """``("ok", result)`` or ``(exception type name, str(exception))`` once it ended."""
        try:
            return ("ok", self.join())
        except BaseException as error:  # noqa: BLE001 -- the test looks at it
            return (type(error).__name__, str(error))


class Gate:
    """Where a bulk section stops until the test opens it, recording that it got there."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.opened = threading.Event()
        self.reached = threading.Semaphore(0)

    def __call__(self, *event: Any) -> None:
        self.log.append(event)
        self.reached.release()
        if not self.opened.wait(PATIENCE):
            msg = "the gate was never opened"
            raise AssertionError(msg)

    def wait_reached(self) -> None:
        """Block until a bulk section reached the gate (once per call of it)."""
        if not self.reached.acquire(timeout=PATIENCE):
            msg = "no bulk section reached the gate"
            raise AssertionError(msg)

    def open(self) -> None:
        self.opened.set()


def gated(**options: Any) -> tuple[Any, Gate, list[Any]]:
    """A thread-batched echo whose bulk sections each stop at a gate: ``(fn, gate, log)``.

    ``fn(x, timeout=None)`` collects ``x`` (with ``collect()``'s ``timeout``), records
    ``("bulk", items)`` at the gate and returns its own item.
    """
    log: list[Any] = []
    gate = Gate(log)

    @batch(**options)
    def echo(x: Any, timeout: float | None = None) -> Any:
        xs = collect(x, timeout=timeout)
        gate("bulk", xs)
        return scatter(xs)

    return echo, gate, log


def held(
    fn: Any, clock: VirtualClock, gate: Gate, first: Any, *items: Any, **kwargs: Any
) -> tuple[Caller, list[Caller]]:
    """``first`` leads and holds its slot at the gate; ``items`` join the next batch, in order."""
    leader = Caller(fn, first)
    gate.wait_reached()
    callers: list[Caller] = []
    for item in items:
        callers.append(Caller(fn, item, **kwargs))
        clock.wait_parked(len(callers))
    return leader, callers
