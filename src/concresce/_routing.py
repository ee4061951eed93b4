"""Routing: what the leader receives, and how each member gets its outcome.

When the leader resumes, ``take()`` fixes the members it serves (those still waiting) and
the *slot* of each (its index in the items; with ``dedupe``, equal items share a slot).
``deliver()`` routes a share per slot to every follower still waiting; ``fail()`` routes the
leader's fault, a copy per follower (``follower_copy()``). A member cancelled since the
dispatch is skipped: its waiter is done.
"""

from __future__ import annotations

import sys
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, cast

from ._batches import BULK
from ._calls import FAILED, MEMBER, RESUMED
from ._runtime import follower_fault

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._batches import Batch
    from ._calls import Call

# Field getters for take(), run in C over every member.
_ITEM: Final = attrgetter("item")
_WAITER: Final = attrgetter("fut")


def take(batch: Batch, leader: Call) -> list[Any]:
    """Fix the members the leader serves and return their items, in arrival order.

    Called when the leader resumes from ``collect()``: a member cancelled since the
    dispatch is left out. With dedupe, equal items share one slot (first arrival wins).
    """
    part = batch.part
    batcher = part.batcher
    if not batch.count:
        # The first leader runs: the batch counts. (One whose members all left before
        # that never ran, like a batch discarded while open.)
        counters = batcher.counters
        counters.batches += 1
        counters.flushes[batch.reason] += 1
        counters.wait_time.add(batch.dispatched - batch.opened)
    if batcher.max_concurrency is not None or batcher.home is not None:
        # The bulk section runs in this context from now on: a call it makes, or a task (a
        # thread run in a copy of the context) it starts makes, is recognised by
        # refuse_deadlock(). Threads mark it always: configure() may set a max_concurrency
        # later (on asyncio a later limit recognises calls in the leader's task only).
        batch.bulk = BULK.set(batch)
    members = batch.members
    if (
        batch.scan == 1  # the first member leads: no handover, it did not leave
        and not batch.departed
        and not batcher.dedupe
        # The leader's waiter is done; any other done waiter is a member cancelled since.
        # (Every waiter comes from the same loop's create_future(): one type, one done().)
        and sum(map(type(leader.fut).done, map(_WAITER, members))) == 1
    ):
        # Every member is served, each in the slot of its index.
        batch.direct = True
        batch.callers = members
        leader.slot = 0
        items = list(map(_ITEM, members))
        batch.count = len(items)
    else:
        items = _take_some(batch, leader)
    if batch.trace is not None:
        batch.trace.start(batch)
    return items


def _take_some(batch: Batch, leader: Call) -> list[Any]:
    """``take()`` when some members are not served, or equal items share a slot."""
    callers: list[Call] = []
    items: list[Any] = []
    index: dict[Any, int] | None = {} if batch.part.batcher.dedupe else None
    for member in batch.members:
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
    batch.direct = False
    batch.callers = callers
    batch.count = len(items)
    return items


def slot_items(batch: Batch) -> list[Any]:
    """The item of each slot: what the leader received, as the members passed it."""
    callers = batch.callers
    if batch.direct:
        return list(map(_ITEM, callers))
    items: list[Any] = [None] * batch.count
    for member in callers:
        items[member.slot] = member.item
    return items


# -- ending -------------------------------------------------------------------------


def deliver(batch: Batch, shares: list[Any], own: object) -> None:
    """Route ``shares[slot]`` to every follower still waiting, then end the batch.

    The leader is no longer a MEMBER: it is skipped like a member cancelled since; ``own``
    is its share. An exception result that goes to more than one caller (equal items under
    dedupe, or one object in several slots) is raised as it is in one of them and as a copy
    in each other (``follower_copy()``): raising one object in several tasks would give each
    caller's traceback the frames of the others.
    """
    callers = batch.callers
    values = shares if batch.direct else [shares[member.slot] for member in callers]
    routed: set[int] = set()
    for member, value in zip(callers, values, strict=True):
        fut = member.fut
        if member.state != MEMBER or fut.done():
            continue  # the leader, or cancelled since: its result is dropped
        if isinstance(value, Exception):
            member.state = FAILED
            if value is own or id(value) in routed:
                member.value = follower_copy(value, _shared(batch))
                member.tb = None
            else:
                routed.add(id(value))
                member.value = value
                member.tb = value.__traceback__
        else:
            member.value = value
            member.state = RESUMED
        fut.set_result(None)
    batch.finish("ok")


def _shared(batch: Batch) -> str:
    return (
        f"concresce: a copy of the exception result that the leader of this call's batch of "
        f"{batch.part.batcher.name} routed to several callers"
    )


def fail(batch: Batch, error: BaseException, leader: Call) -> None:
    """Raise ``error`` in every member still waiting, then end the batch.

    Each follower gets its own copy (``follower_copy()``), so that its traceback is its
    own and keeps no frame of the leader's alive.
    """
    name = batch.part.batcher.name
    origin = fault_origin(error, name)
    shared = follower_fault(error, name)
    for member in batch.members:
        if member is leader:
            continue
        fut = member.fut
        if member.state != MEMBER or fut.done():
            continue
        member.value = follower_copy(shared, origin)
        member.tb = None
        member.state = FAILED
        fut.set_result(None)
    batch.finish("error", error)


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
    """``error`` rebuilt without a traceback, with its cause and context copied likewise.

    An exception group's members are copied the same way (they hold the frames of the tasks
    that raised them); the attributes of an exception with ``__slots__`` are copied too.
    """
    cls = type(error)
    try:
        members = _members(error)
        if members is not None:
            derive: Callable[[list[BaseException]], BaseException] = getattr(error, "derive")  # noqa: B009 -- 3.10's backport
            copy = derive([_bare_copy(member, depth) for member in members])
        else:
            copy = cls.__new__(cls, *error.args)
            copy.args = error.args
        _copy_state(error, copy)
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


def _members(error: BaseException) -> tuple[BaseException, ...] | None:
    """The exceptions of an exception group (the 3.10 backport's too), else None."""
    members = getattr(error, "exceptions", None)
    if isinstance(members, tuple) and callable(getattr(error, "derive", None)):
        return cast("tuple[BaseException, ...]", members)
    return None


#: Fields that built-in exceptions keep outside their arguments, their ``__dict__`` and slots.
_C_FIELDS: Final[tuple[tuple[type[BaseException], tuple[str, ...]], ...]] = (
    (OSError, ("filename", "filename2")),
    (ImportError, ("name", "path")),
)


def _copy_state(error: BaseException, copy: BaseException) -> None:
    """Copy the attributes of ``error`` (its ``__dict__``, its slots, C-level fields) onto ``copy``."""
    for kind, fields in _C_FIELDS:
        if isinstance(error, kind):
            for name in fields:
                value = getattr(error, name)
                if value is not None:  # set, even to None, an OSError's field changes its str()
                    setattr(copy, name, value)
    state = getattr(error, "__dict__", None)
    if state:
        # What the copy has already stays: a group's own members (the 3.10 backport keeps
        # them in its __dict__), rebuilt by derive().
        copy.__dict__.update({name: value for name, value in state.items() if name not in copy.__dict__})
    for klass in type(error).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in {"__dict__", "__weakref__"} or not hasattr(error, name):
                continue
            # object.__setattr__: a frozen (attrs) exception refuses setattr.
            object.__setattr__(copy, name, getattr(error, name))
