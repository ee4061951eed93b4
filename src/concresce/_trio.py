"""trio as a runtime: one ``TrioLoop`` per ``trio.run``, parking with ``wait_task_rescheduled``.

trio is imported by nobody here: a trio run is recognised by ``trio`` being in
``sys.modules`` (no run without it) and ``trio.lowlevel.current_task()`` answering.

trio has no callbacks scheduled on a loop, and concresce starts no task of its own, so the
ticks and windows of the open batches are kept by the members themselves: a ``Timer`` is
*hosted* by a waiter that parks, which waits one scheduler round (a tick) or until the
deadline (a window, in a cancel scope of its own), runs the callback and parks again. A
host that stops waiting (routed, chosen to lead, cancelled) hands its timers to another
parked waiter, woken for that. The timer of an open batch always has a host, or a member
about to become one: the batch's members are parked, and a batch whose members all left is
discarded (its timer cancelled).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Final, cast, final

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

__all__ = ["TrioLoop", "TrioWaiter", "current_task", "departs", "follower_fault", "loop_of", "running"]

# The RunVar holding each run's TrioLoop; made at the first call under trio.
_loops: Any = None


def running() -> tuple[object, TrioLoop] | None:
    """The current trio task and its run's loop, or None outside a trio run."""
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        task = trio.lowlevel.current_task()
    except RuntimeError:  # no trio run in this thread
        return None
    global _loops  # noqa: PLW0603 -- made once, lazily, without importing trio up front
    if _loops is None:
        _loops = trio.lowlevel.RunVar("concresce_loop")
    loop: TrioLoop | None = _loops.get(None)
    if loop is None:
        loop = TrioLoop(trio)
        _loops.set(loop)
    return task, loop


def current_task() -> object | None:
    """The current trio task, or None outside a trio run."""
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        task: object = trio.lowlevel.current_task()
    except RuntimeError:  # no trio run in this thread
        return None
    return task


def departs(error: BaseException, handovers: int) -> bool:  # noqa: ARG001 -- the Runtime signature
    """Whether the current task is cancelled: trio's cancellation is level-triggered.

    The task is cancelled while it runs inside a cancelled scope, whatever the bulk code
    raised then; a scope the body opened and left (``trio.fail_after`` raising
    ``TooSlowError``) no longer applies, so that is a fault.
    """
    trio: Any = sys.modules["trio"]
    deadline: float = trio.current_effective_deadline()
    return deadline == float("-inf")


def follower_fault(error: BaseException, name: str) -> BaseException | None:
    """What followers get instead of a ``trio.Cancelled`` (or a group holding one) raised as a fault.

    trio takes a ``Cancelled`` raised in a task for a cancellation of that task's scopes: a
    nursery around a follower's ``collect()`` would swallow it and run the code after
    ``collect()``. So the followers of a leader that raised one without being cancelled get a
    ``RuntimeError`` that says so, caused by (a copy of) it. None for anything else.
    """
    trio: Any = sys.modules.get("trio")
    if trio is None or not _holds(error, trio.Cancelled):
        return None
    fault = RuntimeError(
        f"{name}: the leader of this call's batch raised trio.Cancelled while its task was not "
        "cancelled (a cancellation from nowhere: a library bug, or a resource closed under it); "
        "a Cancelled raised in this task would be taken for its own cancellation, so it gets this "
        "error instead"
    )
    fault.__cause__ = error
    return fault


