"""``concresce.threads.collect()``: the barrier of a thread-batched call, and how it waits.

The join is the engine's (the same batches, admission and routing as ``await collect()``),
done under the function's lock (``_threads.ThreadLoop``). Then the thread parks until it is
routed an outcome or chosen to lead. A member that stops waiting (its ``timeout=``, or an
exception such as ``KeyboardInterrupt`` raised while it waits) leaves its batch exactly as a
cancelled task leaves an asyncio batch: its item is dropped if the batch is still open, and a
leader chosen but not resumed yet hands the batch over.
"""

from __future__ import annotations

from _thread import get_ident
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._admission import admit, open_guarded
from ._batcher import NO_PARTITION
from ._batches import Batch, Partition
from ._calls import CALLS, GONE, IDLE, LEADING, MEMBER, NESTED, RESUMED, Call, Resume, routed_error
from ._options import check_timeout
from ._routing import take
from ._threads import SOON, ThreadTimer

if TYPE_CHECKING:
    from ._threads import ThreadLoop, ThreadWaiter

__all__ = ["collect", "outside_message"]

T = TypeVar("T")


def collect(item: T, *, timeout: float | None = None) -> list[T]:
    """Join the open batch with ``item`` and wait until the batch is dispatched.

    The thread version of ``await collect(item)``, for the body of a plain ``def`` decorated
    with ``concresce.threads.batch``. Every concurrent call of the function (from any thread,
    same partition) that reaches ``collect()`` before the batch is dispatched joins it. One
    member, the leader, returns from here with the items of the batch, in arrival order; it
    makes the bulk call and returns ``scatter(results)``. Every other member stays blocked
    here until ``scatter()`` routes its result, then unwinds (its ``finally`` blocks run) and
    its call returns that result.

    Args:
        item: What this call contributes to the batch.
        timeout: Seconds this thread waits at most for its batch (``None``: no limit). A
            member still waiting then leaves the batch, which goes on without it. It does not
            bound the bulk call the leader makes.

    Returns:
        In the leader, the items of the batch, this call's own included.

    Raises:
        TimeoutError: ``timeout`` passed before this call was chosen to lead or was routed
            its result (this call alone; its item is not passed on if the batch was open).
        RuntimeError: Outside a call of a thread-batched function, or called twice in one call.
        OverloadedError: ``max_pending`` calls already wait (this call alone, at once).
        Exception: In a follower, the exception the leader raised before ``scatter()``, or
            this caller's own exception result, or a ``BatchRoutingError``.

    Example:
        ```python
        from concresce.threads import batch, collect, scatter

        @batch(max_concurrency=4)
        def get_user(user_id: int) -> User | None:
            ids = collect(user_id)
            rows = db.fetch_users(ids)
            return scatter({row.id: row for row in rows}, default=None)
        ```

    Added in version 0.3.
    """
    call = CALLS.get(get_ident())
    if call is None or (call.state != IDLE and call.state != NESTED):  # noqa: PLR1714 -- the IDLE test first
        raise RuntimeError(_misuse(call))
    batcher = call.batcher
    loop: ThreadLoop = batcher.home
    if timeout is not None:
        timeout = check_timeout(f"{batcher.name}: collect()", timeout)
    with loop:
        until = None if timeout is None else loop.time() + timeout
        batch = _join(loop, call, item)
        if call.state == LEADING:
            return take(batch, call)  # a lone call, or one that filled its batch: no wait
        wake = _wake_at(batch, call, until)
    try:
        items = _park(loop, batch, call, until=until, wake=wake)
    except BaseException:
        if call.state != GONE:
            # Interrupted while it waited (KeyboardInterrupt, say): it leaves like a cancelled
            # task. A routed result is dropped; a leader chosen but not resumed hands over.
            with loop:
                _stop_waiting(batch, call)
        raise
    if items is not None:
        return items
    if call.state == RESUMED:
        raise Resume
    raise routed_error(call)


