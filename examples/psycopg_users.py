"""psycopg 3 with threads: per-user lookups from many threads, one query per batch.

``UserRepository.get_user(user_id)`` is a plain ``def`` written for one user, meant to be
called from many threads at once (a threaded web server's request handlers, a worker pool).
Concurrent calls share one ``SELECT ... WHERE id = ANY(%s)``: the thread that leads a batch
runs the query for every caller's id, and a missing row is ``None`` for its own caller
(keyed routing with ``scatter(..., default=None)``).

The connections come from a ``psycopg_pool.ConnectionPool`` as large as the batch's
``max_concurrency``: see ``MAX_CONCURRENCY``.

Run it against a PostgreSQL server; it works in a table of its own (with a random name),
dropped at the end::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        uv run python examples/psycopg_users.py
"""

import os
import secrets
import sys
import threading
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field

from psycopg import sql
from psycopg_pool import ConnectionPool

from concresce.threads import batch, collect, scatter

#: Batches whose query may run at once, and so the size of the connection pool. At most this
#: many leaders run a query at a time, each on one connection: a larger pool would leave
#: connections idle, and a smaller one would make leaders wait for a connection while other
#: callers pile up behind them. While every slot is busy, new calls accumulate in the next
#: batch ("group commit"): the busier the pool, the larger the batches.
MAX_CONCURRENCY = 4


@dataclass(frozen=True)
class User:
    id: int
    name: str


def open_pool(dsn: str) -> ConnectionPool:
    """A connection pool with one connection per concurrent batch (``MAX_CONCURRENCY``)."""
    return ConnectionPool(dsn, min_size=MAX_CONCURRENCY, max_size=MAX_CONCURRENCY, open=True)


class UserRepository:
    """Per-user lookups on one table; concurrent calls from any threads share one query.

    A batched method batches per instance. The default ``max_window=0`` adds no latency: a
    call that finds a concurrency slot free is sent at once, alone if it is alone; calls that
    arrive while all ``MAX_CONCURRENCY`` slots are busy wait together for the next free one
    (``max_size`` bounds the arrays sent).
    """

    def __init__(self, pool: ConnectionPool, *, table: str = "users") -> None:
        self.pool = pool
        self.select = sql.SQL("SELECT id, name FROM {} WHERE id = ANY(%s::bigint[])").format(sql.Identifier(table))
        self._lock = threading.Lock()
        #: Calls made and queries sent: the point of batching.
        self.calls = 0
        self.queries = 0

    @batch(max_size=100, max_concurrency=MAX_CONCURRENCY)
    def get_user(self, user_id: int) -> User | None:
        """The user with this id, or ``None``."""
        with self._lock:  # the counters are shared by every thread
            self.calls += 1
        user_ids = collect(user_id)  # blocks this thread until its batch is sent
        # Only the batch's leader gets here, with every caller's id; the others wait for
        # what scatter() routes them.
        with self._lock:
            self.queries += 1
        with self.pool.connection() as connection:
            rows = connection.execute(self.select, [user_ids]).fetchall()
        # Keyed routing: each caller gets the row with its id; no row means None.
        return scatter({user_id: User(user_id, name) for user_id, name in rows}, default=None)


@contextmanager
def users_table(pool: ConnectionPool, *, users: int) -> Generator[str, None, None]:
    """A new table of ``users`` users with odd ids (1, 3, 5...), dropped at the end; yields its name."""
    name = f"concresce_users_{secrets.token_hex(4)}"
    table = sql.Identifier(name)
    with pool.connection() as connection:
        connection.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, name text NOT NULL)").format(table))
        connection.execute(
            sql.SQL("INSERT INTO {} SELECT i, 'user' || i FROM generate_series(1, %s, 2) AS i").format(table),
            [2 * users - 1],
        )
    try:
        yield name
    finally:
        with pool.connection() as connection:
            connection.execute(sql.SQL("DROP TABLE {}").format(table))


# --------------------------------------------------------------------------------------
# The demonstration
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What ``main()`` saw."""

    calls: int = 0
    queries: int = 0
    #: ``(user_id, answer)`` for every answer that was not the expected one.
    wrong: list[tuple[int, User | None]] = field(default_factory=list[tuple[int, User | None]])


def main(dsn: str, *, threads: int = 16, calls_per_thread: int = 25) -> Outcome:
    """Look users up from many threads at once, check every answer, print the queries sent."""
    outcome = Outcome()
    with open_pool(dsn) as pool, users_table(pool, users=threads * calls_per_thread // 2) as table:
        users = UserRepository(pool, table=table)
        start = threading.Barrier(threads)
        lock = threading.Lock()

        def worker(first: int) -> None:
            start.wait()  # all threads start together
            for user_id in range(first, first + calls_per_thread):
                user = users.get_user(user_id)  # one user at a time, the N+1 way
                expected = User(user_id, f"user{user_id}") if user_id % 2 else None  # odd ids exist
                if user != expected:
                    with lock:
                        outcome.wrong.append((user_id, user))

        workers = [
            threading.Thread(target=worker, args=(1 + n * calls_per_thread,), name=f"worker {n}")
            for n in range(threads)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        outcome.calls, outcome.queries = users.calls, users.queries

    print(f"{threads} threads made {outcome.calls} calls of get_user(), which sent {outcome.queries} queries")
    print("wrong answers:", outcome.wrong or "none")
    return outcome


if __name__ == "__main__":
    database = os.environ.get("DATABASE_URL")
    if not database:
        sys.exit("set DATABASE_URL to a PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    sys.exit(1 if main(database).wrong else 0)
