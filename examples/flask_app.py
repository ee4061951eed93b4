"""Flask + psycopg 3 under waitress: an N+1 view, one query per batch across requests.

``GET /orders/<id>`` is written the N+1 way: it reads the order's lines, then looks up each
line's product one at a time (``catalog.get_product(product_id)``). waitress serves each
request in a thread of its own, and the lookups of concurrent requests share the batches:
a burst of requests sends a handful of queries, not one per product.
``GET /products/<id>`` looks one product up; ``GET /stats`` shows the lookups made and the
queries sent.

Run it against a PostgreSQL database (it creates and fills two small tables if they are
missing), then open http://127.0.0.1:8000/orders/1 and http://127.0.0.1:8000/stats::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run python examples/flask_app.py
"""

import os
import sys
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, cast

import waitress
from flask import Flask, abort, current_app
from psycopg import sql
from psycopg_pool import ConnectionPool

from concresce.threads import batch, collect, scatter

#: waitress's request threads: up to this many requests run at once.
THREADS = 16
#: Batches of one lookup whose query may run at once. Only this many leaders of a lookup
#: query the database at a time, each on one connection; the lookups that the other request
#: threads make meanwhile accumulate, and go in the next batch.
MAX_CONCURRENCY = 4
#: A connection for every slot of every batched lookup (``get_lines`` and ``get_product``):
#: a smaller pool would make leaders wait for a connection while their batch waits behind
#: them; a larger one would sit idle.
POOL_SIZE = 2 * MAX_CONCURRENCY

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (id bigint PRIMARY KEY, name text NOT NULL, price_cents integer NOT NULL);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id bigint NOT NULL,
    product_id bigint NOT NULL REFERENCES products,
    quantity integer NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
"""


def open_pool(dsn: str, **kwargs: Any) -> ConnectionPool:
    """A pool of ``POOL_SIZE`` connections (``kwargs``: connection options)."""
    return ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, kwargs=kwargs, open=True)


def install_demo_data(pool: ConnectionPool, *, products: int = 100, orders: int = 50) -> None:
    """Create the tables and, if ``products`` is empty, fill them.

    Product ``i`` (1 to ``products``) is ``"product i"`` at ``100 * i`` cents. Order ``n``
    (1 to ``orders``) has ten lines: products ``(7 * n + 3 * k) % products + 1`` for ``k``
    from 0 to 9, ``k + 1`` of each.
    """
    with pool.connection() as connection:
        connection.execute(SCHEMA)
        if connection.execute("SELECT 1 FROM products LIMIT 1").fetchone() is not None:
            return
        connection.execute(
            "INSERT INTO products SELECT i, 'product ' || i, 100 * i FROM generate_series(1, %s) AS i", [products]
        )
        lines = {(n, (7 * n + 3 * k) % products + 1): k + 1 for n in range(1, orders + 1) for k in range(10)}
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO order_lines VALUES (%s, %s, %s)",
                [(order_id, product_id, quantity) for (order_id, product_id), quantity in lines.items()],
            )


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    price_cents: int


@dataclass(frozen=True)
class Line:
    product_id: int
    quantity: int


class Stats:
    """Lookups made and queries sent, by name; updated by every request thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.queries: Counter[str] = Counter()

    def count(self, counter: Counter[str], name: str) -> None:
        with self._lock:
            counter[name] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"calls": dict(self.calls), "queries": dict(self.queries)}


SELECT_PRODUCTS = sql.SQL("SELECT id, name, price_cents FROM products WHERE id = ANY(%s)")
SELECT_LINES = sql.SQL(
    "SELECT order_id, product_id, quantity FROM order_lines WHERE order_id = ANY(%s) ORDER BY order_id, product_id"
)


class Catalog:
    """Per-item lookups over one pool; concurrent calls from any threads share one query per batch.

    The lookups are closures made for each catalog (each app), so two apps in one process
    never share a batch or a pool. ``max_window=0`` (the default) adds no latency: a lookup
    that finds a slot free is sent at once; lookups made while every slot is busy wait
    together for the next free one. ``dedupe=True``: a product in many orders is read once
    per batch.
    """

    def __init__(self, pool: ConnectionPool, *, max_size: int = 100) -> None:
        self.stats = stats = Stats()

        def query(name: str, query: sql.SQL, ids: list[int]) -> list[tuple[Any, ...]]:
            stats.count(stats.queries, name)
            with pool.connection() as connection:
                return connection.execute(query, [ids]).fetchall()

        @batch(max_size=max_size, max_concurrency=MAX_CONCURRENCY, dedupe=True)
        def get_product(product_id: int) -> Product | None:
            stats.count(stats.calls, "get_product")
            product_ids = collect(product_id)
            rows = query("products", SELECT_PRODUCTS, product_ids)
            return scatter({row[0]: Product(*row) for row in rows}, default=None)

        @batch(max_size=max_size, max_concurrency=MAX_CONCURRENCY, dedupe=True)
        def get_lines(order_id: int) -> list[Line]:
            stats.count(stats.calls, "get_lines")
            order_ids = collect(order_id)
            rows = query("order_lines", SELECT_LINES, order_ids)
            lines: defaultdict[int, list[Line]] = defaultdict(list)
            for row_order_id, product_id, quantity in rows:
                lines[row_order_id].append(Line(product_id, quantity))
            return scatter([lines[order_id] for order_id in order_ids])

        self.get_product = get_product
        self.get_lines = get_lines


def product_json(product: Product) -> dict[str, Any]:
    return {"id": product.id, "name": product.name, "price_cents": product.price_cents}


def create_app(pool: ConnectionPool, *, max_size: int = 100) -> Flask:
    """The application, with a catalog of its own over ``pool``."""
    app = Flask(__name__)
    app.extensions["catalog"] = Catalog(pool, max_size=max_size)

    def catalog() -> Catalog:
        return cast("Catalog", current_app.extensions["catalog"])

    @app.get("/products/<int:product_id>")
    def get_product(product_id: int) -> dict[str, Any]:
        product = catalog().get_product(product_id)
        if product is None:
            abort(404, f"no product {product_id}")
        return product_json(product)

    @app.get("/orders/<int:order_id>")
    def get_order(order_id: int) -> dict[str, Any]:
        lines = catalog().get_lines(order_id)
        if not lines:
            abort(404, f"no order {order_id}")
        body: list[dict[str, Any]] = []
        total = 0
        for line in lines:  # the N+1: one lookup per line, batched with other requests' lookups
            product = catalog().get_product(line.product_id)
            assert product is not None  # the foreign key says so
            body.append({"product": product_json(product), "quantity": line.quantity})
            total += line.quantity * product.price_cents
        return {"id": order_id, "lines": body, "total_cents": total}

    @app.get("/stats")
    def get_stats() -> dict[str, dict[str, int]]:
        return catalog().stats.as_dict()

    return app


def main() -> None:
    """Fill the demo tables if needed, then serve the app on http://127.0.0.1:8000 with waitress."""
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        sys.exit("set DATABASE_URL to a PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    with open_pool(dsn) as pool:
        install_demo_data(pool)
        waitress.serve(create_app(pool), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), threads=THREADS)


if __name__ == "__main__":
    main()
