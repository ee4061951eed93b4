"""The thread benchmark's statistics, targets, Markdown report and plot, from its measurements."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Final

from _report import DASH, TIMES, load_pyplot, spread, summarize
from _threads_systems import SYSTEMS

if TYPE_CHECKING:
    from pathlib import Path

    from _threads_load import Round

BACKEND_TITLES: Final = {
    "sim": "Simulated backend",
    "postgres": "PostgreSQL",
}
#: Issue 12's targets: (threads, the least batched/unbatched throughput ratio).
TARGETS: Final = ((64, 5.0), (1, 0.95))
BACKEND_STYLES: Final = {"sim": "-", "postgres": "--"}
QUERIES: Final = (
    "`SELECT price FROM t WHERE id = %s` per call (`unbatched`), `SELECT id, price FROM t WHERE id = ANY(%s)` "
    "per batch."
)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def aggregate(backend: str, system: str, threads: int, rounds: list[Round]) -> dict[str, Any]:
    """One row of the report from the rounds of one point (their latencies pooled)."""
    latencies = sorted(latency for one in rounds for latency in one.latencies)
    calls = sum(one.calls for one in rounds)
    queries = sum(one.queries for one in rounds)
    items = sum(one.items for one in rounds)
    row: dict[str, Any] = {
        "backend": backend,
        "system": system,
        "threads": threads,
        "calls": calls,
        "seconds": round(sum(one.seconds for one in rounds), 4),
        "calls_per_s": {key: round(value, 1) if key != "samples" else value for key, value in _rates(rounds).items()},
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 3),
            "p99": round(percentile(latencies, 99) * 1000, 3),
            "max": round(latencies[-1] * 1000, 3) if latencies else None,
            "mean": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
        },
        "queries": queries,
        "ids_per_query": round(items / queries, 2) if queries else None,
        "batches": None,
        "mean_batch_size": None,
    }
    if all(one.batches is not None for one in rounds):
        batches = sum(one.batches or 0 for one in rounds)
        row["batches"] = batches
        row["mean_batch_size"] = round(sum(one.batch_items or 0 for one in rounds) / batches, 2) if batches else None
    return row


def _rates(rounds: list[Round]) -> dict[str, Any]:
    stat = summarize([one.calls / one.seconds for one in rounds])
    stat["samples"] = [round(sample, 1) for sample in stat["samples"]]
    return stat


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each batching system's throughput over ``unbatched``'s at the same point of the same run.

    ``ratio`` is the ratio of the medians; ``paired`` the ratios round by round (each round of
    a point measures every system once, one after the other), with their min and max.
    """
    found = []
    for row in rows:
        if row["system"] == "unbatched":
            continue
        base = next(
            (
                other
                for other in rows
                if other["system"] == "unbatched"
                and other["backend"] == row["backend"]
                and other["threads"] == row["threads"]
            ),
            None,
        )
        if base is None:
            continue
        paired = [
            round(mine / theirs, 3)
            for mine, theirs in zip(row["calls_per_s"]["samples"], base["calls_per_s"]["samples"], strict=True)
        ]
        found.append(
            {
                "backend": row["backend"],
                "system": row["system"],
                "threads": row["threads"],
                "ratio": round(row["calls_per_s"]["median"] / base["calls_per_s"]["median"], 3),
                "paired": paired,
                "paired_min": min(paired),
                "paired_max": max(paired),
            }
        )
    return found


