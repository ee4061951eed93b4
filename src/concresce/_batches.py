"""Partitions and batches: the state machine of a batch, from open to done.

A call that awaits ``collect()`` joins the open ``Batch`` of its ``Partition`` (one per loop
and partition key). The batch is *dispatched* when it is full, when its window expires, or
on the next scheduler round (the tick); with ``max_concurrency`` it may first wait in its
partition's queue for a slot. Dispatching wakes exactly one member, the leader; a leader
that leaves before ``scatter()`` hands the batch to the earliest member still waiting. How
a call is admitted is ``_admission.py``; what the leader receives and how outcomes reach the
members is ``_routing.py``; what is recorded when a batch ends is ``_reporting.py``.

Nothing here outlives its callers: a partition is removed from its function's table as soon
as it has no open, queued or running batch, and a finished batch drops its member lists.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final, final

from ._calls import CALLS, GONE, LEADING, MEMBER, calls_of
from ._reporting import TRACING, report
from ._stats import OBSERVERS

if TYPE_CHECKING:
    from ._batcher import Batcher
    from ._calls import Call
    from ._runtime import Handle, Loop
    from ._stats import FlushReason, Outcome

# The batch whose bulk section the current context runs, under max_concurrency: set by its
# leader when it resumes, and inherited by the tasks that leader starts, so that a call made
# from a bulk section can be recognised in any task (_admission.refuse_deadlock()).
BULK: Final[ContextVar[Batch | None]] = ContextVar("concresce_bulk", default=None)

# Batch states.
OPEN: Final[int] = 0  # accepting members (possibly already due and queued for a slot)
CLOSED: Final[int] = 1  # full, queued until a concurrency slot frees
RUNNING: Final[int] = 2  # dispatched to a leader, holding a concurrency slot
DONE: Final[int] = 3  # routed, failed, discarded or abandoned


@final
class Partition:
    """The batches of one function on one event loop for one partition key."""

    __slots__ = ("batcher", "held", "key", "loop", "open", "pending", "running")

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
        # With max_window="auto": the open batch, if it is due but held until a running batch
        # ends (_tuner.py).
        self.held: Batch | None = None

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

    def release_held(self) -> None:
        """A batch ended: the batch held by the tuner goes now (group commit).

        Unless the in-flight limit just went down to what is still running: then it waits
        for the next end, or its hold to expire.
        """
        held = self.held
        tuner = self.batcher.tuner
        if held is not None and (tuner is None or self.running < tuner.limit):
            held.cancel_timer()
            held.on_held()

    def wake_drainers(self) -> None:
        """Wake the drain() calls waiting on this partition's loop: they look again."""
        loop = self.loop
        for fut in tuple(self.batcher.drainers):
            if fut.get_loop() is loop and not fut.done():
                fut.set_result(None)

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
        "tuned",
        "weight",
    )

    # Set when the batch is dispatched (dispatched) or when its leader resumes (the others),
    # and read only after that: not in __init__, which runs once per batch.
    dispatched: float  # the loop's time at the dispatch
    callers: list[Call]  # the members routed by scatter()
    direct: bool  # callers is members and each member's slot is its index
    tuned: int  # with max_window="auto": the in-flight limit when it was due (its record's)

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
        if part.held is self:
            part.held = None
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
        """Dispatch now, hold (``max_window="auto"``), or queue for a concurrency slot."""
        self.handle = None
        self.reason = reason
        part = self.part
        tuner = part.batcher.tuner
        if tuner is not None:
            self.tuned = tuner.limit
            running = part.running
            if running:
                hold = tuner.hold(running)
                if hold:
                    # Group commit: the tuner's in-flight limit is reached and more calls are
                    # expected. The batch stays open and keeps collecting; the first batch to
                    # end dispatches it (finish()), or the hold expires. The timer bounds the
                    # wait even if no batch ever ends (a bulk section waiting for a call that
                    # joined this batch cannot deadlock).
                    part.held = self
                    self.handle = part.loop.call_later(hold, self.on_held)
                    return
        if part.has_slot():
            self.dispatch()
        else:
            # Every slot is busy. The batch stays open and keeps collecting (up to max_size)
            # while it waits; a finished batch dispatches it, in order.
            part.enqueue(self)

    def on_held(self) -> None:
        """The hold ended (it expired, or a running batch ended): dispatch or queue now."""
        self.handle = None
        part = self.part
        part.held = None
        if part.has_slot():
            self.dispatch()
        else:
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
        if part.held is self:  # filled or flushed while held
            part.held = None
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
            tuner = batcher.tuner
            if tuner is not None:
                end = self.dispatched + duration
                tuner.ended(self.count, end - self.opened, duration, end, part.running)
        self.members = []
        self.callers = []
        # Free the slot: queued batches go in order while slots are free.
        part.running -= 1
        if part.pending:
            part.release()
        if part.held is not None:
            part.release_held()
        part.batch_ended()
        if calls >= 0:
            report(self, outcome, error, duration, calls)

    def end_bulk(self) -> None:
        """The leader's run ended: its context no longer runs this batch's bulk section."""
        token = self.bulk
        if token is not None:
            self.bulk = None
            # A coroutine closed by the garbage collector after its loop was closed runs in
            # another context: there is nothing left to reset then.
            with contextlib.suppress(ValueError):
                BULK.reset(token)
