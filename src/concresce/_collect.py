"""``collect()``: the barrier every call of a ``@batch`` function passes."""

from __future__ import annotations

from typing import TypeVar

from ._admission import admit, open_guarded
from ._batcher import NO_PARTITION
from ._batches import Batch, Partition
from ._calls import CALLS, IDLE, LEADING, MEMBER, NESTED, RESUMED, Call, Resume, outside_message, routed_error
from ._routing import take
from ._runtime import running

__all__ = ["collect"]

T = TypeVar("T")


def _misuse(call: Call | None) -> str:
    if call is None:
        return outside_message("collect()")
    return (
        f"{call.batcher.name}: collect() was awaited twice in one call; each call "
        "contributes one item (collect a tuple or a list to contribute several)"
    )


async def collect(item: T) -> list[T]:
    """Join the open batch with ``item`` and wait for the batch to be flushed.

    Every concurrent call of the same ``@batch`` function (same event loop, same
    partition) that reaches ``collect()`` before the batch is flushed joins it. At the
    flush, one member, the leader, resumes with the list of the batch's items in arrival
    order; it makes the bulk call and returns ``scatter(results)``. Every other member
    stays suspended here until ``scatter()`` routes its result, then unwinds (its
    ``finally`` blocks run) and its call returns that result: code after ``collect()``
    runs once per batch, in the leader only.

    Args:
        item: What this call contributes to the batch.

    Returns:
        In the leader, the items of the batch, this call's own included.

    Raises:
        RuntimeError: Outside a ``@batch`` call, or awaited twice in one call.
        OverloadedError: ``max_pending`` calls already wait (this call alone, at once).
        Exception: In a follower, the exception the leader raised before ``scatter()``, or
            this caller's own exception result, or a ``BatchRoutingError``.

    Example:
        ```python
        @batch(max_window=0.01)
        async def get_user(user_id: int) -> User | None:
            ids = await collect(user_id)
            rows = await db.fetch_users(ids)
            return scatter({row.id: row for row in rows}, default=None)
        ```

    Added in version 0.3.
    """
    task, loop = running()
    call = CALLS.get(task)
    # A call made inside another call in the same task (NESTED) joins like any other.
    if call is None or (call.state != IDLE and call.state != NESTED):  # noqa: PLR1714 -- the IDLE test first
        raise RuntimeError(_misuse(call))
    # Join the open batch of this call's partition (per loop, per partition key), opening the
    # partition and the batch as needed. Inline, and with few local variables: this runs once
    # per call, and the frame of every waiting call keeps a slot for each local variable.
    batcher = call.batcher
    key = loop if call.pkey is NO_PARTITION else (loop, call.pkey)
    batch: Batch | None
    if batcher.guarded:
        # max_pending or max_weight: may refuse the call, or close the open batch first.
        batch = open_guarded(call, item, loop, key)
    else:
        part = batcher.partitions.get(key)
        if part is None:
            part = batcher.partitions[key] = Partition(batcher, key, loop)
        batch = part.open
        if batch is None:
            batch = part.open = Batch(part)
    # What a Batch.add() would do; admitted() does the rest when the batch may be full.
    call.state = MEMBER
    call.item = item
    call.batch = batch
    call.fut = fut = loop.create_future()
    batch.members.append(call)
    if len(batch.members) >= batch.limit:
        # Full, or a batch that looks at every join (dedupe, weights, tracing).
        admit(batch, call)
        if call.state == LEADING:
            # The call filled the batch and leads it: no waiting at all (max_size=1).
            return take(batch, call)
    try:
        await fut
    except BaseException:
        # Cancelled (or closed) while waiting. Only this call leaves: an open batch drops
        # its item; a leader that was chosen but had not resumed yet hands the batch over;
        # a follower's result, if it was already routed, is dropped.
        batch.leave(call)
        raise
    if call.state == RESUMED:
        # Unwind the follower's frame from here; the wrapper returns call.value.
        raise Resume
    if call.state == LEADING:
        return take(batch, call)
    # FAILED: the leader's fault, a routing error, or this caller's own exception result.
    raise routed_error(call)
