"""Thread API benchmark: T threads, one query per item against ``concresce.threads`` batching.

Run from the repository root::

    uv run --group bench python benchmarks/threads.py --quick     # about 1 minute
    uv run --group bench python benchmarks/threads.py             # both backends, about 4 minutes
    uv run --group bench python benchmarks/threads.py --backend sim --threads 1,64 --rounds 5
    uv run --group bench python benchmarks/threads.py --smoke     # every system answers right (CI)

Closed loop: T threads (1 to 128) in this process, each calling the system for one id after
another, against a simulated backend (a pool of 4 tokens, ``time.sleep`` of 2 ms + 10 us per
id) and the real PostgreSQL (psycopg 3, a ``ConnectionPool`` of 4). PostgreSQL is ``--dsn``,
else ``$CONCRESCE_TEST_POSTGRES_DSN``, else a throw-away server started with ``.ci/servers``;
the benchmark creates a table of its own and drops it at the end. Writes
``results/threads.{json,md,png}`` and prints the Markdown report. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from _machine import machine
from _postgres import BenchmarkError, postgres
from _threads_load import Round, run_round
from _threads_render import aggregate, markdown, plot, ratios, targets
from _threads_systems import (
    BACKENDS,
    DEFAULT_SYSTEMS,
    FACTORIES,
    MAX_SIZE,
    SYSTEMS,
    SimulatedBackend,
    create_table,
    describe,
    drop_table,
    postgres_backend,
)

if TYPE_CHECKING:
    from _threads_systems import Backend

BENCH_DIR: Final = Path(__file__).resolve().parent
NAME: Final = "threads"


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    mode: str
    threads: tuple[int, ...]
    rounds: int  # each point is measured this many times, interleaved with the other systems
    warmup: float  # seconds of load before each round of a point, not recorded
    duration: float  # seconds of load per round of a point


PLANS: Final = {
    "full": Plan("full", (1, 2, 4, 8, 16, 32, 64, 128), rounds=5, warmup=0.2, duration=0.6),
    "quick": Plan("quick", (1, 8, 64), rounds=3, warmup=0.2, duration=0.5),
    "smoke": Plan("smoke", (1, 8), rounds=1, warmup=0.05, duration=0.2),
}


def log(message: str) -> None:
    """Progress goes to stderr; stdout gets only the final report."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201


def measure(backend: Backend, systems: list[str], plan: Plan) -> list[dict[str, Any]]:
    """Every (threads, system) point, ``plan.rounds`` times; each round runs every system in turn."""
    rounds: dict[tuple[str, int], list[Round]] = {}
    for round_index in range(plan.rounds):
        for index, threads in enumerate(plan.threads):
            shift = (index + round_index) % len(systems)
            for name in systems[shift:] + systems[:shift]:
                system = FACTORIES[name](backend)  # a fresh @batch function: its own counters
                backend.sizes.clear()
                gc.collect()
                one = run_round(
                    system,
                    backend,
                    threads=threads,
                    warmup=plan.warmup,
                    duration=plan.duration,
                    seed=round_index,
                )
                if max(backend.sizes, default=0) > MAX_SIZE:
                    msg = f"{name}, {threads} threads: a query asked for {max(backend.sizes)} ids (max {MAX_SIZE})"
                    raise BenchmarkError(msg)
                if not one.calls:
                    msg = f"{name}, {threads} threads: no call ended within the {plan.duration:g} s measured"
                    raise BenchmarkError(msg)
                rounds.setdefault((name, threads), []).append(one)
                batch = f"  batch {one.batch_items / one.batches:6.1f}" if one.batches else ""
                log(
                    f"  {backend.name:<8} round {round_index + 1}/{plan.rounds}  T={threads:<4} {name:<10}"
                    f" {one.calls / one.seconds:>9,.0f} calls/s  {one.items / max(one.queries, 1):6.1f} ids/query"
                    + batch
                )
    order = {name: index for index, name in enumerate(SYSTEMS)}
    rows = [aggregate(backend.name, name, threads, found) for (name, threads), found in rounds.items()]
    rows.sort(key=lambda row: (row["threads"], order[row["system"]]))
    return rows