def targets(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12's targets for ``batched``, per backend, where the run measured their point."""
    p50 = {(r["backend"], r["system"], r["threads"]): r["latency_ms"]["p50"] for r in rows}
    found = []
    for backend in BACKEND_TITLES:
        for threads, least in TARGETS:
            row = next(
                (
                    r
                    for r in ratio_rows
                    if r["backend"] == backend and r["system"] == "batched" and r["threads"] == threads
                ),
                None,
            )
            if row is None:
                continue
            below = sum(1 for value in row["paired"] if value < least)
            found.append(
                {
                    "backend": backend,
                    "threads": threads,
                    "least": least,
                    "ratio": row["ratio"],
                    "paired_min": row["paired_min"],
                    "paired_max": row["paired_max"],
                    "rounds": len(row["paired"]),
                    "rounds_below": below,
                    "met": row["ratio"] >= least,
                    "p50_ms": {system: p50[backend, system, threads] for system in ("unbatched", "batched")},
                }
            )
    return found


def _verdict(target: dict[str, Any]) -> str:
    if not target["met"]:
        return f"**missed** ({target['rounds_below']} of {target['rounds']} rounds below)"
    if target["rounds_below"]:
        return f"met by the median ({target['rounds_below']} of {target['rounds']} rounds below)"
    return "met in every round"


def _ratio_text(ratio_row: dict[str, Any] | None) -> str:
    if ratio_row is None:
        return DASH
    return f"{ratio_row['ratio']:.2f}{TIMES} [{ratio_row['paired_min']:.2f}{DASH}{ratio_row['paired_max']:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    """The report: setup, targets, then a table per backend."""
    meta, rows = result["meta"], result["results"]
    setup, plan = meta["setup"], meta["plan"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    lines = [
        "# Thread API benchmark: one query per item against batched, from threads",
        "",
        (
            f"{meta['date']}, {meta['mode']} run, {meta['duration_s']:.0f} s; {meta['implementation']} "
            f"{meta['python']} on {meta['platform']}, {meta['cpu_count']} CPUs ({meta['cpu_model']}); "
            f"commit {meta['commit']}; {versions}."
        ),
        (
            f"1-minute load average {meta.get('load_average_before')} before the run and "
            f"{meta.get('load_average_after')} after it (the run's own threads included)."
        ),
    ]
    if meta.get("postgres"):
        lines.append(f"PostgreSQL {meta['postgres']} on the same machine.")
    lines += [
        "",
        (
            f"Closed loop: T threads in one process, each calling the system for one id after another "
            f"(about {setup['missing_ids_share']:.0%} of the ids are not in the table; every answer is "
            f"checked). Each point is measured in {plan['rounds']} round(s) of {plan['warmup']:g} s "
            f"warm-up then {plan['duration']:g} s; a round measures every system at that point, one "
            "after the other, starting with a different one each round. calls/s is the median over "
            f"the rounds [min{DASH}max]; latency percentiles pool the rounds' calls. "
            f"Both backends hold one of a pool of {setup['pool_size']} connections per query. "
            f"`unbatched` makes one query per call; `batched` is `concresce.threads` "
            f"`@batch(max_size={setup['max_size']}, max_concurrency={setup['max_concurrency']})`, "
            "whose leader makes one query for its batch (group commit: a batch is dispatched at once "
            "while a slot is free, and grows while every slot is busy)"
            + (
                "; `floor` is a hand-written group-commit coalescer with the same options, the least "
                "such a thing can cost"
                if any(row["system"] == "floor" for row in rows)
                else ""
            )
            + ". The ratio is `batched` calls/s over `unbatched` calls/s at the same point of the same "
            f"run: the ratio of the medians, with the round-by-round ratios' [min{DASH}max]."
        ),
        "",
        (
            f"The simulated backend sleeps {setup['sim_round_trip_s'] * 1000:g} ms + "
            f"{setup['sim_per_item_s'] * 1e6:g} µs per id (`time.sleep`) while holding one of "
            f"{setup['pool_size']} tokens, handed to waiting threads first come, first served (as "
            f"`psycopg_pool` hands out its connections). PostgreSQL is psycopg "
            f"{meta['versions'].get('psycopg', '?')} with a `psycopg_pool.ConnectionPool` of "
            f"{setup['pool_size']} autocommit connections and a table of {setup['rows']:,} rows: " + QUERIES
        ),
        "",
    ]
    ratio_rows = result.get("ratios", [])
    if result.get("targets"):
        lines += [
            "## Targets (issue 12)",
            "",
            f"| backend | target | batched/unbatched [rounds min{DASH}max] | verdict | p50 ms, unbatched / batched |",
            "| --- | --- | ---: | --- | ---: |",
        ]
        for target in result["targets"]:
            threads = target["threads"]
            goal = f"{TIMES} at {threads} thread{'s' if threads != 1 else ''}"
            lines.append(
                f"| {BACKEND_TITLES[target['backend']]} | ≥ {target['least']:g}{goal} | "
                f"{target['ratio']:.2f}{TIMES} [{target['paired_min']:.2f}{DASH}{target['paired_max']:.2f}] | "
                f"{_verdict(target)} | {target['p50_ms']['unbatched']:.2f} / {target['p50_ms']['batched']:.2f} |"
            )
        lines += [
            "",
            (
                "At 1 thread the throughput is the inverse of the mean latency, which a few late wake-ups "
                "on a busy machine move by several percent from round to round; the p50 latencies show "
                "more steadily what batching adds to a lone call."
            ),
            "",
        ]
    order = {name: index for index, name in enumerate(SYSTEMS)}
    for backend, title in BACKEND_TITLES.items():
        mine = sorted(
            (row for row in rows if row["backend"] == backend), key=lambda r: (r["threads"], order[r["system"]])
        )
        if not mine:
            continue
        lines += [
            f"## {title}",
            "",
            (
                f"| threads | system | calls/s median [min{DASH}max] | p50 ms | p99 ms | mean batch | "
                "ids/query | ratio to unbatched [rounds] |"
            ),
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in mine:
            ratio_row = next(
                (
                    r
                    for r in ratio_rows
                    if (r["backend"], r["system"], r["threads"]) == (backend, row["system"], row["threads"])
                ),
                None,
            )
            latency = row["latency_ms"]
            batch = DASH if row["mean_batch_size"] is None else f"{row['mean_batch_size']:.1f}"
            per_query = DASH if row["ids_per_query"] is None else f"{row['ids_per_query']:.1f}"
            lines.append(
                f"| {row['threads']} | `{row['system']}` | {spread(row['calls_per_s'])} | {latency['p50']:.2f} | "
                f"{latency['p99']:.2f} | {batch} | {per_query} | {_ratio_text(ratio_row)} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput and p99 latency against threads, log-log; color per system, style per backend."""
    plt = load_pyplot()
    from matplotlib import ticker  # noqa: PLC0415 -- after load_pyplot() chose the backend

    rows = result["results"]
    colors = {name: f"C{index}" for index, name in enumerate(SYSTEMS)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = (
        (axes[0], lambda row: row["calls_per_s"]["median"], "calls/s (median over rounds)", "throughput"),
        (axes[1], lambda row: row["latency_ms"]["p99"], "p99 latency per call (ms)", "p99 latency"),
    )
    for axis, value, label, title in panels:
        for backend, style in BACKEND_STYLES.items():
            for system in SYSTEMS:
                points = sorted(
                    (r for r in rows if r["backend"] == backend and r["system"] == system), key=lambda r: r["threads"]
                )
                if not points:
                    continue
                axis.plot(
                    [r["threads"] for r in points],
                    [value(r) for r in points],
                    style,
                    marker="o",
                    markersize=4,
                    color=colors[system],
                    label=f"{system} ({backend})",
                )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        axis.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:,.0f}" if y >= 1 else f"{y:g}"))
        axis.yaxis.set_minor_formatter(ticker.NullFormatter())
        axis.grid(visible=True, which="both", alpha=0.3)
        axis.set_xlabel("threads")
        axis.set_ylabel(label)
        axis.set_title(f"{title} against threads")
    axes[0].legend(fontsize=8, loc="upper left")
    meta = result["meta"]
    styles = "; ".join(
        f"{'solid' if style == '-' else 'dashed'}: {BACKEND_TITLES[backend]}"
        for backend, style in BACKEND_STYLES.items()
        if backend in meta["backends"]
    )
    fig.suptitle(
        f"Thread API, closed loop, pool of {meta['setup']['pool_size']} connections; {styles} "
        f"({meta['implementation']} {meta['python']}, {meta['cpu_count']} CPUs, {meta['date'][:10]})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
