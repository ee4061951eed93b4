"""redis-py with threads: a read-through cache whose concurrent reads share one round trip.

``ReadThroughCache.get(key)`` is a plain ``def`` written for one key, meant to be called from
many threads at once. The thread that leads a batch sends one ``MGET`` for every caller's
key; the keys that missed are loaded from the source of truth in *one* bulk call, and written
back in one pipeline of ``SET ... EX`` commands (``transaction=False``: one round trip, no
``MULTI``/``EXEC``). A key that the source does not know either is ``None`` for its own
caller (``scatter(..., default=None)``), and is not cached.

The client's ``redis.ConnectionPool`` has one connection per concurrent batch
(``MAX_CONCURRENCY``).

Run it against a Redis server (it only touches keys under a prefix of its own, and deletes
them at the end)::

    REDIS_URL=redis://127.0.0.1:6379/0 uv run python examples/redis_threads.py
"""

import os
import secrets
import sys
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import cast

import redis

from concresce.threads import batch, collect, scatter

#: Batches whose round trips may run at once, and so the size of the connection pool: each
#: leader holds one connection at a time, and calls that arrive while every slot is busy
#: wait together for the next free one.
MAX_CONCURRENCY = 4

#: The source of truth's bulk read: the values of the keys it knows, by key.
Loader = Callable[[Collection[str]], Mapping[str, bytes]]


def connect(url: str) -> redis.Redis:
    """A client with one connection per concurrent batch (``MAX_CONCURRENCY``)."""
    pool = redis.ConnectionPool.from_url(url, max_connections=MAX_CONCURRENCY)  # pyright: ignore[reportUnknownMemberType]
    return redis.Redis(connection_pool=pool)


class ReadThroughCache:
    """``get`` one key; concurrent calls from any threads share one ``MGET`` per batch.

    ``dedupe=True``: a key asked for by many threads at once is read (and loaded) once.
    ``max_size`` bounds the keys of one ``MGET``, so that one huge batch does not hold the
    server up.
    """

    def __init__(self, client: redis.Redis, load: Loader, *, prefix: str = "", ttl: int = 300) -> None:
        self.client = client
        self.load = load
        self.prefix = prefix
        self.ttl = ttl
        self._lock = threading.Lock()
        #: Round trips to Redis and bulk loads from the source, by kind: the point of batching.
        self.round_trips: Counter[str] = Counter()

    def _count(self, what: str) -> None:
        with self._lock:  # leaders of concurrent batches count at once
            self.round_trips[what] += 1

    @batch(max_size=500, max_concurrency=MAX_CONCURRENCY, dedupe=True)
    def get(self, key: str) -> bytes | None:
        """The value of ``key``: from Redis, else from the source (and then cached); else ``None``."""
        keys = collect(key)
        # Only the batch's leader gets here, with every caller's key (each once).
        self._count("MGET")
        cached = cast("list[bytes | None]", self.client.mget([self.prefix + k for k in keys]))
        values = {k: value for k, value in zip(keys, cached, strict=True) if value is not None}
        misses = [k for k in keys if k not in values]
        if misses:
            self._count("load")
            loaded = self.load(misses)
            if loaded:
                self._count("pipeline")
                with self.client.pipeline(transaction=False) as pipe:  # pyright: ignore[reportUnknownMemberType]
                    for k, value in loaded.items():
                        pipe.set(self.prefix + k, value, ex=self.ttl)
                    pipe.execute()
                values.update(loaded)
        # Keyed routing: a key that neither Redis nor the source has is None.
        return scatter(values, default=None)


# --------------------------------------------------------------------------------------
# The demonstration
# --------------------------------------------------------------------------------------


def load_squares(keys: Collection[str]) -> dict[str, bytes]:
    """A stand-in for a slow source of truth: it knows the squares of the numbers 0 to 999."""
    return {key: str(int(key) ** 2).encode() for key in keys if key.isdigit() and int(key) < 1000}


@dataclass
class Outcome:
    """What ``main()`` saw."""

    calls: int = 0
    round_trips: dict[str, Counter[str]] = field(default_factory=dict[str, Counter[str]])
    #: ``(key, answer)`` for every answer that was not the expected one.
    wrong: list[tuple[str, bytes | None]] = field(default_factory=list[tuple[str, bytes | None]])


def read_from_threads(cache: ReadThroughCache, keys: range, *, threads: int) -> list[tuple[str, bytes | None]]:
    """Read ``keys`` through ``cache``, split among ``threads`` threads; return the wrong answers."""
    start = threading.Barrier(threads)
    wrong: list[tuple[str, bytes | None]] = []

    def worker(mine: range) -> None:
        start.wait()  # all threads start together
        for n in mine:
            value = cache.get(str(n))  # one key at a time
            # The source knows 0 to 999; the others are None, and never cached.
            if value != (str(n * n).encode() if n < 1000 else None):
                wrong.append((str(n), value))  # list.append is atomic

    workers = [threading.Thread(target=worker, args=(keys[n::threads],), name=f"worker {n}") for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return wrong


def main(url: str, *, threads: int = 16, keys_per_thread: int = 25) -> Outcome:
    """Read many keys from many threads, twice (cold, then warm); check every answer."""
    keys = range(700, 700 + threads * keys_per_thread)  # 300 keys the source knows, 100 it does not
    outcome = Outcome(calls=len(keys))
    prefix = f"concresce-example:{secrets.token_hex(4)}:"
    client = connect(url)
    try:
        for run in ("cold cache", "warm cache"):
            cache = ReadThroughCache(client, load_squares, prefix=prefix)
            outcome.wrong += read_from_threads(cache, keys, threads=threads)
            outcome.round_trips[run] = cache.round_trips
    finally:
        client.delete(*(f"{prefix}{n}" for n in keys))
        client.close()

    for run, round_trips in outcome.round_trips.items():
        print(f"{run}: {outcome.calls} calls of get() made {dict(round_trips)}")
    print("wrong answers:", outcome.wrong or "none")
    return outcome


if __name__ == "__main__":
    server = os.environ.get("REDIS_URL")
    if not server:
        sys.exit("set REDIS_URL to a Redis URL, e.g. redis://127.0.0.1:6379/0")
    sys.exit(1 if main(server).wrong else 0)
