"""Integration tests: concresce against real PostgreSQL, Redis and HTTP servers.

Every test in this folder is marked ``integration`` (deselect them with ``-m "not integration"``).

The servers come from the environment: ``.ci/servers start DIR`` starts a throw-away
PostgreSQL and Redis and prints the two variables to export::

    d="$(mktemp -d)"; eval "$(.ci/servers start "$d")"; uv run pytest; .ci/servers stop "$d"

Fixtures:

* ``anyio_backend``: real-clock loops only, ``asyncio`` and ``uvloop`` (debug mode off):
  these tests wait for real sockets, which the suite's virtual clock would skip over.
  ``backend_id`` names the running one.
* ``postgres_dsn`` (``str``): ``CONCRESCE_TEST_POSTGRES_DSN``, e.g.
  ``postgresql://postgres@127.0.0.1:PORT/postgres``.
* ``redis_url`` (``str``): ``CONCRESCE_TEST_REDIS_URL``, e.g. ``redis://127.0.0.1:PORT/0``.

  If the variable is unset or nothing answers at its address, the test is skipped with the
  reason, except on CI: when the environment variable ``CI`` is set to a true value (``true``,
  ``1``, ``yes``...), a skip anywhere in this folder, for whatever reason, is turned into a
  failure, so that a CI run without its servers cannot pass by testing nothing.
* ``serve_asgi``: a factory serving ASGI apps (FastAPI, Starlette...) with uvicorn::

      base_url = serve_asgi(app)  # "http://127.0.0.1:PORT", already accepting requests
      base_url = serve_asgi(app, loop="uvloop", lifespan="on")  # extra uvicorn.Config options

  Each app runs on 127.0.0.1, on a port the OS picks, in a uvicorn server in a thread of its
  own (so with its own event loop, not the test's). The call returns once the server
  accepts connections (its lifespan startup done), and raises if it fails to start within
  30 s. Every server the test started is shut down when the test ends. The call blocks
  while the server starts (a few milliseconds), so an async test may call it directly.
* ``serve_wsgi``: a factory serving WSGI apps (Flask...) with waitress, a threaded server::

      base_url = serve_wsgi(app)  # "http://127.0.0.1:PORT", already accepting connections
      base_url = serve_wsgi(app, threads=16)  # extra waitress options

  Like ``serve_asgi``: on 127.0.0.1, a port the OS picks, its main loop in a thread of its
  own and its requests in waitress's worker threads; every server is shut down when the
  test ends.
* ``postgres_schema``: ``with postgres_schema() as (dsn, options)``: a new schema on the
  ``postgres_dsn`` server, dropped (with everything in it) at the end; ``options`` is the
  libpq ``options`` value that makes it a connection's ``search_path``.
* ``table_lock``: ``with table_lock(dsn, "users") as lock``: another connection holds an
  ``ACCESS EXCLUSIVE`` lock on the table, so every query on it waits in PostgreSQL until
  ``lock.release()`` (or the end of the block); ``lock.waiting()`` counts the queries waiting.
* ``eventually``: ``eventually(condition, what)`` polls ``condition()`` until it is true, and
  fails the test after 20 s: for what happens in other threads or in a server, where there
  is nothing to wait on.
* ``joined_calls``: ``joined = joined_calls(fn)``, then ``joined()`` is how many calls of the
  batched ``fn`` joined a batch since (from ``fn.stats()``, which counts every instance of a
  method).
* ``load_example``: ``load_example("redis_cache")`` imports ``examples/redis_cache.py``
  (examples are scripts, not a package) and returns the module.

A fixture of your own for another server should call ``unavailable(reason)`` (skip, or
fail on CI) when the server is missing, like ``postgres_dsn`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import uvicorn
import waitress.server
from psycopg import sql

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator, Iterator
    from types import ModuleType

HERE: Final = Path(__file__).resolve().parent
EXAMPLES: Final = HERE.parent.parent / "examples"

POSTGRES_VAR: Final = "CONCRESCE_TEST_POSTGRES_DSN"
REDIS_VAR: Final = "CONCRESCE_TEST_REDIS_URL"
HOW_TO: Final = "run .ci/servers, see the README's 'Integration tests'"

#: Real-clock anyio backends, by test id.
REAL_CLOCK_BACKENDS: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "asyncio": ("asyncio", {"debug": False}),
}
if sys.platform != "win32":
    REAL_CLOCK_BACKENDS["uvloop"] = ("asyncio", {"debug": False, "use_uvloop": True})

SERVER_START_TIMEOUT: Final = 30.0
SERVER_STOP_TIMEOUT: Final = 10.0
POLL_TIMEOUT: Final = 20.0


def on_ci() -> bool:
    """Whether the environment variable ``CI`` is set to a true value."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no", "off"}


