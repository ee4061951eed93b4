"""What the app, the server and the load generator agree on: the data and the strategies."""

from __future__ import annotations

from typing import Any, Final

#: Rows in the benchmark's table: ids 1..ROWS, each with a price.
ROWS: Final = 10_000

#: The lookup strategies, in report order. ``unbatched`` is the N+1 baseline.
STRATEGIES: Final = (
    "unbatched",
    "aiodataloader",
    "tick",
    "window_0_5ms",
    "window_1ms",
    "window_5ms",
    "window_20ms",
    "group_commit",
    "group_commit_2",
    "auto",
)

#: ``window_*`` strategies: their ``max_window`` in seconds.
WINDOWS: Final = {"window_0_5ms": 0.0005, "window_1ms": 0.001, "window_5ms": 0.005, "window_20ms": 0.02}

#: The strategies that use concresce: their ``@batch`` options (besides ``max_size``).
BATCH_OPTIONS: Final[dict[str, dict[str, Any]]] = {
    "tick": {"max_window": 0},
    **{name: {"max_window": seconds} for name, seconds in WINDOWS.items()},
    "group_commit": {"max_window": 0, "max_concurrency": 1},
    "group_commit_2": {"max_window": 0, "max_concurrency": 2},
    "auto": {"max_window": "auto"},
}

#: The strategies that use concresce (``@batch``).
CONCRESCE_STRATEGIES: Final = tuple(BATCH_OPTIONS)


def price(item_id: int) -> int:
    """The price stored for ``item_id``."""
    return (item_id * 37) % 1000


def order_item_ids(order: int, items: int) -> list[int]:
    """The ``items`` distinct item ids of order number ``order`` (any int >= 0)."""
    # 7919 is prime and does not divide ROWS: consecutive slots map to distinct ids,
    # spread over the whole table.
    return [((order * items + j) * 7919) % ROWS + 1 for j in range(items)]


def order_total(order: int, items: int) -> int:
    """The total price of order ``order``: what the server must answer."""
    return sum(price(item_id) for item_id in order_item_ids(order, items))
