"""examples/redis_cache.py against a real Redis server."""

from __future__ import annotations

import asyncio
import secrets
import socket

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from tests.support import copy_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def example(load_example):
    return load_example("redis_cache")


@pytest.fixture
async def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix():
    return f"concresce-test:{secrets.token_hex(4)}:"


async def command_calls(client, *commands):
    """How many times the server ran each command (INFO commandstats)."""
    stats = await client.info("commandstats")
    return {command: stats.get(f"cmdstat_{command}", {}).get("calls", 0) for command in commands}


async def test_main_sends_one_pipeline_and_one_mget(example, redis_url, client):
    before = await command_calls(client, "set", "mget", "get")

    outcome = await example.main(redis_url)

    after = await command_calls(client, "set", "mget", "get")
    assert outcome.round_trips == {"set 50 keys": {"pipeline": 1}, "get 60 keys": {"MGET": 1}}
    assert outcome.values == [f"v{i}".encode() for i in range(50)] + [None] * 10
    # What the server saw (this test's client is the only other one, and sends none of these).
    assert {command: after[command] - before[command] for command in after} == {"set": 50, "mget": 1, "get": 0}


async def test_get_splits_at_max_size_and_keeps_order(example, client, prefix):
    await client.mset({f"{prefix}{i}": str(i * i) for i in range(0, 1200, 3)})
    cache = example.Cache(client, prefix=prefix)
    try:
        values = await asyncio.gather(*(cache.get(str(i)) for i in range(1200)))
    finally:
        await client.delete(*(f"{prefix}{i}" for i in range(0, 1200, 3)))

    assert values == [str(i * i).encode() if i % 3 == 0 else None for i in range(1200)]
    assert cache.round_trips == {"MGET": 3}  # max_size=500: 500 + 500 + 200


async def test_set_error_is_raised_in_its_own_caller_only(example, client, prefix):
    cache = example.Cache(client, prefix=prefix)
    try:
        # A ttl that rounds to 0 ms is an error for that SET alone; the leader's own included.
        results = await asyncio.gather(
            cache.set("bad-leader", b"x", ttl=0.0001),
            cache.set("a", b"1", ttl=60),
            cache.set("bad", b"x", ttl=-1),
            cache.set("b", b"2"),
            return_exceptions=True,
        )
        stored = await client.mget([f"{prefix}{key}" for key in ("bad-leader", "a", "bad", "b")])
        ttl = await client.pttl(f"{prefix}a")
    finally:
        await client.delete(*(f"{prefix}{key}" for key in ("bad-leader", "a", "bad", "b")))

    assert isinstance(results[0], ResponseError)
    assert results[1] is None
    assert isinstance(results[2], ResponseError)
    assert results[2] is not results[0]
    assert results[3] is None
    assert stored == [None, b"1", None, b"2"]
    assert 0 < ttl <= 60_000
    assert cache.round_trips == {"pipeline": 1}


async def test_a_failed_round_trip_fails_every_caller_of_the_batch(example):
    # A port that is bound but not listening: the connection is refused, at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host, port = closed.getsockname()
        client = redis.Redis(host=host, port=port, retry=None)
        cache = example.Cache(client)
        try:
            results = await asyncio.gather(*(cache.get(f"k{i}") for i in range(5)), return_exceptions=True)
        finally:
            await client.aclose()

    # The leader's exception, before scatter(), is raised in every caller of its batch.
    assert isinstance(results[0], RedisConnectionError)
    assert all(copy_of(result, results[0]) for result in results[1:])
    assert cache.round_trips == {"MGET": 1}
