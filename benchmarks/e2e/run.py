"""End-to-end load benchmark: FastAPI + asyncpg + PostgreSQL, N+1 lookups, seven strategies.

Run from the repository root::

    uv run --group bench python benchmarks/e2e/run.py --quick        # about 1 minute
    uv run --group bench python benchmarks/e2e/run.py                # the full run, about 4 minutes
    uv run --group bench python benchmarks/e2e/run.py --dsn postgresql://user@host:port/db

The PostgreSQL server is ``--dsn``, else ``$CONCRESCE_TEST_POSTGRES_DSN``, else a throw-away
one started with ``.ci/servers`` for the run. The benchmark creates its own table (a unique
name) and drops it at the end.

Each strategy is served by uvicorn in its own process (``server.py``); this process is the
load generator (``_load.py``): closed-loop, one keep-alive connection per virtual client, at
each offered concurrency in turn. Points go round-robin over the strategies, so slow drift
of the machine hits them all alike. Writes ``results/latest.{json,md,png}`` and prints the
Markdown report. See ``benchmarks/e2e/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import asyncpg
from _common import ROWS, STRATEGIES, WINDOWS
from _load import Point, measure
from _render import markdown, plot, summarize

# benchmarks/_machine.py, shared with the micro-benchmark (this folder is the script's own).
sys.path.append(str(Path(__file__).resolve().parent.parent))
import _postgres
from _machine import machine
from _postgres import BenchmarkError

E2E_DIR: Final = Path(__file__).resolve().parent
REPO_DIR: Final = E2E_DIR.parents[1]
HOST: Final = "127.0.0.1"


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    mode: str
    concurrency: tuple[int, ...]
    rounds: int  # each point is measured this many times, interleaved with the others
    warmup: float  # seconds of load before each round of a point, not recorded
    duration: float  # seconds of load per round of a point (at most)
    max_requests: int  # requests per round of a point (at most)


PLANS: Final = {
    "full": Plan("full", (1, 8, 64, 256, 512), rounds=3, warmup=0.5, duration=1.5, max_requests=50_000),
    "quick": Plan("quick", (1, 8, 64, 256, 512), rounds=1, warmup=0.3, duration=1.0, max_requests=20_000),
}


def log(message: str) -> None:
    """Progress goes to stderr; stdout gets only the final report."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201


def postgres(dsn: str | None) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """Yield ``(dsn, where it came from)``, starting a throw-away server if there is none."""
    return _postgres.postgres(dsn, log=log, prefix="concresce-e2e-")


async def create_table(dsn: str, table: str) -> str:
    """Create and fill the benchmark's table; return the server's version."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, price integer NOT NULL)")
        await connection.execute(
            f"INSERT INTO {table} (id, price) SELECT g, (g * 37) % 1000 FROM generate_series(1, {ROWS}) AS g"  # noqa: S608
        )
        await connection.execute(f"ANALYZE {table}")
        version: str = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    return version


async def drop_table(dsn: str, table: str) -> None:
    """Drop the benchmark's table."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await connection.close()


class Server:
    """A uvicorn process serving one strategy (see ``server.py``)."""

    def __init__(self, strategy: str, dsn: str, table: str, args: argparse.Namespace) -> None:
        """Start the process and read the port it bound."""
        self.strategy = strategy
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        command = [
            sys.executable,
            str(E2E_DIR / "server.py"),
            f"--dsn={dsn}",
            f"--table={table}",
            f"--strategy={strategy}",
            f"--items={args.items}",
            f"--pool-size={args.pool_size}",
            f"--max-size={args.max_size}",
            f"--loop={args.server_loop}",
            f"--workers={args.workers}",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log)  # noqa: S603
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.close()
            msg = f"server {strategy} did not start:\n{self.stderr()}"
            raise BenchmarkError(msg)
        self.port = int(line.split()[1])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the server accepts connections (its lifespan has opened the pool)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                msg = f"server {self.strategy} exited with {self.process.returncode}:\n{self.stderr()}"
                raise BenchmarkError(msg)
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                msg = f"server {self.strategy} not ready after {timeout:g} s:\n{self.stderr()}"
                raise BenchmarkError(msg)
            time.sleep(0.05)

    def stderr(self) -> str:
        """What the server wrote on stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        """Stop the server (SIGTERM: uvicorn shuts down and closes the pool)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def measure_point(server: Server, plan: Plan, concurrency: int, items: int, seed: int) -> Point:
    """One round of one point, checked."""
    point = await measure(
        HOST,
        server.port,
        concurrency=concurrency,
        warmup=plan.warmup,
        duration=plan.duration,
        max_requests=plan.max_requests,
        items=items,
        seed=seed,
    )
    if point.errors:
        msg = f"{server.strategy}, {concurrency} clients: {point.errors} wrong answers: {point.first_error}"
        raise BenchmarkError(msg)
    if point.stats["requests"] != point.requests:
        msg = f"{server.strategy}: the server counted {point.stats['requests']} requests, the client {point.requests}"
        raise BenchmarkError(msg)
    return point


