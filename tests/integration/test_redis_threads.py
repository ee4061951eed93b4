"""examples/redis_threads.py against a real Redis server, from many threads.

The tests that count round trips exactly make the batches' composition certain first: a
loader that blocks (on an event the test sets) keeps the first ``MAX_CONCURRENCY`` batches,
one caller each, in their bulk sections, so every later call joins the next batch, which
waits for a free slot.
"""

from __future__ import annotations

import secrets
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
import redis
from tests.support import copy_of

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping
    from types import ModuleType

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def example(load_example) -> ModuleType:
    return load_example("redis_threads")


@pytest.fixture
def client(example, redis_url) -> Iterator[redis.Redis]:
    client = example.connect(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def prefix(redis_url) -> Iterator[str]:
    prefix = f"concresce-test:{secrets.token_hex(4)}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as cleaner:
        stored = list(cleaner.scan_iter(match=f"{prefix}*"))
        if stored:
            cleaner.delete(*stored)


class GatedSource:
    """A source of truth that knows ``known``; each load waits for ``gate`` (unless open).

    ``with source:`` opens the gate at the end of the block, whatever happens in it.
    """

    def __init__(self, known: Mapping[str, bytes]) -> None:
        self.known = known
        self.gate = threading.Event()
        self.loads: list[list[str]] = []
        self.fail_on: str | None = None
        self._lock = threading.Lock()

    def load(self, keys: Collection[str]) -> dict[str, bytes]:
        with self._lock:
            self.loads.append(sorted(keys))
        assert self.gate.wait(TIMEOUT), "the test never opened the gate"
        if self.fail_on in keys:
            msg = f"source unavailable for {sorted(keys)}"
            raise RuntimeError(msg)
        return {key: self.known[key] for key in keys if key in self.known}

    def waiting(self) -> int:
        with self._lock:
            return len(self.loads)

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self.gate.set()


def command_calls(client: redis.Redis, *commands: str) -> dict[str, int]:
    """How many times the server ran each command (INFO commandstats)."""
    stats = client.info("commandstats")
    return {command: stats.get(f"cmdstat_{command}", {}).get("calls", 0) for command in commands}


def outcomes(futures: list[Future[bytes | None]]) -> list[bytes | BaseException | None]:
    return [future.exception(TIMEOUT) or future.result() for future in futures]


def test_main_answers_every_call_and_caches_what_it_loaded(example, redis_url):
    with redis.Redis.from_url(redis_url) as observer:
        before = command_calls(observer, "set", "mget", "get")
        keys_before = len(list(observer.scan_iter(match="concresce-example:*")))

        outcome = example.main(redis_url, threads=16, keys_per_thread=25)

        after = command_calls(observer, "set", "mget", "get")
        keys_after = len(list(observer.scan_iter(match="concresce-example:*")))

    assert outcome.wrong == []
    assert outcome.calls == 400
    cold, warm = outcome.round_trips["cold cache"], outcome.round_trips["warm cache"]
    # Keys 700 to 1099, each asked for once per run: the 300 the source knows are loaded and
    # written once, in the cold run; the warm run reads them from Redis and loads only the
    # 100 unknown ones again (they are not cached), writing nothing.
    assert "pipeline" not in warm
    assert 1 <= cold["MGET"] < outcome.calls
    assert 1 <= warm["MGET"] < outcome.calls
    assert {command: after[command] - before[command] for command in after} == {
        "set": 300,
        "mget": cold["MGET"] + warm["MGET"],
        "get": 0,
    }
    assert keys_after == keys_before  # it deleted its keys


def test_callers_that_find_every_slot_busy_share_one_round_trip(example, client, prefix, eventually, joined_calls):
    client.set(f"{prefix}cached", b"from redis")
    source = GatedSource({f"b{i}": f"blocker {i}".encode() for i in range(4)} | {"x": b"x", "y": b"y"})
    cache = example.ReadThroughCache(client, source.load, prefix=prefix)
    keys = ["x", "cached", "y", "x", "unknown", "x", "cached"]

    joined = joined_calls(cache.get)
    with ThreadPoolExecutor(len(keys) + 4) as pool, source:  # the gate opens before the pool joins
        blockers = [pool.submit(cache.get, f"b{i}") for i in range(4)]
        eventually(lambda: source.waiting() == example.MAX_CONCURRENCY, "a load in each slot")
        batch = [pool.submit(cache.get, key) for key in keys]
        eventually(lambda: joined() == 4 + len(keys), "the batch's members to join it")
        assert cache.round_trips == {"MGET": 4, "load": 4}
        source.gate.set()
        found = outcomes([*blockers, *batch])

    assert found == [f"blocker {i}".encode() for i in range(4)] + [
        b"x",
        b"from redis",
        b"y",
        b"x",
        None,
        b"x",
        b"from redis",
    ]
    # One MGET, one load and one pipeline for the batch; each key once (dedupe=True).
    assert cache.round_trips == {"MGET": 5, "load": 5, "pipeline": 5}
    assert source.loads[-1] == ["unknown", "x", "y"]
    assert client.mget([f"{prefix}{key}" for key in ("x", "y", "unknown")]) == [b"x", b"y", None]
    assert 0 < client.ttl(f"{prefix}x") <= 300


def test_a_failed_load_fails_every_member_of_its_batch_and_the_next_batch_works(
    example, client, prefix, eventually, joined_calls
):
    source = GatedSource({f"b{i}": b"blocker" for i in range(4)} | {"a": b"A", "b": b"B"})
    source.fail_on = "poison"
    cache = example.ReadThroughCache(client, source.load, prefix=prefix)

    joined = joined_calls(cache.get)
    with ThreadPoolExecutor(8) as pool, source:
        blockers = [pool.submit(cache.get, f"b{i}") for i in range(4)]
        eventually(lambda: source.waiting() == example.MAX_CONCURRENCY, "a load in each slot")
        batch = [pool.submit(cache.get, key) for key in ("a", "poison", "b")]
        eventually(lambda: joined() == 7, "the batch's members to join it")
        source.gate.set()
        assert outcomes(blockers) == [b"blocker"] * 4
        errors = outcomes(batch)

    # The leader's error reaches every member of its batch (each follower a copy of it);
    # nothing of the batch was cached.
    assert isinstance(errors[0], RuntimeError), errors
    assert str(errors[0]) == "source unavailable for ['a', 'b', 'poison']"
    assert all(copy_of(error, errors[0]) for error in errors[1:]), errors
    assert client.mget([f"{prefix}a", f"{prefix}b"]) == [None, None]
    # The next batch works.
    source.fail_on = None
    assert cache.get("a") == b"A"
    assert cache.get("poison") is None
    assert client.get(f"{prefix}a") == b"A"


def test_a_failed_round_trip_fails_the_calls(example):
    # A port that is bound but not listening: the connection is refused, at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host, port = closed.getsockname()
        client = example.connect(f"redis://{host}:{port}/0")
        cache = example.ReadThroughCache(client, lambda keys: dict.fromkeys(keys, b"never"))
        try:
            with ThreadPoolExecutor(8) as pool:
                errors = outcomes([pool.submit(cache.get, f"k{i}") for i in range(8)])
        finally:
            client.close()

    assert all(isinstance(error, redis.ConnectionError) for error in errors), errors
    assert 1 <= cache.round_trips["MGET"] <= 8
    assert "load" not in cache.round_trips