def _in_this_folder(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(HERE)


# --------------------------------------------------------------------------------------
# The marker, and skips that fail on CI
# --------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Called with every item of the session, not only this folder's.
    for item in items:
        if _in_this_folder(item.path):
            item.add_marker(pytest.mark.integration)


def _fail_skip_on_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and on_ci()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped on CI (CI={os.environ.get('CI')!r}), where integration tests must run: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A conftest's runtest hooks only see the items of its own folder.
    report = yield
    _fail_skip_on_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    # A module of this folder skipped at import (``pytest.importorskip``) fails on CI too.
    report = yield
    if _in_this_folder(collector.path):
        _fail_skip_on_ci(report)
    return report


def unavailable(reason: str) -> NoReturn:
    """Skip the test (fail it on CI) because a server it needs is not available."""
    if on_ci():
        pytest.fail(f"{reason} (CI={os.environ.get('CI')!r}: integration tests must not skip)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------
# Backends and servers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(REAL_CLOCK_BACKENDS.values()), ids=list(REAL_CLOCK_BACKENDS))
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Real-clock backends only (overrides the suite's, which include a virtual clock)."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture
def backend_id(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    """The running backend's id: ``"asyncio"`` or ``"uvloop"``."""
    return next(name for name, backend in REAL_CLOCK_BACKENDS.items() if backend is anyio_backend)


def _server_address(var: str, default_port: int) -> str:
    value = os.environ.get(var, "").strip()
    if not value:
        unavailable(f"{var} is not set: set it to a server's address or {HOW_TO}")
    parts = urlsplit(value)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        unavailable(f"{var}={value}: nothing answers at {host}:{port} ({exc}); start the server or {HOW_TO}")
    return value


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test PostgreSQL server's DSN (skip, or fail on CI, if there is none)."""
    return _server_address(POSTGRES_VAR, 5432)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis server's URL (skip, or fail on CI, if there is none)."""
    return _server_address(REDIS_VAR, 6379)


class _ThreadedServer:
    """A uvicorn server running in a thread of its own."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        # log_config=None: leave the logging configuration of the test process alone.
        # ws="none": no websocket support to import (the websockets package warns on import).
        config = uvicorn.Config(
            app,
            **{
                "host": "127.0.0.1",
                "port": 0,
                "log_config": None,
                "log_level": "warning",
                "ws": "none",
                "timeout_graceful_shutdown": 5,
                **options,
            },
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="uvicorn test server", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 -- uvicorn exits (SystemExit) if the app fails to start
            self.error = exc

    def start(self) -> str:
        self.thread.start()
        # uvicorn sets ``started`` once it listens and the lifespan startup is done; it ends
        # ``run()`` if the startup fails. Bounded polling: there is nothing to await.
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive():
                msg = f"the ASGI server stopped while starting ({self.error!r}; see its log)"
                raise RuntimeError(msg) from self.error
            if time.monotonic() > deadline:
                self.server.should_exit = True
                msg = f"the ASGI server did not start within {SERVER_START_TIMEOUT} s"
                raise RuntimeError(msg)
            time.sleep(0.005)
        (listener,) = self.server.servers
        host, port = listener.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True  # uvicorn checks it every 0.1 s


class _Server(Protocol):
    """A test server running in a thread of its own (``_ThreadedServer``, ``_WaitressServer``)."""

    thread: threading.Thread

    def start(self) -> str: ...
    def stop(self) -> None: ...


def _serving(kind: str, server_class: Callable[[Any, dict[str, Any]], _Server]) -> Iterator[Callable[..., str]]:
    """A fixture's body: a factory that serves apps, and every server stopped at the end."""
    servers: list[_Server] = []

    def serve(app: Any, **options: Any) -> str:
        server = server_class(app, options)
        servers.append(server)
        return server.start()

    yield serve
    for server in servers:
        server.stop()
    for server in servers:
        server.thread.join(SERVER_STOP_TIMEOUT)
    if any(server.thread.is_alive() for server in servers):
        msg = f"a test server ({kind}) did not stop within {SERVER_STOP_TIMEOUT} s"
        raise RuntimeError(msg)


@pytest.fixture
def serve_asgi() -> Iterator[Callable[..., str]]:
    """Factory: ``serve_asgi(app, **uvicorn_options)`` serves ``app``, returns its base URL."""
    yield from _serving("ASGI", _ThreadedServer)


class _WaitressServer:
    """A waitress server: its main loop in a thread of its own, its requests in its workers."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        # Binds and listens at once: connections wait in the backlog until run() accepts them.
        self.server = waitress.server.create_server(app, **{"host": "127.0.0.1", "port": 0, **options})
        self.thread = threading.Thread(target=self.server.run, name="waitress test server", daemon=True)

    def start(self) -> str:
        self.thread.start()
        return f"http://{self.server.effective_host}:{self.server.effective_port}"

    def stop(self) -> None:
        # The thunk runs in the main loop's thread (the only one that may touch its channels):
        # closing every channel, the listener and the trigger empties the map, which ends run().
        def close_all() -> None:
            for channel in list(self.server._map.values()):  # the loop's channels
                channel.close()

        self.server.trigger.pull_trigger(close_all)
        # The workers end once their current request is done (none is, when a test ends).
        self.server.task_dispatcher.shutdown(timeout=SERVER_STOP_TIMEOUT)


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[..., str]]:
    """Factory: ``serve_wsgi(app, **waitress_options)`` serves ``app``, returns its base URL."""
    yield from _serving("WSGI", _WaitressServer)


@pytest.fixture(scope="session")
def postgres_schema(postgres_dsn: str) -> Callable[[], contextlib.AbstractContextManager[tuple[str, str]]]:
    """``with postgres_schema() as (dsn, options)``: a schema of its own, dropped at the end.

    ``options`` is the libpq ``options`` value (``psycopg.connect(dsn, options=options)``, or
    a pool's ``kwargs``) that puts the new schema first on the connection's ``search_path``.
    """

    @contextlib.contextmanager
    def make() -> Iterator[tuple[str, str]]:
        name = f"concresce_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        try:
            yield postgres_dsn, f"-c search_path={name}"
        finally:
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))

    return make


class TableLock:
    """A connection's ``ACCESS EXCLUSIVE`` lock on a table: every other query on it waits."""

    def __init__(self, connection: psycopg.Connection[Any], table: str) -> None:
        self.connection = connection
        # psycopg opens a transaction with the first statement; the lock lasts until its end.
        connection.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        self.released = False

    def waiting(self) -> int:
        """How many queries of other connections wait for a lock right now."""
        # pg_stat_activity is read once per transaction, and this connection stays in the
        # transaction that holds the lock: without a new snapshot, every call would see what
        # the first one saw.
        self.connection.execute("SELECT pg_stat_clear_snapshot()")
        row = self.connection.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"""
        ).fetchone()
        assert row is not None
        count: int = row[0]
        return count

    def release(self) -> None:
        """End the lock's transaction: the waiting queries run."""
        if not self.released:
            self.released = True
            self.connection.rollback()


@pytest.fixture(scope="session")
def table_lock() -> Callable[..., contextlib.AbstractContextManager[TableLock]]:
    """``with table_lock(dsn, table, **connect_options) as lock``: see :class:`TableLock`."""

    @contextlib.contextmanager
    def lock(dsn: str, table: str, **connect_options: Any) -> Iterator[TableLock]:
        with psycopg.connect(dsn, **connect_options) as connection:
            held = TableLock(connection, table)
            try:
                yield held
            finally:
                held.release()

    return lock


@pytest.fixture(scope="session")
def eventually() -> Callable[[Callable[[], bool], str], None]:
    """``eventually(condition, what)``: poll ``condition`` until true; fail after ``POLL_TIMEOUT`` s.

    For what happens in other threads or in a server, where there is nothing to wait on.
    """

    def wait(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + POLL_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {POLL_TIMEOUT} s waiting for {what}")
            time.sleep(0.002)

    return wait


@pytest.fixture(scope="session")
def joined_calls() -> Callable[[Any], Callable[[], int]]:
    """``joined = joined_calls(fn)``; ``joined()``: calls of ``fn`` that joined a batch since.

    ``fn`` is a batched function or method (thread or async); a method's counters are those
    of every instance (``stats()`` is per function).
    """

    def since_now(function: Any) -> Callable[[], int]:
        before: int = function.stats().calls
        return lambda: function.stats().calls - before

    return since_now


@pytest.fixture(scope="session")
def load_example() -> Callable[[str], ModuleType]:
    """``load_example(name)``: import ``examples/<name>.py`` (once per session) and return it."""

    def load(name: str) -> ModuleType:
        module_name = f"concresce_examples.{name}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module

    return load


@pytest.fixture(scope="session")
def demo_database(postgres_dsn: str) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with demo_database(example, users=N, lonely_user=K) as dsn``: a database of its own.

    Filled by ``example.install_demo_data(pool, users=N)`` (the FastAPI and Strawberry
    examples share that schema) plus user ``K``, who follows nobody; dropped at the end. Made
    and dropped on a loop of its own in a worker thread, as the test's loop changes with the
    backend.
    """

    @contextlib.contextmanager
    def make(example: ModuleType, *, users: int, lonely_user: int) -> Iterator[str]:
        import asyncpg  # noqa: PLC0415 -- the integration group's client, only where needed

        name = f"concresce_{example.__name__.rpartition('.')[2]}_{uuid.uuid4().hex[:12]}"
        database_dsn = urlunsplit(urlsplit(postgres_dsn)._replace(path=f"/{name}"))

        async def create() -> None:
            admin = await asyncpg.connect(postgres_dsn)
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            pool = await example.create_pool(database_dsn)
            try:
                await example.install_demo_data(pool, users=users)
                await pool.execute("INSERT INTO users VALUES ($1, $2)", lonely_user, "lonely")
            finally:
                await pool.close()

        async def drop() -> None:
            admin = await asyncpg.connect(postgres_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

        try:
            _run_in_thread(create)
            yield database_dsn
        finally:
            _run_in_thread(drop)

    return make


def _run_in_thread(function: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, function()).result()
