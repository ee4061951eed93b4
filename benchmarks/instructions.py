"""Count the CPU instructions a call costs in each system, with callgrind: a noise-free ratio.

Run from the repository root (valgrind must be installed; it is not a Python package)::

    uv run --group bench python benchmarks/instructions.py

Wall-clock times on a small shared machine drift by tens of percent between runs, ratios
included. An instruction count does not: the same code on the same interpreter counts the
same, to a few hundred instructions per call (``PYTHONHASHSEED`` is fixed). It is not a time
(a cache miss costs more than an instruction, and memory is not counted), so it complements
the wall-clock report rather than replacing it.

For each system and case, ``_count.py`` runs twice under callgrind: with the calls, and
without them; the difference divided by the number of calls is the cost of one call. Cases:
N = 10,000 caller tasks gathered at once (batches of 100, tick flush), and N = 1, a lone call
(2,000 of them one after the other, each a batch of its own). The systems that run on trio
(``concresce``, ``floor``, which is then the trio floor of ``_trio_floor.py``, and
``baseline_unbatched``) are counted again with trio tasks as the callers, in a table of their
own (``--no-trio`` leaves it out). Writes ``benchmarks/results/instructions.{json,md}`` and
prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from _machine import machine
from _report import ratio
from _systems import SYSTEM_NAMES, SYSTEMS

BENCH_DIR: Final = Path(__file__).resolve().parent
CASES: Final = {
    "batches": (10_000, "N = 10,000, batches of 100, tick flush"),
    "lone": (2_000, "N = 1 (a lone call)"),
}
OLD = "concresce-0.1.0"


def log(message: str) -> None:
    """Progress goes to stderr; stdout gets only the report."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201


class CountError(RuntimeError):
    """A measurement could not be made."""


def collected(system: str, case: str, calls: int, path: Path | None, runtime: str = "asyncio") -> int:
    """Instructions callgrind counts for one ``_count.py`` run."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        msg = "valgrind is not installed (Debian: apt-get install valgrind)"
        raise CountError(msg)
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, str(BENCH_DIR / "_count.py"), system, case, str(calls)]
    if path is not None:
        command += ["--path", str(path)]
    if runtime != "asyncio":
        command += ["--runtime", runtime]
    environment = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONASYNCIODEBUG": ""}
    completed = subprocess.run(  # noqa: S603 -- fixed arguments
        command, capture_output=True, text=True, check=False, env=environment
    )
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if completed.returncode != 0 or found is None:
        msg = f"{system} {case} {calls} ({runtime}): exit {completed.returncode}\n{completed.stderr[-2000:]}"
        raise CountError(msg)
    return int(found.group(1))


def per_call(system: str, case: str, path: Path | None, pool: ThreadPoolExecutor, runtime: str = "asyncio") -> float:
    """Instructions per call: the run with the calls minus the run without, over the calls."""
    calls = CASES[case][0]
    with_calls = pool.submit(collected, system, case, calls, path, runtime)
    without = pool.submit(collected, system, case, 0, path, runtime)
    return (with_calls.result() - without.result()) / calls


def markdown(result: dict[str, Any]) -> str:
    """The report: one row per system, a column pair per case."""
    info = result["machine"]
    counts: dict[str, dict[str, float]] = result["per_call"]
    lines = [
        "# Instructions per call (callgrind)",
        "",
        f"{info['date']} · {info['implementation']} {info['python']} · {info['platform']} · commit {info['commit']}",
        "",
        (
            "CPU instructions one call costs, counted by callgrind (the run with the calls minus the "
            "same run without them, over the number of calls), and the ratio to `floor` on the same "
            "interpreter. Deterministic, unlike the wall-clock report; not a time."
        ),
        "",
    ]
    lines += _table(counts)
    on_trio: dict[str, dict[str, float]] = result.get("per_call_trio") or {}
    if on_trio:
        lines += [
            "",
            "## On trio",
            "",
            (
                "The same counts with trio tasks as the callers (started in a nursery, in one `trio.run`), "
                "and the ratio to `floor` on trio: the same minimal coalescer written for trio "
                "(`benchmarks/_trio_floor.py`)."
            ),
            "",
            *_table(on_trio),
        ]
    return "\n".join(lines) + "\n"


def _table(counts: dict[str, dict[str, float]]) -> list[str]:
    header = "| system |"
    rule = "| --- |"
    for _, title in CASES.values():
        header += f" {title}: instructions | ratio to floor |"
        rule += " --- | --- |"
    lines = [header, rule]
    for system, by_case in counts.items():
        row = f"| {system} |"
        for case in CASES:
            value = by_case[case]
            row += f" {value:,.0f} | {ratio(value / counts['floor'][case])} |"
        lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Count every system's instructions per call; write and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEM_NAMES),
        help=f"comma-separated subset of: {', '.join(SYSTEM_NAMES)} (floor is always counted)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output directory")
    parser.add_argument("--no-trio", action="store_true", help="do not count the systems again on trio")
    args = parser.parse_args(argv)
    systems = ["floor", *(name for name in args.systems.split(",") if name and name != "floor")]
    unknown = sorted(set(systems) - set(SYSTEM_NAMES))
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")
    old_path = None
    if OLD in systems:
        from run import install_old_concresce  # noqa: PLC0415 -- only when 0.1.0 is counted

        old_path = install_old_concresce()
    result: dict[str, Any] = {"machine": machine(), "cases": {case: calls for case, (calls, _) in CASES.items()}}
    counts: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for system in systems:
            path = old_path if system == OLD else None
            counts[system] = {case: per_call(system, case, path, pool) for case in CASES}
            log(f"  {system}: " + ", ".join(f"{case} {value:,.0f}" for case, value in counts[system].items()))
        if not args.no_trio:
            on_trio = [system.name for system in SYSTEMS if system.trio and system.name in systems]
            counts_trio: dict[str, dict[str, float]] = {}
            for system in sorted(on_trio, key=systems.index):
                counts_trio[system] = {case: per_call(system, case, None, pool, "trio") for case in CASES}
                log(f"  {system} on trio: " + ", ".join(f"{case} {v:,.0f}" for case, v in counts_trio[system].items()))
            result["per_call_trio"] = counts_trio
    result["per_call"] = counts
    report = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instructions.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "instructions.md").write_text(report)
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except CountError as error:
        log(f"instructions.py: {error}")
        raise SystemExit(2) from None
