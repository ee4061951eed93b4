"""The batching state machine: calls, batches and partitions.

One ``Call`` exists per call of a decorated function. When the call awaits ``collect()`` it
joins the open ``Batch`` of its ``Partition`` (one partition per event loop and partition
key). The batch is *dispatched* when it is full, when its window expires, or on the next loop
turn; dispatching wakes exactly one member, the leader. Every other member stays suspended
on its waiter until ``scatter()`` (or a fault) routes it an outcome.

Nothing here outlives its callers: a partition is removed from its function's table as soon
as it has no open, queued or running batch, and a finished batch drops its member lists.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from contextvars import ContextVar, Token
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, final
from weakref import WeakSet

from ._errors import OverloadedError
from ._runtime import current_task, misplaced
from ._stats import OBSERVERS, BatchRecord, Counters, notify

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from types import TracebackType

    from ._runtime import Handle, Loop, Waiter
    from ._stats import FlushReason, Outcome

# The partition key of a function that is neither a method nor grouped: one batch per loop.
NO_PARTITION: Final[Any] = object()

# Field getters for take(), run in C over every member.
_ITEM: Final = attrgetter("item")
_WAITER: Final = attrgetter("fut")

# The batch whose bulk section the current context runs, under max_concurrency: set by its
# leader when it resumes, and inherited by the tasks that leader starts (gather(),
# create_task()), so that a call made from a bulk section can be recognised in any task.
BULK: Final[ContextVar[Batch | None]] = ContextVar("concresce_bulk", default=None)

# The call whose body each task is running, for collect() and scatter(). The wrapper sets
# the entry for the duration of the body; a nested call of another decorated function in the
# same task replaces it and puts the outer one back. Keyed by task rather than held in a
# context variable: measured on 3.12, a dict entry costs about 2,000 instructions less per
# call than ContextVar.set()/reset(), and a task started by the body (which would inherit a
# context variable) cannot mistake itself for the call.
CALLS: Final[dict[Hashable, Call]] = {}
# CALLS.get, bound once for the modules that import CALLS: CPython 3.12 compiles
# `CALLS.get(task)` in such a module as an attribute load that makes a bound method on every
# call (it skips its method-call optimisation for imported names), about 400 instructions.
call_of: Final = CALLS.get

# The calls each task interrupted to make a nested call (CALLS holds the innermost one),
# outermost first; only tasks running nested calls have an entry. Kept here rather than on
# the Call: a slot more on every call costs about 80 instructions per call (its size).
OUTER: Final[dict[Hashable, list[Call]]] = {}

# Every decorated function's Batcher, for _closed_loops.py; weak: a function may go away.
BATCHERS: Final[WeakSet[Batcher]] = WeakSet()

# Call states. A call moves IDLE -> MEMBER -> (LEADING -> SCATTERED | RESUMED | FAILED),
# or to GONE when it leaves (cancelled, or a leader that aborted and handed over). A call
# made inside another call in the same task starts NESTED instead of IDLE and keeps the call
# it interrupted (``outer``), so that the calls a task runs can be listed (``calls_of()``).
IDLE: Final[int] = 0  # running its body, has not awaited collect()
MEMBER: Final[int] = 1  # suspended in collect(), in an open or dispatched batch
LEADING: Final[int] = 2  # chosen as the leader; collect() returns (or returned) the items
SCATTERED: Final[int] = 3  # the leader whose scatter() routed the batch (or failed to)
RESUMED: Final[int] = 4  # a follower that was routed a value
FAILED: Final[int] = 5  # a follower that was routed an exception
GONE: Final[int] = 6  # left the batch: cancelled, or a leader that handed the batch over
NESTED: Final[int] = 7  # like IDLE, for a call made while its task runs another call

# Batch states.
OPEN: Final[int] = 0  # accepting members (possibly already due and queued for a slot)
CLOSED: Final[int] = 1  # full, queued until a concurrency slot frees
RUNNING: Final[int] = 2  # dispatched to a leader, holding a concurrency slot
DONE: Final[int] = 3  # routed, failed, discarded or abandoned


class Trace(Protocol):
    """The tracing of one batch (``_otel.py``): links every member, spans every leader's run."""

    def join(self) -> None:
        """A member joins the batch: remember the span current in its task."""

    def start(self, batch: Batch) -> None:
        """A leader resumed with the batch's items: start a span, child of the leader's span."""

    def end(self, batch: Batch, outcome: Outcome, error: BaseException | None) -> None:
        """The leader's run ended (routed, failed, or handed over): end its span."""

    def release(self) -> None:
        """The leader's call returned after scatter(): its span is no longer current."""


