"""Benchmark concresce against a hand-written floor, the unbatched baseline and its peers.

Run from the repository root::

    uv run --group bench python benchmarks/run.py --quick   # about 1 minute
    uv run --group bench python benchmarks/run.py           # the full matrix, see README.md

Writes ``benchmarks/results/latest.{json,md,png}`` and ``latest-cpu.png``, and prints the
Markdown report. The callers run on the default asyncio loop, on uvloop and on trio (the
systems that run there: ``concresce``, ``floor``, which is then a trio floor, and
``baseline_unbatched``). Each system is measured in its own worker process (``_worker.py``); the
repetitions of every configuration go round-robin across the systems, so slow drift of the
machine hits them all alike. See ``benchmarks/README.md`` for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from _machine import machine
from _report import load_pyplot, markdown, plot, summarize
from _systems import SYSTEM_NAMES, SYSTEMS, System

BENCH_DIR: Final = Path(__file__).resolve().parent
OLD = "concresce-0.1.0"  # the original release, measured from its own install directory
OLD_REQUIREMENT = "concresce==0.1.0"
OLD_TARGET: Final = BENCH_DIR / ".cache" / OLD

LOOPS: Final = ("asyncio", "uvloop", "trio")  # "trio": the callers are trio tasks, in trio.run
MAX_SIZES: Final = (100, None)
WINDOW: Final = 0.001  # the "1 ms window" flush mode; 0 is tick flush
BENCH_MODULES: Final = {"aiodataloader": "aiodataloader", "strawberry": "strawberry", "uvloop": "uvloop"}


def runs_on(system: System, loop: str) -> bool:
    """Whether ``system`` is measured on ``loop``: every system on asyncio and uvloop, some on trio."""
    return system.trio or loop != "trio"


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    mode: str
    sizes: tuple[int, ...]  # N, the numbers of concurrent callers
    reps: int  # repetitions per (configuration, system)
    min_calls: int  # a repetition gathers N callers ceil(min_calls / N) times ("rounds")
    window_rounds: int  # at most this many rounds with a window: each one waits for it
    growth_n: int
    growth_reps: int
    memory_n: int
    memory_reps: int


PLANS: Final = {
    "full": Plan(
        "full",
        sizes=(1, 10, 100, 1_000, 10_000, 100_000),
        reps=5,
        min_calls=5_000,
        window_rounds=30,
        growth_n=100_000,
        growth_reps=4,
        memory_n=10_000,
        memory_reps=3,
    ),
    "quick": Plan(
        "quick",
        sizes=(1, 100, 10_000),
        reps=3,
        min_calls=2_000,
        window_rounds=10,
        growth_n=100_000,
        growth_reps=1,
        memory_n=10_000,
        memory_reps=1,
    ),
}


class BenchmarkError(RuntimeError):
    """A system failed, gave a wrong result, or could not be set up."""


def log(message: str) -> None:
    """Progress goes to stderr; stdout gets only the final report."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201


