"""The thread benchmark's backends (simulated, PostgreSQL) and systems (unbatched, batched, floor).

A backend answers "what is the price of item ``id``?" for one id (``one``) or many (``many``),
through a pool of connections: a call holds one connection while it runs. A system is what a
load thread calls for one item: ``unbatched`` asks the backend for that item alone,
``batched`` is a ``concresce.threads`` ``@batch`` function whose leader asks for its whole
batch, ``floor`` the least a group-commit coalescer for threads can do (the same flush rule,
hand-written, nothing else), to tell the library's own cost from the machine's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: Rows in the table: ids 1..ROWS, each with a price.
ROWS: Final = 10_000
#: Ids are drawn from 1..ID_SPAN: about 2% of the calls ask for an id that is not there.
ID_SPAN: Final = ROWS + ROWS // 50
#: The connection pool of every backend.
POOL_SIZE: Final = 4
#: The simulated backend: each call costs this round trip, plus ``PER_ITEM`` per id.
ROUND_TRIP: Final = 0.002
PER_ITEM: Final = 0.000_010
#: ``@batch`` options of the batched systems: one batch in flight per connection.
MAX_SIZE: Final = 100
MAX_CONCURRENCY: Final = POOL_SIZE

SYSTEMS: Final = ("unbatched", "batched", "floor")
DEFAULT_SYSTEMS: Final = SYSTEMS
BACKENDS: Final = ("sim", "postgres")


def price(item_id: int) -> int | None:
    """The right answer for ``item_id``: its price, or None for an id the table does not have."""
    return (item_id * 37) % 1000 if 1 <= item_id <= ROWS else None


def item_id(thread: int, call: int) -> int:
    """The id that load thread ``thread`` asks for in its ``call``-th call: spread, repeatable."""
    # 7919 is prime and divides neither ID_SPAN nor 100_003: consecutive calls of a thread map
    # to distinct ids, and threads start at distant places.
    return ((thread * 100_003 + call) * 7919) % ID_SPAN + 1


class Backend(Protocol):
    """A data store behind a pool of ``POOL_SIZE`` connections."""

    name: str
    #: Ids per call, one entry per call, appended when the call ends (list.append is atomic).
    sizes: list[int]

    def one(self, item: int) -> int | None:
        """The price of ``item`` (None: no such id), in one call holding one connection."""
        ...

    def many(self, items: list[int]) -> dict[int, int]:
        """The prices of ``items`` that exist, in one call holding one connection."""
        ...


class FifoPool:
    """``size`` tokens, handed to waiting threads first come, first served.

    A thread that returns its token hands it to the longest-waiting thread, as
    ``psycopg_pool`` does with its connections. (A ``threading.Semaphore`` lets the thread
    that releases take the token again at once, while the others starve: its throughput is
    the same, its latencies are not a pool's.)
    """

    def __init__(self, size: int) -> None:
        """A pool of ``size`` free tokens."""
        self._lock = threading.Lock()
        self._free = size
        self._waiting: deque[threading.Lock] = deque()

    def __enter__(self) -> None:
        """Take a token, waiting for one if none is free."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiting.append(waiter)
        waiter.acquire()  # released by the thread that hands its token over

    def __exit__(self, *_: object) -> None:
        """Give the token to the longest-waiting thread, or back to the pool."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


class SimulatedBackend:
    """``ROUND_TRIP + PER_ITEM * ids`` of ``time.sleep`` while holding one of ``POOL_SIZE`` tokens."""

    name = "sim"

    def __init__(self) -> None:
        """A fresh pool and counter."""
        self._pool = FifoPool(POOL_SIZE)
        self.sizes: list[int] = []

    def one(self, item: int) -> int | None:
        """See ``Backend``."""
        with self._pool:
            time.sleep(ROUND_TRIP + PER_ITEM)
        self.sizes.append(1)
        return price(item)

    def many(self, items: list[int]) -> dict[int, int]:
        """See ``Backend``."""
        with self._pool:
            time.sleep(ROUND_TRIP + PER_ITEM * len(items))
        self.sizes.append(len(items))
        return {item: found for item in items if (found := price(item)) is not None}


class PostgresBackend:
    """psycopg 3 with a ``psycopg_pool.ConnectionPool`` of ``POOL_SIZE`` autocommit connections."""

    name = "postgres"

    def __init__(self, dsn: str, table: str) -> None:
        """Open the pool and wait until its connections are up."""
        from psycopg_pool import ConnectionPool  # noqa: PLC0415 -- only this backend needs it

        self.sizes: list[int] = []
        self._one = f"SELECT price FROM {table} WHERE id = %s"  # noqa: S608 -- our own table name
        self._many = f"SELECT id, price FROM {table} WHERE id = ANY(%s)"  # noqa: S608
        self._pool = ConnectionPool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True},
            name="concresce-threads-benchmark",
            open=True,
        )
        self._pool.wait(timeout=30.0)

    def one(self, item: int) -> int | None:
        """See ``Backend``."""
        with self._pool.connection() as connection:
            row = connection.execute(self._one, (item,)).fetchone()
        self.sizes.append(1)
        return None if row is None else int(row[0])

    def many(self, items: list[int]) -> dict[int, int]:
        """See ``Backend``."""
        with self._pool.connection() as connection:
            rows = connection.execute(self._many, (items,)).fetchall()
        self.sizes.append(len(items))
        return {int(found_id): int(found_price) for found_id, found_price in rows}

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()


def create_table(dsn: str, table: str) -> str:
    """Create and fill the benchmark's table; return the server's version."""
    import psycopg  # noqa: PLC0415 -- only the PostgreSQL backend needs it

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, price integer NOT NULL)")
        connection.execute(
            f"INSERT INTO {table} (id, price) SELECT g, (g * 37) % 1000 FROM generate_series(1, {ROWS}) AS g"  # noqa: S608
        )
        connection.execute(f"ANALYZE {table}")
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def drop_table(dsn: str, table: str) -> None:
    """Drop the benchmark's table."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}")


@contextlib.contextmanager
def postgres_backend(dsn: str, table: str) -> Iterator[PostgresBackend]:
    """A PostgreSQL backend whose pool is closed on exit."""
    backend = PostgresBackend(dsn, table)
    try:
        yield backend
    finally:
        backend.close()


@dataclass(frozen=True)
class System:
    """What a load thread calls for one item, and the batching counters behind it."""

    name: str
    call: Callable[[int], int | None]
    #: ``(batches ended, their items)`` so far, or None for a system that does not batch.
    counters: Callable[[], tuple[int, int]] | None


def unbatched(backend: Backend) -> System:
    """One backend call per item."""
    return System("unbatched", backend.one, None)


def batched(backend: Backend) -> System:
    """A ``concresce.threads`` ``@batch`` function: the leader makes one call for its batch."""
    from concresce.threads import batch, collect, scatter  # noqa: PLC0415 -- measured, not needed to render

    @batch(max_size=MAX_SIZE, max_concurrency=MAX_CONCURRENCY)
    def get_price(item: int) -> int | None:
        items = collect(item)
        return scatter(backend.many(items), default=None)

    def counters() -> tuple[int, int]:
        # Both counted when a batch ends (``stats().batches`` counts it at its dispatch).
        size = get_price.stats().batch_size
        return size.count, int(size.total)

    return System("batched", get_price, counters)


def floor(backend: Backend) -> System:
    """The hand-written group-commit coalescer below, with the same options."""
    coalescer = Floor(backend.many, max_size=MAX_SIZE, max_concurrency=MAX_CONCURRENCY)
    return System("floor", coalescer, coalescer.counters)


FACTORIES: Final[dict[str, Callable[[Backend], System]]] = {
    "unbatched": unbatched,
    "batched": batched,
    "floor": floor,
}


class _Batch:
    """One batch of ``Floor``: its items, then its answers."""

    __slots__ = ("dispatched", "done", "error", "found", "items")

    def __init__(self, item: int) -> None:
        self.items = [item]
        self.dispatched = threading.Event()  # set when a slot is handed to the batch
        self.done = threading.Event()  # set when ``found`` or ``error`` is there
        self.found: dict[int, int] = {}
        self.error: BaseException | None = None


class Floor:
    """A minimal group-commit coalescer for threads: a floor to measure the library against.

    A call that finds one of ``max_concurrency`` slots free and nobody queued runs its item
    alone, at once. Otherwise it joins the last queued batch (a new one once that one has
    ``max_size`` items) and waits: the batch's first caller leads it, and runs the bulk call
    when a finishing batch hands it its slot. Nothing else (no cancellation, no timeout).
    """

    def __init__(self, bulk: Callable[[list[int]], dict[int, int]], *, max_size: int, max_concurrency: int) -> None:
        """``bulk(items)`` returns the answers of the items found."""
        self._bulk = bulk
        self._max_size = max_size
        self._free = max_concurrency
        self._queue: deque[_Batch] = deque()
        self._lock = threading.Lock()
        self._batches = 0
        self._items = 0

    def __call__(self, item: int) -> int | None:
        """The answer for ``item``, from its batch's bulk call."""
        with self._lock:
            if self._free and not self._queue:
                self._free -= 1
                batch, leader, queued = _Batch(item), True, False
            elif self._queue and len(self._queue[-1].items) < self._max_size:
                batch, leader, queued = self._queue[-1], False, True
                batch.items.append(item)
            else:
                batch, leader, queued = _Batch(item), True, True
                self._queue.append(batch)
        if not leader:
            batch.done.wait()
        else:
            if queued:
                batch.dispatched.wait()
            self._run(batch)
        if batch.error is not None:
            raise batch.error
        return batch.found.get(item)

    def _run(self, batch: _Batch) -> None:
        try:
            batch.found = self._bulk(batch.items)
        except Exception as error:  # noqa: BLE001 -- handed to every member
            batch.error = error
        with self._lock:
            self._batches += 1
            self._items += len(batch.items)
            if self._queue:
                self._queue.popleft().dispatched.set()  # the slot goes to the next batch
            else:
                self._free += 1
        batch.done.set()

    def counters(self) -> tuple[int, int]:
        """``(batches, items)`` so far."""
        with self._lock:
            return self._batches, self._items


def describe() -> dict[str, Any]:
    """The constants of the setup, for the report."""
    return {
        "rows": ROWS,
        "missing_ids_share": round(1 - ROWS / ID_SPAN, 4),
        "pool_size": POOL_SIZE,
        "sim_round_trip_s": ROUND_TRIP,
        "sim_per_item_s": PER_ITEM,
        "max_size": MAX_SIZE,
        "max_concurrency": MAX_CONCURRENCY,
    }
