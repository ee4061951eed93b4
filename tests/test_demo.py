"""Tests for the ``python -m concresce demo`` command line."""

from __future__ import annotations

import asyncio
import re
import runpy
import sys
import types

import pytest

import concresce._demo
from concresce._demo import main


def _table(out: str) -> dict[str, tuple[int, str]]:
    """Map each strategy of the demo's table to its query count and check column."""
    return {strategy: (queries, check) for strategy, (_batches, queries, check) in _full_table(out).items()}


def _full_table(out: str) -> dict[str, tuple[str, int, str]]:
    """Map each strategy of the demo's table to its batches, queries and check columns."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("strategy"))
    assert re.split(r"\s{2,}", lines[start]) == ["strategy", "batches", "queries", "wall time", "speed-up", "check"]
    table: dict[str, tuple[str, int, str]] = {}
    for line in lines[start + 1 :]:
        if not line:
            break
        strategy, batches, queries, _wall_time, _speed_up, check = re.split(r"\s{2,}", line, maxsplit=5)
        table[strategy] = (batches, int(queries), check)
    return table


def test_demo_batches_the_lookups_and_every_caller_gets_its_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One query per call sends N queries, tick batching one, and every check passes."""
    assert main(["demo", "--n", "50"]) == 0
    table = _table(capsys.readouterr().out)
    assert list(table) == [
        "one query per call",
        "@batch(max_window=0, max_size=100)",
        "@batch(max_window=0.002, max_size=100)",
    ]
    assert table["one query per call"] == (50, "ok")
    # All 50 callers reach collect() in the same loop turn: one batch.
    assert table["@batch(max_window=0, max_size=100)"] == (1, "ok")
    windowed_queries, windowed_check = table["@batch(max_window=0.002, max_size=100)"]
    assert 1 <= windowed_queries < 50
    assert windowed_check == "ok"


def test_demo_max_size_bounds_each_batch(capsys: pytest.CaptureFixture[str]) -> None:
    """With --max-size 7, 50 callers arriving together make ceil(50 / 7) = 8 batches."""
    assert main(["demo", "--n", "50", "--max-size", "7", "--max-window", "0.01"]) == 0
    table = _table(capsys.readouterr().out)
    assert table["@batch(max_window=0, max_size=7)"] == (8, "ok")
    assert table["@batch(max_window=0.01, max_size=7)"] == (8, "ok")


def test_demo_splits_batches_larger_than_sqlite_parameter_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A batch of 600 ids is one batch, sent as two `IN (...)` queries of at most 500 parameters; the header says so."""
    assert main(["demo", "--n", "600", "--max-size", "600"]) == 0
    out = capsys.readouterr().out
    assert _full_table(out)["@batch(max_window=0, max_size=600)"] == ("1", 2, "ok")
    assert "one `WHERE id IN (...)` query per batch of at most 600 ids (a batch of more than 500 ids" in out


def test_demo_header_states_the_batch_size_and_counts_batches_apart_from_queries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The header gives the real batch size (not SQLite's parameter limit); batches and queries are two columns."""
    assert main(["demo", "--n", "250"]) == 0
    out = capsys.readouterr().out
    assert "one `WHERE id IN (...)` query per batch of at most 100 ids." in out
    assert "500 ids" not in out
    table = _full_table(out)
    assert table["one query per call"] == ("-", 250, "ok")
    assert table["@batch(max_window=0, max_size=100)"] == ("3", 3, "ok")


