"""redis: a per-key cache whose concurrent reads share one ``MGET`` and writes one pipeline.

``Cache.get(key)`` and ``Cache.set(key, value)`` are written for one key. Concurrent
``get`` calls send one ``MGET`` per batch, and concurrent ``set`` calls one pipeline of
``SET`` commands (``transaction=False``: one round trip, no ``MULTI``/``EXEC``).

Run it against a Redis server (it only touches keys under a prefix of its own, and
deletes them at the end)::

    REDIS_URL=redis://127.0.0.1:6379/0 uv run python examples/redis_cache.py
"""

import asyncio
import os
import secrets
import sys
from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio as redis

from concresce import batch, collect, scatter


class Cache:
    """``get``/``set`` one key; concurrent calls on one cache share one round trip per batch.

    ``max_window=0`` (the default) merges every call made in the same turn of the event
    loop at no added latency. ``max_size`` bounds how many keys one ``MGET`` or pipeline
    carries, so that one huge batch does not block the server for long.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        #: Round trips to the server, by command: the point of batching.
        self.round_trips: Counter[str] = Counter()

    @batch(max_size=500)
    async def get(self, key: str) -> bytes | str | None:
        """The value stored under ``key`` (``str`` if the client decodes responses), or ``None``."""
        keys = await collect(self.prefix + key)
        # Only the batch's leader gets here, with every caller's key.
        self.round_trips["MGET"] += 1
        values = await self.client.mget(keys)
        # MGET answers in the order of its keys (None for a missing key): positional routing.
        return scatter(values)

    @batch(max_size=500)
    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, for ``ttl`` seconds if given."""
        entries = await collect((self.prefix + key, value, ttl))
        self.round_trips["pipeline"] += 1
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_key, entry_value, entry_ttl in entries:
                pipe.set(entry_key, entry_value, px=None if entry_ttl is None else round(entry_ttl * 1000))
            replies = await pipe.execute(raise_on_error=False)
        # One reply per SET: True, or the error of that command alone, raised in its own
        # caller (the leader's included: scatter() raises it, or returns the leader's None).
        scatter([reply if isinstance(reply, Exception) else None for reply in replies])


@dataclass
class Outcome:
    """What ``main()`` saw."""

    round_trips: dict[str, Counter[str]] = field(default_factory=dict[str, Counter[str]])
    values: list[bytes | str | None] = field(default_factory=list[bytes | str | None])


async def main(url: str) -> Outcome:
    """Write and read many keys concurrently and print the round trips."""
    outcome = Outcome()
    prefix = f"concresce-example:{secrets.token_hex(4)}:"
    client = redis.Redis.from_url(url)  # pyright: ignore[reportUnknownMemberType]  # untyped **kwargs
    try:
        # 50 concurrent writes: one pipeline.
        cache = Cache(client, prefix=prefix)
        await asyncio.gather(*(cache.set(f"k{i}", f"v{i}".encode()) for i in range(50)))
        outcome.round_trips["set 50 keys"] = cache.round_trips

        # 60 concurrent reads, 10 of keys never written: one MGET, None for the missing.
        cache = Cache(client, prefix=prefix)
        outcome.values = list(await asyncio.gather(*(cache.get(f"k{i}") for i in range(60))))
        outcome.round_trips["get 60 keys"] = cache.round_trips
    finally:
        await client.delete(*(f"{prefix}k{i}" for i in range(50)))
        await client.aclose()

    for what, round_trips in outcome.round_trips.items():
        print(f"{what}: {dict(round_trips)}")
    print("values 48 to 51:", outcome.values[48:52])
    return outcome


if __name__ == "__main__":
    server = os.environ.get("REDIS_URL")
    if not server:
        sys.exit("set REDIS_URL to a Redis URL, e.g. redis://127.0.0.1:6379/0")
    asyncio.run(main(server))
