"""Calls whose outcome is recorded, each in a cancel scope of its own (faults and cancellation tests).

A :class:`Caller` runs one call of a batched function in a task of its own, inside an
``anyio.CancelScope`` that the test cancels to cancel exactly that call, and records how the
call ended: ``("returned", value)``, ``("raised", error)`` or ``"cancelled"``. "Cancelled"
means that the call's own scope (or one around it) was cancelled and the call ended with the
backend's cancellation exception; a cancellation exception that reaches a caller whose scopes
were never cancelled is recorded as ``("raised", error)``, so a test sees it (SPEC: only the cancelled
task sees cancellation).

Also here: :func:`start_in_order` (join order is start order, on trio too), a
:class:`Journal` of events per call, and the batched functions and clocks the tests share.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
from tests.runtimes import kit

from concresce import batch, collect, scatter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

#: A window that never expires during a test: these batches are flushed by size.
NEVER = 3600.0


class Abort(BaseException):
    """A BaseException that is not an Exception, like KeyboardInterrupt or SystemExit."""


class Caller:
    """One call, run by :meth:`run` in a cancel scope of its own; ``outcome`` is None until it ends."""

    def __init__(self, name: object, call: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self.call = call
        self.scope = anyio.CancelScope()
        self.outcome: Any = None

    def __repr__(self) -> str:
        return f"Caller({self.name!r}, outcome={self.outcome!r})"

    def cancel(self) -> None:
        """Cancel this call alone (its own cancel scope)."""
        self.scope.cancel()

    async def run(self) -> None:
        """Make the call and record how it ended."""
        with self.scope:
            try:
                self.outcome = ("returned", await self.call())
            except anyio.get_cancelled_exc_class() as error:
                if self.scope.cancel_called or anyio.current_effective_deadline() == -math.inf:
                    # This call's scope, or one around it (a task group whose task failed).
                    self.outcome = "cancelled"
                    raise
                self.outcome = ("raised", error)  # a cancellation nobody asked this call for
            except (Exception, Abort) as error:  # noqa: BLE001 -- the outcome under test
                self.outcome = ("raised", error)


def callers(fn: Callable[[Any], Awaitable[Any]], *items: Any) -> list[Caller]:
    """One :class:`Caller` of ``fn(item)`` per item, named by its item."""
    return [Caller(item, lambda item=item: fn(item)) for item in items]


async def start_in_order(tg: TaskGroup, *calls: Caller) -> None:
    """Start the calls one at a time, each once every task started before it is blocked.

    So each call reaches ``collect()`` (if it does without waiting for anything) before the
    next one starts: join order is start order, on trio too.
    """
    for call in calls:
        tg.start_soon(call.run)
        await kit.quiesce()


async def run_in_order(*calls: Caller) -> list[Any]:
    """Start the calls with :func:`start_in_order`, wait for every one; return their outcomes."""
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, *calls)
    return [call.outcome for call in calls]


def times_ten(journal, *, gates=None, max_size):
    """A batched function whose leader awaits ``gates[x]`` (if given) as its bulk call.

    It records, per call: leading (with the items), being cancelled in collect() or in the
    bulk call, and scattering.
    """
    cancelled = anyio.get_cancelled_exc_class()

    @batch(max_window=NEVER, max_size=max_size)
    async def fn(x):
        try:
            items = await collect(x)
        except cancelled:
            journal(x, "cancelled in collect")
            raise
        journal(x, "lead", items)
        if gates is not None:
            try:
                await gates[x].wait()
            except cancelled:
                journal(x, "cancelled in bulk")
                raise
        journal(x, "scatter")
        return scatter([item * 10 for item in items])

    return fn


def gates_for(*xs):
    """An event per call: the gate each leader's bulk call waits for."""
    return {x: anyio.Event() for x in xs}


def clock():
    """Virtual seconds since this call (rounded: sums of float delays)."""
    start = kit.now()
    return lambda: round(kit.now() - start, 9)


async def run_all(*calls):
    """Start every call at once (each waits for its own arrival time); return their outcomes."""
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run)
    return [call.outcome for call in calls]


class Journal:
    """Events per call, in the order each call recorded them.

    On trio, tasks woken together run in a random order, so the order *between* calls is
    asserted only where the contract fixes it; ``steps`` numbers every event of the run, for
    those assertions.
    """

    def __init__(self) -> None:
        self.by_call: defaultdict[object, list[object]] = defaultdict(list)
        self.steps: list[tuple[object, object]] = []

    def __call__(self, name: object, *event: object) -> None:
        """Record ``event`` (the single argument, or the tuple of them) for call ``name``."""
        entry = event[0] if len(event) == 1 else event
        self.by_call[name].append(entry)
        self.steps.append((name, entry))

    def calls(self) -> dict[object, list[object]]:
        """Every call's events."""
        return dict(self.by_call)

    def step(self, name: object, event: object) -> int:
        """The run's number of ``name``'s ``event`` (for ordering across calls)."""
        return self.steps.index((name, event))
