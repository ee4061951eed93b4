"""asyncpg: per-user reads and writes, one statement per batch.

``UserRepository`` is written one user at a time, and concurrent calls share one statement:

* ``get_user(user_id)``: one ``SELECT ... WHERE id = ANY($1)`` per batch; a missing row is
  ``None`` (keyed routing with ``scatter(..., default=None)``).
* ``add_user(user_id, name)``: one ``executemany`` in one transaction per batch. The batch is
  all-or-nothing: if one row violates a constraint, PostgreSQL rolls the transaction back
  and *every* caller of that batch gets the same exception.
* ``create_user(user_id, name)``: one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per
  batch, which reports a taken id to its own caller only (an ``Exception`` in the results).

Run it against a PostgreSQL server; it works in a schema of its own, dropped at the end::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        uv run python examples/asyncpg_users.py
"""

import asyncio
import os
import secrets
import sys
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from concresce import batch, collect, scatter

# --------------------------------------------------------------------------------------
# The part of asyncpg this example uses, typed.
# --------------------------------------------------------------------------------------


class Connection(Protocol):
    """What this example uses of ``asyncpg.Connection``."""

    async def executemany(self, query: str, args: Sequence[Sequence[object]]) -> None:
        """Run one statement for each tuple of arguments, in one round trip."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[object]:
        """A transaction block: committed on exit, rolled back on an exception."""
        ...


class Pool(Protocol):
    """What this example uses of ``asyncpg.Pool``."""

    async def fetch(self, query: str, *args: object) -> list[Mapping[str, Any]]:
        """Run a query on a connection of the pool and return its rows."""
        ...

    async def execute(self, query: str, *args: object) -> str:
        """Run a command on a connection of the pool."""
        ...

    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """Borrow a connection for the duration of an ``async with`` block."""
        ...

    async def close(self) -> None:
        """Close every connection of the pool."""
        ...


SCHEMA = """
CREATE TABLE users (
    id bigint PRIMARY KEY,
    name text NOT NULL CHECK (name <> '')
)
"""


@asynccontextmanager
async def scratch_database(dsn: str) -> AsyncGenerator[Pool, None]:
    """A pool whose ``users`` table lives in a new schema, dropped with it at the end."""
    schema = f"concresce_example_{secrets.token_hex(4)}"
    pool = cast(
        "Pool",
        await asyncpg.create_pool(  # pyright: ignore[reportUnknownMemberType]
            dsn, min_size=1, max_size=5, server_settings={"search_path": schema}
        ),
    )
    try:
        await pool.execute(f"CREATE SCHEMA {schema}")
        try:
            await pool.execute(SCHEMA)
            yield pool
        finally:
            await pool.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await pool.close()


# --------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: int
    name: str


class UserExistsError(Exception):
    """``create_user``: the id is taken."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"user {user_id} already exists")
        self.user_id = user_id


