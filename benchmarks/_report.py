"""Turn the measurements of ``run.py`` into statistics, a Markdown report and a plot."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

LOOP_LABELS = {"asyncio": "default loop", "uvloop": "uvloop", "trio": "trio"}
LOOP_ORDER = {loop: index for index, loop in enumerate(LOOP_LABELS)}
LOOP_STYLES = {"asyncio": "-", "uvloop": "--", "trio": ":"}
DASH = "\N{EN DASH}"
TIMES = "\N{MULTIPLICATION SIGN}"
SPREAD_HEADER = f"µs/call median [min{DASH}max]"


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of ``samples`` (kept too, in measurement order)."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": list(samples),
    }


def size_label(max_size: int | None) -> str:
    """``100`` or ``unbounded``."""
    return "unbounded" if max_size is None else str(max_size)


def flush_label(window: float) -> str:
    """``tick`` or ``window 1 ms``."""
    return "tick" if window == 0 else f"window {window * 1000:g} ms"


def number(x: float) -> str:
    """Three significant figures or so, without scientific notation."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def spread(stat: dict[str, Any]) -> str:
    """The median, then [min-max]."""
    return f"{number(stat['median'])} [{number(stat['min'])}{DASH}{number(stat['max'])}]"


def ratio(value: float | None) -> str:
    """``1.23`` and a multiplication sign, or a dash when there is nothing to compare with."""
    return DASH if value is None else f"{value:.2f}{TIMES}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _pick(rows: list[dict[str, Any]], **where: object) -> list[dict[str, Any]]:
    return [row for row in rows if all(row[key] == value for key, value in where.items())]


