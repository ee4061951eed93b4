"""Strawberry GraphQL + asyncpg: ``@batch`` methods on a per-request object, instead of DataLoader.

Each field resolver asks for one thing (``await info.context.loaders.friends(self.id)``);
the resolvers of one level of the query run concurrently, so their calls share one batch,
and a nested query such as ``{ users { name friends { name friends { name } } } }`` sends
one query per level: three here, however many users and friends there are.

``Loaders`` is created per request by the context getter, like a DataLoader, and its
``@batch`` methods batch per instance: two requests never share a batch (nor a result).
The same schema written with Strawberry's DataLoader is ``strawberry_dataloader.py``.

Run it against a PostgreSQL database (it creates and fills two small tables if they are
missing), then open the GraphiQL page at http://127.0.0.1:8000/graphql::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run python examples/strawberry_app.py
"""

import asyncio
import os
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from concresce import batch, collect, scatter

# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------


class Pool(Protocol):
    """What this example uses of ``asyncpg.Pool``."""

    async def fetch(self, query: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run a query on a connection of the pool and return its rows."""
        ...

    async def execute(self, query: str, *args: object) -> str:
        """Run a command on a connection of the pool."""
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


SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS friendships (
    user_id bigint NOT NULL REFERENCES users,
    friend_id bigint NOT NULL REFERENCES users,
    PRIMARY KEY (user_id, friend_id)
);
"""


async def install_demo_data(pool: Pool, *, users: int = 20) -> None:
    """Create the tables and, if ``users`` is empty, fill them.

    Users ``1`` to ``users`` stand in a circle; each is a friend of the two on either side.
    """
    await pool.execute(SCHEMA)
    if await pool.fetch("SELECT 1 FROM users LIMIT 1"):
        return
    ids = range(1, users + 1)
    await pool.execute(
        "INSERT INTO users SELECT * FROM unnest($1::bigint[], $2::text[])", list(ids), [f"user{i}" for i in ids]
    )
    pairs = {(i, (i + step - 1) % users + 1) for i in ids for step in (-2, -1, 1, 2)} - {(i, i) for i in ids}
    await pool.execute(
        "INSERT INTO friendships SELECT * FROM unnest($1::bigint[], $2::bigint[])",
        [user_id for user_id, _ in sorted(pairs)],
        [friend_id for _, friend_id in sorted(pairs)],
    )


# --------------------------------------------------------------------------------------
# Loaders: one per request
# --------------------------------------------------------------------------------------


class Loaders:
    """The lookups of one request. ``@batch`` methods batch per instance.

    ``max_window=0`` (the default): GraphQL runs the resolvers of one level of a query
    concurrently, so their calls reach ``collect()`` in the same turn of the event loop,
    and tick batching gathers them all, with no added latency. ``dedupe=True``: a user
    who is a friend of several users is looked up once per batch.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def all_users(self) -> list["User"]:
        """Every user (one query, nothing to batch)."""
        rows = await self.db.fetch("users", "SELECT id, name FROM users ORDER BY id")
        return [User(id=row["id"], name=row["name"]) for row in rows]

    @batch(dedupe=True)
    async def user(self, user_id: int) -> "User | None":
        """One user by id, or ``None``."""
        user_ids = await collect(user_id)
        rows = await self.db.fetch("users", "SELECT id, name FROM users WHERE id = ANY($1::bigint[])", user_ids)
        return scatter({row["id"]: User(id=row["id"], name=row["name"]) for row in rows}, default=None)

    @batch(dedupe=True)
    async def friends(self, user_id: int) -> list["User"]:
        """The friends of one user, by id."""
        user_ids = await collect(user_id)
        rows = await self.db.fetch(
            "friends",
            "SELECT f.user_id, u.id, u.name FROM friendships f JOIN users u ON u.id = f.friend_id"
            " WHERE f.user_id = ANY($1::bigint[]) ORDER BY u.id",
            user_ids,
        )
        friends: defaultdict[int, list[User]] = defaultdict(list)
        for row in rows:
            friends[row["user_id"]].append(User(id=row["id"], name=row["name"]))
        return scatter([friends[user_id] for user_id in user_ids])


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
        return await info.context.loaders.friends(self.id)


@strawberry.type
class Query:
    @strawberry.field
    async def users(self, info: strawberry.Info[Context, None]) -> list[User]:
        return await info.context.loaders.all_users()

    @strawberry.field
    async def user(self, info: strawberry.Info[Context, None], id: int) -> User | None:  # noqa: A002 -- GraphQL's name
        return await info.context.loaders.user(id)


schema = strawberry.Schema(query=Query)


# --------------------------------------------------------------------------------------
# The ASGI application
# --------------------------------------------------------------------------------------


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app, with a fresh ``Loaders`` in every request's context."""

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        del response
        return Context(loaders=Loaders(cast("Database", request.app.state.database)))


def create_app(dsn: str) -> Starlette:
    """``/graphql`` served by Strawberry; the lifespan opens and closes the pool."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[None, None]:
        pool = await create_pool(dsn)
        try:
            app.state.database = Database(pool)
            yield
        finally:
            await pool.close()

    return Starlette(routes=[Route("/graphql", GraphQLApp(schema))], lifespan=lifespan)


async def _install(dsn: str) -> None:
    pool = await create_pool(dsn)
    try:
        await install_demo_data(pool)
    finally:
        await pool.close()


def main() -> None:
    """Fill the demo tables if needed, then serve the app on http://127.0.0.1:8000/graphql."""
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        sys.exit("set DATABASE_URL to a PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(_install(dsn))
    uvicorn.run(create_app(dsn), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
