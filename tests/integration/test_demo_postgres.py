"""``python -m concresce demo --postgres DSN`` against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from concresce._demo import main


def _table(out: str) -> dict[str, tuple[int, str]]:
    """Map each strategy of the demo's table to its query count and check column."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("strategy"))
    table: dict[str, tuple[int, str]] = {}
    for line in lines[start + 1 :]:
        if not line:
            break
        strategy, batches, queries, _wall_time, _speed_up, check = re.split(r"\s{2,}", line, maxsplit=5)
        # PostgreSQL takes a whole batch in one `= ANY($1)` query: one query per batch.
        assert batches == ("-" if strategy == "one query per call" else queries), line
        table[strategy] = (int(queries), check)
    return table


async def _demo_tables(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE 'concresce_demo_%'")
    finally:
        await connection.close()
    return [row["tablename"] for row in rows]


def test_demo_on_postgres_batches_the_lookups(postgres_dsn, capsys):
    """50 callers: 50 queries one per call, one with tick batching; every row right; table dropped."""
    before = asyncio.run(_demo_tables(postgres_dsn))
    assert main(["demo", "--postgres", postgres_dsn, "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "PostgreSQL" in out
    table = _table(out)
    assert list(table) == [
        "one query per call",
        "@batch(max_window=0, max_size=100)",
        "@batch(max_window=0.002, max_size=100)",
    ]
    assert table["one query per call"] == (50, "ok")
    assert table["@batch(max_window=0, max_size=100)"] == (1, "ok")
    windowed_queries, windowed_check = table["@batch(max_window=0.002, max_size=100)"]
    assert 1 <= windowed_queries < 50
    assert windowed_check == "ok"
    assert asyncio.run(_demo_tables(postgres_dsn)) == before


def test_demo_on_postgres_max_size_bounds_each_batch(postgres_dsn, capsys):
    """With --max-size 7, 50 callers arriving together make ceil(50 / 7) = 8 queries."""
    assert main(["demo", "--postgres", postgres_dsn, "--n", "50", "--max-size", "7", "--max-window", "0.01"]) == 0
    table = _table(capsys.readouterr().out)
    assert table["@batch(max_window=0, max_size=7)"] == (8, "ok")
    assert table["@batch(max_window=0.01, max_size=7)"] == (8, "ok")