@final
class Tracing:
    """Holds the tracer while tracing is enabled (``enable_tracing()``); read once per batch."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        # Returns the Trace of a new batch; None while tracing is disabled.
        self.open: Callable[[Batch], Trace] | None = None


TRACING: Final = Tracing()


class Resume(BaseException):
    """Unwinds a follower from ``collect()`` once its result has been routed.

    A ``BaseException`` so that ``except Exception`` in user code lets it through; the
    wrapper of the decorated function catches it and returns the routed value.
    """


def current_call(what: str) -> Call:
    """Return the call whose body the current task is running, or raise a RuntimeError about ``what``."""
    call = CALLS.get(current_task())
    if call is None:
        raise RuntimeError(outside_message(what))
    return call


def calls_of(task: Hashable) -> list[Call]:
    """The calls ``task`` is running, innermost first."""
    call = CALLS.get(task)
    return [] if call is None else [call, *reversed(OUTER.get(task, ()))]


def nest(task: Hashable, outer: Call) -> None:
    """``task`` starts a call inside ``outer``: keep ``outer`` for calls_of()."""
    OUTER.setdefault(task, []).append(outer)


def unnest(task: Hashable) -> None:
    """``task`` returns to the call it interrupted."""
    stack = OUTER[task]
    stack.pop()
    if not stack:
        del OUTER[task]


def routed_error(call: Call) -> BaseException:
    """Return the exception routed to follower ``call``, with its traceback as at routing.

    The call forgets it: the traceback will hold the frame that raises it.
    """
    error: BaseException = call.value
    error = error.with_traceback(call.tb)
    call.value = call.tb = None
    return error


def open_guarded(call: Call, item: object, loop: Loop, key: object) -> Batch:
    """Return the batch ``call`` joins, on collect()'s slow path: dedupe, shedding, weights.

    Sets ``call.weight``. The open batch is closed first if ``item`` would tip it over its
    weight budget.

    Raises:
        OverloadedError: ``max_pending`` calls of the partition already wait.
        TypeError, ValueError: The weight function returned something that is not a number
            >= 0 (whatever it raised propagates as is).
        Exception: With dedupe, whatever the item's ``__hash__`` raised, but ``TypeError``
            (an unhashable item is simply never a duplicate).

        Whatever it raises, this call alone fails, before it joins a batch.
    """
    batcher = call.batcher
    if batcher.dedupe:
        with contextlib.suppress(TypeError):  # unhashable: never a duplicate, but it may join
            hash(item)
    part = batcher.partitions.get(key)
    batch = None if part is None else part.open
    weight = 0.0
    weigh = batcher.weight
    # Weigh the item if the open batch or the batch it would open has a budget: an open batch
    # keeps the max_weight it opened with, even after configure(max_weight=None).
    if weigh is not None and (batcher.max_weight is not None or (batch is not None and batch.max_weight is not None)):
        weight = _weight_of(batcher.name, weigh, item)
    limit = batcher.max_pending
    if limit is not None and part is not None and part.waiting() >= limit:
        batcher.counters.shed += 1
        raise OverloadedError(batcher.name, limit)
    if part is None:
        part = batcher.partitions[key] = Partition(batcher, key, loop)
    if batch is not None:
        max_weight = batch.max_weight
        if max_weight is not None and batch.live() and batch.weight + weight > max_weight:
            # The item would tip the open batch over its budget: the batch goes as it is. It
            # may end at once (its members were all cancelled in this loop turn), and its
            # partition with it: look the partition up again.
            batch.close("weight")
            batch = None
            part = batcher.partitions.get(key)
            if part is None:
                part = batcher.partitions[key] = Partition(batcher, key, loop)
    if batch is None:
        batch = part.open = Batch(part)
    call.weight = weight
    return batch


def _weight_of(name: str, weigh: Callable[[Any], float], item: object) -> float:
    value = cast("object", weigh(item))  # checked: the function is the user's
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name}: weight({item!r}) returned {value!r}; it must return a number >= 0"
        raise TypeError(msg)
    weight = float(value)
    if not (weight >= 0 and weight != float("inf")):
        msg = f"{name}: weight({item!r}) returned {value!r}; it must return a finite number >= 0"
        raise ValueError(msg)
    return weight


def outside_message(what: str) -> str:
    """Explain that ``what`` was used outside a call of a decorated function."""
    why = misplaced()
    if why is not None:
        return why
    return (
        f"{what} was used outside a call of a @batch function: await collect(item) in the body "
        "of an `async def` decorated with @batch, in the task that made the call (not in a task "
        "it started), then return scatter(results)"
    )


@final
class Batcher:
    """Configuration and live partitions of one decorated function."""

    __slots__ = (
        "__weakref__",
        "counters",
        "dedupe",
        "drainers",
        "group_by",
        "guarded",
        "max_concurrency",
        "max_pending",
        "max_size",
        "max_weight",
        "max_window",
        "name",
        "observer",
        "partitions",
        "weight",
    )

    def __init__(
        self,
        name: str,
        *,
        max_window: float,
        max_size: int | None,
        group_by: Callable[..., Hashable] | None,
        dedupe: bool,
        max_concurrency: int | None,
        weight: Callable[[Any], float] | None = None,
        max_weight: float | None = None,
        max_pending: int | None = None,
        observer: Callable[[BatchRecord], object] | None = None,
    ) -> None:
        self.name = name
        self.group_by = group_by
        self.dedupe = dedupe
        self.weight = weight
        self.observer = observer
        self.set_limits(max_window, max_size, max_concurrency, max_weight, max_pending)
        # (loop) or (loop, partition key) -> partition; entries exist only while active.
        self.partitions: dict[object, Partition] = {}
        self.counters = Counters()
        # Futures of drain() calls, woken whenever a batch on their loop ends. Other threads
        # append and remove theirs: iterate over a copy.
        self.drainers: list[Waiter] = []
        BATCHERS.add(self)

    def set_limits(
        self,
        max_window: float,
        max_size: int | None,
        max_concurrency: int | None,
        max_weight: float | None,
        max_pending: int | None,
    ) -> None:
        """Set the options that ``configure()`` may change (validated by the caller)."""
        self.max_window = max_window
        self.max_size = max_size
        self.max_concurrency = max_concurrency
        self.max_weight = max_weight
        self.max_pending = max_pending
        # Whether calls take the slow path of collect() (weights, load shedding). A function
        # with a weight function always does: a batch opened with a max_weight keeps it after
        # configure(max_weight=None), and its members must be weighed.
        # dedupe too: an item whose __hash__ raises must fail its call before it joins.
        self.guarded = self.weight is not None or max_pending is not None or self.dedupe

    def reset_counters(self) -> None:
        """Restart the statistics (``stats(reset=True)``)."""
        self.counters = Counters()


@final
class Call:
    """One call of a decorated function: its role in a batch and, for a follower, its outcome."""

    __slots__ = ("batch", "batcher", "fut", "item", "pkey", "slot", "state", "tb", "value", "weight")

    # No __init__ (a Python-level one costs a frame on the hot path, once per call): the
    # wrapper sets batcher, pkey and state; the rest is set when the call joins a batch (item,
    # batch, fut), when its leader resumes (slot) or when a result is routed to it (value, tb),
    # and read only after that.
    batcher: Batcher
    pkey: Hashable
    state: int
    item: Any
    batch: Batch
    fut: Waiter
    slot: int  # index of this call's item in the list the leader received
    value: Any  # the routed result or exception
    tb: TracebackType | None  # the routed exception's traceback at routing time
    weight: float  # with max_weight: the item's weight, while the batch is open


@final
class Partition:
    """The batches of one function on one event loop for one partition key."""

    __slots__ = ("batcher", "key", "loop", "open", "pending", "running")

    def __init__(self, batcher: Batcher, key: object, loop: Loop) -> None:
        self.batcher = batcher
        self.key = key
        self.loop = loop
        self.open: Batch | None = None
        # Batches that are due but wait for a concurrency slot, in order (max_concurrency only:
        # made when a batch first has to wait).
        self.pending: deque[Batch] | None = None
        # Batches dispatched and not ended, each holding a concurrency slot. Which ones they
        # are is known from their leaders (running_batches()), so only a count is kept.
        self.running = 0

    def has_slot(self) -> bool:
        """Whether a due batch may be dispatched now without overtaking a queued one."""
        limit = self.batcher.max_concurrency
        return limit is None or (self.running < limit and not self.pending)

    def enqueue(self, batch: Batch) -> None:
        """Queue a due ``batch`` for a concurrency slot: every slot is busy."""
        batch.queued = True
        batch.limit = 0  # from now on every join is checked (admitted(): refuse_deadlock())
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        pending.append(batch)

    def batch_ended(self) -> None:
        """A batch ended (ran or was discarded): forget this partition if nothing is active.

        Any drain() waiting on this loop looks again: it returns once the partition is gone,
        and flushes a batch that opened while it waited.
        """
        if self.open is None and self.running == 0 and not self.pending:
            parts = self.batcher.partitions
            # A queued batch that ended at its dispatch (every member gone) frees its slot
            # through a nested finish(), which may have removed this partition already.
            if parts.get(self.key) is self:
                del parts[self.key]
        if self.batcher.drainers:
            self.wake_drainers()

    def waiting(self) -> int:
        """Calls waiting in batches not dispatched yet (open, or queued for a slot)."""
        count = sum(batch.live() for batch in self.pending or ())
        batch = self.open
        if batch is not None and not batch.queued:
            count += batch.live()
        return count

    def release(self) -> None:
        """Dispatch queued batches while slots are free (max_concurrency was raised)."""
        limit = self.batcher.max_concurrency
        pending = self.pending
        while pending and (limit is None or self.running < limit):
            pending.popleft().dispatch()

    def wake_drainers(self) -> None:
        """Wake the drain() calls waiting on this partition's loop: they look again."""
        loop = self.loop
        for fut in tuple(self.batcher.drainers):
            if fut.get_loop() is loop and not fut.done():
                fut.set_result(None)

    def refuse_deadlock(self, call: Call) -> None:
        """Refuse ``call``, just joined while every slot is busy, if its batch could never run.

        It could not if every running batch's bulk section waits for a call that came from
        it (in the leader's task or a task the leader started) and waits in a batch of this
        partition not dispatched yet, ``call`` included: no slot could ever free. The call
        leaves the batch and fails with a RuntimeError instead of a deadlock.
        """
        origin = BULK.get()
        joined = call.batch
        sources = joined.origins
        if sources is None:
            sources = joined.origins = {}
        sources[call] = origin
        if origin is None or origin.part is not self or origin.state != RUNNING:
            return  # not called from a bulk section of this partition
        waiting = [batch for batch in (self.open, *(self.pending or ())) if batch is not None]
        origins = {
            id(source)
            for batch in waiting
            for member, source in (batch.origins or {}).items()
            if member.state == MEMBER
        }
        running = self.running_batches()
        if len(running) < (self.batcher.max_concurrency or 0) or any(id(batch) not in origins for batch in running):
            return
        joined.members.pop()  # it joined last: undo the join
        del sources[call]
        call.state = IDLE
        if not joined.live():
            joined.discard()  # it opened the batch: nothing is left to run
        batcher = self.batcher
        msg = (
            f"{batcher.name}: called from its own bulk section (between collect() and scatter(), "
            f"or in a task started there) while each of its max_concurrency={batcher.max_concurrency} "
            "slots is held by a bulk section waiting for such a call: its batch could never run (a "
            "deadlock). Make the call before collect() or after scatter(), or raise max_concurrency"
        )
        raise RuntimeError(msg)

    def running_batches(self) -> list[Batch]:
        """The batches of this partition that hold a slot, found through their leaders.

        A running batch has exactly one LEADING member (the chosen or running leader).
        """
        return [
            call.batch
            for task in list(CALLS)
            for call in calls_of(task)
            if call.state == LEADING and call.batch.part is self
        ]


