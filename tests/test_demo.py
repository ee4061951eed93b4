"""Tests for the ``python -m concresce demo`` command line."""

from __future__ import annotations

import re
import runpy
import sys

import pytest

import concresce._demo
from concresce._demo import main


def _table(out: str) -> dict[str, tuple[int, str]]:
    """Map each strategy of the demo's table to its query count and check column."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("strategy"))
    table: dict[str, tuple[int, str]] = {}
    for line in lines[start + 1 :]:
        if not line:
            break
        strategy, queries, _wall_time, _speed_up, check = re.split(r"\s{2,}", line, maxsplit=4)
        table[strategy] = (int(queries), check)
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
    """A batch of 600 ids is sent as two `IN (...)` queries of at most 500 parameters."""
    assert main(["demo", "--n", "600", "--max-size", "600"]) == 0
    table = _table(capsys.readouterr().out)
    assert table["@batch(max_window=0, max_size=600)"] == (2, "ok")


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
