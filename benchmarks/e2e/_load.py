"""A closed-loop HTTP/1.1 load generator on asyncio streams.

Each virtual client holds one keep-alive connection and sends its next request as soon as
the previous answer is in. The client is deliberately minimal (one ``GET``, a
``Content-Length`` body, no TLS, no redirects): on a 2-core machine the load generator
competes with the server and PostgreSQL for CPU, and a full-featured client such as httpx
spends several times more CPU per request than the few microseconds spent here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

from _common import order_total


class ProtocolError(Exception):
    """The server's answer is not what this client understands."""


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str) -> tuple[int, bytes]:
        """Send one request; return the status code and the body."""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, _, headers = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length is None:
            msg = f"no Content-Length in the answer to {method} {path}: {head!r}"
            raise ProtocolError(msg)
        return status, await self.reader.readexactly(length)

    async def json(self, method: str, path: str) -> dict[str, object]:
        status, body = await self.request(method, path)
        if status != 200:
            msg = f"{method} {path}: HTTP {status}: {body[:200]!r}"
            raise ProtocolError(msg)
        answer: dict[str, object] = json.loads(body)
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Phase:
    """What the clients record during one phase."""

    deadline: float
    max_requests: int
    items: int
    latencies: list[float] = field(default_factory=list)
    issued: int = 0
    errors: int = 0
    first_error: str | None = None


async def _client(connection: Connection, phase: Phase, rng: random.Random) -> None:
    clock = time.perf_counter
    while phase.issued < phase.max_requests and clock() < phase.deadline:
        phase.issued += 1
        order = rng.randrange(1_000_000)
        started = clock()
        status, body = await connection.request("GET", f"/order/{order}")
        phase.latencies.append(clock() - started)
        ok = status == 200 and json.loads(body).get("total") == order_total(order, phase.items)
        if not ok:
            phase.errors += 1
            if phase.first_error is None:
                phase.first_error = f"GET /order/{order}: HTTP {status}: {body[:200]!r}"


async def control(host: str, port: int, method: str, path: str) -> dict[str, object]:
    """One control request (``/reset``, ``/stats``) on a connection of its own.

    A connection kept for these would sit idle while the load runs, and uvicorn closes idle
    keep-alive connections after a few seconds.
    """
    connection = await Connection.open(host, port)
    try:
        return await connection.json(method, path)
    finally:
        await connection.close()


@dataclass(frozen=True)
class Point:
    """One measured point: a strategy's server at one offered concurrency."""

    requests: int
    seconds: float
    client_cpu_seconds: float
    latencies: list[float]
    errors: int
    first_error: str | None
    stats: dict[str, object]


async def measure(
    host: str,
    port: int,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    max_requests: int,
    items: int,
    seed: int = 0,
) -> Point:
    """Warm up, reset the server's counters, then measure ``duration`` seconds of load.

    The counters are reset and read while no request is in flight, so the server's query
    count covers exactly the measured requests.
    """
    connections = await asyncio.gather(*(Connection.open(host, port) for _ in range(concurrency)))
    rngs = [random.Random(seed * 100_003 + i) for i in range(concurrency)]  # noqa: S311
    try:
        warm = Phase(time.perf_counter() + warmup, max_requests, items)
        await asyncio.gather(*(_client(c, warm, r) for c, r in zip(connections, rngs, strict=True)))
        await control(host, port, "POST", "/reset")
        cpu_before = (await control(host, port, "GET", "/stats"))["cpu_seconds"]
        started, cpu_started = time.perf_counter(), time.process_time()
        phase = Phase(started + duration, max_requests, items)
        await asyncio.gather(*(_client(c, phase, r) for c, r in zip(connections, rngs, strict=True)))
        seconds, client_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        stats = await control(host, port, "GET", "/stats")
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    assert isinstance(cpu_before, float)
    assert isinstance(stats["cpu_seconds"], float)
    stats["cpu_seconds"] -= cpu_before
    return Point(len(phase.latencies), seconds, client_cpu, phase.latencies, phase.errors, phase.first_error, stats)
