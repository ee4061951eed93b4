"""``python -m concresce demo``: the same N+1 lookups against SQLite or PostgreSQL, three ways.

The demo builds a throw-away table (in a temporary SQLite database, or with ``--postgres
DSN`` in a PostgreSQL server reached through asyncpg), starts N concurrent tasks that each
look up one user, and serves them (a) with one query per call, (b) with ``@batch`` and tick
batching and (c) with ``@batch`` and a time window. It prints how many queries each
strategy sent, how long it took, and whether every caller got its own row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol, TypeAlias, final

from concresce import batch, collect, scatter

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

Row: TypeAlias = tuple[int, int]
"""A ``(id, score)`` row of the ``users`` table."""

Lookup: TypeAlias = Callable[[int], Awaitable[Row | None]]
"""One caller's lookup: a user id in, its row (or ``None`` if absent) out."""


class _Backend(Protocol):
    """A database holding the ``users`` table, counting the queries sent to it."""

    @property
    def queries(self) -> int: ...

    async def warm_up(self) -> None: ...

    async def row(self, user_id: int) -> Row | None: ...

    async def rows_by_id(self, user_ids: Sequence[int]) -> dict[int, Row]: ...


_TABLE_ROWS: Final = 5000
# Callers ask for ids 1.._ID_SPACE, so roughly one in eleven asks for a user that does not
# exist and must get None: the check covers scatter()'s `default` too.
_ID_SPACE: Final = 5500
# Async database drivers keep a pool of connections; a thread pool with one SQLite
# connection per thread plays that role here.
_WORKERS: Final = 10
# An in-process SQLite query costs microseconds; a real database round trip costs far more.
# Each query sleeps this long in its worker thread first, so the comparison is not rigged
# in favour of one-query-per-call.
_LATENCY: Final = 0.0005
# SQLite before 3.32 allows at most 999 parameters per statement: bigger batches are sent
# as several `IN (...)` queries, each counted.
_MAX_PARAMS: Final = 500

_DEFAULT_N: Final = 2000
_DEFAULT_MAX_SIZE: Final = 100
_DEFAULT_MAX_WINDOW: Final = 0.002


def _score(user_id: int) -> int:
    return (user_id * 37) % 1000


def _expected(user_id: int) -> Row | None:
    return (user_id, _score(user_id)) if user_id <= _TABLE_ROWS else None


def _user_ids(n: int) -> list[int]:
    # 7919 is prime and does not divide _ID_SPACE, so up to _ID_SPACE callers ask for
    # distinct ids, spread over the whole range in a scrambled order.
    return [(i * 7919) % _ID_SPACE + 1 for i in range(n)]


def _create_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, score INTEGER NOT NULL)")
        connection.executemany(
            "INSERT INTO users (id, score) VALUES (?, ?)",
            ((user_id, _score(user_id)) for user_id in range(1, _TABLE_ROWS + 1)),
        )


@final
class _Database:
    """A SQLite file queried from a pool of worker threads, one connection per thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="concresce-demo")
        self.queries = 0

    def _connection(self) -> sqlite3.Connection:
        ident = threading.get_ident()
        with self._lock:
            connection = self._connections.get(ident)
            if connection is None:
                # check_same_thread=False only lets close() run on the main thread; each
                # connection is used by the one worker thread that opened it.
                connection = sqlite3.connect(self._path, check_same_thread=False)
                self._connections[ident] = connection
        return connection

    def _execute(self, sql: str, params: Sequence[int]) -> list[Row]:
        time.sleep(_LATENCY)  # the simulated round trip, see _LATENCY
        cursor = self._connection().execute(sql, params)
        return [(int(user_id), int(score)) for user_id, score in cursor.fetchall()]

    def _open(self) -> None:
        self._connection()
        # Stay busy a moment so that every warm-up job starts its own thread.
        time.sleep(0.005)

    async def warm_up(self) -> None:
        """Start every worker thread and open its connection, outside the timings."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, self._open) for _ in range(_WORKERS)))

    async def query(self, sql: str, params: Sequence[int]) -> list[Row]:
        """Run one statement in a worker thread, as an async driver would."""
        self.queries += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._execute, sql, params)

    async def row(self, user_id: int) -> Row | None:
        """Fetch one user's row with ``WHERE id = ?``."""
        rows = await self.query("SELECT id, score FROM users WHERE id = ?", (user_id,))
        return rows[0] if rows else None

    async def rows_by_id(self, user_ids: Sequence[int]) -> dict[int, Row]:
        """Fetch the rows of many users with ``WHERE id IN (...)``, keyed by id."""
        unique = list(dict.fromkeys(user_ids))
        rows: dict[int, Row] = {}
        for start in range(0, len(unique), _MAX_PARAMS):
            chunk = unique[start : start + _MAX_PARAMS]
            placeholders = ", ".join("?" * len(chunk))
            # Only "?" placeholders are interpolated; the ids travel as parameters.
            sql = f"SELECT id, score FROM users WHERE id IN ({placeholders})"  # noqa: S608
            for row in await self.query(sql, chunk):
                rows[row[0]] = row
        return rows

    def close(self) -> None:
        """Stop the worker threads and close their connections."""
        self._executor.shutdown(wait=True)
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


