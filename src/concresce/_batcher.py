"""A decorated function's configuration, counters and live partitions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final
from weakref import WeakSet

from ._options import Auto
from ._stats import Counters
from ._tuner import Tuner

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ._batches import Partition
    from ._runtime import Waiter
    from ._stats import BatchRecord

# The partition key of a function that is neither a method nor grouped: one batch per loop.
NO_PARTITION: Final[Any] = object()

# Every decorated function's Batcher, for _closed_loops.py; weak: a function may go away.
BATCHERS: Final[WeakSet[Batcher]] = WeakSet()


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
        "home",
        "max_concurrency",
        "max_pending",
        "max_size",
        "max_weight",
        "max_window",
        "name",
        "observer",
        "partitions",
        "tuner",
        "weight",
        "window",
    )

    def __init__(
        self,
        name: str,
        *,
        max_window: float | Auto,
        max_size: int | None,
        group_by: Callable[..., Hashable] | None,
        dedupe: bool,
        max_concurrency: int | None,
        weight: Callable[[Any], float] | None = None,
        max_weight: float | None = None,
        max_pending: int | None = None,
        observer: Callable[[BatchRecord], object] | None = None,
        home: Any = None,
    ) -> None:
        self.name = name
        # A thread-batched function's ThreadLoop (its lock, clock and timers; every partition
        # is on it), or None for an async function, whose partitions are per event loop. Any:
        # the thread code is the only reader, and reads it as the ThreadLoop it made.
        self.home = home
        self.group_by = group_by
        self.dedupe = dedupe
        self.weight = weight
        self.observer = observer
        self.tuner: Tuner | None = None
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
        max_window: float | Auto,
        max_size: int | None,
        max_concurrency: int | None,
        max_weight: float | None,
        max_pending: int | None,
    ) -> None:
        """Set the options that ``configure()`` may change (validated by the caller)."""
        self.window = max_window  # as given: configure() keeps it when not told otherwise
        if isinstance(max_window, Auto):
            # Every batch opens as a tick batch; the tuner decides when it is due (_tuner.py).
            # Its estimates outlive a configure() that keeps "auto": the backend is the same.
            self.max_window = 0.0
            if self.tuner is None:
                self.tuner = Tuner(max_window.seconds, max_concurrency)
            else:
                self.tuner.set_bounds(max_window.seconds, max_concurrency)
        else:
            self.max_window = max_window
            self.tuner = None
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
