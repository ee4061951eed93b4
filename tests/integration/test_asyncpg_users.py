"""examples/asyncpg_users.py against a real PostgreSQL server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from tests.support import copy_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def example(load_example):
    return load_example("asyncpg_users")


@pytest.fixture
async def pool(example, postgres_dsn):
    async with example.scratch_database(postgres_dsn) as pool:
        yield pool


async def test_main_batches_each_scenario_into_one_statement(example, postgres_dsn):
    outcome = await example.main(postgres_dsn)

    assert outcome.statements == {
        "add 20 users": {"INSERT": 1},
        "look up 25 users": {"SELECT": 1},
        "add a batch with a bad row": {"INSERT": 1},
        "create 3 users, one id taken": {"INSERT": 1},
    }
    user = example.User
    assert outcome.users == [user(i, f"user{i}") for i in range(1, 21)] + [None] * 5
    # One bad row: the whole batch fails with the leader's exception (a copy in each follower).
    first, *others = outcome.batch_errors
    assert isinstance(first, asyncpg.CheckViolationError)
    assert all(copy_of(error, first) for error in others)
    assert len(others) == 2
    assert outcome.rows_after_failed_batch == 0
    # Per-caller errors: only the caller whose id is taken fails.
    assert outcome.created[0] == user(21, "ann")
    assert isinstance(outcome.created[1], example.UserExistsError)
    assert outcome.created[1].user_id == 1
    assert outcome.created[2] == user(23, "bob")


async def test_get_user_routes_rows_by_id_and_splits_at_max_size(example, pool):
    await pool.execute("INSERT INTO users SELECT i, 'user' || i FROM generate_series(1, 300, 2) AS i")  # odd ids
    users = example.UserRepository(pool)

    ids = [*range(250, 0, -1)]  # in reverse order, to show that routing is by key
    found = await asyncio.gather(*(users.get_user(i) for i in ids))

    assert found == [example.User(i, f"user{i}") if i % 2 else None for i in ids]
    assert users.statements == {"SELECT": 3}  # max_size=100: 100 + 100 + 50


async def test_add_user_constraint_violation_fails_every_caller_of_the_batch_only(example, pool):
    users = example.UserRepository(pool)
    await users.add_user(1, "first")

    # Batch 1 re-uses id 1; batch 2 (started after it) is fine.
    failed = asyncio.gather(*(users.add_user(i, f"user{i}") for i in (2, 1, 3)), return_exceptions=True)
    results = await failed
    fine = await asyncio.gather(*(users.add_user(i, f"user{i}") for i in (4, 5)))

    assert isinstance(results[0], asyncpg.UniqueViolationError)
    assert copy_of(results[1], results[0])
    assert copy_of(results[2], results[0])
    assert fine == [example.User(4, "user4"), example.User(5, "user5")]
    rows = await pool.fetch("SELECT id, name FROM users ORDER BY id")
    assert [(row["id"], row["name"]) for row in rows] == [(1, "first"), (4, "user4"), (5, "user5")]
    assert users.statements == {"INSERT": 3}


async def test_create_user_fails_only_the_callers_whose_id_is_taken(example, pool):
    users = example.UserRepository(pool)
    await users.create_user(7, "seven")

    # The leader's own id is taken, and two new callers want the same new id.
    results = await asyncio.gather(
        users.create_user(7, "again"),
        users.create_user(8, "eight"),
        users.create_user(9, "nine"),
        users.create_user(9, "nine again"),
        return_exceptions=True,
    )

    assert isinstance(results[0], example.UserExistsError)
    assert results[0].user_id == 7
    assert results[1:3] == [example.User(8, "eight"), example.User(9, "nine")]
    assert isinstance(results[3], example.UserExistsError)
    assert results[3].user_id == 9
    rows = await pool.fetch("SELECT id, name FROM users ORDER BY id")
    assert [(row["id"], row["name"]) for row in rows] == [(7, "seven"), (8, "eight"), (9, "nine")]
    assert users.statements == {"INSERT": 2}


async def test_repositories_batch_separately(example, pool):
    await pool.execute("INSERT INTO users VALUES (1, 'one'), (2, 'two')")
    a, b = example.UserRepository(pool), example.UserRepository(pool)

    found = await asyncio.gather(a.get_user(1), b.get_user(2), a.get_user(2), b.get_user(3))

    assert found == [example.User(1, "one"), example.User(2, "two"), example.User(2, "two"), None]
    assert a.statements == {"SELECT": 1}
    assert b.statements == {"SELECT": 1}