class _Pool(Protocol):
    """The part of an asyncpg pool the demo uses (asyncpg is imported only for ``--postgres``)."""

    async def execute(self, query: str, /, *args: object) -> str: ...

    async def executemany(self, command: str, args: Sequence[Sequence[object]], /) -> None: ...

    async def fetch(self, query: str, /, *args: object) -> list[Sequence[int]]: ...

    async def fetchval(self, query: str, /, *args: object) -> Any: ...

    async def close(self) -> None: ...


@final
class _Postgres:
    """The ``users`` table in PostgreSQL, under a name of its own, queried through a pool."""

    def __init__(self, pool: _Pool, table: str) -> None:
        self._pool = pool
        self.table = table
        # The table name is generated by _run_postgres(): letters, digits and underscores.
        self._one = f"SELECT id, score FROM {table} WHERE id = $1"  # noqa: S608
        self._many = f"SELECT id, score FROM {table} WHERE id = ANY($1::integer[])"  # noqa: S608
        self.queries = 0

    async def create(self) -> None:
        """Create and fill the table."""
        await self._pool.execute(f"CREATE TABLE {self.table} (id integer PRIMARY KEY, score integer NOT NULL)")
        await self._pool.executemany(
            f"INSERT INTO {self.table} (id, score) VALUES ($1, $2)",  # noqa: S608
            [(user_id, _score(user_id)) for user_id in range(1, _TABLE_ROWS + 1)],
        )
        await self._pool.execute(f"ANALYZE {self.table}")

    async def drop(self) -> None:
        """Drop the table."""
        await self._pool.execute(f"DROP TABLE IF EXISTS {self.table}")

    async def warm_up(self) -> None:
        """Prepare both statements on every connection of the pool, outside the timings."""
        await asyncio.gather(*(self._pool.fetch(self._one, 0) for _ in range(_WORKERS)))
        await asyncio.gather(*(self._pool.fetch(self._many, [0]) for _ in range(_WORKERS)))

    async def _query(self, sql: str, arg: object) -> list[Row]:
        self.queries += 1
        return [(int(record[0]), int(record[1])) for record in await self._pool.fetch(sql, arg)]

    async def row(self, user_id: int) -> Row | None:
        """Fetch one user's row with ``WHERE id = $1``."""
        rows = await self._query(self._one, user_id)
        return rows[0] if rows else None

    async def rows_by_id(self, user_ids: Sequence[int]) -> dict[int, Row]:
        """Fetch the rows of many users with one ``WHERE id = ANY($1)``, keyed by id."""
        return {row[0]: row for row in await self._query(self._many, list(user_ids))}


def _one_query_per_call(db: _Backend) -> Lookup:
    return db.row


def _batched(db: _Backend, *, max_window: float, max_size: int) -> Lookup:
    @batch(max_window=max_window, max_size=max_size)
    async def lookup(user_id: int) -> Row | None:
        user_ids = await collect(user_id)  # every caller waits here...
        rows = await db.rows_by_id(user_ids)  # ...and the leader alone queries,
        return scatter(rows, default=None)  # then each caller gets rows.get(its id)

    return lookup


@final
@dataclass(frozen=True)
class _Outcome:
    strategy: str
    batches: int | None  # bulk calls made by leaders; None: not batched
    queries: int  # statements sent to the database (a batch may need several)
    seconds: float
    wrong: int