def versions() -> dict[str, str]:
    """Versions of the packages on the measured path."""
    found = {}
    for package in ("concresce-inline", "psycopg", "psycopg-binary", "psycopg-pool"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def finish(result: dict[str, Any]) -> dict[str, Any]:
    """Add the ratios and the targets' verdicts to ``result``."""
    result["ratios"] = ratios(result["results"])
    result["targets"] = targets(result["results"], result["ratios"])
    return result


def write_reports(result: dict[str, Any], out: Path | None, *, with_plot: bool) -> None:
    """Write threads.md (and threads.png) from ``result`` into ``out``, and print the Markdown."""
    report = markdown(result) + "\n"
    if out is not None:
        (out / f"{NAME}.md").write_text(report, encoding="utf-8")
        if with_plot:
            plot(result, out / f"{NAME}.png")
    sys.stdout.write(report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1, 8 and 64 threads, rounds of 0.5 s (about 1 minute)")
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny run of every system that checks the answers; writes files only with --out",
    )
    mode.add_argument(
        "--render-only", action="store_true", help="measure nothing: rebuild threads.md and .png from threads.json"
    )
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both", help="default: %(default)s")
    parser.add_argument("--systems", help=f"comma-separated, of {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1,2,4,8,16,32,64,128)")
    parser.add_argument("--rounds", type=int, help="rounds per point (default: 5, --quick 3)")
    parser.add_argument("--duration", type=float, help="measured seconds per round of a point (default: 0.6)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each round, not measured")
    parser.add_argument("--dsn", help="PostgreSQL to use (default: $CONCRESCE_TEST_POSTGRES_DSN, else .ci/servers)")
    parser.add_argument("--out", type=Path, help="output directory (default: benchmarks/results; --smoke: none)")
    parser.add_argument("--no-plot", action="store_true", help="write no threads.png (matplotlib not needed)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan, with the command line's overrides."""
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides: dict[str, Any] = {}
    if args.threads:
        overrides["threads"] = tuple(int(t) for t in args.threads.split(","))
    for name in ("rounds", "duration", "warmup"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if overrides:
        plan = Plan(**{**plan.__dict__, **overrides, "mode": f"{plan.mode}, custom"})
    if plan.rounds < 1 or plan.duration <= 0 or plan.warmup < 0 or min(plan.threads) < 1:
        msg = f"nothing to measure: {plan}"
        raise BenchmarkError(msg)
    return plan


def main(argv: list[str] | None = None) -> int:
    """Measure, write the results, print the report."""
    args = parse_args(argv)
    out: Path | None = args.out if args.out is not None or args.smoke else BENCH_DIR / "results"
    if args.render_only:
        assert out is not None
        path = out / f"{NAME}.json"
        result = finish(json.loads(path.read_text(encoding="utf-8")))
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        write_reports(result, out, with_plot=not args.no_plot)
        return 0
    systems = DEFAULT_SYSTEMS
    if args.systems:
        systems = tuple(name.strip() for name in args.systems.split(",") if name.strip())
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        log(f"unknown systems: {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
        return 2
    ordered = [name for name in SYSTEMS if name in systems]
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    try:
        plan = make_plan(args)
        log(
            f"{plan.mode} run: {', '.join(backends)} x {', '.join(ordered)} x threads {plan.threads} x "
            f"{plan.rounds} round(s) of {plan.warmup:g} s warm-up + {plan.duration:g} s"
        )
        if "sim" in backends:
            rows += measure(SimulatedBackend(), ordered, plan)
        if "postgres" in backends:
            table = f"concresce_threads_{secrets.token_hex(4)}"
            with postgres(args.dsn, log=log, prefix="concresce-threads-") as (dsn, dsn_source):
                meta["postgres"] = create_table(dsn, table)
                meta["postgres_from"] = dsn_source
                try:
                    with postgres_backend(dsn, table) as backend:
                        rows += measure(backend, ordered, plan)
                finally:
                    drop_table(dsn, table)
    except BenchmarkError as error:
        log(f"benchmark failed: {error}")
        return 1

    meta = (
        machine()
        | meta
        | {
            "mode": plan.mode,
            "plan": plan.__dict__,
            "backends": list(backends),
            "systems": ordered,
            "setup": describe(),
            "switch_interval_s": sys.getswitchinterval(),
            "versions": versions(),
            "duration_s": round(time.perf_counter() - started, 1),
            # 1-minute load averages: how busy the machine was (this run's own threads included).
            "load_average_before": round(load_before[0], 2) if load_before else None,
            "load_average_after": round(os.getloadavg()[0], 2) if load_before else None,
        }
    )
    result = finish({"meta": meta, "results": rows})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_reports(result, out, with_plot=not args.no_plot and not args.smoke)
    log(f"done in {meta['duration_s']:.0f} s" + (f"; wrote {out.name}/{NAME}.json and .md" if out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
