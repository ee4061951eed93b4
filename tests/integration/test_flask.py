"""examples/flask_app.py over real HTTP: waitress on loopback, httpx from many threads, PostgreSQL.

The tests of this module share a schema of their own (created on the server of
``postgres_dsn``, dropped at the end), filled by the example's ``install_demo_data`` (100
products, 50 orders of ten lines each). Each test serves a new app (new counters) with
waitress, 16 request threads, in the test's process. The expected bodies are computed with
plain SQL, independently of the example.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from types import ModuleType

    from psycopg_pool import ConnectionPool

PRODUCTS = 100
ORDERS = 50
MISSING = 999
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def example(load_example) -> ModuleType:
    return load_example("flask_app")


@pytest.fixture(scope="module")
def database(example, postgres_schema) -> Iterator[tuple[str, str]]:
    """``(dsn, options)`` of a schema of this module's own, with the demo data; read-only."""
    with postgres_schema() as (dsn, options), example.open_pool(dsn, options=options) as pool:
        example.install_demo_data(pool, products=PRODUCTS, orders=ORDERS)
        yield dsn, options


@pytest.fixture
def pool(example, database) -> Iterator[ConnectionPool]:
    dsn, options = database
    with example.open_pool(dsn, options=options) as pool:
        yield pool


@dataclass
class Served:
    app: Any
    base_url: str
    http: httpx.Client  # one client for the test's threads: a connection per request in flight

    def get_all(self, paths: list[str], *, clients: int) -> list[httpx.Response]:
        """GET every path, from ``clients`` threads at once."""
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(self.get, paths, timeout=TIMEOUT))

    def get(self, path: str) -> httpx.Response:
        return self.http.get(f"{self.base_url}{path}")

    def stats(self) -> dict[str, dict[str, int]]:
        response = self.get("/stats")
        assert response.status_code == 200
        result: dict[str, dict[str, int]] = response.json()
        return result


@pytest.fixture
def served(example, pool, serve_wsgi) -> Iterator[Served]:
    """A new app (new counters), served by waitress with the example's number of threads."""
    app = example.create_app(pool)
    base_url = serve_wsgi(app, threads=example.THREADS)
    with httpx.Client(timeout=TIMEOUT, limits=httpx.Limits(max_connections=None)) as http:
        yield Served(app, base_url, http)


@pytest.fixture
def locked_products(database, table_lock) -> Callable[[], AbstractContextManager[Any]]:
    """``with locked_products() as lock``: the products table is locked (``table_lock``)."""
    dsn, options = database
    return lambda: table_lock(dsn, "products", options=options)