def _quantiles(latencies: list[float]) -> dict[str, float]:
    """p50 and p99 (ms) of one round's latencies: the spread between rounds."""
    ordered = sorted(latencies)
    return {"p50": round(percentile(ordered, 50) * 1000, 3), "p99": round(percentile(ordered, 99) * 1000, 3)}


def aggregate(strategy: str, concurrency: int, points: list[Point]) -> dict[str, Any]:
    """One row of the report from the rounds of one point: their requests and latencies pooled."""
    requests = sum(point.requests for point in points)
    seconds = sum(point.seconds for point in points)
    latencies = sorted(latency for point in points for latency in point.latencies)
    queries = sum(int(point.stats["queries"]) for point in points)  # type: ignore[call-overload]
    items = sum(int(point.stats["items"]) for point in points)  # type: ignore[call-overload]
    server_cpu = sum(float(point.stats["cpu_seconds"]) for point in points)  # type: ignore[arg-type]
    client_cpu = sum(point.client_cpu_seconds for point in points)
    return {
        "strategy": strategy,
        "concurrency": concurrency,
        "requests": requests,
        "seconds": round(seconds, 4),
        "throughput_rps": round(requests / seconds, 1),
        "throughput_rps_rounds": [round(point.requests / point.seconds, 1) for point in points],
        "latency_ms_rounds": [_quantiles(point.latencies) for point in points],
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 3),
            "p90": round(percentile(latencies, 90) * 1000, 3),
            "p99": round(percentile(latencies, 99) * 1000, 3),
            "max": round(latencies[-1] * 1000, 3),
            "mean": round(sum(latencies) / len(latencies) * 1000, 3),
        },
        "queries": queries,
        "queries_per_request": round(queries / requests, 4),
        "items_per_query": round(items / max(queries, 1), 2),
        "server_cpu_ms_per_request": round(server_cpu / requests * 1000, 4),
        "client_cpu_ms_per_request": round(client_cpu / requests * 1000, 4),
    }


async def measure_all(plan: Plan, servers: list[Server], items: int) -> list[dict[str, Any]]:
    """Every (concurrency, strategy) point, ``plan.rounds`` times, round-robin over the strategies."""
    points: dict[tuple[str, int], list[Point]] = {}
    for round_index in range(plan.rounds):
        for index, concurrency in enumerate(plan.concurrency):
            shift = (index + round_index) % len(servers)
            for server in servers[shift:] + servers[:shift]:
                point = await measure_point(server, plan, concurrency, items, seed=round_index * 1000 + index)
                points.setdefault((server.strategy, concurrency), []).append(point)
                log(
                    f"  round {round_index + 1}/{plan.rounds}  c={concurrency:<4} {server.strategy:<14}"
                    f" {point.requests / point.seconds:>8.0f} req/s"
                    f"  {int(point.stats['queries']) / point.requests:>6.3f} queries/req"  # type: ignore[call-overload]
                )
    order = {name: i for i, name in enumerate(STRATEGIES)}
    rows = [aggregate(strategy, concurrency, rounds) for (strategy, concurrency), rounds in points.items()]
    rows.sort(key=lambda row: (row["concurrency"], order[row["strategy"]]))
    return rows