def test_demo_with_one_task_says_task_not_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    """``--n 1`` reads "1 task" and suggests a larger N, rather than "1 concurrent tasks"."""
    assert main(["demo", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("concresce demo: 1 task looking up one user by id (nothing to batch it with")
    assert "concurrent tasks" not in out


def test_demo_exits_1_when_a_caller_gets_a_wrong_row(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check column and the exit code report callers that got the wrong row."""
    monkeypatch.setattr(concresce._demo, "_expected", lambda _user_id: None)
    assert main(["demo", "--n", "5"]) == 1
    out = capsys.readouterr().out
    assert [check for _queries, check in _table(out).values()] == ["FAILED: 5 of 5 wrong"] * 3
    assert "check FAILED" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "argument --n: must be an integer >= 1, got '0'"),
        (["--n", "many"], "argument --n: must be an integer >= 1, got 'many'"),
        (["--n", "1.5"], "argument --n: must be an integer >= 1, got '1.5'"),
        (["--max-size", "0"], "argument --max-size: must be an integer >= 1, got '0'"),
        (["--max-size", "-3"], "argument --max-size: must be an integer >= 1, got '-3'"),
        (["--max-window", "-0.5"], "argument --max-window: must be a finite number"),
        (["--max-window", "nan"], "argument --max-window: must be a finite number"),
        (["--max-window", "inf"], "argument --max-window: must be a finite number"),
        (["--max-window", "soon"], "argument --max-window: must be a finite number"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--postgres"], "argument --postgres: expected one argument"),
    ],
)
def test_demo_rejects_bad_options(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option is a usage error (exit code 2) whose message names the option."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, the usage and the list of commands are printed."""
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m concresce")
    assert "demo" in out


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage and exits with 0, for the program and for `demo`."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m concresce")


def test_python_dash_m_runs_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m concresce` exits with main()'s return code."""
    monkeypatch.setattr(sys, "argv", ["python -m concresce"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("concresce", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m concresce")


def test_postgres_without_asyncpg_says_how_to_install_it(capsys, monkeypatch):
    """--postgres with no asyncpg installed is a usage error (exit 2) that says `pip install asyncpg`."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # makes `import asyncpg` fail
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--postgres", "postgresql://localhost/db"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--postgres needs the asyncpg driver, which is not installed: pip install asyncpg" in captured.err
    assert captured.err.startswith("usage: python -m concresce demo ")  # the demo's usage, not the top level's
    assert captured.out == ""


class _FakePool:
    """Just enough of an asyncpg pool for the demo's statements, over dicts."""

    def __init__(self, fail_on: str | None) -> None:
        self.tables: dict[str, dict[int, int]] = {}
        self.statements: list[str] = []
        self.fail_on = fail_on
        self.closed = False

    def _log(self, query: str) -> list[str]:
        self.statements.append(query)
        if self.fail_on is not None and query.startswith(self.fail_on):
            msg = f"permission denied for {self.fail_on}"
            raise _FakeAsyncpg.PostgresError(msg)
        return query.split()

    async def execute(self, query, *args):
        words = self._log(query)
        assert not args
        if words[:2] == ["CREATE", "TABLE"]:
            assert words[2] not in self.tables
            self.tables[words[2]] = {}
        elif words[:4] == ["DROP", "TABLE", "IF", "EXISTS"]:
            self.tables.pop(words[4], None)
        else:
            assert words[0] == "ANALYZE"
            assert words[1] in self.tables
        return "OK"

    async def executemany(self, command, args):
        words = self._log(command)
        assert words[:2] == ["INSERT", "INTO"]
        self.tables[words[2]].update(args)

    async def fetchval(self, query, *args):
        assert self._log(query) == ["SHOW", "server_version"]
        return "99.0 (fake)"

    async def fetch(self, query, *args):
        self._log(query)
        rows = self.tables[query.split(" FROM ")[1].split()[0]]
        (arg,) = args
        ids = arg if "= ANY($1" in query else [arg]
        await asyncio.sleep(0)  # a round trip: let the other callers run
        return [(user_id, rows[user_id]) for user_id in ids if user_id in rows]

    async def close(self):
        self.closed = True


class _FakeAsyncpg(types.ModuleType):
    class PostgresError(Exception):
        pass

    class InterfaceError(Exception):
        pass

    def __init__(self, *, connect_error: Exception | None = None, fail_on: str | None = None) -> None:
        super().__init__("asyncpg")
        self.connect_error = connect_error
        self.fail_on = fail_on
        self.pools: list[_FakePool] = []
        self.dsns: list[str] = []

    async def create_pool(self, dsn, *, min_size, max_size):
        assert min_size == max_size == 10
        self.dsns.append(dsn)
        if self.connect_error is not None:
            raise self.connect_error
        self.pools.append(_FakePool(self.fail_on))
        return self.pools[-1]


def test_postgres_demo_runs_on_its_own_table_and_drops_it(capsys, monkeypatch):
    """--postgres: the demo creates a table, counts the queries, checks every row and drops the table."""
    fake = _FakeAsyncpg()
    monkeypatch.setitem(sys.modules, "asyncpg", fake)
    assert main(["demo", "--postgres", "postgresql://demo@db:5432/app", "--n", "50", "--max-size", "20"]) == 0
    out = capsys.readouterr().out
    assert "created for the demo in PostgreSQL 99.0 (fake)" in out
    assert "an asyncpg pool of 10 connections" in out
    table = _table(out)
    assert table == {
        "one query per call": (50, "ok"),
        "@batch(max_window=0, max_size=20)": (3, "ok"),
        "@batch(max_window=0.002, max_size=20)": (3, "ok"),
    }
    assert fake.dsns == ["postgresql://demo@db:5432/app"]
    (pool,) = fake.pools
    assert pool.closed
    assert pool.tables == {}  # dropped
    created = next(s for s in pool.statements if s.startswith("CREATE TABLE"))
    assert re.fullmatch(r"CREATE TABLE concresce_demo_[0-9a-f]{12} \(.*\)", created)
    assert pool.statements[-1].startswith("DROP TABLE IF EXISTS concresce_demo_")


def test_postgres_demo_reports_a_failed_check(capsys, monkeypatch):
    """The check column and exit code 1 work the same on PostgreSQL."""
    monkeypatch.setitem(sys.modules, "asyncpg", _FakeAsyncpg())
    monkeypatch.setattr(concresce._demo, "_expected", lambda _user_id: None)
    assert main(["demo", "--postgres", "postgresql://db/app", "--n", "4"]) == 1
    out = capsys.readouterr().out
    assert [check for _queries, check in _table(out).values()] == ["FAILED: 4 of 4 wrong"] * 3


@pytest.mark.parametrize(
    ("connect_error", "fail_on", "message"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), None, "PostgreSQL: ConnectionRefusedError: "),
        (_FakeAsyncpg.InterfaceError("bad DSN"), None, "PostgreSQL: InterfaceError: bad DSN"),
        (None, "CREATE TABLE", "PostgreSQL: PostgresError: permission denied for CREATE TABLE"),
        (None, "INSERT", "PostgreSQL: PostgresError: permission denied for INSERT"),
    ],
)
def test_postgres_errors_exit_2_with_a_message(connect_error, fail_on, message, capsys, monkeypatch):
    """A server that cannot be reached or used: exit code 2, the error on stderr, no table left behind."""
    fake = _FakeAsyncpg(connect_error=connect_error, fail_on=fail_on)
    monkeypatch.setitem(sys.modules, "asyncpg", fake)
    assert main(["demo", "--postgres", "postgresql://db/app", "--n", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("python -m concresce demo: error: ")
    assert message in captured.err
    for pool in fake.pools:
        assert pool.closed
        assert pool.tables == {}