def _join(loop: ThreadLoop, call: Call, item: object) -> Batch:
    """Join ``call`` to the open batch of its partition, as ``await collect()`` does.

    A batch it opens with a tick is due at once (group commit); one with a window is kept by
    this member until another takes it over.
    """
    batcher = call.batcher
    key = loop if call.pkey is NO_PARTITION else (loop, call.pkey)
    batch: Batch | None
    if batcher.guarded:
        batch = open_guarded(call, item, loop, key)
    else:
        part: Partition | None = batcher.partitions.get(key)
        if part is None:
            part = batcher.partitions[key] = Partition(batcher, key, loop)
        batch = part.open
        if batch is None:
            batch = part.open = Batch(part)
    call.state = MEMBER
    call.item = item
    call.batch = batch
    call.fut = loop.create_future()
    batch.members.append(call)
    if len(batch.members) >= batch.limit:
        admit(batch, call)
    timer = batch.handle
    if isinstance(timer, ThreadTimer):
        if timer.deadline == SOON:
            timer.run()  # group commit: due now (dispatched if a slot is free)
        elif timer.host is None:
            timer.host = call  # this member keeps the window
    return batch


def _park(loop: ThreadLoop, batch: Batch, call: Call, *, until: float | None, wake: float | None) -> list[Any] | None:
    """Wait until ``call`` is routed its outcome (None) or chosen to lead (its items).

    Raises:
        TimeoutError: ``until`` passed first; the call left its batch.
    """
    fut = cast("ThreadWaiter", call.fut)
    while True:
        got = loop.clock.wait(fut, wake)
        if got and fut.woken and call.state != LEADING:
            # Routed. The leader wrote the outcome before it released this waiter, and its
            # release happens before this acquire: the outcome is visible here without the
            # loop's lock (which the leader may still hold, routing the others), and nothing
            # touches a woken waiter's call again.
            return None
        with loop:
            if got:
                fut.consumed()
            if not fut.woken:
                now = loop.time()
                timer = batch.handle
                if isinstance(timer, ThreadTimer) and timer.host is call and now >= timer.deadline:
                    timer.run()  # the window ended: due (this member may lead it now)
                if not fut.woken:
                    if until is not None and now >= until:
                        _stop_waiting(batch, call)
                        name = batch.part.batcher.name
                        msg = f"{name}: collect() timed out: its batch had not been served"
                        raise TimeoutError(msg)
                    wake = _wake_at(batch, call, until)
                    continue
            if call.state == LEADING:
                return take(batch, call)
            return None


def _wake_at(batch: Batch, call: Call, until: float | None) -> float | None:
    """When the parked member must look again: its time-out, or the window it keeps."""
    timer = batch.handle
    if isinstance(timer, ThreadTimer) and timer.host is call and timer.callback is not None:
        return timer.deadline if until is None else min(until, timer.deadline)
    return until


def _stop_waiting(batch: Batch, call: Call) -> None:
    """``call`` leaves ``batch`` while it waits; the window it kept goes to another member."""
    cast("ThreadWaiter", call.fut).woken = True  # the engine skips it from now on
    timer = batch.handle
    batch.leave(call)
    if isinstance(timer, ThreadTimer) and timer.host is call:
        timer.host = None
        if timer.callback is not None:
            # A window still pending means a member still waits (the last to leave discards
            # the batch, which cancels it): the earliest one keeps it from now on.
            host = next(member for member in batch.members if member.state == MEMBER and not member.fut.done())
            timer.host = host
            cast("ThreadWaiter", host.fut).signal()


def _misuse(call: Call | None) -> str:
    if call is None:
        return outside_message("collect()")
    return (
        f"{call.batcher.name}: collect() was called twice in one call; each call contributes one "
        "item (collect a tuple or a list to contribute several)"
    )


def outside_message(what: str) -> str:
    """Explain that ``what`` of ``concresce.threads`` was used outside a thread-batched call."""
    return (
        f"concresce.threads.{what} was used outside a call of a function decorated with "
        "concresce.threads.batch, in the thread that made the call: call collect(item) in the body "
        "of such a plain `def`, then return scatter(results). (The body of an `async def` decorated "
        "with concresce.batch uses `await concresce.collect(item)` and concresce.scatter().)"
    )