def versions() -> dict[str, str]:
    """Versions of the packages on the measured path."""
    found = {}
    for package in (
        "concresce-inline",
        "fastapi",
        "starlette",
        "uvicorn",
        "h11",
        "httptools",
        "asyncpg",
        "aiodataloader",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def new_loop() -> asyncio.AbstractEventLoop:
    """The load generator's loop: uvloop when installed (cheaper per request)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def write_reports(result: dict[str, Any], out: Path, *, with_plot: bool) -> None:
    """Write latest.md (and latest.png) from ``result``, and print the Markdown."""
    report = markdown(result) + "\n"
    (out / "latest.md").write_text(report, encoding="utf-8")
    if with_plot:
        plot(result, out / "latest.png")
    sys.stdout.write(report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: $CONCRESCE_TEST_POSTGRES_DSN, else .ci/servers)")
    parser.add_argument("--quick", action="store_true", help="one round of 1 s per point (about 1 minute)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset of the strategies")
    parser.add_argument("--concurrency", help="comma-separated offered concurrencies (default: 1,8,64,256,512)")
    parser.add_argument("--rounds", type=int, help="rounds per point (default: 3, or 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds of load per round (default: 1.5, or 1 with --quick)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up load before each round")
    parser.add_argument("--max-requests", type=int, help="requests per round, at most")
    parser.add_argument("--items", type=int, default=10, help="lookups per request (default: %(default)s)")
    parser.add_argument("--pool-size", type=int, default=10, help="asyncpg pool size per server (default: %(default)s)")
    parser.add_argument("--max-size", type=int, default=1000, help="@batch max_size, 0: none (default: %(default)s)")
    parser.add_argument("--server-loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvicorn's event loop")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes per server, each with its own pool (default: 1)"
    )
    parser.add_argument("--out", type=Path, default=E2E_DIR / "results", help="output directory")
    parser.add_argument("--no-plot", action="store_true", help="write no latest.png (matplotlib not needed)")
    parser.add_argument(
        "--render-only", action="store_true", help="measure nothing: rebuild latest.md and latest.png from latest.json"
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan, with the command line's overrides."""
    plan = PLANS["quick" if args.quick else "full"]
    overrides: dict[str, Any] = {}
    if args.concurrency:
        overrides["concurrency"] = tuple(int(c) for c in args.concurrency.split(","))
    for name in ("rounds", "duration", "warmup", "max_requests"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if overrides:
        plan = Plan(**{**plan.__dict__, **overrides, "mode": "custom"})
    return plan


def main(argv: list[str] | None = None) -> int:
    """Measure everything, write the results, print the report."""
    args = parse_args(argv)
    if args.render_only:
        path = args.out / "latest.json"
        result = json.loads(path.read_text(encoding="utf-8"))
        result["summary"] = summarize(result)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        write_reports(result, args.out, with_plot=not args.no_plot)
        return 0
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or not strategies:
        log(f"unknown strategies: {', '.join(sorted(unknown))}; choose from {', '.join(STRATEGIES)}")
        return 2
    strategies = [name for name in STRATEGIES if name in strategies]
    plan = make_plan(args)
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = f"concresce_e2e_{secrets.token_hex(4)}"
    servers: list[Server] = []
    try:
        with postgres(args.dsn) as (dsn, dsn_source):
            postgres_version = asyncio.run(create_table(dsn, table))
            try:
                servers.extend(Server(strategy, dsn, table, args) for strategy in strategies)
                for server in servers:
                    server.wait_ready()
                if args.workers > 1:
                    # The first worker to listen answers wait_ready(); give the others time
                    # to open their pools, so that every worker takes part from the start.
                    time.sleep(2.0)
                log(
                    f"{plan.mode} run: {len(strategies)} strategies x concurrency {plan.concurrency} x "
                    f"{plan.rounds} round(s) of {plan.warmup:g} s warm-up + {plan.duration:g} s"
                )
                loop = new_loop()
                try:
                    rows = loop.run_until_complete(measure_all(plan, servers, args.items))
                finally:
                    loop.close()
            finally:
                for server in servers:
                    server.close()
                asyncio.run(drop_table(dsn, table))
    except BenchmarkError as error:
        log(f"benchmark failed: {error}")
        return 1

    meta = machine() | {
        "mode": plan.mode,
        "plan": plan.__dict__,
        "strategies": strategies,
        "items_per_request": args.items,
        "pool_size": args.pool_size,
        "max_size": args.max_size or None,
        "windows_s": {name: WINDOWS[name] for name in strategies if name in WINDOWS},
        "server_loop": args.server_loop,
        "workers": args.workers,
        "postgres": postgres_version,
        "postgres_from": dsn_source,
        "versions": versions(),
        "duration_s": round(time.perf_counter() - started, 1),
        # 1-minute load averages: how busy the machine was (this run's own load included).
        "load_average_before": round(load_before[0], 2) if load_before else None,
        "load_average_after": round(os.getloadavg()[0], 2) if load_before else None,
    }
    result: dict[str, Any] = {"meta": meta, "results": rows}
    result["summary"] = summarize(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_reports(result, args.out, with_plot=not args.no_plot)
    log(f"done in {meta['duration_s']:.0f} s; wrote {args.out.name}/latest.json and latest.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
