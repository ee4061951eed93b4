"""Smoke test of the end-to-end benchmark (benchmarks/e2e/run.py) in a tiny mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e" / "run.py"

LATENCY_KEYS = {"p50", "p90", "p99", "max", "mean"}
ROW_KEYS = {
    "strategy",
    "concurrency",
    "requests",
    "seconds",
    "throughput_rps",
    "throughput_rps_rounds",
    "latency_ms_rounds",
    "latency_ms",
    "queries",
    "queries_per_request",
    "items_per_query",
    "server_cpu_ms_per_request",
    "client_cpu_ms_per_request",
}


def tiny_run(script: Path, dsn: str, out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script with unbatched, tick and auto at 1 and 8 clients, one short round each."""
    command = [
        sys.executable,
        str(script),
        f"--dsn={dsn}",
        "--strategies=unbatched,tick,auto",
        "--concurrency=1,8",
        "--rounds=1",
        "--warmup=0.1",
        "--duration=0.3",
        f"--out={out}",
        "--no-plot",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    assert completed.returncode == 0, completed.stderr
    return completed


def test_e2e_benchmark_tiny_run(postgres_dsn, tmp_path):
    """Three strategies at 1 and 8 clients: a well-formed report, and batching saves queries."""
    completed = tiny_run(RUN, postgres_dsn, tmp_path, timeout=60)
    assert (tmp_path / "latest.md").read_text(encoding="utf-8") == completed.stdout
    assert not (tmp_path / "latest.png").exists()

    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert set(result) == {"meta", "results", "summary"}
    assert result["meta"]["strategies"] == ["unbatched", "tick", "auto"]
    assert result["meta"]["items_per_request"] == 10
    rows = {(row["strategy"], row["concurrency"]): row for row in result["results"]}
    assert set(rows) == {(s, c) for s in ("unbatched", "tick", "auto") for c in (1, 8)}
    for row in rows.values():
        assert set(row) == ROW_KEYS
        assert set(row["latency_ms"]) == LATENCY_KEYS
        assert row["requests"] > 0
        assert row["throughput_rps"] > 0
        assert len(row["throughput_rps_rounds"]) == 1
        assert len(row["latency_ms_rounds"]) == 1
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] <= row["latency_ms"]["max"]

    for concurrency in (1, 8):
        unbatched, tick, auto = rows["unbatched", concurrency], rows["tick", concurrency], rows["auto", concurrency]
        assert 0 < auto["queries"] <= auto["requests"]  # like tick: a request's lookups share a query
        # One query per lookup, ten lookups per request...
        assert unbatched["queries"] == 10 * unbatched["requests"]
        assert unbatched["items_per_query"] == 1
        # ...against at most one query per request: a request's ten gathered lookups reach
        # collect() in the same loop turn, and concurrent requests can share a batch too.
        assert 0 < tick["queries"] <= tick["requests"]
        assert tick["queries_per_request"] < unbatched["queries_per_request"]
    assert rows["tick", 1]["queries"] == rows["tick", 1]["requests"]  # one client: nobody to share with
    assert rows["auto", 1]["queries"] == rows["auto", 1]["requests"]

    summary = result["summary"]
    assert summary["best_concresce_at_high"]["strategy"] in {"tick", "auto"}
    assert summary["high_concurrency"] == 8


SCALING = RUN.with_name("scaling.py")


def test_scaling_benchmark_with_two_workers_counts_every_worker(postgres_dsn, tmp_path):
    """scaling.py with W = 1 and 2: the server's counters add up over both workers, and the report has a row per W."""
    command = [
        sys.executable,
        str(SCALING),
        f"--dsn={postgres_dsn}",
        "--workers=1,2",
        "--pool-total=2",
        "--strategies=unbatched,tick",
        "--concurrency=8",
        "--passes=1",
        "--warmup=0.2",
        "--duration=0.3",
        f"--out={tmp_path}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    # run.py fails a point whose server-side request count differs from the client's, so a
    # success means /stats summed the counters of both workers.
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "scaling.md").read_text(encoding="utf-8") == completed.stdout
    runs = json.loads((tmp_path / "scaling.json").read_text(encoding="utf-8"))
    assert set(runs) == {"1", "2"}
    assert [run["meta"]["workers"] for run in runs["2"]] == [2]
    assert [run["meta"]["pool_size"] for run in runs["2"]] == [1]
    for results in runs.values():
        rows = {row["strategy"]: row for row in results[0]["results"]}
        assert rows["unbatched"]["queries"] == 10 * rows["unbatched"]["requests"]
        assert 0 < rows["tick"]["queries"] <= rows["tick"]["requests"]
    assert "| `tick` | 2 |" in completed.stdout


AUTO = RUN.with_name("auto.py")


def test_auto_benchmark_tiny_run(postgres_dsn, tmp_path):
    """auto.py, both variants, three strategies at 1 and 8 clients: every point, the targets and the tuner's choices."""
    completed = tiny_run(AUTO, postgres_dsn, tmp_path, timeout=90)
    assert (tmp_path / "auto.md").read_text(encoding="utf-8") == completed.stdout
    result = json.loads((tmp_path / "auto.json").read_text(encoding="utf-8"))
    points = {(row["variant"], row["strategy"], row["clients"]) for row in result["results"]}
    assert points == {(v, s, c) for v in ("http", "db") for s in ("unbatched", "tick", "auto") for c in (1, 8)}
    for row in result["results"]:
        assert 0 < row["p50_ms"]["median"] <= row["p99_ms"]["median"]
        assert row["throughput"]["median"] > 0
        assert (row.get("tuning") is not None) == (row["variant"] == "db" and row["strategy"] == "auto")
    assert [(t["variant"], t["clients"]) for t in result["targets"]] == [("http", 1), ("http", 8), ("db", 1), ("db", 8)]
    assert "## What auto chose" in completed.stdout
