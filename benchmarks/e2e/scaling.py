"""Scaling out: the end-to-end benchmark with 1, 2 and 4 worker processes per server.

Run from the repository root::

    uv run --group bench python benchmarks/e2e/scaling.py            # about 4 minutes
    uv run --group bench python benchmarks/e2e/scaling.py --workers 1,2 --passes 1

concresce batches inside one process: with ``uvicorn --workers W`` (or gunicorn) each worker
batches only the requests it accepted, so at a given load each worker's batches hold about a
W-th of the items. This script measures that: for each W it runs ``run.py --workers W`` (the
same service, the same load generator) with a fixed budget of PostgreSQL connections split
between the workers (``--pool-total``, default 8: 8, 4 and 2 per worker), then writes
``results/scaling.{json,md}`` with throughput, p99 latency and mean batch size per W. Every
W is measured in each of ``--passes`` passes (default 2), one W after the other, so the
report shows how much the numbers move between passes on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

E2E_DIR: Final = Path(__file__).resolve().parent


def log(message: str) -> None:
    """Progress goes to stderr."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201


def run_one(workers: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``run.py`` with ``workers`` processes per server; its ``latest.json``."""
    command = [
        sys.executable,
        str(E2E_DIR / "run.py"),
        f"--workers={workers}",
        f"--pool-size={args.pool_total // workers}",
        f"--strategies={args.strategies}",
        f"--concurrency={args.concurrency}",
        f"--rounds={args.rounds}",
        f"--warmup={args.warmup}",
        f"--duration={args.duration}",
        f"--out={out}",
        "--no-plot",
    ]
    if args.dsn:
        command.append(f"--dsn={args.dsn}")
    log(f"W={workers}: {' '.join(command[1:])}")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # noqa: S603 -- our own script
    result: dict[str, Any] = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    return result


def markdown(runs: dict[int, list[dict[str, Any]]], pool_total: int) -> str:
    """One table per concurrency: a row per (strategy, W), every pass shown."""
    first = runs[min(runs)][0]["meta"]
    passes = len(runs[min(runs)])
    split = ", ".join(f"W={w}: {results[0]['meta']['pool_size']} each" for w, results in runs.items())
    loads = "; ".join(
        f"W={w}: " + ", ".join(f"{r['meta']['load_average_before']}/{r['meta']['load_average_after']}" for r in results)
        for w, results in runs.items()
    )
    lines = [
        "# Scaling out: worker processes (end-to-end benchmark)",
        "",
        (
            f"{first['date']}; CPython {first['python']}, {first['cpu_count']} CPUs; commit {first['commit']}. "
            f"PostgreSQL {first['postgres']} on the same machine. Workers W = {', '.join(map(str, runs))}, "
            f"measured in {passes} pass(es) that go through every W in turn; a budget of {pool_total} PostgreSQL "
            f"connections split between the workers ({split}). In each pass every point gets "
            f"{first['plan']['rounds']} round(s) of {first['plan']['warmup']:g} s warm-up then "
            f"{first['plan']['duration']:g} s, interleaved with the other strategies. req/s is the mean of the "
            "passes; p99 and the mean batch are shown per pass. 1-minute load averages before/after each run: "
            f"{loads}."
        ),
    ]
    concurrencies = sorted({row["concurrency"] for results in runs.values() for r in results for row in r["results"]})
    for concurrency in concurrencies:
        lines += [
            "",
            f"## {concurrency} clients",
            "",
            "| strategy | W | req/s | req/s per pass | p99 ms per pass | mean batch per pass | server CPU ms/req |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for strategy in first["strategies"]:
            for workers, results in runs.items():
                rows = [
                    row
                    for r in results
                    for row in r["results"]
                    if row["strategy"] == strategy and row["concurrency"] == concurrency
                ]
                if not rows:
                    continue
                rps = [row["throughput_rps"] for row in rows]
                p99 = " / ".join(f"{row['latency_ms']['p99']:.0f}" for row in rows)
                batches = " / ".join(f"{row['items_per_query']:.1f}" for row in rows)
                cpu = sum(row["server_cpu_ms_per_request"] for row in rows) / len(rows)
                lines.append(
                    f"| `{strategy}` | {workers} | {sum(rps) / len(rps):,.0f} | "
                    f"{' / '.join(f'{x:,.0f}' for x in rps)} | "
                    f"{p99} | {batches} | {cpu:.2f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure every W, write ``results/scaling.{json,md}``, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (default: %(default)s)")
    parser.add_argument("--pool-total", type=int, default=8, help="connections split between the workers")
    parser.add_argument("--strategies", default="unbatched,tick,group_commit")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per point in each pass")
    parser.add_argument("--passes", type=int, default=2, help="times to go through every W (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--dsn", help="PostgreSQL (default: as run.py: $CONCRESCE_TEST_POSTGRES_DSN, else .ci/servers)")
    parser.add_argument("--out", type=Path, default=E2E_DIR / "results")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    if any(w < 1 or args.pool_total % w for w in workers):
        log(f"every worker count must be >= 1 and divide --pool-total ({args.pool_total})")
        return 2
    # Every pass goes through every W, so that slow drift of a shared machine hits them alike.
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory(prefix="concresce-scaling-") as tmp:
        for index in range(args.passes):
            for w in workers:
                out = Path(tmp) / f"pass{index}-w{w}"
                out.mkdir()
                runs[w].append(run_one(w, args, out))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({str(w): r for w, r in runs.items()}, indent=1) + "\n")
    report = markdown(runs, args.pool_total)
    (args.out / "scaling.md").write_text(report, encoding="utf-8")
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