@pytest.fixture
def sql(database) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own, for the reference answers."""
    dsn, options = database
    with psycopg.connect(dsn, options=options, autocommit=True) as connection:
        yield connection


def reference_product(sql: psycopg.Connection[Any], product_id: int) -> dict[str, Any] | None:
    row = sql.execute("SELECT id, name, price_cents FROM products WHERE id = %s", [product_id]).fetchone()
    return None if row is None else {"id": row[0], "name": row[1], "price_cents": row[2]}


def reference_order(sql: psycopg.Connection[Any], order_id: int) -> dict[str, Any] | None:
    """The order, computed with one plain join: what the example must answer."""
    rows = sql.execute(
        """SELECT p.id, p.name, p.price_cents, l.quantity FROM order_lines l JOIN products p ON p.id = l.product_id
           WHERE l.order_id = %s ORDER BY p.id""",
        [order_id],
    ).fetchall()
    if not rows:
        return None
    return {
        "id": order_id,
        "lines": [
            {"product": {"id": id_, "name": name, "price_cents": price}, "quantity": quantity}
            for id_, name, price, quantity in rows
        ],
        "total_cents": sum(price * quantity for _, _, price, quantity in rows),
    }


def test_concurrent_requests_are_answered_right_and_share_queries(example, served, locked_products, eventually, sql):
    order_ids = [*range(1, ORDERS + 1), MISSING] * 2
    product_ids = [*range(1, PRODUCTS + 1), MISSING]
    paths = [f"/orders/{i}" for i in order_ids] + [f"/products/{i}" for i in product_ids]
    catalog = served.app.extensions["catalog"]

    with locked_products() as lock, ThreadPoolExecutor(1) as burst:
        responses_future = burst.submit(served.get_all, paths, clients=32)
        # How much the requests share depends on the machine's speed; that some share is made
        # certain: the burst starts with the products table locked, until every request
        # thread waits in a product lookup (4 queries waiting for the lock, the other
        # lookups in one batch).
        eventually(lambda: catalog.get_product.stats().calls >= example.THREADS, "a lookup in every request thread")
        eventually(lambda: lock.waiting() == example.MAX_CONCURRENCY, "a query in each slot to wait for the lock")
        lock.release()
        responses = responses_future.result(TIMEOUT)

    expected = [reference_order(sql, i) for i in order_ids] + [reference_product(sql, i) for i in product_ids]
    for path, response, body in zip(paths, responses, expected, strict=True):
        assert response.status_code == (404 if body is None else 200), (path, response.text)
        if body is not None:
            assert response.json() == body, path
    assert responses[0].json()["lines"][0] == {
        "product": {"id": 8, "name": "product 8", "price_cents": 800},
        "quantity": 1,
    }

    seen = served.stats()
    lookups = 2 * ORDERS * 10 + len(product_ids)  # ten per existing order, one per product request
    assert seen["calls"] == {"get_lines": len(order_ids), "get_product": lookups}
    assert 1 <= seen["queries"]["order_lines"] <= len(order_ids)
    # At least 12 lookups shared the query sent when the lock was released.
    assert seen["queries"]["products"] <= lookups - (example.THREADS - example.MAX_CONCURRENCY - 1)


def test_lookups_of_requests_that_find_every_slot_busy_share_one_query(
    example, served, locked_products, eventually, sql
):
    catalog = served.app.extensions["catalog"]
    product_ids = [*range(1, example.THREADS), MISSING]  # one request per request thread

    with locked_products() as lock, ThreadPoolExecutor(len(product_ids)) as clients:
        responses = [clients.submit(served.get, f"/products/{i}") for i in product_ids]
        eventually(lambda: catalog.get_product.stats().calls == len(product_ids), "every lookup to join a batch")
        eventually(lambda: lock.waiting() == example.MAX_CONCURRENCY, "a query in each slot to wait for the lock")
        assert catalog.stats.as_dict()["queries"] == {"products": example.MAX_CONCURRENCY}
        lock.release()
        answers = [response.result(TIMEOUT) for response in responses]

    for product_id, answer in zip(product_ids, answers, strict=True):
        body = reference_product(sql, product_id)
        assert answer.status_code == (404 if body is None else 200), answer.text
        if body is not None:
            assert answer.json() == body
    # The 12 lookups that found every slot busy went in one query.
    assert served.stats() == {
        "calls": {"get_product": len(product_ids)},
        "queries": {"products": example.MAX_CONCURRENCY + 1},
    }


def test_a_failing_query_fails_every_request_that_shares_it_and_the_next_ones_work(served, database, sql):
    dsn, options = database
    paths = [f"/orders/{i}" for i in range(1, 17)]
    # Flask logs each 500 with its traceback. pytest's log capture would keep the records, and
    # through their tracebacks' frames the failed batches, until the test ends: the suite's
    # hygiene check would report them as leaked engine objects.
    served.app.logger.disabled = True

    with psycopg.connect(dsn, options=options, autocommit=True) as admin:
        # Every batch of product lookups fails while the table is away, in every request of it.
        admin.execute("ALTER TABLE products RENAME TO products_away")
        try:
            failed = served.get_all(paths, clients=16)
        finally:
            admin.execute("ALTER TABLE products_away RENAME TO products")

    assert [response.status_code for response in failed] == [500] * len(paths)
    seen = served.stats()
    assert seen["calls"]["get_product"] == len(paths)  # each request's first lookup failed
    assert 1 <= seen["queries"]["products"] <= len(paths)

    answered = served.get_all(paths, clients=16)
    assert [response.json() for response in answered] == [reference_order(sql, i) for i in range(1, 17)]
