"""The e2e benchmark's summary, Markdown report and plot, from its JSON result."""

from __future__ import annotations

from typing import Any

from _common import CONCRESCE_STRATEGIES, STRATEGIES, WINDOWS


def _point(rows: list[dict[str, Any]], strategy: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["strategy"] == strategy and r["concurrency"] == concurrency), None)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The headline comparisons, at the lowest and the highest concurrency measured."""
    rows = result["results"]
    concurrencies = sorted({r["concurrency"] for r in rows})
    low, high = concurrencies[0], concurrencies[-1]
    summary: dict[str, Any] = {"low_concurrency": low, "high_concurrency": high}

    at_high = {r["strategy"]: r for r in rows if r["concurrency"] == high}
    batched = [at_high[s] for s in CONCRESCE_STRATEGIES if s in at_high]
    if "unbatched" in at_high and batched:
        best = max(batched, key=lambda r: r["throughput_rps"])
        summary["best_concresce_at_high"] = {
            "strategy": best["strategy"],
            "throughput_rps": best["throughput_rps"],
            "unbatched_throughput_rps": at_high["unbatched"]["throughput_rps"],
            "gain_over_unbatched": round(best["throughput_rps"] / at_high["unbatched"]["throughput_rps"], 2),
        }
        if "aiodataloader" in at_high:
            summary["best_concresce_at_high"]["gain_over_aiodataloader"] = round(
                best["throughput_rps"] / at_high["aiodataloader"]["throughput_rps"], 2
            )

    if batched:
        # CPU time per request is much less disturbed by other work on the machine than
        # throughput and latency are.
        summary["server_cpu_ms_per_request_at_high"] = {
            "concresce_min": min(r["server_cpu_ms_per_request"] for r in batched),
            "concresce_max": max(r["server_cpu_ms_per_request"] for r in batched),
            **{s: at_high[s]["server_cpu_ms_per_request"] for s in ("unbatched", "aiodataloader") if s in at_high},
        }

    windows = [s for s in WINDOWS if any(r["strategy"] == s for r in rows)]
    group = {r["concurrency"]: r for r in rows if r["strategy"] == "group_commit"}
    if windows and low in group and high in group:
        at_low = [p for s in windows if (p := _point(rows, s, low))]
        best_p99 = min(at_low, key=lambda r: r["latency_ms"]["p99"])
        summary["group_commit_vs_best_window_p99_at_low"] = {
            "group_commit_p99_ms": group[low]["latency_ms"]["p99"],
            "best_window": best_p99["strategy"],
            "best_window_p99_ms": best_p99["latency_ms"]["p99"],
            "ratio": round(group[low]["latency_ms"]["p99"] / best_p99["latency_ms"]["p99"], 3),
        }
        at_high_windows = [p for s in windows if (p := _point(rows, s, high))]
        best_rps = max(at_high_windows, key=lambda r: r["throughput_rps"])
        summary["group_commit_vs_best_window_throughput_at_high"] = {
            "group_commit_rps": group[high]["throughput_rps"],
            "best_window": best_rps["strategy"],
            "best_window_rps": best_rps["throughput_rps"],
            "ratio": round(group[high]["throughput_rps"] / best_rps["throughput_rps"], 3),
        }
    return summary


def _clients(n: int) -> str:
    return f"{n} client{'s' if n != 1 else ''}"


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    high, low = _clients(summary["high_concurrency"]), _clients(summary["low_concurrency"])
    if best := summary.get("best_concresce_at_high"):
        line = (
            f"- At {high} the best concresce strategy, `{best['strategy']}`, serves "
            f"{best['throughput_rps']:,.0f} req/s: {best['gain_over_unbatched']:.2f}x `unbatched` "
            f"({best['unbatched_throughput_rps']:,.0f} req/s)"
        )
        if "gain_over_aiodataloader" in best:
            line += f" and {best['gain_over_aiodataloader']:.2f}x the per-request `aiodataloader`"
        lines.append(line + ".")
    if cpu := summary.get("server_cpu_ms_per_request_at_high"):
        others = "".join(f", `{s}` {cpu[s]:.2f} ms" for s in ("unbatched", "aiodataloader") if s in cpu)
        span = f"{cpu['concresce_min']:.2f}"
        if cpu["concresce_max"] != cpu["concresce_min"]:
            span += f"-{cpu['concresce_max']:.2f}"
        lines.append(
            f"- Server CPU per request at {high} (the steadiest measure on a busy machine): "
            f"concresce strategies {span} ms{others}."
        )
    if p99 := summary.get("group_commit_vs_best_window_p99_at_low"):
        lines.append(
            f"- At {low}, `group_commit` p99 latency is {p99['group_commit_p99_ms']:.2f} ms against "
            f"{p99['best_window_p99_ms']:.2f} ms for the best fixed window (`{p99['best_window']}`): "
            f"{p99['ratio']:.2f}x."
        )
    if rps := summary.get("group_commit_vs_best_window_throughput_at_high"):
        lines.append(
            f"- At {high}, `group_commit` serves {rps['group_commit_rps']:,.0f} req/s against "
            f"{rps['best_window_rps']:,.0f} for the best fixed window (`{rps['best_window']}`): {rps['ratio']:.2f}x."
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The report: setup, headline, then one table per offered concurrency."""
    meta, rows = result["meta"], result["results"]
    plan = meta["plan"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    lines = [
        "# End-to-end benchmark: FastAPI + asyncpg + PostgreSQL",
        "",
        (
            f"{meta['date']}, {meta['mode']} run, {meta['duration_s']:.0f} s; CPython {meta['python']} on "
            f"{meta['platform']}, {meta['cpu_count']} CPUs ({meta['cpu_model']}); commit {meta['commit']}."
        ),
        f"PostgreSQL {meta['postgres']} on the same machine; {versions}.",
        (
            f"1-minute load average {meta.get('load_average_before')} before the run and "
            f"{meta.get('load_average_after')} after it (the run's own processes included)."
        ),
        "",
        (
            f"Each request looks up {meta['items_per_request']} rows by primary key, one `lookup(id)` call per row, "
            f"gathered concurrently. {_servers(meta.get('workers', 1))} ({meta['server_loop']} loop, one asyncpg "
            f"pool of {meta['pool_size']} connections per process, `max_size={meta['max_size']}` for `@batch`); "
            "a closed-loop load "
            f"generator in another process, one keep-alive connection per client; each point is measured in "
            f"{plan['rounds']} round(s), interleaved with the other points, of {plan['warmup']:g} s warm-up then "
            f"{plan['duration']:g} s (at most {plan['max_requests']:,} requests); its rounds' requests are pooled. "
            "Latency is measured by the "
            "client; queries are counted by the app; server CPU is the server processes' CPU time per request, "
            "client CPU the load generator's (PostgreSQL's own CPU is in neither)."
        ),
        "",
    ]
    summary = result.get("summary") or {}
    if summary:
        lines += ["## Headline", "", *_summary_lines(summary), ""]
    for concurrency in sorted({r["concurrency"] for r in rows}):
        lines += [
            f"## {_clients(concurrency)} at once",
            "",
            (
                "| strategy | req/s | req/s per round | p50 ms | p90 ms | p99 ms | queries/req | ids/query "
                "| server CPU ms/req | client CPU ms/req |"
            ),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in rows:
            if row["concurrency"] != concurrency:
                continue
            latency = row["latency_ms"]
            rounds = " / ".join(f"{rps:,.0f}" for rps in row.get("throughput_rps_rounds", []))
            lines.append(
                f"| `{row['strategy']}` | {row['throughput_rps']:,.0f} | {rounds} | {latency['p50']:.2f} | "
                f"{latency['p90']:.2f} | {latency['p99']:.2f} | {row['queries_per_request']:.3f} | "
                f"{row['items_per_query']:.1f} | {row['server_cpu_ms_per_request']:.3f} | "
                f"{row['client_cpu_ms_per_request']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(result: dict[str, Any], path: Any) -> None:
    """Latency (p50 and p99) against throughput, one curve per strategy, points labelled by concurrency."""
    import matplotlib as mpl  # noqa: PLC0415 -- only the plot needs it (bench group)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: PLC0415

    rows = result["results"]
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for axis, quantile in zip(axes, ("p50", "p99"), strict=True):
        for strategy in strategies:
            points = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["concurrency"])
            xs = [r["throughput_rps"] for r in points]
            ys = [r["latency_ms"][quantile] for r in points]
            style = "--" if strategy in {"unbatched", "aiodataloader"} else "-"
            (line,) = axis.plot(xs, ys, style, marker="o", label=strategy)
            for r, x, y in zip(points, xs, ys, strict=True):
                axis.annotate(
                    str(r["concurrency"]),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=line.get_color(),
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        plain = FuncFormatter(lambda value, _position: f"{value:g}")
        for scale in (axis.xaxis, axis.yaxis):
            scale.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            scale.set_major_formatter(plain)
            scale.set_minor_formatter(NullFormatter())
        axis.set_xlabel("throughput (requests/s)")
        axis.set_title(f"{quantile} latency against throughput")
        axis.grid(visible=True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    axes[1].legend(fontsize=8, loc="upper left")
    meta = result["meta"]
    figure.suptitle(
        f"FastAPI + asyncpg, {meta['items_per_request']} lookups per request; points labelled by concurrent clients "
        f"(CPython {meta['python']}, {meta['cpu_count']} CPUs)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _servers(workers: int) -> str:
    if workers == 1:
        return "One uvicorn process per strategy"
    return f"{workers} uvicorn worker processes per strategy on one socket"