class Worker:
    """A worker process that measures one system (see ``_worker.py``)."""

    def __init__(self, system: System, path: Path | None) -> None:
        """Start the worker and wait until it has imported its system."""
        self.system = system
        command = [sys.executable, str(BENCH_DIR / "_worker.py"), "--system", system.name]
        if path is not None:
            command += ["--path", str(path)]
        self.process = subprocess.Popen(  # noqa: S603 -- our own interpreter and script
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = self._receive()
        self.version: str = ready["version"]

    def request(self, **request: Any) -> dict[str, Any]:
        """Send one request and wait for its answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            msg = f"{self.system.name}: the worker exited (code {self.process.wait()}); see its error above"
            raise BenchmarkError(msg)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            msg = f"{self.system.name}: {reply['error']}"
            raise BenchmarkError(msg)
        return reply

    def close(self) -> None:
        """Let the worker finish (stdin closed), killing it if it does not."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def install_old_concresce() -> Path:
    """Install concresce 0.1.0 into ``benchmarks/.cache`` once; return the directory.

    Its metadata asks for Python >= 3.14, but the code runs on 3.10+, so the requirement is
    ignored. It is never a dependency of the project: a worker puts this directory first on
    its ``sys.path`` to measure it.
    """
    if (OLD_TARGET / "concresce" / "lib.py").is_file():
        return OLD_TARGET
    staging = OLD_TARGET.with_name(OLD_TARGET.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    common = ["--no-deps", "--target", str(staging), OLD_REQUIREMENT]
    if importlib.util.find_spec("pip") is not None:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--ignore-requires-python", *common]
    else:
        # uv's environments have no pip; uv itself has no --ignore-requires-python, but
        # resolving for Python 3.14 accepts the metadata, and the wheel is pure Python.
        uv = os.environ.get("UV") or shutil.which("uv")
        if uv is None:
            msg = f"cannot install {OLD_REQUIREMENT}: neither pip nor uv is available (or pass --systems)"
            raise BenchmarkError(msg)
        command = [uv, "pip", "install", "--quiet", "--python", sys.executable, "--python-version", "3.14", *common]
    log(f"installing {OLD_REQUIREMENT} into benchmarks/.cache (first run only)")
    completed = subprocess.run(command, check=False)  # noqa: S603 -- fixed arguments
    if completed.returncode != 0 or not (staging / "concresce" / "lib.py").is_file():
        msg = f"installing {OLD_REQUIREMENT} failed (exit {completed.returncode}); or leave it out with --systems"
        raise BenchmarkError(msg)
    shutil.rmtree(OLD_TARGET, ignore_errors=True)
    staging.rename(OLD_TARGET)
    return OLD_TARGET


def rounds_for(plan: Plan, n: int, window: float) -> int:
    """How many times one repetition gathers its ``n`` callers."""
    rounds = max(1, -(-plan.min_calls // n))
    return min(rounds, plan.window_rounds) if window else rounds


def rotated(items: list[Worker], shift: int) -> list[Worker]:
    """``items`` starting at ``shift``: each repetition starts with the next system."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure_matrix(plan: Plan, workers: list[Worker], loops: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every (loop, max size, flush, N), every system, round-robin repetitions."""
    rows: list[dict[str, Any]] = []
    order = {name: i for i, name in enumerate(SYSTEM_NAMES)}
    for loop in loops:
        for max_size in MAX_SIZES:
            for window in (0.0, WINDOW):
                here = [
                    worker
                    for worker in workers
                    if (window == 0 or worker.system.windows) and runs_on(worker.system, loop)
                ]
                for n in plan.sizes:
                    rounds = rounds_for(plan, n, window)
                    request = {"op": "time", "loop": loop, "n": n, "rounds": rounds, "max_size": max_size}
                    samples: dict[str, list[float]] = {worker.system.name: [] for worker in here}
                    cpu: dict[str, list[float]] = {worker.system.name: [] for worker in here}
                    batches: dict[str, dict[str, Any]] = {}
                    for rep in range(plan.reps):
                        for worker in rotated(here, rep):
                            reply = worker.request(**request, window=window)
                            samples[worker.system.name].append(reply["seconds"] / (n * rounds) * 1e6)
                            cpu[worker.system.name].append(reply["cpu_seconds"] / (n * rounds) * 1e6)
                            batches[worker.system.name] = reply
                    floor = summarize(samples["floor"])["median"] if "floor" in samples else None
                    for name, values in samples.items():
                        stat = summarize(values)
                        rows.append(
                            {
                                "system": name,
                                "order": order[name],
                                "loop": loop,
                                "max_size": max_size,
                                "window": window,
                                "n": n,
                                "rounds": rounds,
                                "us_per_call": stat,
                                "ratio_to_floor": None if floor is None else stat["median"] / floor,
                                "cpu_us_per_call": summarize(cpu[name]),
                                "backend_calls_per_round": batches[name]["backend_calls"] / rounds,
                                "largest_batch": batches[name]["largest_batch"],
                            }
                        )
                    log(
                        f"  {loop:7} size {max_size or 'inf':>3} {'tick' if window == 0 else 'window':6} "
                        f"N={n:<7,} "
                        + "  ".join(f"{name} {summarize(values)['median']:.2f}" for name, values in samples.items())
                    )
    return rows


def measure_growth(plan: Plan, workers: list[Worker]) -> list[dict[str, Any]]:
    """Half the callers cancelled while their batch is open, against none."""
    rows: list[dict[str, Any]] = []
    n = plan.growth_n
    batching = [worker for worker in workers if worker.system.batches]
    # A window keeps the batch open while the callers are cancelled; the DataLoaders have
    # no window, so they run tick flush, where the cancellations also come before the flush.
    groups = [
        (WINDOW, [worker for worker in batching if worker.system.windows]),
        (0.0, [worker for worker in batching if not worker.system.windows]),
    ]
    for window, group in groups:
        if not group:
            continue
        samples: dict[tuple[str, bool], list[float]] = {
            (worker.system.name, cancel): [] for worker in group for cancel in (False, True)
        }
        cpu: dict[tuple[str, bool], list[float]] = {key: [] for key in samples}
        items: dict[str, int] = {}
        for rep in range(plan.growth_reps):
            for worker in rotated(group, rep):
                for cancel in (rep % 2 == 0, rep % 2 == 1):  # alternate which variant goes first
                    reply = worker.request(
                        op="growth", loop="asyncio", n=n, max_size=None, window=window, cancel=cancel
                    )
                    samples[worker.system.name, cancel].append(reply["seconds"] / n * 1e6)
                    cpu[worker.system.name, cancel].append(reply["cpu_seconds"] / n * 1e6)
                    if cancel:
                        items[worker.system.name] = reply["backend_items"]
        for worker in group:
            name = worker.system.name
            plain, cancelled = summarize(samples[name, False]), summarize(samples[name, True])
            rows.append(
                {
                    "system": name,
                    "n": n,
                    "window": window,
                    "max_size": None,
                    "loop": "asyncio",
                    "plain": plain,
                    "cancelled": cancelled,
                    "ratio": cancelled["median"] / plain["median"],
                    "cpu_plain": summarize(cpu[name, False]),
                    "cpu_cancelled": summarize(cpu[name, True]),
                    "backend_items_cancelled": items[name],
                }
            )
            log(f"  growth {name}: {plain['median']:.2f} -> {cancelled['median']:.2f} µs/call")
    return rows


def measure_memory(plan: Plan, workers: list[Worker]) -> list[dict[str, Any]]:
    """Peak traced bytes per pending call, N = memory_n, batches of 100, tick flush."""
    n = plan.memory_n
    samples: dict[str, list[float]] = {worker.system.name: [] for worker in workers}
    pending: dict[str, int] = {}
    for rep in range(plan.memory_reps):
        for worker in rotated(workers, rep):
            reply = worker.request(op="memory", loop="asyncio", n=n, max_size=100, window=0.0)
            samples[worker.system.name].append(reply["peak_bytes"] / n)
            pending[worker.system.name] = reply["pending"]
            if worker.system.batches and reply["pending"] != n:
                msg = f"{worker.system.name}: only {reply['pending']} of {n} callers were pending at the peak"
                raise BenchmarkError(msg)
    floor = summarize(samples["floor"])["median"] if "floor" in samples else None
    rows = []
    for name, values in samples.items():
        stat = summarize(values)
        rows.append(
            {
                "system": name,
                "n": n,
                "max_size": 100,
                "window": 0.0,
                "loop": "asyncio",
                "bytes_per_call": stat,
                "ratio_to_floor": None if floor is None else stat["median"] / floor,
                "pending": pending[name],
            }
        )
        log(f"  memory {name}: {stat['median']:,.0f} bytes per pending call")
    return rows


def write_reports(result: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    """Write latest.md and (unless ``plots`` is false) the plots from ``result``; print the Markdown."""
    report = markdown(result) + "\n"
    (out / "latest.md").write_text(report, encoding="utf-8")
    if plots:
        plot(result, out / "latest.png")
        plot(result, out / "latest-cpu.png", metric="cpu_us_per_call")
    sys.stdout.write(report)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1, 100, 10k and fewer repetitions (1-2 min)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEM_NAMES),
        help=f"comma-separated subset of: {', '.join(SYSTEM_NAMES)} (floor is always measured)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per configuration (default: 5, or 3 with --quick)")
    parser.add_argument("--no-uvloop", action="store_true", help="do not measure on uvloop")
    parser.add_argument("--no-trio", action="store_true", help="do not measure on trio")
    parser.add_argument("--no-plot", action="store_true", help="write the JSON and the Markdown report only")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output directory")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rebuild latest.md and the plots from the output directory's latest.json",
    )
    return parser.parse_args(argv)


def missing_modules(wanted: set[str], loops: tuple[str, ...]) -> list[str]:
    """The modules the run needs that cannot be imported (trio comes with the default `dev` group)."""
    modules = ["matplotlib", *(BENCH_MODULES[name] for name in wanted if name in BENCH_MODULES)]
    modules += [loop for loop in ("uvloop", "trio") if loop in loops]
    return sorted({module for module in modules if importlib.util.find_spec(module) is None})


def main(argv: list[str] | None = None) -> int:
    """Measure everything, write the results, print the report."""
    args = parse_args(argv)
    if args.render_only:
        result = json.loads((args.out / "latest.json").read_text(encoding="utf-8"))
        write_reports(result, args.out, plots=not args.no_plot)
        return 0
    plan = PLANS["quick" if args.quick else "full"]
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    wanted = {name.strip() for name in args.systems.split(",") if name.strip()} | {"floor"}
    unknown = wanted - set(SYSTEM_NAMES)
    if unknown:
        log(f"unknown system(s): {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEM_NAMES)}")
        return 2
    systems = [system for system in SYSTEMS if system.name in wanted]
    loops = tuple(
        loop for loop in LOOPS if not (loop == "uvloop" and args.no_uvloop) and not (loop == "trio" and args.no_trio)
    )
    missing = missing_modules(wanted, loops)
    if missing:
        log(
            f"missing benchmark dependencies: {', '.join(missing)}. Run with the `bench` group: "
            "uv run --group bench python benchmarks/run.py"
        )
        return 2

    load_pyplot()
    started = time.perf_counter()
    workers: list[Worker] = []
    try:
        for system in systems:
            workers.append(Worker(system, install_old_concresce() if system.name == OLD else None))
            for loop in loops:  # warm up imports and first-call paths; not recorded
                if runs_on(system, loop):
                    workers[-1].request(op="time", loop=loop, n=1_000, rounds=1, max_size=100, window=0.0)
        log(f"{plan.mode} run: {', '.join(f'{w.system.name} {w.version}' for w in workers)}")
        phases: dict[str, float] = {}
        mark = time.perf_counter()
        log("matrix (median µs/call):")
        matrix = measure_matrix(plan, workers, loops)
        phases["matrix"], mark = time.perf_counter() - mark, time.perf_counter()
        log(f"cost growth, {plan.growth_n:,} callers:")
        growth = measure_growth(plan, workers)
        phases["growth"], mark = time.perf_counter() - mark, time.perf_counter()
        log(f"memory, {plan.memory_n:,} callers:")
        memory = measure_memory(plan, workers)
        phases["memory"] = time.perf_counter() - mark
    except BenchmarkError as error:
        log(f"benchmark failed: {error}")
        return 1
    finally:
        for worker in workers:
            worker.close()

    meta = machine() | {
        "mode": plan.mode,
        "plan": plan.__dict__,
        "loops": list(loops),
        "versions": {worker.system.name: worker.version for worker in workers},
        "descriptions": {worker.system.name: worker.system.description for worker in workers},
        "skipped": [
            f"{system.name} with a time window (it has no window option: tick flush only)"
            for system in systems
            if not system.windows
        ]
        + [f"{system.name} on trio (asyncio only)" for system in systems if "trio" in loops and not system.trio],
        "duration_s": None,
        "phases_s": {phase: round(seconds, 1) for phase, seconds in phases.items()},
    }
    result = {"meta": meta, "matrix": matrix, "growth": growth, "memory": memory}
    meta["duration_s"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_reports(result, args.out, plots=not args.no_plot)
    wrote = "latest.json and latest.md" if args.no_plot else "latest.json, latest.md and the plots"
    log(f"done in {meta['duration_s']:.0f} s; wrote {wrote} in {shown(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
