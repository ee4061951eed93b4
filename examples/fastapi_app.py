"""FastAPI + asyncpg: per-item lookups in the handlers, one query per batch across requests.

Every handler is written as if it looked up one row at a time (``await repo.get_user(id)``
for each post's author), and concurrent requests share the batches: ``GET /users/{id}/feed``
for 50 users at once sends a handful of queries, not hundreds.

Run it against a PostgreSQL database (it creates and fills three small tables if they are
missing), then open http://127.0.0.1:8000/users/1/feed and http://127.0.0.1:8000/stats::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run python examples/fastapi_app.py
"""

import asyncio
import itertools
import os
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from concresce import batch, collect, scatter

T = TypeVar("T")

# --------------------------------------------------------------------------------------
# The database: the part of asyncpg's pool this example uses, typed.
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


SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS follows (
    follower_id bigint NOT NULL REFERENCES users,
    followee_id bigint NOT NULL REFERENCES users,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE TABLE IF NOT EXISTS posts (
    id bigint PRIMARY KEY,
    author_id bigint NOT NULL REFERENCES users,
    title text NOT NULL
);
"""


async def install_demo_data(pool: Pool, *, users: int = 50) -> None:
    """Create the tables and, if ``users`` is empty, fill them.

    User ``i`` (1 to ``users``) follows the next three users (wrapping around) and wrote
    three posts, numbered ``10 * i + 1`` to ``10 * i + 3``.
    """
    await pool.execute(SCHEMA)
    if await pool.fetch("SELECT 1 FROM users LIMIT 1"):
        return
    ids = range(1, users + 1)
    await pool.execute(
        "INSERT INTO users SELECT * FROM unnest($1::bigint[], $2::text[])", list(ids), [f"user{i}" for i in ids]
    )
    follows = [(i, (i + k - 1) % users + 1) for i in ids for k in (1, 2, 3) if (i + k - 1) % users + 1 != i]
    await pool.execute(
        "INSERT INTO follows SELECT * FROM unnest($1::bigint[], $2::bigint[])",
        [follower for follower, _ in follows],
        [followee for _, followee in follows],
    )
    posts = [(10 * i + k, i, f"post {k} by user{i}") for i in ids for k in (1, 2, 3)]
    await pool.execute(
        "INSERT INTO posts SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])",
        *map(list, zip(*posts, strict=True)),
    )


# --------------------------------------------------------------------------------------
# The API's models
# --------------------------------------------------------------------------------------


class User(BaseModel):
    id: int
    name: str


class Post(BaseModel):
    id: int
    author_id: int
    title: str


class FeedPost(BaseModel):
    id: int
    title: str
    author: User


class Feed(BaseModel):
    user: User
    posts: list[FeedPost]


# --------------------------------------------------------------------------------------
# Batched lookups
# --------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the app did: calls of each lookup (items), bulk queries sent, requests abandoned."""

    calls: Counter[str] = field(default_factory=Counter[str])
    queries: Counter[str] = field(default_factory=Counter[str])
    abandoned: int = 0  # requests whose client went away first: their lookups were cancelled


class Repository:
    """Per-item lookups over one pool; concurrent calls share one query per batch.

    The lookups are closures over the pool, made once per application, so two apps (or two
    test servers) never share a batch. ``max_window`` defaults to 2 ms: each HTTP request
    runs in a task of its own, started when its bytes arrive, so concurrent requests reach
    ``collect()`` in different turns of the event loop. Tick batching (``max_window=0``)
    would still merge the lookups *of one request* (the authors of one feed), but a small
    window also merges those of every request that arrives within it, for at most 2 ms of
    added latency (the window opens with the first call of a batch, so it is the longest
    anyone waits). ``max_size`` bounds the ``ANY($1)`` arrays.
    """

    def __init__(self, pool: Pool, *, max_window: float = 0.002, max_size: int | None = 100) -> None:
        self.stats = Stats()
        stats = self.stats

        async def query(name: str, sql: str, *args: object) -> Sequence[Mapping[str, Any]]:
            stats.queries[name] += 1
            return await pool.fetch(sql, *args)

        @batch(max_window=max_window, max_size=max_size, dedupe=True)
        async def get_user(user_id: int) -> User | None:
            stats.calls["get_user"] += 1
            user_ids = await collect(user_id)
            rows = await query("users", "SELECT id, name FROM users WHERE id = ANY($1::bigint[])", user_ids)
            return scatter({row["id"]: User(id=row["id"], name=row["name"]) for row in rows}, default=None)

        @batch(max_window=max_window, max_size=max_size, dedupe=True)
        async def get_followees(user_id: int) -> list[int]:
            stats.calls["get_followees"] += 1
            user_ids = await collect(user_id)
            rows = await query(
                "follows",
                "SELECT follower_id, followee_id FROM follows"
                " WHERE follower_id = ANY($1::bigint[]) ORDER BY followee_id",
                user_ids,
            )
            followees: defaultdict[int, list[int]] = defaultdict(list)
            for row in rows:
                followees[row["follower_id"]].append(row["followee_id"])
            return scatter([followees[user_id] for user_id in user_ids])

        @batch(max_window=max_window, max_size=max_size, dedupe=True)
        async def get_posts(author_id: int) -> list[Post]:
            stats.calls["get_posts"] += 1
            author_ids = await collect(author_id)
            rows = await query(
                "posts",
                "SELECT id, author_id, title FROM posts WHERE author_id = ANY($1::bigint[]) ORDER BY id DESC",
                author_ids,
            )
            posts: defaultdict[int, list[Post]] = defaultdict(list)
            for row in rows:
                posts[row["author_id"]].append(Post(id=row["id"], author_id=row["author_id"], title=row["title"]))
            return scatter([posts[author_id] for author_id in author_ids])

        self.get_user = get_user
        self.get_followees = get_followees
        self.get_posts = get_posts

    async def feed(self, user_id: int, *, limit: int) -> Feed | None:
        """The latest ``limit`` posts of the users ``user_id`` follows, with their authors.

        Written the N+1 way: one lookup per followee, then one per post for its author.
        """
        user = await self.get_user(user_id)
        if user is None:
            return None
        followees = await self.get_followees(user_id)
        posts_by_author = await asyncio.gather(*(self.get_posts(followee) for followee in followees))
        posts = sorted(itertools.chain.from_iterable(posts_by_author), key=lambda post: post.id, reverse=True)[:limit]
        authors = await asyncio.gather(*(self.get_user(post.author_id) for post in posts))
        return Feed(
            user=user,
            posts=[
                FeedPost(id=post.id, title=post.title, author=author)
                for post, author in zip(posts, authors, strict=True)
                if author is not None  # the foreign key says it always is
            ],
        )


# --------------------------------------------------------------------------------------
# Client disconnects
# --------------------------------------------------------------------------------------


class ClientDisconnectedError(Exception):
    """The client went away before its answer was ready; its work was cancelled."""


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` in a task of its own; cancel it if the client goes away first.

    uvicorn (0.54) and Starlette (1.10) do *not* cancel a handler whose client
    disconnects: uvicorn marks the connection closed, ``await request.is_disconnected()``
    turns true and ``receive()`` answers ``http.disconnect``, but the handler runs to its
    end and its response is dropped. That is harmless with concresce (the gone request's
    item stays in its batch and its result is discarded), only wasteful. To stop the work
    instead, this watches ``receive()``, cancels the task doing the work when the client
    leaves, and raises :class:`ClientDisconnectedError`. If that task was the leader of a
    batch, the earliest member still waiting takes over and runs the query again for the
    members left (at-least-once); no other request sees the cancellation.

    Only for requests whose body the handler does not read (this watcher consumes it).
    """
    task = asyncio.ensure_future(work)
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await request.receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if not disconnected or not task.cancelled():
            raise  # this handler was cancelled (the server is shutting down)
        raise ClientDisconnectedError from None
    finally:
        watcher.cancel()


# --------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------


def create_app(dsn: str, *, max_window: float = 0.002, max_size: int | None = 100) -> FastAPI:
    """The application: its lifespan opens the pool and builds the repository."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        pool = await create_pool(dsn)
        try:
            app.state.repository = Repository(pool, max_window=max_window, max_size=max_size)
            yield
        finally:
            await pool.close()

    app = FastAPI(title="concresce + FastAPI", lifespan=lifespan)

    def repository(request: Request) -> Repository:
        return cast("Repository", request.app.state.repository)

    @app.exception_handler(ClientDisconnectedError)
    async def client_disconnected(request: Request, _: Exception) -> Response:
        repository(request).stats.abandoned += 1
        return Response(status_code=499)  # nginx's "client closed request"; nobody will read it

    @app.get("/users/{user_id}")
    async def get_user(user_id: int, request: Request) -> User:
        user = await cancel_on_disconnect(request, repository(request).get_user(user_id))
        if user is None:
            raise HTTPException(status_code=404, detail=f"no user {user_id}")
        return user

    @app.get("/users/{user_id}/feed")
    async def get_feed(user_id: int, request: Request, limit: int = 10) -> Feed:
        feed = await cancel_on_disconnect(request, repository(request).feed(user_id, limit=limit))
        if feed is None:
            raise HTTPException(status_code=404, detail=f"no user {user_id}")
        return feed

    @app.get("/stats")
    async def get_stats(request: Request) -> dict[str, Any]:
        stats = repository(request).stats
        return {"calls": dict(stats.calls), "queries": dict(stats.queries), "abandoned": stats.abandoned}

    return app


async def _install(dsn: str) -> None:
    pool = await create_pool(dsn)
    try:
        await install_demo_data(pool)
    finally:
        await pool.close()


def main() -> None:
    """Fill the demo tables if needed, then serve the app on http://127.0.0.1:8000."""
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        sys.exit("set DATABASE_URL to a PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(_install(dsn))
    uvicorn.run(create_app(dsn), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
