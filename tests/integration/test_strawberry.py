"""examples/strawberry_app.py and strawberry_dataloader.py against a real PostgreSQL.

The tests of this module share a database of their own (created on the server of
``postgres_dsn``, dropped at the end), filled by ``strawberry_app.install_demo_data`` (20
users in a circle, each a friend of the two on either side) plus user 21, who has no
friends; they only read it. Queries run through ``schema.execute`` in the test's loop,
and over HTTP through Strawberry's ASGI app served by uvicorn (``serve_asgi``). The
expected data is computed with plain SQL, independently of the examples.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from types import ModuleType

pytestmark = pytest.mark.anyio

USERS = 20
LONELY_USER = USERS + 1


@pytest.fixture(scope="module")
def app_module(load_example) -> ModuleType:
    return load_example("strawberry_app")


@pytest.fixture(scope="module")
def dataloader_module(load_example) -> ModuleType:
    return load_example("strawberry_dataloader")


@pytest.fixture(scope="module")
def dsn(demo_database, app_module: ModuleType) -> Iterator[str]:
    """A database of this module's own, with the demo data; the tests only read it."""
    with demo_database(app_module, users=USERS, lonely_user=LONELY_USER) as database_dsn:
        yield database_dsn


@pytest.fixture
async def pool(dsn: str, app_module: ModuleType) -> AsyncIterator[Any]:
    pool = await app_module.create_pool(dsn)
    try:
        yield pool
    finally:
        await pool.close()


def nested_query(levels: int) -> str:
    """``{ users { name friends { name ... } } }``, ``levels`` levels deep."""
    fields = "name"
    for _ in range(levels - 1):
        fields = f"name friends {{ {fields} }}"
    return f"{{ users {{ {fields} }} }}"


async def reference_data(dsn: str, levels: int) -> dict[str, Any]:
    """What ``nested_query(levels)`` must return, from plain SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        users = await conn.fetch("SELECT id, name FROM users ORDER BY id")
        pairs = await conn.fetch("SELECT user_id, friend_id FROM friendships ORDER BY user_id, friend_id")
    finally:
        await conn.close()
    names = {row["id"]: row["name"] for row in users}
    friends: dict[int, list[int]] = {row["id"]: [] for row in users}
    for row in pairs:
        friends[row["user_id"]].append(row["friend_id"])

    def expand(user_id: int, depth: int) -> dict[str, Any]:
        if depth == 1:
            return {"name": names[user_id]}
        return {"name": names[user_id], "friends": [expand(friend, depth - 1) for friend in friends[user_id]]}

    return {"users": [expand(row["id"], levels) for row in users]}


async def execute(module: ModuleType, pool: Any, query: str, **loader_options: Any) -> tuple[dict[str, Any], dict]:
    """Run ``query`` with fresh per-request loaders; return its data and the queries sent."""
    db = module.Database(pool)
    result = await module.schema.execute(
        query, context_value=module.Context(loaders=module.Loaders(db, **loader_options))
    )
    assert result.errors is None, result.errors
    return result.data, dict(db.queries)


def test_nested_query_shape():
    assert nested_query(1) == "{ users { name } }"
    assert nested_query(3) == "{ users { name friends { name friends { name } } } }"


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
async def test_one_query_per_level(app_module, dsn, pool, levels):
    data, queries = await execute(app_module, pool, nested_query(levels))
    assert data == await reference_data(dsn, levels)
    assert sum(queries.values()) == levels
    assert queries == ({"users": 1, "friends": levels - 1} if levels > 1 else {"users": 1})


async def test_the_result_is_what_the_circle_says(app_module, pool):
    data, _ = await execute(app_module, pool, nested_query(2))
    assert data["users"][0] == {"name": "user1", "friends": [{"name": f"user{i}"} for i in (2, 3, 19, 20)]}
    assert data["users"][-1] == {"name": "lonely", "friends": []}


async def test_root_lookups_share_one_query(app_module, pool):
    query = "{ a: user(id: 1) { name } b: user(id: 2) { name friends { name } } c: user(id: 999) { name } }"
    data, queries = await execute(app_module, pool, query)
    assert data == {
        "a": {"name": "user1"},
        "b": {"name": "user2", "friends": [{"name": f"user{i}"} for i in (1, 3, 4, 20)]},
        "c": None,
    }
    assert queries == {"users": 1, "friends": 1}


async def test_concurrent_requests_never_share_a_batch(app_module, dsn, pool):
    # One Loaders per request: @batch methods batch per instance, so two requests running
    # at the same time, on the same pool, each send their own query per level.
    db = app_module.Database(pool)
    query = nested_query(3)
    results = await asyncio.gather(
        *(app_module.schema.execute(query, context_value=app_module.Context(app_module.Loaders(db))) for _ in range(4))
    )
    expected = await reference_data(dsn, 3)
    for result in results:
        assert result.errors is None, result.errors
        assert result.data == expected
    assert dict(db.queries) == {"users": 4, "friends": 8}


@pytest.mark.parametrize("levels", [2, 3, 4])
async def test_dataloader_side_by_side(app_module, dataloader_module, dsn, pool, levels):
    query = nested_query(levels)
    batched, batched_queries = await execute(app_module, pool, query)
    loaded, loaded_queries = await execute(dataloader_module, pool, query, cache=False)
    assert batched == loaded == await reference_data(dsn, levels)
    assert batched_queries == loaded_queries == {"users": 1, "friends": levels - 1}
    # With its per-request cache, a DataLoader skips the levels whose users were all
    # loaded before: in a circle, every user's friends are loaded at the second level.
    cached, cached_queries = await execute(dataloader_module, pool, query, cache=True)
    assert cached == batched
    assert cached_queries == {"users": 1, "friends": 1}


async def test_over_http(app_module, dsn, serve_asgi, backend_id):
    app = app_module.create_app(dsn)
    base_url = serve_asgi(app, loop="uvloop" if backend_id == "uvloop" else "asyncio")
    query = nested_query(3)
    requests = 5
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        responses = await asyncio.gather(*(http.post("/graphql", json={"query": query}) for _ in range(requests)))
    expected = await reference_data(dsn, 3)
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json() == {"data": expected}
    # Each request has its own loaders: one query per level per request.
    assert dict(app.state.database.queries) == {"users": requests, "friends": 2 * requests}
