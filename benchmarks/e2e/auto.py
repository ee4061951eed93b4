"""The self-tuning flush against every fixed policy, at 1 to 512 clients, in one run (issue 13).

Run from the repository root::

    uv run --group bench python benchmarks/e2e/auto.py            # about 15 minutes
    uv run --group bench python benchmarks/e2e/auto.py --quick    # one round of each point

Two variants, same PostgreSQL, same strategies (``STRATEGIES`` below), same clients:

* ``http``: the end-to-end benchmark (``run.py``: FastAPI + asyncpg, 10 lookups per request);
* ``db``: per-item lookups straight against PostgreSQL in this process (``db.py``), so the
  database and the pool are the bottleneck.

Each point is measured ``--rounds`` times, interleaved with the others; the report gives the
median and the spread (min-max over rounds) of p50, p99 and throughput, checks the issue's
targets for ``auto`` against the best fixed strategy at each load, and writes
``results/auto.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import asyncpg
import db
import run
from _auto_render import markdown, plot

#: The strategies of issue 13, in report order.
STRATEGIES: Final = (
    "unbatched",
    "tick",
    "window_0_5ms",
    "window_1ms",
    "window_5ms",
    "group_commit",
    "group_commit_2",
    "auto",
)
CLIENTS: Final = (1, 8, 64, 256, 512)


def log(message: str) -> None:
    """Progress goes to stderr."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of one measure over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def http_rows(args: argparse.Namespace, dsn: str, strategies: list[str]) -> list[dict[str, Any]]:
    """The HTTP variant, through run.py (its report goes to a temporary folder)."""
    with tempfile.TemporaryDirectory() as out:
        argv = [
            f"--dsn={dsn}",
            f"--strategies={','.join(strategies)}",
            f"--concurrency={args.concurrency}",
            f"--rounds={args.rounds}",
            f"--warmup={args.warmup}",
            f"--duration={args.duration}",
            f"--out={out}",
            "--no-plot",
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            if run.main(argv) != 0:
                msg = "the HTTP variant failed (see above)"
                raise RuntimeError(msg)
        result = json.loads((Path(out) / "latest.json").read_text(encoding="utf-8"))
    return [
        {
            "variant": "http",
            "strategy": row["strategy"],
            "clients": row["concurrency"],
            "p50_ms": spread([r["p50"] for r in row["latency_ms_rounds"]]),
            "p99_ms": spread([r["p99"] for r in row["latency_ms_rounds"]]),
            "throughput": spread(row["throughput_rps_rounds"]),
            "items_per_query": row["items_per_query"],
        }
        for row in result["results"]
    ]


async def db_rows(args: argparse.Namespace, dsn: str, strategies: list[str]) -> list[dict[str, Any]]:
    """The database-bound variant, in this process."""
    table = f"concresce_auto_{secrets.token_hex(4)}"
    await run.create_table(dsn, table)
    pool = await asyncpg.create_pool(dsn, min_size=args.pool_size, max_size=args.pool_size)
    rounds: dict[tuple[str, int], list[db.Round]] = {}
    tuning: dict[tuple[str, int], dict[str, Any] | None] = {}
    try:
        made = {name: db.Strategy(name, pool, table, 1000) for name in strategies}
        clients = [int(c) for c in args.concurrency.split(",")]
        for index in range(args.rounds):
            for position, count in enumerate(clients):
                shift = (index + position) % len(strategies)
                for name in strategies[shift:] + strategies[:shift]:
                    point = await db.measure(
                        made[name], count, warmup=args.warmup, duration=args.duration, seed=index * 1000 + position
                    )
                    if point.errors:
                        msg = f"db {name} at {count} clients: {point.errors} wrong answers"
                        raise RuntimeError(msg)
                    rounds.setdefault((name, count), []).append(point)
                    tuning[name, count] = made[name].stats()  # after the last round
                    log(
                        f"  db round {index + 1}/{args.rounds} c={count:<4} {name:<15}"
                        f" {len(point.latencies) / point.seconds:>8.0f} lookups/s"
                    )
    finally:
        await pool.close()
        await run.drop_table(dsn, table)
    rows = []
    for (name, count), points in rounds.items():
        quantiles = [run._quantiles(point.latencies) for point in points]
        rows.append(
            {
                "variant": "db",
                "strategy": name,
                "clients": count,
                "p50_ms": spread([q["p50"] for q in quantiles]),
                "p99_ms": spread([q["p99"] for q in quantiles]),
                "throughput": spread([round(len(point.latencies) / point.seconds, 1) for point in points]),
                "items_per_query": round(sum(p.items for p in points) / max(sum(p.queries for p in points), 1), 2),
                "tuning": tuning[name, count],
            }
        )
    order = {name: i for i, name in enumerate(STRATEGIES)}
    rows.sort(key=lambda row: (row["clients"], order[row["strategy"]]))
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and load: auto against the best fixed strategy (medians over rounds)."""
    checks = []
    for variant in ("http", "db"):
        for clients in sorted({r["clients"] for r in rows if r["variant"] == variant}):
            here = {r["strategy"]: r for r in rows if r["variant"] == variant and r["clients"] == clients}
            auto = here.get("auto")
            fixed = [r for name, r in here.items() if name != "auto"]
            if auto is None or not fixed:
                continue
            best_p99 = min(fixed, key=lambda r: r["p99_ms"]["median"])
            best_rps = max(fixed, key=lambda r: r["throughput"]["median"])
            check = {
                "variant": variant,
                "clients": clients,
                "auto_p99_ms": auto["p99_ms"]["median"],
                "best_p99_ms": best_p99["p99_ms"]["median"],
                "best_p99_strategy": best_p99["strategy"],
                "p99_ratio": round(auto["p99_ms"]["median"] / best_p99["p99_ms"]["median"], 3),
                "auto_throughput": auto["throughput"]["median"],
                "best_throughput": best_rps["throughput"]["median"],
                "best_throughput_strategy": best_rps["strategy"],
                "throughput_ratio": round(auto["throughput"]["median"] / best_rps["throughput"]["median"], 3),
            }
            if "unbatched" in here:
                check["vs_unbatched_throughput"] = round(
                    auto["throughput"]["median"] / here["unbatched"]["throughput"]["median"], 3
                )
            check["met"] = check["p99_ratio"] <= 1.10 and check["throughput_ratio"] >= 0.95
            checks.append(check)
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="PostgreSQL (default: $CONCRESCE_TEST_POSTGRES_DSN, else .ci/servers)")
    parser.add_argument("--quick", action="store_true", help="one round of 1 s per point")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--concurrency", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--variants", default="http,db", help="http, db or both")
    parser.add_argument("--out", type=Path, default=run.E2E_DIR / "results")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.3, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure both variants, write auto.json, auto.md (and auto.png), print the Markdown."""
    args = parse_args(argv)
    strategies = [name for name in STRATEGIES if name in args.strategies.split(",")]
    variants = args.variants.split(",")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with run.postgres(args.dsn) as (dsn, _source):
        if "db" in variants:
            log("database-bound variant")
            loop = run.new_loop()
            try:
                rows += loop.run_until_complete(db_rows(args, dsn, strategies))
            finally:
                loop.close()
        if "http" in variants:
            log("HTTP variant (run.py)")
            rows += http_rows(args, dsn, strategies)
    meta = run.machine() | {
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "duration_s_per_round": args.duration,
        "pool_size": args.pool_size,
        "strategies": strategies,
        "took_s": round(time.perf_counter() - started, 1),
    }
    result = {"meta": meta, "results": rows, "targets": targets(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auto.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    report = markdown(result) + "\n"
    (args.out / "auto.md").write_text(report, encoding="utf-8")
    if not args.no_plot:
        plot(result, args.out / "auto.png")
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
