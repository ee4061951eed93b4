"""examples/psycopg_users.py against a real PostgreSQL server, from many threads.

How many queries a burst of threads sends depends on how fast they run; the tests that count
queries exactly make the batches' composition certain first: another connection locks the
table, so the first ``MAX_CONCURRENCY`` batches (one caller each: a lone caller never waits)
hold every slot with their query waiting in PostgreSQL, and every later call joins the next
batch, which waits for a free slot. The tests poll for that state (it is reached in other
threads and in PostgreSQL, with nothing to wait on), then release the lock.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from tests.support import copy_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from types import ModuleType

JOIN_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def example(load_example) -> ModuleType:
    return load_example("psycopg_users")


@pytest.fixture
def pool(example, postgres_dsn):
    with example.open_pool(postgres_dsn) as pool:
        yield pool


@pytest.fixture
def table(example, pool) -> Iterator[str]:
    """A users table of 50 users, ids 1, 3, ..., 99."""
    with example.users_table(pool, users=50) as name:
        yield name


@pytest.fixture
def users(example, pool, table):
    return example.UserRepository(pool, table=table)


@pytest.fixture
def users_on_another_pool(example, postgres_dsn, table):
    with example.open_pool(postgres_dsn) as other_pool:
        yield example.UserRepository(other_pool, table=table)


@pytest.fixture
def locked(postgres_dsn, table, table_lock) -> Callable[[], AbstractContextManager[Any]]:
    """``with locked() as lock``: the table is locked (``table_lock``)."""
    return lambda: table_lock(postgres_dsn, table)


def call_in_thread(function: Callable[..., Any], *args: Any) -> Future[Any]:
    """Call ``function(*args)`` in a new thread; the future gets its result or exception."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            future.set_exception(exc)

    threading.Thread(target=run, name=f"caller {args}", daemon=True).start()
    return future


def outcomes(futures: list[Future[Any]]) -> list[Any]:
    """Each future's result, or its exception."""
    return [future.exception(JOIN_TIMEOUT) or future.result() for future in futures]


def concresce_tables(postgres_dsn: str) -> set[str]:
    with psycopg.connect(postgres_dsn) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'concresce_users_%'")
        return {name for (name,) in rows}


def test_main_answers_every_call_and_sends_fewer_queries(example, postgres_dsn):
    tables_before = concresce_tables(postgres_dsn)

    outcome = example.main(postgres_dsn, threads=16, calls_per_thread=25)

    assert outcome.wrong == []
    assert outcome.calls == 400
    # 16 threads that do nothing but call get_user(), 4 slots: a call made while 4 queries run
    # waits, with the calls made after it, for the next free slot. How many share a query
    # depends on the machine's speed; the bound is only that some do (the exact counts are
    # the locked tests' below).
    assert 1 <= outcome.queries < outcome.calls
    assert concresce_tables(postgres_dsn) == tables_before  # its table was dropped


def test_callers_that_find_every_slot_busy_share_one_query(example, users, locked, eventually, joined_calls):
    ids = [*range(1, 41)]  # odd ids exist, even ones do not

    with locked() as lock:
        joined = joined_calls(users.get_user)
        futures = [call_in_thread(users.get_user, user_id) for user_id in ids]
        eventually(lambda: joined() == len(ids), "every call to join a batch")
        eventually(lambda: lock.waiting() == example.MAX_CONCURRENCY, "a query in each slot to wait for the lock")
        # Every slot is busy, so the 36 other calls wait in one batch, unsent.
        assert users.queries == example.MAX_CONCURRENCY
        assert not any(future.done() for future in futures)
        lock.release()
        found = outcomes(futures)

    assert found == [example.User(i, f"user{i}") if i % 2 else None for i in ids]
    assert users.calls == len(ids)
    assert users.queries == example.MAX_CONCURRENCY + 1


def test_a_failing_query_fails_every_member_of_its_batch_and_the_next_batch_works(
    example, users, locked, eventually, joined_calls
):

    with locked() as lock:
        # Four lone batches take the slots; their queries wait for the lock.
        joined = joined_calls(users.get_user)
        first = [call_in_thread(users.get_user, user_id) for user_id in (1, 2, 3, 4)]
        eventually(lambda: lock.waiting() == example.MAX_CONCURRENCY, "a query in each slot to wait for the lock")
        # The next batch: one id does not fit in a bigint, so its query fails as a whole.
        batch_ids = [5, 6, 2**63, 7]
        batch = [call_in_thread(users.get_user, user_id) for user_id in batch_ids]
        eventually(lambda: joined() == 8, "the batch's members to join it")
        lock.release()
        first_found, errors = outcomes(first), outcomes(batch)

    assert first_found == [example.User(1, "user1"), None, example.User(3, "user3"), None]
    # The leader's error reaches every member of its batch (each follower a copy of it), and
    # only them.
    assert isinstance(errors[0], psycopg.errors.NumericValueOutOfRange), errors
    assert "bigint out of range" in str(errors[0])
    assert all(copy_of(error, errors[0]) for error in errors[1:]), errors
    # The pool's connection was rolled back and returned: the next batch works.
    assert users.get_user(5) == example.User(5, "user5")
    assert users.get_user(6) is None
    assert users.queries == example.MAX_CONCURRENCY + 3


def test_repositories_batch_separately(example, users, users_on_another_pool, locked, eventually):
    a, b = users, users_on_another_pool
    with locked() as lock:
        # a's four lone batches take a's slots; b's slots are its own, so b sends at once.
        blocked = [call_in_thread(a.get_user, user_id) for user_id in (1, 2, 3, 4)]
        eventually(lambda: lock.waiting() == example.MAX_CONCURRENCY, "a's queries to wait for the lock")
        alone = call_in_thread(b.get_user, 5)
        eventually(lambda: lock.waiting() == example.MAX_CONCURRENCY + 1, "b's query to wait for the lock")
        lock.release()
        found = outcomes([*blocked, alone])

    assert found == [example.User(1, "user1"), None, example.User(3, "user3"), None, example.User(5, "user5")]
    assert (a.queries, b.queries) == (4, 1)
