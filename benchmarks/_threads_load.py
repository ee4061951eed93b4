"""Closed-loop load from threads: each thread calls the system for one item after another."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from _postgres import BenchmarkError
from _threads_systems import item_id, price

if TYPE_CHECKING:
    from collections.abc import Callable

    from _threads_systems import Backend, System

#: How long after the end of a round its threads may take to finish their last call.
JOIN_TIMEOUT: Final = 60.0


@dataclass
class Round:
    """One round of one point: the calls that ended within the measured interval."""

    calls: int
    seconds: float
    latencies: list[float]  # seconds, one per call
    queries: int  # backend calls that ended within the interval
    items: int  # ids they asked for
    batches: int | None  # from the system's own counters (None: it does not batch)
    batch_items: int | None


@dataclass
class _Thread:
    """What one load thread saw."""

    index: int
    latencies: list[float] = field(default_factory=list)
    wrong: str | None = None
    error: BaseException | None = None


def run_round(system: System, backend: Backend, *, threads: int, warmup: float, duration: float, seed: int) -> Round:
    """``threads`` threads call ``system`` back to back for ``warmup + duration`` seconds.

    Only the calls that end within the last ``duration`` seconds count; a thread starts no
    call after that. Every answer is checked; a wrong one or an error fails the round.
    """
    start = threading.Barrier(threads + 1)
    window = [0.0, 0.0]  # [begin, end] on perf_counter, set before the barrier opens
    workers = [_Thread(seed * 1000 + index) for index in range(threads)]
    pool = [
        threading.Thread(target=_load, args=(worker, system.call, start, window), daemon=True) for worker in workers
    ]
    for thread in pool:
        thread.start()
    begin = time.perf_counter() + 0.005 + warmup
    window[:] = [begin, begin + duration]
    start.wait()
    snapshots = []
    for moment in window:
        time.sleep(max(0.0, moment - time.perf_counter()))
        snapshots.append((len(backend.sizes), system.counters() if system.counters else None))
    for thread in pool:
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            msg = f"{system.name}, {threads} threads: a load thread is still running {JOIN_TIMEOUT:g} s after the end"
            raise BenchmarkError(msg)
    _check(workers, f"{system.name}, {threads} threads")
    (first, counters_before), (last, counters_after) = snapshots
    sizes = backend.sizes[first:last]
    latencies = [latency for worker in workers for latency in worker.latencies]
    batches = batch_items = None
    if counters_before is not None and counters_after is not None:
        batches = counters_after[0] - counters_before[0]
        batch_items = counters_after[1] - counters_before[1]
    return Round(
        calls=len(latencies),
        seconds=duration,
        latencies=latencies,
        queries=len(sizes),
        items=sum(sizes),
        batches=batches,
        batch_items=batch_items,
    )


def _load(worker: _Thread, call: Callable[[int], int | None], start: threading.Barrier, window: list[float]) -> None:
    """A load thread: call for one item after another until the window ends; check each answer."""
    latencies, clock = worker.latencies, time.perf_counter
    start.wait()
    begin, end = window
    n = 0
    try:
        while (before := clock()) < end:
            item = item_id(worker.index, n)
            n += 1
            answer = call(item)
            after = clock()
            if answer != price(item):
                worker.wrong = f"item {item}: got {answer!r}, expected {price(item)!r}"
                return
            if begin <= after <= end:
                latencies.append(after - before)
    except Exception as error:  # noqa: BLE001 -- reported by the main thread
        worker.error = error


def _check(workers: list[_Thread], where: str) -> None:
    """Fail on the first error or wrong answer a load thread saw."""
    for worker in workers:
        if worker.error is not None:
            msg = f"{where}: {worker.error!r}"
            raise BenchmarkError(msg) from worker.error
        if worker.wrong is not None:
            msg = f"{where}: wrong answer, {worker.wrong}"
            raise BenchmarkError(msg)