async def _run(db: _Backend, user_ids: Sequence[int], *, max_size: int, max_window: float) -> list[_Outcome]:
    await db.warm_up()
    strategies: list[tuple[str, Lookup]] = [
        ("one query per call", _one_query_per_call(db)),
        (
            f"@batch(max_window=0, max_size={max_size})",
            _batched(db, max_window=0, max_size=max_size),
        ),
        (
            f"@batch(max_window={max_window:g}, max_size={max_size})",
            _batched(db, max_window=max_window, max_size=max_size),
        ),
    ]
    expected = [_expected(user_id) for user_id in user_ids]
    outcomes: list[_Outcome] = []
    for strategy, lookup in strategies:
        queries_before = db.queries
        started = time.perf_counter()
        # gather() wraps each call in its own task: N independent, concurrent callers.
        results = await asyncio.gather(*(lookup(user_id) for user_id in user_ids))
        seconds = time.perf_counter() - started
        wrong = sum(got != want for got, want in zip(results, expected, strict=True))
        stats = getattr(lookup, "stats", None)
        batches = None if stats is None else stats().batches
        outcomes.append(_Outcome(strategy, batches, db.queries - queries_before, seconds, wrong))
    return outcomes


def _table(outcomes: Sequence[_Outcome], n: int) -> list[str]:
    baseline = outcomes[0].seconds
    header = ("strategy", "batches", "queries", "wall time", "speed-up", "check")
    rows = [
        (
            outcome.strategy,
            "-" if outcome.batches is None else str(outcome.batches),
            str(outcome.queries),
            f"{outcome.seconds * 1000:.1f} ms",
            f"{baseline / max(outcome.seconds, 1e-9):.1f}x",
            "ok" if outcome.wrong == 0 else f"FAILED: {outcome.wrong} of {n} wrong",
        )
        for outcome in outcomes
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        strategy, *numbers, check = cells
        padded = [strategy.ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(numbers, widths[1:-1], strict=True)]
        return "   ".join([*padded, check]).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _demo(n: int, max_size: int, max_window: float) -> int:
    user_ids = _user_ids(n)
    with tempfile.TemporaryDirectory(prefix="concresce-demo-") as directory:
        path = Path(directory) / "demo.sqlite3"
        _create_database(path)
        db = _Database(path)
        try:
            outcomes = asyncio.run(_run(db, user_ids, max_size=max_size, max_window=max_window))
        finally:
            db.close()
    latency_ms = _LATENCY * 1000
    split = (
        f" (a batch of more than {_MAX_PARAMS} ids is sent as several: SQLite's limit on parameters)"
        if max_size > _MAX_PARAMS
        else ""
    )
    return _report(
        [
            f"concresce demo: {_tasks(n)}",
            f"Table of {_TABLE_ROWS} users; ids above {_TABLE_ROWS} are absent (expected: None).",
            f"Each query runs on one of {_WORKERS} worker threads (a connection each) and first",
            f"sleeps {latency_ms:g} ms to stand in for a database round trip.",
            (
                "The batched strategies send one `WHERE id IN (...)` query per batch of at most "
                f"{max_size} {_ids(max_size)}{split}."
            ),
            "batches: bulk calls made by a batch's leader; queries: statements the database received.",
        ],
        outcomes,
        n,
    )


async def _run_postgres(
    asyncpg: ModuleType, dsn: str, user_ids: Sequence[int], *, max_size: int, max_window: float
) -> tuple[str, list[_Outcome]]:
    pool: _Pool = await asyncpg.create_pool(dsn, min_size=_WORKERS, max_size=_WORKERS)
    try:
        version = str(await pool.fetchval("SHOW server_version"))
        db = _Postgres(pool, f"concresce_demo_{uuid.uuid4().hex[:12]}")
        try:
            await db.create()
            outcomes = await _run(db, user_ids, max_size=max_size, max_window=max_window)
        finally:
            await db.drop()
    finally:
        await pool.close()
    return version, outcomes


def _demo_postgres(asyncpg: ModuleType, dsn: str, n: int, max_size: int, max_window: float) -> int:
    user_ids = _user_ids(n)
    errors = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
    try:
        version, outcomes = asyncio.run(_run_postgres(asyncpg, dsn, user_ids, max_size=max_size, max_window=max_window))
    except errors as exc:
        sys.stderr.write(f"python -m concresce demo: error: PostgreSQL: {type(exc).__name__}: {exc}\n")
        return 2
    return _report(
        [
            f"concresce demo: {_tasks(n)}",
            f"Table of {_TABLE_ROWS} users, created for the demo in PostgreSQL {version} and dropped",
            f"afterwards; ids above {_TABLE_ROWS} are absent (expected: None).",
            f"Each query is a real round trip through an asyncpg pool of {_WORKERS} connections.",
            (
                "The batched strategies send one `WHERE id = ANY($1)` query per batch of at most "
                f"{max_size} {_ids(max_size)}."
            ),
            "batches: bulk calls made by a batch's leader; queries: statements the database received.",
        ],
        outcomes,
        n,
    )


def _tasks(n: int) -> str:
    if n == 1:
        return "1 task looking up one user by id (nothing to batch it with: try --n 100)."
    return f"{n} concurrent tasks, each looking up one user by id."


def _report(intro: list[str], outcomes: Sequence[_Outcome], n: int) -> int:
    lines = [*intro, "", *_table(outcomes, n)]
    failed = any(outcome.wrong for outcome in outcomes)
    if failed:
        lines += ["", "check FAILED: some callers did not get their own row."]
    _write("\n".join(lines))
    return 1 if failed else 0


def _write(text: str) -> None:
    # Looked up at call time, so redirected or captured output is honoured.
    sys.stdout.write(text + "\n")


def _positive_int(text: str) -> int:
    message = f"must be an integer >= 1, got {text!r}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if value < 1:
        raise argparse.ArgumentTypeError(message)
    return value


def _window(text: str) -> float:
    message = f"must be a finite number of seconds >= 0, got {text!r}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(message)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m concresce",
        description="concresce: inline micro-batching for asyncio.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="compare one query per call with @batch on a temporary SQLite database (or PostgreSQL)",
        description=(
            "Run N concurrent per-user lookups against a temporary SQLite database "
            "(or, with --postgres, a temporary table in PostgreSQL) "
            "three ways: one query per call, @batch with tick batching (max_window=0), "
            "and @batch with a time window. Prints queries sent, wall time, speed-up "
            "and whether every caller got its own row; exits with 1 if one did not."
        ),
    )
    # Usage errors found after parsing (--postgres without asyncpg) show the demo's usage.
    demo.set_defaults(usage_error=demo.error)
    demo.add_argument(
        "--postgres",
        metavar="DSN",
        help=(
            "use this PostgreSQL server (e.g. postgresql://user@host:5432/db) instead of SQLite; "
            "the demo creates a table of its own and drops it; needs asyncpg (pip install asyncpg)"
        ),
    )
    demo.add_argument(
        "--n",
        type=_positive_int,
        default=_DEFAULT_N,
        metavar="N",
        help="number of concurrent lookups (default: %(default)s)",
    )
    demo.add_argument(
        "--max-size",
        type=_positive_int,
        default=_DEFAULT_MAX_SIZE,
        metavar="SIZE",
        help="max_size of both batched strategies (default: %(default)s)",
    )
    demo.add_argument(
        "--max-window",
        type=_window,
        default=_DEFAULT_MAX_WINDOW,
        metavar="SECONDS",
        help="max_window of the windowed strategy (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``python -m concresce`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code: 0 on success, 1 if a demo check failed, 2 if the PostgreSQL server
        given with ``--postgres`` could not be used.

    Raises:
        SystemExit: For ``--help`` (code 0), for invalid arguments and when ``--postgres`` is
            given but asyncpg is not installed (code 2).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    n: int = args.n
    max_size: int = args.max_size
    max_window: float = args.max_window
    dsn: str | None = args.postgres
    if dsn is None:
        return _demo(n, max_size, max_window)
    try:
        asyncpg = importlib.import_module("asyncpg")
    except ImportError:
        usage_error: Callable[[str], NoReturn] = args.usage_error
        usage_error("--postgres needs the asyncpg driver, which is not installed: pip install asyncpg")
    return _demo_postgres(asyncpg, dsn, n, max_size, max_window)


def _ids(count: int) -> str:
    """``id`` or ``ids``, for a count of them."""
    return "id" if count == 1 else "ids"
