"""The ``serve_asgi`` fixture of this folder's conftest."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

CONFTEST = Path(__file__).with_name("conftest.py")


def test_serves_until_the_test_ends(serve_asgi):
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"thread": threading.current_thread().name}

    base_url = serve_asgi(app)

    assert base_url.startswith("http://127.0.0.1:")
    response = httpx.get(f"{base_url}/ping")
    assert response.json() == {"thread": "uvicorn test server"}  # not the test's thread


def test_an_app_that_fails_to_start_raises(serve_asgi):
    @asynccontextmanager
    async def lifespan(app):
        msg = "no database"
        raise RuntimeError(msg)
        yield

    with pytest.raises(RuntimeError, match="stopped while starting"):
        serve_asgi(FastAPI(lifespan=lifespan))


def test_every_server_stops_when_the_test_ends(pytester):
    pytester.makeini("[pytest]\nmarkers = integration: needs a real server\n")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import threading

        import httpx
        from fastapi import FastAPI

        URLS = []

        def test_serve(serve_asgi):
            URLS.extend(serve_asgi(FastAPI()) for _ in range(2))
            assert sum(t.name == "uvicorn test server" for t in threading.enumerate()) == 2

        def test_then_stopped():
            assert not any(t.name == "uvicorn test server" for t in threading.enumerate())
            for url in URLS:
                try:
                    httpx.get(url)
                except httpx.ConnectError:
                    pass
                else:
                    raise AssertionError(f"{url} still answers")
        """
    )

    result = pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:randomly")

    result.assert_outcomes(passed=2)