def _holds(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` is a ``kind``, or an exception group with one anywhere inside."""
    if isinstance(error, kind):
        return True
    members: object = getattr(error, "exceptions", None)
    if not isinstance(members, tuple):
        return False
    return any(
        isinstance(member, BaseException) and _holds(member, kind) for member in cast("tuple[object, ...]", members)
    )


def loop_of(task: object) -> TrioLoop | None:  # noqa: ARG001 -- the Runtime signature
    """None: a trio run ends only once all its tasks have, so it leaves no call behind."""
    return None


@final
class Timer:
    """A tick (``deadline`` None) or a window, until it runs or is cancelled."""

    __slots__ = ("callback", "deadline", "loop")

    def __init__(self, loop: TrioLoop, callback: Callable[[], object], deadline: float | None) -> None:
        self.loop = loop
        self.callback: Callable[[], object] | None = callback
        self.deadline = deadline

    @property
    def cancelled(self) -> bool:
        """Whether it ran or was cancelled."""
        return self.callback is None

    def cancel(self) -> None:
        """Do not run the callback, and let go of it (it holds the batch) at once."""
        self.callback = None
        unhosted = self.loop.unhosted
        if self in unhosted:  # no host took it yet: nobody else would drop it
            unhosted.remove(self)

    def run(self) -> None:
        """Run the callback, once."""
        callback = self.callback
        if callback is not None:
            self.callback = None
            callback()


@final
class _Closer:
    """A trio instrument that marks the run's loop closed when the run ends."""

    __slots__ = ("loop",)

    def __init__(self, loop: TrioLoop) -> None:
        self.loop = loop

    def after_run(self) -> None:
        self.loop.closed = True


@final
class TrioLoop:
    """The ``Loop`` of one trio run."""

    __slots__ = ("closed", "lowlevel", "parked", "token", "trio", "unhosted")

    def __init__(self, trio: Any) -> None:
        self.trio = trio
        self.lowlevel = trio.lowlevel
        self.token = trio.lowlevel.current_trio_token()
        self.closed = False
        # Timers no waiter hosts yet, and the waiters parked now (hosts to be).
        self.unhosted: list[Timer] = []
        self.parked: dict[TrioWaiter, None] = {}
        trio.lowlevel.add_instrument(_Closer(self))

    def create_future(self) -> TrioWaiter:
        """A new waiter of this run."""
        return TrioWaiter(self)

    def call_soon(self, callback: Callable[[], object], /) -> Timer:
        """Run ``callback`` after one scheduler round, in the task that hosts it."""
        timer = Timer(self, callback, None)
        self.unhosted.append(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Timer:
        """Run ``callback`` once ``delay`` seconds of the run's clock have passed."""
        timer = Timer(self, callback, self.trio.current_time() + delay)
        self.unhosted.append(timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> None:
        """Run ``callback`` in the run soon (trio.RunFinishedError, a RuntimeError, if it ended)."""
        self.token.run_sync_soon(callback)

    def time(self) -> float:
        """The run's clock (``trio.current_time()``)."""
        now: float = self.trio.current_time()
        return now

    def is_closed(self) -> bool:
        """Whether the run has ended."""
        return self.closed

    def rehost(self, timers: list[Timer]) -> None:
        """Give ``timers`` (a host stopped waiting) to another parked waiter, woken for it."""
        self.unhosted.extend(timer for timer in timers if not timer.cancelled)
        if self.unhosted and self.parked:
            waiter = next(iter(self.parked))
            waiter.host()  # it is parked


# Waiter states.
_NEW: Final = 0  # not parked yet
_PARKED: Final = 1  # in wait_task_rescheduled(): wake() reschedules its task
_AWAKE: Final = 2  # scheduled or running for a timer (not done): wake() only marks it
_DONE: Final = 3  # woken by set_result(), or its task was cancelled while parked

# What a waiter is woken with to host timers (set_result() wakes it with None).
_HOST: Final = object()


@final
class TrioWaiter:
    """A member's waiter on trio: like an asyncio future for ``await``, ``done()``, ``set_result()``."""

    __slots__ = ("loop", "scope", "state", "task", "timers")

    def __init__(self, loop: TrioLoop) -> None:
        self.loop = loop
        self.state = _NEW
        self.task: Any = None
        self.timers: list[Timer] = []
        self.scope: Any = None  # the cancel scope of a window's deadline, while it waits for one

    def done(self) -> bool:
        """Whether it was woken, or its task was cancelled while parked."""
        return self.state == _DONE

    def set_result(self, result: None, /) -> None:  # noqa: ARG002 -- asyncio's signature
        """Wake the parked task: ``await`` returns."""
        state = self.state
        self.state = _DONE
        if state == _PARKED:
            loop = self.loop
            del loop.parked[self]
            loop.lowlevel.reschedule(self.task)

    def get_loop(self) -> TrioLoop:
        """The loop of the run it belongs to."""
        return self.loop

    def host(self) -> None:
        """Wake the parked task to keep the timers no waiter keeps (``rehost()``)."""
        self.state = _AWAKE
        del self.loop.parked[self]
        self.loop.lowlevel.reschedule(self.task, _outcome_value(_HOST))

    def __await__(self) -> Generator[Any, None, None]:
        loop = self.loop
        if self.state == _NEW and not loop.unhosted:
            # The common case, inline: a member with no timer to keep parks once.
            lowlevel = loop.lowlevel
            self.task = lowlevel.current_task()
            self.state = _PARKED
            loop.parked[self] = None
            try:
                parking: Generator[Any, None, object] = lowlevel.wait_task_rescheduled(self.abort).__await__()
                woken = yield from parking
            finally:
                self.task = None
            if woken is not _HOST:
                return
        # Timers to keep (now, or handed over while it was parked): the full loop.
        yield from self.wait().__await__()

    async def wait(self) -> None:
        """Park until woken; host timers meanwhile. Raises what cancels the task."""
        loop = self.loop
        lowlevel = loop.lowlevel
        try:
            while True:
                if loop.unhosted:
                    self.timers += loop.unhosted
                    loop.unhosted.clear()
                if self.state == _DONE:
                    return
                timers = self.timers = [timer for timer in self.timers if not timer.cancelled]
                if any(timer.deadline is None for timer in timers):
                    # A tick: one scheduler round, then its callback.
                    self.state = _AWAKE
                    await lowlevel.cancel_shielded_checkpoint()
                    if loop.trio.current_effective_deadline() == -math.inf:
                        # Cancelled meanwhile: this member leaves its batch (never leads it),
                        # and its timers go to another member (finally).
                        await lowlevel.checkpoint()
                    self.run_due(None)
                elif timers:
                    deadline = min(timer.deadline for timer in timers if timer.deadline is not None)
                    with loop.trio.CancelScope(deadline=deadline) as scope:
                        self.scope = scope
                        await self.park(lowlevel)
                    self.scope = None
                    self.run_due(loop.time())
                else:
                    await self.park(lowlevel)
        finally:
            self.task = None
            if self.timers:
                timers, self.timers = self.timers, []
                loop.rehost(timers)

    async def park(self, lowlevel: Any) -> None:
        self.task = lowlevel.current_task()
        self.state = _PARKED
        self.loop.parked[self] = None
        await lowlevel.wait_task_rescheduled(self.abort)

    def abort(self, raise_cancel: object) -> object:  # noqa: ARG002 -- trio's signature
        """A cancellation is delivered: the window's own deadline, or the task's."""
        del self.loop.parked[self]
        scope = self.scope
        # The window's deadline passed: a timer runs, the task is not cancelled.
        self.state = _AWAKE if scope is not None and scope.cancel_called else _DONE
        return self.loop.lowlevel.Abort.SUCCEEDED

    def run_due(self, now: float | None) -> None:
        """Run the timers that are due: the ticks (``now`` None), or the windows ended by ``now``."""
        due = [timer for timer in self.timers if timer.deadline is None or (now is not None and timer.deadline <= now)]
        self.timers = [timer for timer in self.timers if timer not in due]
        if self.state == _AWAKE:
            self.state = _NEW
        for timer in due:
            timer.run()


def _outcome_value(value: object) -> Any:
    outcome: Any = sys.modules["outcome"]
    return outcome.Value(value)
