"""The schema of ``strawberry_app.py``, written with Strawberry's DataLoader instead of ``@batch``.

Side by side with ``strawberry_app.py``: same tables, same schema, same answers, and the
same number of queries (one per level of the query). What differs is how the lookups are
written. A DataLoader takes a separate batch function from a list of keys to a list of
results in key order; the resolvers call ``loader.load(key)``. With concresce the lookup
is one method, written for one key, whose bulk part sits between ``collect()`` and
``scatter()``, and the resolvers call the method itself.

Run it against the database ``strawberry_app.py`` filled (it runs one nested query and
prints the queries it needed)::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run python examples/strawberry_dataloader.py
"""

import asyncio
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import strawberry
from strawberry.dataloader import DataLoader

# --------------------------------------------------------------------------------------
# The database (as in strawberry_app.py)
# --------------------------------------------------------------------------------------


class Pool(Protocol):
    """What this example uses of ``asyncpg.Pool``."""

    async def fetch(self, query: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run a query on a connection of the pool and return its rows."""
        ...

    async def close(self) -> None:
        """Close every connection of the pool."""
        ...


async def create_pool(dsn: str) -> Pool:
    """Open an asyncpg connection pool."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)  # pyright: ignore[reportUnknownMemberType]
    return cast("Pool", pool)


@dataclass
class Database:
    """A pool that counts the queries sent through it, by name."""

    pool: Pool
    queries: Counter[str] = field(default_factory=Counter[str])

    async def fetch(self, name: str, query: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run ``query``, counted under ``name``."""
        self.queries[name] += 1
        return await self.pool.fetch(query, *args)


# --------------------------------------------------------------------------------------
# Loaders: one set per request
# --------------------------------------------------------------------------------------


class Loaders:
    """The lookups of one request, as DataLoaders.

    A DataLoader caches by default: it remembers every key it loaded, for the rest of the
    request. concresce has no cache (it merges the calls that are in flight together, and
    ``dedupe=True`` merges equal keys within a batch), so for a like-for-like comparison
    the loaders here are made with ``cache=False``. With ``cache=True`` the nested query
    below needs one query fewer: its third level asks for friends the second level loaded.
    """

    def __init__(self, db: Database, *, cache: bool = False) -> None:
        self.db = db
        self.user = DataLoader(load_fn=self._load_users, cache=cache)
        self.friends = DataLoader(load_fn=self._load_friends, cache=cache)

    async def all_users(self) -> list["User"]:
        """Every user (one query, nothing to batch)."""
        rows = await self.db.fetch("users", "SELECT id, name FROM users ORDER BY id")
        return [User(id=row["id"], name=row["name"]) for row in rows]

    async def _load_users(self, user_ids: list[int]) -> list["User | None"]:
        rows = await self.db.fetch("users", "SELECT id, name FROM users WHERE id = ANY($1::bigint[])", user_ids)
        users = {row["id"]: User(id=row["id"], name=row["name"]) for row in rows}
        return [users.get(user_id) for user_id in user_ids]

    async def _load_friends(self, user_ids: list[int]) -> list[list["User"]]:
        rows = await self.db.fetch(
            "friends",
            "SELECT f.user_id, u.id, u.name FROM friendships f JOIN users u ON u.id = f.friend_id"
            " WHERE f.user_id = ANY($1::bigint[]) ORDER BY u.id",
            user_ids,
        )
        friends: defaultdict[int, list[User]] = defaultdict(list)
        for row in rows:
            friends[row["user_id"]].append(User(id=row["id"], name=row["name"]))
        return [friends[user_id] for user_id in user_ids]


@dataclass
class Context:
    """What every resolver gets as ``info.context``."""

    loaders: Loaders


# --------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------


@strawberry.type
class User:
    id: int
    name: str

    @strawberry.field
    async def friends(self, info: strawberry.Info[Context, None]) -> list["User"]:
        return await info.context.loaders.friends.load(self.id)


@strawberry.type
class Query:
    @strawberry.field
    async def users(self, info: strawberry.Info[Context, None]) -> list[User]:
        return await info.context.loaders.all_users()

    @strawberry.field
    async def user(self, info: strawberry.Info[Context, None], id: int) -> User | None:  # noqa: A002 -- GraphQL's name
        return await info.context.loaders.user.load(id)


schema = strawberry.Schema(query=Query)

QUERY = "{ users { name friends { name friends { name } } } }"


async def run(dsn: str) -> None:
    """Run a three-level query, without and with the cache, and print the queries sent."""
    pool = await create_pool(dsn)
    try:
        for cache in (False, True):
            db = Database(pool)
            result = await schema.execute(QUERY, context_value=Context(loaders=Loaders(db, cache=cache)))
            assert result.errors is None, result.errors
            print(f"{QUERY} with cache={cache}: {dict(db.queries)}")
    finally:
        await pool.close()


if __name__ == "__main__":
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        sys.exit("set DATABASE_URL to a PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(run(dsn))