def _config(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["loop"], row["max_size"], row["window"], row["n"]


def _cpu_ratio(rows: list[dict[str, Any]], row: dict[str, Any]) -> float | None:
    """The row's median CPU time over floor's in the same configuration."""
    for other in rows:
        if other["system"] == "floor" and _config(other) == _config(row):
            return row["cpu_us_per_call"]["median"] / other["cpu_us_per_call"]["median"]
    return None


def markdown(result: dict[str, Any]) -> str:
    """Render the whole result as Markdown."""
    matrix: list[dict[str, Any]] = result["matrix"]
    sizes = {row["n"] for row in matrix}
    headline_n = 10_000 if 10_000 in sizes else max(sizes, default=0)
    out = _intro(result["meta"])
    out += _headline(matrix, f"N = {headline_n:,}", headline_n)
    out += _runtimes(matrix, headline_n)
    out += _headline(matrix, "N = 1 (a lone call)", 1)
    out += _flatness(matrix)
    out += _growth(result.get("growth") or [])
    out += _memory(result.get("memory") or [])
    out += _matrix(matrix)
    return "\n".join(out)


def _intro(meta: dict[str, Any]) -> list[str]:
    machine = f"{meta['date']} · CPython {meta['python']} · {meta['platform']} · {meta['cpu_count']} CPUs"
    if meta.get("cpu_model"):
        machine += f" ({meta['cpu_model']})"
    machine += f" · engine commit {meta.get('commit') or 'unknown'}"
    systems = "; ".join(f"`{name}` {version}" for name, version in meta["versions"].items())
    out = [
        f"# concresce benchmarks ({meta['mode']} run)",
        "",
        machine,
        "",
        (
            f"µs/call is wall-clock time per call, the median over repetitions with [min{DASH}max]; "
            "*ratio* is that median over `floor`'s median in the same configuration of the same run. "
            "*CPU µs/call* is the measuring process's CPU time, which other load on the machine disturbs "
            "less. Every caller is its own task and the backend is trivial, so these are the costs of "
            "the batching layer itself."
        ),
        "",
        f"Systems: {systems}.",
        "",
    ]
    if meta.get("skipped"):
        out += [f"Not measured: {skip}." for skip in meta["skipped"]] + [""]
    return out


def _headline(matrix: list[dict[str, Any]], title: str, n: int) -> list[str]:
    rows = _pick(matrix, n=n, max_size=100, window=0.0)
    if not rows:
        return []
    out = [f"## Headline: {title}, batches of 100, tick flush", ""]
    return out + _table(
        ["system", "loop", SPREAD_HEADER, "ratio to floor", "CPU µs/call (median)", "CPU ratio to floor"],
        (
            [
                row["system"],
                LOOP_LABELS[row["loop"]],
                spread(row["us_per_call"]),
                ratio(row["ratio_to_floor"]),
                number(row["cpu_us_per_call"]["median"]),
                ratio(_cpu_ratio(rows, row)),
            ]
            for row in sorted(rows, key=lambda row: (LOOP_ORDER[row["loop"]], row["order"]))
        ),
    )


def _paired_ratios(rows: list[dict[str, Any]], row: dict[str, Any], metric: str) -> list[float]:
    """Per repetition, the row's sample over floor's sample of the same round-robin sweep."""
    for other in rows:
        if other["system"] == "floor" and _config(other) == _config(row):
            return [a / b for a, b in zip(row[metric]["samples"], other[metric]["samples"], strict=True)]
    return []


def _runtimes(matrix: list[dict[str, Any]], n: int) -> list[str]:
    """The table of ``concresce`` against each runtime's floor; only in a run that measured trio."""
    rows = _pick(matrix, n=n, max_size=100, window=0.0)
    if not any(row["loop"] == "trio" for row in rows):
        return []
    out = [
        f"## Runtimes: concresce against each runtime's floor, N = {n:,}, batches of 100, tick flush",
        "",
        (
            "On trio, `floor` is the same minimal coalescer written for trio "
            "(`benchmarks/_trio_floor.py`: one `wait_task_rescheduled` per follower, the leader "
            "woken by one scheduler round or at `max_size`), and the callers are trio tasks started "
            "in a nursery. *Paired ratios*: each repetition's time over `floor`'s in the same "
            f"round-robin sweep, median [min{DASH}max] over the repetitions."
        ),
        "",
    ]
    table: list[list[str]] = []
    for row in sorted(rows, key=lambda row: LOOP_ORDER[row["loop"]]):
        if row["system"] != "concresce":
            continue
        paired = _paired_ratios(rows, row, "us_per_call")
        paired_cpu = _paired_ratios(rows, row, "cpu_us_per_call")
        floor = next(other for other in rows if other["system"] == "floor" and _config(other) == _config(row))
        table.append(
            [
                LOOP_LABELS[row["loop"]],
                spread(floor["us_per_call"]),
                spread(row["us_per_call"]),
                ratio(row["ratio_to_floor"]),
                f"{ratio(statistics.median(paired))} [{ratio(min(paired))}{DASH}{ratio(max(paired))}]",
                f"{ratio(statistics.median(paired_cpu))} [{ratio(min(paired_cpu))}{DASH}{ratio(max(paired_cpu))}]",
            ]
        )
    return out + _table(
        [
            "runtime",
            f"floor, {SPREAD_HEADER}",
            f"concresce, {SPREAD_HEADER}",
            "ratio of medians",
            "paired ratios",
            "paired CPU ratios",
        ],
        table,
    )


def _flatness(matrix: list[dict[str, Any]]) -> list[str]:
    big = [row for row in _pick(matrix, loop="asyncio", max_size=100, window=0.0) if row["n"] >= 1_000]
    if len({row["n"] for row in big}) < 2:
        return []
    medians: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for row in sorted(big, key=lambda row: row["order"]):
        medians.setdefault(row["system"], []).append(row["us_per_call"]["median"])
        cpu.setdefault(row["system"], []).append(row["cpu_us_per_call"]["median"])
    out = [
        "## Flatness: µs/call from N = 1k up (default loop, batches of 100, tick flush)",
        "",
        "The lowest and the highest median over the N from 1k up, and how far apart they are.",
        "",
    ]
    return out + _table(
        ["system", "lowest median", "highest median", "highest / lowest - 1", "same, CPU time"],
        (
            [
                name,
                number(min(values)),
                number(max(values)),
                f"{max(values) / min(values) - 1:.0%}",
                f"{max(cpu[name]) / min(cpu[name]) - 1:.0%}",
            ]
            for name, values in medians.items()
        ),
    )


def _growth(growth: list[dict[str, Any]]) -> list[str]:
    if not growth:
        return []
    out = [
        f"## Cost growth: {growth[0]['n']:,} callers, half cancelled while their batch is open",
        "",
        (
            "Per-call time of the run where every odd-numbered caller is cancelled right after all "
            "callers joined (the batch still open), against the same run without cancellations. "
            "Unbounded batches, default loop."
        ),
        "",
    ]
    return out + _table(
        [
            "system",
            "flush",
            "µs/call, no cancellation",
            "µs/call, half cancelled",
            "ratio",
            "CPU ratio",
            "items the backend got (cancelled run)",
        ],
        (
            [
                row["system"],
                flush_label(row["window"]),
                spread(row["plain"]),
                spread(row["cancelled"]),
                ratio(row["ratio"]),
                ratio(row["cpu_cancelled"]["median"] / row["cpu_plain"]["median"]) if "cpu_plain" in row else DASH,
                f"{row['backend_items_cancelled']:,}",
            ]
            for row in growth
        ),
    )


def _memory(memory: list[dict[str, Any]]) -> list[str]:
    if not memory:
        return []
    first = memory[0]
    out = [
        f"## Memory: peak traced bytes per pending call, N = {first['n']:,}",
        "",
        (
            "tracemalloc's peak from just before the callers start until every one of them waits in "
            f"its batch (batches of {size_label(first['max_size'])}, {flush_label(first['window'])} "
            "flush, default loop), divided by N: each caller's task and coroutine included."
        ),
        "",
    ]
    return out + _table(
        ["system", "bytes per pending call", "ratio to floor", "callers pending at the peak"],
        (
            [
                row["system"],
                f"{row['bytes_per_call']['median']:,.0f}",
                ratio(row["ratio_to_floor"]),
                f"{row['pending']:,}" + ("" if row["pending"] else " (never waits)"),
            ]
            for row in memory
        ),
    )


def _matrix(matrix: list[dict[str, Any]]) -> list[str]:
    out = ["## Full matrix", ""]
    for loop, loop_label in LOOP_LABELS.items():
        for max_size in (100, None):
            for window in sorted({row["window"] for row in matrix}):
                rows = _pick(matrix, loop=loop, max_size=max_size, window=window)
                if not rows:
                    continue
                out += [f"### {loop_label}, max size {size_label(max_size)}, {flush_label(window)} flush", ""]
                out += _table(
                    ["system", "N", SPREAD_HEADER, "ratio to floor", "CPU ratio to floor"],
                    (
                        [
                            row["system"],
                            f"{row['n']:,}",
                            spread(row["us_per_call"]),
                            ratio(row["ratio_to_floor"]),
                            ratio(_cpu_ratio(rows, row)),
                        ]
                        for row in sorted(rows, key=lambda row: (row["order"], row["n"]))
                    ),
                )
    return out


def load_pyplot() -> Any:
    """Import matplotlib's pyplot on the file-only Agg backend.

    ``run.py`` calls this before measuring, so a broken install fails at once, not after the
    whole run.
    """
    import matplotlib as mpl  # noqa: PLC0415 -- a benchmark-only dependency, needed only here

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def callers_label(n: float, _: object = None) -> str:
    """1, 10, 100, 1k, 10k, 100k."""
    return f"{n / 1000:g}k" if n >= 1000 else f"{n:g}"


def plot(result: dict[str, Any], path: Path, metric: str = "us_per_call") -> None:
    """µs/call against N, log-log; one panel per (max size, flush), uvloop dashed.

    ``metric`` is ``us_per_call`` (wall clock) or ``cpu_us_per_call`` (the worker's CPU time).
    """
    plt = load_pyplot()
    from matplotlib import ticker  # noqa: PLC0415 -- after load_pyplot() chose the backend

    matrix: list[dict[str, Any]] = result["matrix"]
    windows = sorted({row["window"] for row in matrix})
    systems = sorted({(row["order"], row["system"]) for row in matrix})
    colors = {name: f"C{order}" for order, name in systems}
    fig, axes = plt.subplots(2, len(windows), figsize=(6 * len(windows), 9), sharex=True, squeeze=False)
    for i, max_size in enumerate((100, None)):
        for j, window in enumerate(windows):
            ax = axes[i][j]
            for _, name in systems:
                for loop, style in LOOP_STYLES.items():
                    rows = sorted(
                        _pick(matrix, system=name, loop=loop, max_size=max_size, window=window),
                        key=lambda row: row["n"],
                    )
                    if not rows:
                        continue
                    ax.plot(
                        [row["n"] for row in rows],
                        [row[metric]["median"] for row in rows],
                        style,
                        marker="o",
                        markersize=3,
                        color=colors[name],
                        label=f"{name} ({LOOP_LABELS[loop]})",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(callers_label))
            ax.grid(visible=True, which="both", alpha=0.3)
            ax.set_title(f"max size {size_label(max_size)}, {flush_label(window)} flush")
            ax.set_xlabel("concurrent callers N")
            ax.set_ylabel("CPU µs per call (median)" if metric == "cpu_us_per_call" else "µs per call (median)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize="small")
    meta = result["meta"]
    trio = ", dotted: trio" if any(row["loop"] == "trio" for row in matrix) else ""
    fig.suptitle(
        f"concresce benchmarks ({meta['mode']}, {'CPU time' if metric == 'cpu_us_per_call' else 'wall clock'}): "
        f"CPython {meta['python']}, {meta['cpu_count']} CPUs, {meta['date'][:10]}; "
        f"solid: default loop, dashed: uvloop{trio}"
    )
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
