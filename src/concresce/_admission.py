"""Admission: whether a call may join a batch, and which batch it joins.

The common join is inline in ``collect()``; this is its slow path, for functions with
``dedupe``, a ``weight`` function or ``max_pending`` (``Batcher.guarded``): load shedding,
weights (an item that would tip the open batch over its budget closes it first), and an
item whose ``__hash__`` raises. And the refusal of a call that could never run: one made
from a bulk section while every ``max_concurrency`` slot is held by bulk sections waiting
for such calls (``refuse_deadlock()``).
"""

from __future__ import annotations

import contextlib
from _thread import get_ident
from typing import TYPE_CHECKING, Any, cast

from ._batches import BULK, RUNNING, Batch, Partition
from ._calls import IDLE, LEADING, MEMBER, OUTER
from ._errors import OverloadedError
from ._runtime import current_task

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._calls import Call
    from ._runtime import Loop


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


def admit(batch: Batch, call: Call) -> None:
    """The slow part of ``call``'s join: count it, and close the batch if it is full."""
    part = batch.part
    if part.batcher.max_concurrency is not None and not part.has_slot():
        refuse_deadlock(part, call)
    trace = batch.trace
    if trace is not None:
        trace.join()
    counts = batch.counts
    if counts is not None:
        item = call.item
        try:
            seen = counts.get(item, 0)
            counts[item] = seen + 1
        except Exception:  # noqa: BLE001, S110 -- unhashable, or a raising __eq__: never a duplicate
            pass
        else:
            if seen:
                batch.dupes += 1
    max_weight = batch.max_weight
    if max_weight is not None:
        batch.weight += call.weight
    max_size = batch.max_size
    if max_size is not None and batch.live() - batch.dupes >= max_size:
        batch.close("size")
    elif max_weight is not None and batch.weight >= max_weight:
        batch.close("weight")


def _led_here(part: Partition) -> Batch | None:
    """The batch of ``part`` whose bulk section the current task (or thread) is running, if any.

    What ``BULK`` says, for a leader that resumed before ``configure()`` set a
    ``max_concurrency`` (its context was not marked then): the calls its task interrupted.
    """
    task = get_ident() if part.loop is part.batcher.home else current_task()
    for outer in OUTER.get(task, ()):
        if outer.state == LEADING and outer.batch.part is part:
            return outer.batch
    return None


def _blocked(part: Partition, running: list[Batch]) -> set[int]:
    """The running batches (their ids) whose bulk section can never end while no slot frees.

    A bulk section is blocked when a call it made waits in a batch of this partition that
    waits for a slot (open, or queued), or in a running batch whose bulk section is blocked
    in turn (that call waits for the other leader's scatter()). Found from the origins the
    members recorded as they joined (each the batch whose bulk section made the call).
    """
    live = {id(batch) for batch in running}
    waiting = [batch for batch in (part.open, *(part.pending or ())) if batch is not None]
    edges = [
        (id(source), batch)
        for batch in (*waiting, *running)
        for member, source in (batch.origins or {}).items()
        if member.state == MEMBER and source is not None and id(source) in live
    ]
    blocked: set[int] = set()
    grew = True
    while grew:
        grew = False
        for source, batch in edges:
            if source not in blocked and (batch.state != RUNNING or id(batch) in blocked):
                blocked.add(source)
                grew = True
    return blocked


def refuse_deadlock(part: Partition, call: Call) -> None:
    """Refuse ``call``, just joined while every slot is busy, if its batch could never run.

    It could not if every running batch's bulk section waits for a call that came from
    it (in the leader's task or a task the leader started) and waits in a batch of this
    partition not dispatched yet, ``call`` included, or in a running batch whose bulk
    section waits likewise (``_blocked()``): no slot could ever free. The call leaves the
    batch and fails with a RuntimeError instead of a deadlock.
    """
    origin = BULK.get()
    if origin is None:
        origin = _led_here(part)
    joined = call.batch
    sources = joined.origins
    if sources is None:
        sources = joined.origins = {}
    sources[call] = origin
    if origin is None or origin.part is not part or origin.state != RUNNING:
        return  # not called from a bulk section of this partition
    running = part.running_batches()
    if len(running) < (part.batcher.max_concurrency or 0):
        return
    blocked = _blocked(part, running)
    if any(id(batch) not in blocked for batch in running):
        return
    joined.members.pop()  # it joined last: undo the join
    del sources[call]
    call.state = IDLE
    if not joined.live():
        joined.discard()  # it opened the batch: nothing is left to run
    batcher = part.batcher
    msg = (
        f"{batcher.name}: called from its own bulk section (between collect() and scatter(), "
        f"or in a task started there) while each of its max_concurrency={batcher.max_concurrency} "
        "slots is held by a bulk section waiting for such a call: its batch could never run (a "
        "deadlock). Make the call before collect() or after scatter(), or raise max_concurrency"
    )
    raise RuntimeError(msg)
