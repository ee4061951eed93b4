"""The batched functions of the torture suite: their argument, options and cache (every mode's).

One batched function exists per kind of options (``group_by``, a method, ``dedupe``,
weights, an observer) and per flavour (``concresce.batch`` with an ``async def`` body in
``harness.py``, ``concresce.threads.batch`` with a plain ``def`` in
``harness_threads_api.py``), kept across schedules, loops and threads: the state of finished
schedules must not stay in it. The run-time options (``max_window``, ``max_size``...) are set
with ``configure()`` for each schedule.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.torture.schedules import Options

__all__ = [
    "Arg",
    "GroupError",
    "GroupKey",
    "Host",
    "ObserverError",
    "batch_options",
    "function_for",
    "group_of",
    "observe",
    "weight_of",
]


class Arg(NamedTuple):
    """The argument of one call: its index, its group key and whether group_by fails for it."""

    index: int
    group: int
    group_fails: bool
    fancy_key: bool  # group_by returns a GroupKey (whose repr() raises for group 2)


class GroupKey:
    """A ``group_by`` key whose ``repr()`` raises for group 2 (observers format partition keys)."""

    __slots__ = ("group",)

    def __init__(self, group: int) -> None:
        self.group = group

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupKey) and other.group == self.group

    def __hash__(self) -> int:
        return hash(self.group)

    def __repr__(self) -> str:
        if self.group == 2:
            msg = "GroupKey(2) has no repr"
            raise ValueError(msg)
        return f"GroupKey({self.group})"


class GroupError(Exception):
    """What ``group_by`` raises for a call planned to fail there."""


class ObserverError(Exception):
    """What the observer raises for some batch records."""


class Host:
    """The instance of a batched method (each flavour subclasses it): instances never share a batch."""

    __slots__ = ("__weakref__", "number")

    def __init__(self, number: int) -> None:
        self.number = number

    def __repr__(self) -> str:
        return f"Host({self.number})"


def group_of(*args: Any, **kwargs: Any) -> object:
    arg: Arg = kwargs["arg"] if "arg" in kwargs else args[-1]
    if arg.group_fails:
        msg = f"group_by fails for call {arg.index}"
        raise GroupError(msg)
    return GroupKey(arg.group) if arg.fancy_key else arg.group


def weight_of(item: Any) -> float:
    weight: float = item.weight
    return weight


_observed = itertools.count()


def observe(record: object) -> None:
    if next(_observed) % 5 == 0:
        msg = f"observer fails for {record!r}"
        raise ObserverError(msg)


def batch_options(kind: tuple[bool, ...]) -> dict[str, Any]:
    """The options of the decorator for a kind of function (``function_for()``'s ``kind``)."""
    group_by, _, dedupe, weighted, observer = kind
    return {
        "group_by": group_of if group_by else None,
        "dedupe": dedupe,
        "weight": weight_of if weighted else None,
        "max_weight": 1.0 if weighted else None,
        "observer": observe if observer else None,
    }


#: One batched function per flavour and kind, kept across schedules and loops (and shared by
#: the threads of run_threads()): state of finished schedules and closed loops must not stay.
_FUNCTIONS: dict[tuple[Any, ...], Any] = {}
_FUNCTIONS_LOCK: Final = threading.Lock()


def function_for(
    options: Options,
    make: Callable[[tuple[bool, ...]], Any],
    *,
    configure: bool = True,
    scale: float = 1.0,
) -> tuple[Any, type[Any] | None]:
    """The batched function ``make`` makes for ``options``, configured with them, and its class for a method.

    ``make(kind)`` returns the function, or for a method (``kind[1]``) the ``Host`` subclass
    whose ``work`` it is. ``scale``: schedule seconds to the clock's (``max_window``).
    """
    kind = (options.group_by, options.method, options.dedupe, options.max_weight is not None, options.observer)
    key = (make, *kind)
    with _FUNCTIONS_LOCK:
        made = _FUNCTIONS.get(key)
        if made is None:
            made = _FUNCTIONS[key] = make(kind)
    fn = made.work if isinstance(made, type) else made
    if configure:
        fn.configure(
            max_window=options.max_window * scale,
            max_size=options.max_size,
            max_concurrency=options.max_concurrency,
            max_weight=options.max_weight,
            max_pending=options.max_pending,
        )
    return fn, made if isinstance(made, type) else None
