"""The database-bound variant: per-item lookups straight against PostgreSQL, no HTTP layer.

Each virtual client is a task that looks up one row by primary key, waits for the answer and
looks up the next (closed loop), through the strategy's ``lookup`` (``app.lookup_factory``:
the same functions the web service uses) and one asyncpg pool of ``pool_size`` connections.
With no HTTP parsing and no second process, the database and the pool are the bottleneck.
Between two lookups a client yields to the loop 0, 1 or 2 times at random (a little work of
its own): without it every client would wait on the same query and the clients would move in
lockstep, one batch of all of them at a time, whatever the flush policy.
``auto.py`` runs it beside the HTTP benchmark; ``measure()`` is one round of one point.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from _common import ROWS, price
from app import Store, lookup_factory

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg


@dataclass
class Round:
    """One round of one point: every lookup's latency (s), the time and the queries."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    queries: int = 0
    items: int = 0
    errors: int = 0


class Strategy:
    """One strategy's lookup, made once per run (the tuner's estimates carry over, as in a service)."""

    def __init__(self, name: str, pool: asyncpg.Pool, table: str, max_size: int | None) -> None:
        """The ``lookup`` of strategy ``name`` on ``pool``."""
        self.name = name
        self.store = Store(pool, table)
        self.lookup: Callable[[int], Awaitable[int | None]] = lookup_factory(name, self.store, max_size=max_size)()

    def stats(self) -> dict[str, Any] | None:
        """The tuner's choice and estimates (``"auto"`` only)."""
        stats = getattr(self.lookup, "stats", None)
        tuning = None if stats is None else stats().tuning
        return None if tuning is None else {name: getattr(tuning, name) for name in tuning.__slots__}


async def measure(strategy: Strategy, clients: int, *, warmup: float, duration: float, seed: int) -> Round:
    """``clients`` closed-loop clients for ``warmup`` then ``duration`` seconds; the second part is recorded."""
    result = Round()
    lookup = strategy.lookup
    store = strategy.store
    recording = False
    stop = False

    async def client(rng: random.Random) -> None:
        while not stop:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            item_id = rng.randrange(1, ROWS + 1)
            started = time.perf_counter()
            answer = await lookup(item_id)
            if recording:
                result.latencies.append(time.perf_counter() - started)
                if answer != price(item_id):
                    result.errors += 1

    rngs = [random.Random(seed * 100_003 + index) for index in range(clients)]  # noqa: S311 -- test data
    tasks = [asyncio.ensure_future(client(rng)) for rng in rngs]
    try:
        await asyncio.sleep(warmup)
        recording = True
        queries, items = store.queries, store.items
        started = time.perf_counter()
        await asyncio.sleep(duration)
        stop = True
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - started
        result.queries = store.queries - queries
        result.items = store.items - items
    finally:
        stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result