@final
class Batch:
    """A group of calls whose items go to one leader together.

    ``collect()`` joins a call by appending it to ``members``, inline; it calls ``admitted()``
    only when ``len(members)`` reaches ``limit``. For a plain batch ``limit`` is where it is
    full; a batch that looks at every join (dedupe, weights, tracing) has a ``limit`` of 0.
    """

    __slots__ = (
        "bulk",
        "callers",
        "count",
        "counts",
        "departed",
        "direct",
        "dispatched",
        "dupes",
        "handle",
        "handovers",
        "limit",
        "max_size",
        "max_weight",
        "members",
        "opened",
        "origins",
        "part",
        "queued",
        "reason",
        "scan",
        "state",
        "trace",
        "weight",
    )

    # Set when the batch is dispatched (dispatched) or when its leader resumes (the others),
    # and read only after that: not in __init__, which runs once per batch.
    dispatched: float  # the loop's time at the dispatch
    callers: list[Call]  # the members routed by scatter()
    direct: bool  # callers is members and each member's slot is its index

    def __init__(self, part: Partition) -> None:
        batcher = part.batcher
        loop = part.loop
        self.part = part
        self.state = OPEN
        self.members: list[Call] = []  # every call that joined, in arrival order
        self.departed = 0  # members that left (while it was open: their items are not passed on)
        self.dupes = 0  # with dedupe: live members whose item equals an earlier live member's
        self.counts: dict[Any, int] | None = {} if batcher.dedupe else None
        # The limits in force when the batch opened: configure() applies from the next batch.
        self.max_size = max_size = batcher.max_size
        self.max_weight = batcher.max_weight
        self.weight = 0.0  # with max_weight: the weight of the live members' items
        self.queued = False  # in part.pending
        self.scan = 0  # members before this index can no longer lead
        self.count = 0  # how many items the leader received (slots); 0 until a leader resumes
        # Why it stopped collecting: set by due() or close(), read from dispatch() on.
        self.reason: FlushReason = "tick"
        self.opened = loop.time()
        self.handovers = 0
        open_trace = TRACING.open
        self.trace = None if open_trace is None else open_trace(self)
        self.bulk: Token[Batch | None] | None = None  # the leader's BULK while it runs
        # While every slot is busy: the bulk section each member was called from (or None).
        self.origins: dict[Call, Batch | None] | None = None
        if (
            self.counts is not None
            or self.max_weight is not None
            or self.trace is not None
            # Every slot is busy: check each join for re-entrancy (refuse_deadlock()).
            or (batcher.max_concurrency is not None and not part.has_slot())
        ):
            self.limit = 0
        else:
            self.limit = sys.maxsize if max_size is None else max_size
        # A batch opens for the member about to join it: start the clock (not for max_size=1,
        # which that member fills). With max_window=0 the batch is flushed on the next loop
        # turn, so every call that reaches collect() in this turn (and every task already
        # scheduled for it) shares the batch. call_soon, not a task with sleep(0): one
        # callback per batch, nothing to cancel or await.
        self.handle: Handle | None = None
        if max_size != 1:
            window = batcher.max_window
            if window:
                self.handle = loop.call_later(window, self.on_window)
            else:
                self.handle = loop.call_soon(self.on_tick)

    # -- joining and leaving while open -------------------------------------------------

    def live(self) -> int:
        """Members that have not left (while the batch is open: whose items the leader gets)."""
        return len(self.members) - self.departed

    def admitted(self, call: Call) -> None:
        """The slow part of ``call``'s join: count it, and close the batch if it is full."""
        part = self.part
        if part.batcher.max_concurrency is not None and not part.has_slot():
            part.refuse_deadlock(call)
        trace = self.trace
        if trace is not None:
            trace.join()
        counts = self.counts
        if counts is not None:
            item = call.item
            try:
                seen = counts.get(item, 0)
                counts[item] = seen + 1
            except Exception:  # noqa: BLE001, S110 -- unhashable, or a raising __eq__: never a duplicate
                pass
            else:
                if seen:
                    self.dupes += 1
        max_weight = self.max_weight
        if max_weight is not None:
            self.weight += call.weight
        max_size = self.max_size
        if max_size is not None and self.live() - self.dupes >= max_size:
            self.close("size")
        elif max_weight is not None and self.weight >= max_weight:
            self.close("weight")

    def leave_open(self, call: Call) -> None:
        """A member left before the batch was dispatched: its item is not passed on."""
        self.departed += 1
        if self.limit:
            self.limit += 1  # a plain batch: full at max_size live members
        if self.max_weight is not None:
            self.weight -= call.weight
        counts = self.counts
        if counts is not None:
            item = call.item
            try:
                seen = counts.get(item, 0)
                if seen <= 1:
                    counts.pop(item, None)
                else:
                    counts[item] = seen - 1
                    self.dupes -= 1
            except Exception:  # noqa: BLE001, S110 -- an item admitted() could not count either
                pass
        # The batch may stay open for a long window: do not keep the departed item alive.
        call.item = None
        if not self.live():
            self.discard()

    def leave(self, call: Call) -> None:
        """``call`` stopped waiting in ``collect()`` (it was cancelled or closed)."""
        state = call.state
        call.state = GONE
        call.value = call.tb = None  # a routed result, if any, is dropped
        part = self.part
        if part.loop.is_closed():
            # The coroutine is being closed after its loop was closed by hand: nothing can run
            # any more, so nobody is woken (the loop would refuse it).
            return
        part.batcher.counters.cancellations += 1
        if state == MEMBER and self.state == DONE and part.batcher.drainers:
            part.wake_drainers()  # its batch ended without it: drain() waits for it to leave
        if state == MEMBER:
            if self.state in (OPEN, CLOSED):
                self.leave_open(call)
            else:
                # Dispatched: take() and deliver() skip a member that is gone. Counted, so
                # that take() does not take every member.
                self.departed += 1
        elif state == LEADING:
            # Chosen as the leader but cancelled before it resumed: not its followers' fault.
            self.hand_over(call, resumed=False)

    def discard(self) -> None:
        """Every member left before dispatch: drop the batch without running anything."""
        self.state = DONE
        self.cancel_timer()
        part = self.part
        part.batcher.counters.calls += len(self.members)
        if part.open is self:
            part.open = None
        if part.pending and self.queued:
            part.pending.remove(self)
        self.members = []
        part.batch_ended()

    # -- becoming due and dispatching -------------------------------------------------

    def on_tick(self) -> None:
        """The loop turned since the first member joined (``max_window=0``)."""
        self.due("tick")

    def on_window(self) -> None:
        """The window expired."""
        self.due("window")

    def due(self, reason: FlushReason) -> None:
        """Dispatch now, or queue for a concurrency slot."""
        self.handle = None
        self.reason = reason
        part = self.part
        if part.has_slot():
            self.dispatch()
        else:
            # Every slot is busy. The batch stays open and keeps collecting (up to max_size)
            # while it waits; a finished batch dispatches it, in order.
            part.enqueue(self)

    def close(self, reason: FlushReason) -> None:
        """Stop collecting (full, heavy enough, or flushed): dispatch the batch, or queue it."""
        if not self.queued:
            # A queued batch keeps the reason it became due for (decision 19).
            self.reason = reason
        part = self.part
        part.open = None
        self.cancel_timer()
        if self.queued:
            self.state = CLOSED
        elif part.has_slot():
            self.dispatch()
        else:
            self.state = CLOSED
            part.enqueue(self)

    def cancel_timer(self) -> None:
        """Cancel the pending window or tick callback, if any."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def dispatch(self) -> None:
        """Close the batch, take a concurrency slot and wake the leader."""
        part = self.part
        if part.open is self:
            part.open = None
        self.queued = False
        self.cancel_timer()
        self.state = RUNNING
        self.counts = None
        part.running += 1
        self.dispatched = part.loop.time()
        part.batcher.counters.calls += len(self.members)
        self.next_leader()

    def next_leader(self) -> None:
        """Wake the earliest member still waiting as the leader; end the batch if none is left."""
        members = self.members
        index = self.scan
        count = len(members)
        while index < count:
            member = members[index]
            index += 1
            fut = member.fut
            if member.state == MEMBER and not fut.done():
                self.scan = index
                member.state = LEADING
                fut.set_result(None)
                return
        self.scan = count
        self.finish("handover")

    def take(self, leader: Call) -> list[Any]:
        """Fix the members the leader serves and return their items, in arrival order.

        Called when the leader resumes from ``collect()``: a member cancelled since the
        dispatch is left out. With dedupe, equal items share one slot (first arrival wins).
        """
        part = self.part
        batcher = part.batcher
        if not self.count:
            # The first leader runs: the batch counts. (One whose members all left before
            # that never ran, like a batch discarded while open.)
            counters = batcher.counters
            counters.batches += 1
            counters.flushes[self.reason] += 1
            counters.wait_time.add(self.dispatched - self.opened)
        if batcher.max_concurrency is not None:
            self.bulk = BULK.set(self)  # the bulk section runs in this context from now on
        members = self.members
        if (
            self.scan == 1  # the first member leads: no handover, it did not leave
            and not self.departed
            and not batcher.dedupe
            # The leader's waiter is done; any other done waiter is a member cancelled since.
            # (Every waiter comes from the same loop's create_future(): one type, one done().)
            and sum(map(type(leader.fut).done, map(_WAITER, members))) == 1
        ):
            # Every member is served, each in the slot of its index.
            self.direct = True
            self.callers = members
            leader.slot = 0
            items = list(map(_ITEM, members))
            self.count = len(items)
        else:
            items = self.take_some(leader)
        if self.trace is not None:
            self.trace.start(self)
        return items

    def take_some(self, leader: Call) -> list[Any]:
        """``take()`` when some members are not served, or equal items share a slot."""
        callers: list[Call] = []
        items: list[Any] = []
        index: dict[Any, int] | None = {} if self.part.batcher.dedupe else None
        for member in self.members:
            if member is not leader:
                fut = member.fut
                if member.state != MEMBER or fut.done():
                    continue
            callers.append(member)
            item = member.item
            if index is not None:
                try:
                    slot = index.get(item)
                    if slot is None:
                        index[item] = len(items)
                except Exception:  # noqa: BLE001 -- unhashable, or a raising __eq__: never merged
                    slot = None
                if slot is not None:
                    member.slot = slot
                    continue
            member.slot = len(items)
            items.append(item)
        self.direct = False
        self.callers = callers
        self.count = len(items)
        return items

    def slot_items(self) -> list[Any]:
        """The item of each slot: what the leader received, as the members passed it."""
        callers = self.callers
        if self.direct:
            return list(map(_ITEM, callers))
        items: list[Any] = [None] * self.count
        for member in callers:
            items[member.slot] = member.item
        return items

    # -- ending -------------------------------------------------------------------------

    def deliver(self, shares: list[Any]) -> None:
        """Route ``shares[slot]`` to every follower still waiting, then end the batch.

        The leader is no longer a MEMBER: it is skipped like a member cancelled since.
        """
        callers = self.callers
        values = shares if self.direct else [shares[member.slot] for member in callers]
        for member, value in zip(callers, values, strict=True):
            fut = member.fut
            if member.state != MEMBER or fut.done():
                continue  # the leader, or cancelled since: its result is dropped
            member.value = value
            if isinstance(value, Exception):
                member.state = FAILED
                member.tb = value.__traceback__
            else:
                member.state = RESUMED
            fut.set_result(None)
        self.finish("ok")

    def fail(self, error: BaseException, leader: Call) -> None:
        """Raise ``error`` in every member still waiting, then end the batch.

        Each follower gets its own copy (``follower_copy()``), so that its traceback is its
        own and keeps no frame of the leader's alive.
        """
        origin = fault_origin(error, self.part.batcher.name)
        for member in self.members:
            if member is leader:
                continue
            fut = member.fut
            if member.state != MEMBER or fut.done():
                continue
            member.value = follower_copy(error, origin)
            member.tb = None
            member.state = FAILED
            fut.set_result(None)
        self.finish("error", error)

    def hand_over(self, leader: Call, *, resumed: bool = True) -> None:
        """The leader left before scatter(): the earliest member still waiting leads instead.

        A leader that left while it ran the bulk section counts as a handover; one chosen but
        cancelled before it resumed from collect() counts as a cancellation only.
        """
        leader.state = GONE
        self.callers = []
        if resumed:
            self.end_bulk()
            self.handovers += 1
            self.part.batcher.counters.handovers += 1
            if self.trace is not None:
                self.trace.end(self, "handover", None)
        if self.part.loop.is_closed():
            return  # a coroutine closed after its loop: nothing can run any more
        self.next_leader()

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """Record how the batch ended, then release its slot and every reference to members.

        Runs once: only a running batch ends. A batch whose members all left before any
        leader resumed (``count`` is still 0) never ran: it has no statistics or record.
        Observers are called last, once the slot, the partition and ``drain()`` are settled,
        and nothing they raise reaches a caller.
        """
        self.state = DONE
        if self.bulk is not None:
            self.end_bulk()
        part = self.part
        batcher = part.batcher
        calls = -1  # the members, if observers want a record
        duration = 0.0
        if self.count:
            duration = part.loop.time() - self.dispatched
            counters = batcher.counters
            counters.items += self.count
            counters.batch_size.add(self.count)
            counters.bulk_duration.add(duration)
            if error is not None:
                counters.leader_failures += 1
            if self.trace is not None and outcome != "handover":
                self.trace.end(self, outcome, error)  # in the leader: its span was current until now
            if batcher.observer is not None or OBSERVERS:
                calls = len(self.members)
        self.members = []
        self.callers = []
        # Free the slot: queued batches go in order while slots are free.
        part.running -= 1
        if part.pending:
            part.release()
        part.batch_ended()
        if calls >= 0:
            self.report(outcome, error, duration, calls)

    def end_bulk(self) -> None:
        """The leader's run ended: its context no longer runs this batch's bulk section."""
        token = self.bulk
        if token is not None:
            self.bulk = None
            # A coroutine closed by the garbage collector after its loop was closed runs in
            # another context: there is nothing left to reset then.
            with contextlib.suppress(ValueError):
                BULK.reset(token)

    def report(self, outcome: Outcome, error: BaseException | None, duration: float, calls: int) -> None:
        """Pass the batch's record to its function's observer and the global observers."""
        part = self.part
        record = BatchRecord(
            function=part.batcher.name,
            partition=partition_label(part),
            calls=calls,
            size=self.count,
            reason=self.reason,
            waited=self.dispatched - self.opened,
            duration=duration,
            outcome=outcome,
            error=None if error is None else type(error),
            handovers=self.handovers,
        )
        observers = list(OBSERVERS)
        if part.batcher.observer is not None:
            observers.insert(0, part.batcher.observer)
        notify(observers, record)


def partition_label(part: Partition) -> str | None:
    """``repr()`` of a partition's key for records and spans (None for a loop's only one).

    Never raises: the key is the user's (``group_by``), and its ``repr()`` may fail.
    """
    key = part.key
    if key is part.loop:
        return None
    value: object = cast("tuple[object, object]", key)[1]  # (loop, partition key)
    try:
        return repr(value)
    except BaseException as error:  # noqa: BLE001 -- reported in the label instead, whatever it is
        return f"<{type(value).__name__} key, repr() raised {type(error).__name__}>"


def fault_origin(error: BaseException, name: str) -> str:
    """Where the leader's ``error`` was raised, in words, for the followers' copies."""
    tb = error.__traceback__
    where = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        where = f' (raised at "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name})'
        tb = tb.tb_next
    return f"concresce: raised by the leader of this call's batch of {name}{where}"


def follower_copy(error: BaseException, origin: str) -> BaseException:
    """A copy of the leader's ``error`` for one follower: same type, arguments and attributes.

    The copy carries no traceback of the leader's, so it keeps none of the leader's frames
    (with their items and rows) alive; its cause and context are copied the same way, so the
    chain still reads the same. On Python 3.11+ a note says where the leader raised it. An
    exception that cannot be rebuilt this way is shared as it is.
    """
    copy = _bare_copy(error, depth=8)
    if copy is error:
        return error
    if sys.version_info >= (3, 11):  # pragma: no branch -- 3.10 has no notes
        notes = getattr(error, "__notes__", None)
        copy.__notes__ = [*notes, origin] if isinstance(notes, list) else [origin]
    return copy


def _bare_copy(error: BaseException, depth: int) -> BaseException:
    """``error`` rebuilt without a traceback, with its cause and context copied likewise."""
    cls = type(error)
    try:
        copy = cls.__new__(cls, *error.args)
        copy.args = error.args
        state = getattr(error, "__dict__", None)
        if state:
            copy.__dict__.update(state)
    except Exception:  # noqa: BLE001 -- an exception type that cannot be rebuilt this way
        return error
    if depth:
        # A link that cannot be copied is left out rather than shared: it holds frames.
        cause, context = error.__cause__, error.__context__
        if cause is not None and (link := _bare_copy(cause, depth - 1)) is not cause:
            copy.__cause__ = link
        if context is not None and (link := _bare_copy(context, depth - 1)) is not context:
            copy.__context__ = link
    copy.__suppress_context__ = error.__suppress_context__
    return copy