class UserRepository:
    """Per-user methods; concurrent calls on one repository share one statement per batch.

    Batched methods batch per instance. The default ``max_window=0`` ("tick" batching)
    merges every call made in the same turn of the event loop, such as those started by one
    ``asyncio.gather``, at no added latency; ``max_size`` bounds the statements' arrays.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        #: Statements sent to the server, by kind: the point of batching.
        self.statements: Counter[str] = Counter()

    @batch(max_size=100)
    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or ``None``."""
        user_ids = await collect(user_id)
        # Only the batch's leader gets here, with every caller's id.
        self.statements["SELECT"] += 1
        rows = await self.pool.fetch("SELECT id, name FROM users WHERE id = ANY($1::bigint[])", user_ids)
        # Keyed routing: each caller gets the row with its id; no row means None.
        return scatter({row["id"]: User(row["id"], row["name"]) for row in rows}, default=None)

    @batch(max_size=100)
    async def add_user(self, user_id: int, name: str) -> User:
        """Insert a user; all-or-nothing with the rest of its batch.

        If one row of the batch violates a constraint (a taken id, an empty name), the
        transaction is rolled back, nothing of the batch is written, and every caller of
        the batch raises that exception (an ``asyncpg.IntegrityConstraintViolationError``;
        each follower gets a copy of the leader's): an exception raised before
        ``scatter()`` is the whole batch's fault. Other batches are unaffected.
        """
        rows = await collect((user_id, name))
        self.statements["INSERT"] += 1
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.executemany("INSERT INTO users (id, name) VALUES ($1, $2)", rows)
        return scatter([User(*row) for row in rows])

    @batch(max_size=100)
    async def create_user(self, user_id: int, name: str) -> User:
        """Insert a user, or raise ``UserExistsError`` in this caller alone if the id is taken."""
        rows = await collect((user_id, name))
        self.statements["INSERT"] += 1
        inserted = await self.pool.fetch(
            """
            INSERT INTO users (id, name) SELECT * FROM unnest($1::bigint[], $2::text[])
            ON CONFLICT (id) DO NOTHING RETURNING id
            """,
            [row[0] for row in rows],
            [row[1] for row in rows],
        )
        created = {row["id"] for row in inserted}
        results: list[User | Exception] = []
        for row_id, row_name in rows:
            if row_id in created:
                created.remove(row_id)  # two callers with one new id: the first one wins
                results.append(User(row_id, row_name))
            else:
                results.append(UserExistsError(row_id))
        # An Exception among the results is raised in its own caller only, the leader's
        # own included: what scatter() returns is always a User.
        user = scatter(results)
        assert isinstance(user, User)
        return user


# --------------------------------------------------------------------------------------
# The demonstration
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What ``main()`` saw."""

    statements: dict[str, Counter[str]] = field(default_factory=dict[str, Counter[str]])
    users: list[User | None] = field(default_factory=list[User | None])
    batch_errors: list[BaseException | User] = field(default_factory=list[BaseException | User])
    rows_after_failed_batch: int = 0
    created: list[User | BaseException] = field(default_factory=list[User | BaseException])


async def main(dsn: str) -> Outcome:
    """Run each method for many concurrent callers and print what was sent."""
    outcome = Outcome()
    async with scratch_database(dsn) as pool:
        # 20 concurrent inserts: one executemany in one transaction.
        users = UserRepository(pool)
        await asyncio.gather(*(users.add_user(i, f"user{i}") for i in range(1, 21)))
        outcome.statements["add 20 users"] = users.statements

        # 25 concurrent lookups, 5 of them for ids that do not exist: one SELECT.
        users = UserRepository(pool)
        outcome.users = await asyncio.gather(*(users.get_user(i) for i in range(1, 26)))
        outcome.statements["look up 25 users"] = users.statements

        # A batch with one bad row (an empty name): all three callers fail, nothing is written.
        users = UserRepository(pool)
        outcome.batch_errors = list(
            await asyncio.gather(
                users.add_user(21, "ann"), users.add_user(22, ""), users.add_user(23, "bob"), return_exceptions=True
            )
        )
        outcome.statements["add a batch with a bad row"] = users.statements
        (count,) = await pool.fetch("SELECT count(*) AS n FROM users WHERE id IN (21, 22, 23)")
        outcome.rows_after_failed_batch = count["n"]

        # Per-caller errors instead: only the caller whose id is taken fails.
        users = UserRepository(pool)
        outcome.created = list(
            await asyncio.gather(
                users.create_user(21, "ann"),
                users.create_user(1, "taken"),
                users.create_user(23, "bob"),
                return_exceptions=True,
            )
        )
        outcome.statements["create 3 users, one id taken"] = users.statements

    for what, statements in outcome.statements.items():
        print(f"{what}: {dict(statements)}")
    print("users 19 to 22:", outcome.users[18:22])
    print("a batch with a bad row:", [type(result).__name__ for result in outcome.batch_errors])
    print("rows of that batch written:", outcome.rows_after_failed_batch)
    print("per-caller errors:", outcome.created)
    return outcome


if __name__ == "__main__":
    database = os.environ.get("DATABASE_URL")
    if not database:
        sys.exit("set DATABASE_URL to a PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(main(database))
