"""``auto.py``'s report: tables with spreads, the targets, and the plot against clients."""

from __future__ import annotations

from typing import Any

TITLES = {
    "http": ("FastAPI + asyncpg (10 lookups per request)", "req/s"),
    "db": ("Database-bound: per-item lookups straight against PostgreSQL", "lookups/s"),
}


def _cell(measure: dict[str, float], digits: int) -> str:
    if measure["min"] == measure["max"]:
        return f"{measure['median']:,.{digits}f}"
    return f"{measure['median']:,.{digits}f} ({measure['min']:,.{digits}f}-{measure['max']:,.{digits}f})"


def markdown(result: dict[str, Any]) -> str:
    """Setup, the targets, then one table per variant (rows: clients x strategy)."""
    meta, rows = result["meta"], result["results"]
    lines = [
        "# The self-tuning flush against fixed policies (issue 13)",
        "",
        (
            f"{meta['date']}; CPython {meta['python']} on {meta['platform']}, {meta['cpu_count']} CPUs "
            f"({meta['cpu_model']}); commit {meta['commit']}; took {meta['took_s']:.0f} s. Each point: "
            f"{meta['rounds']} round(s) of {meta['warmup_s']:g} s warm-up + {meta['duration_s_per_round']:g} s, "
            "interleaved with the other points. Cells: median over rounds (min-max). Asyncpg pool of "
            f"{meta['pool_size']} connections; PostgreSQL on the same machine, with the load generator."
        ),
        "",
        "## auto against the best fixed strategy at each load",
        "",
        "Targets: p99 at most 1.10x the best fixed strategy's, throughput at least 0.95x the best's (medians).",
        "",
        (
            "| variant | clients | auto p99 ms | best p99 ms (strategy) | ratio | auto throughput | best (strategy) "
            "| ratio | auto / unbatched | met |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines.extend(
        f"| {check['variant']} | {check['clients']} | {check['auto_p99_ms']:.2f} | "
        f"{check['best_p99_ms']:.2f} (`{check['best_p99_strategy']}`) | {check['p99_ratio']:.2f} | "
        f"{check['auto_throughput']:,.0f} | {check['best_throughput']:,.0f} "
        f"(`{check['best_throughput_strategy']}`) | {check['throughput_ratio']:.2f} | "
        f"{check.get('vs_unbatched_throughput', float('nan')):.2f} | {'yes' if check['met'] else 'no'} |"
        for check in result["targets"]
    )
    lines.append("")
    for variant, (title, unit) in TITLES.items():
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        lines += [
            f"## {title}",
            "",
            f"| clients | strategy | p50 ms | p99 ms | {unit} | items/query |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['clients']} | `{r['strategy']}` | {_cell(r['p50_ms'], 2)} | {_cell(r['p99_ms'], 2)} | "
            f"{_cell(r['throughput'], 0)} | {r['items_per_query']:.1f} |"
            for r in mine
        ]
        lines.append("")
    tuned = [r for r in rows if r.get("tuning")]
    if tuned:
        lines += [
            "## What auto chose (database-bound variant, after each point's last round)",
            "",
            "| clients | in-flight limit | hold limit ms | round trip ms | per item µs | arrivals/s | mean size |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines.extend(
            f"| {r['clients']} | {t['in_flight_limit']} | {t['hold_limit'] * 1000:.2f} | "
            f"{t['round_trip'] * 1000:.2f} | {t['per_item'] * 1e6:.1f} | {t['arrival_rate']:,.0f} | "
            f"{t['mean_size']:.1f} |"
            for r in tuned
            if (t := r["tuning"])
        )
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(result: dict[str, Any], path: Any) -> None:
    """p50, p99 and throughput against clients, one row of panels per variant, error bars = spread."""
    import matplotlib as mpl  # noqa: PLC0415 -- only the plot needs it (bench group)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result["results"]
    variants = [v for v in TITLES if any(r["variant"] == v for r in rows)]
    figure, axes = plt.subplots(len(variants), 3, figsize=(16, 4.8 * len(variants)), squeeze=False)
    for line_axes, variant in zip(axes, variants, strict=True):
        title, unit = TITLES[variant]
        mine = [r for r in rows if r["variant"] == variant]
        strategies = list(dict.fromkeys(r["strategy"] for r in mine))
        for axis, (key, label) in zip(
            line_axes, (("p50_ms", "p50 (ms)"), ("p99_ms", "p99 (ms)"), ("throughput", unit)), strict=True
        ):
            for strategy in strategies:
                points = sorted((r for r in mine if r["strategy"] == strategy), key=lambda r: r["clients"])
                xs = [r["clients"] for r in points]
                ys = [r[key]["median"] for r in points]
                low = [r[key]["median"] - r[key]["min"] for r in points]
                high = [r[key]["max"] - r[key]["median"] for r in points]
                width = 2.5 if strategy == "auto" else 1.0
                style = "--" if strategy == "unbatched" else "-"
                axis.errorbar(
                    xs, ys, yerr=[low, high], fmt=style, marker="o", lw=width, ms=3, capsize=2, label=strategy
                )
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("concurrent clients")
            axis.set_title(f"{variant}: {label}")
            axis.grid(visible=True, which="both", alpha=0.3)
        line_axes[0].legend(fontsize=7, loc="upper left", title=title, title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
