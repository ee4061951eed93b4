"""Smoke test of the thread API benchmark (benchmarks/threads.py --smoke) on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "threads.py"

SYSTEMS = ("unbatched", "batched", "floor")
ROW_KEYS = {
    "backend",
    "system",
    "threads",
    "calls",
    "seconds",
    "calls_per_s",
    "latency_ms",
    "queries",
    "ids_per_query",
    "batches",
    "mean_batch_size",
}


def test_threads_benchmark_smoke_run(postgres_dsn, tmp_path):
    """Every system at 1 and 8 threads on both backends: right answers, a well-formed report, batches."""
    command = [sys.executable, str(RUN), "--smoke", f"--dsn={postgres_dsn}", f"--out={tmp_path}"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, check=False)  # noqa: S603
    # The run checks every answer itself and fails on a wrong one.
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "threads.md").read_text(encoding="utf-8") == completed.stdout
    assert not (tmp_path / "threads.png").exists()  # --smoke never plots

    result = json.loads((tmp_path / "threads.json").read_text(encoding="utf-8"))
    assert set(result) == {"meta", "results", "ratios", "targets"}
    assert result["meta"]["systems"] == list(SYSTEMS)
    assert result["meta"]["backends"] == ["sim", "postgres"]
    assert result["meta"]["plan"]["threads"] == [1, 8]
    rows = {(row["backend"], row["system"], row["threads"]): row for row in result["results"]}
    assert set(rows) == {
        (backend, system, threads) for backend in ("sim", "postgres") for system in SYSTEMS for threads in (1, 8)
    }
    for (_, system, _), row in rows.items():
        assert set(row) == ROW_KEYS
        assert row["calls"] > 0
        assert len(row["calls_per_s"]["samples"]) == 1
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] <= row["latency_ms"]["max"]
        if system == "unbatched":
            assert row["ids_per_query"] == 1
            assert row["mean_batch_size"] is None
        else:
            assert 1 <= row["mean_batch_size"] <= 100
            assert 1 <= row["ids_per_query"] <= 100

    for backend in ("sim", "postgres"):
        for system in ("batched", "floor"):
            # A lone thread never waits: each of its calls is a batch of its own item.
            assert rows[backend, system, 1]["ids_per_query"] == 1
            assert rows[backend, system, 1]["mean_batch_size"] == 1
    # Eight threads on four slots, each query holding its slot for 2 ms: more than four callers
    # wait at once, so batches form.
    assert rows["sim", "batched", 8]["mean_batch_size"] > 1
    assert rows["sim", "batched", 8]["queries"] < rows["sim", "batched", 8]["calls"]

    ratios = {(row["backend"], row["system"], row["threads"]) for row in result["ratios"]}
    assert ratios == {(b, s, t) for b in ("sim", "postgres") for s in ("batched", "floor") for t in (1, 8)}
    # Only the 1-thread target is in reach of a run at 1 and 8 threads.
    assert [(t["backend"], t["threads"]) for t in result["targets"]] == [("sim", 1), ("postgres", 1)]
    assert "## Targets (issue 12)" in completed.stdout


def test_threads_benchmark_render_only_rebuilds_the_report(tmp_path):
    """--render-only rewrites threads.md from threads.json, measuring nothing."""
    measured = subprocess.run(  # noqa: S603
        [sys.executable, str(RUN), "--smoke", "--backend=sim", "--systems=unbatched", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert measured.returncode == 0, measured.stderr
    (tmp_path / "threads.md").unlink()
    rendered = subprocess.run(  # noqa: S603
        [sys.executable, str(RUN), "--render-only", "--no-plot", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == measured.stdout
    assert (tmp_path / "threads.md").read_text(encoding="utf-8") == measured.stdout
