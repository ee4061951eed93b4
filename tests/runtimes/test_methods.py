"""Decorated methods, on every runtime (SPEC.md "Isolation and partitions": the three sentences on methods).

A method batches per instance (the leader's ``self`` is every member's), a classmethod per class,
a staticmethod in one shared batch; the library keeps no instance alive. Join order is the
runtime's: bodies record their join, and batches are compared in that order.
"""

from __future__ import annotations

import functools
import weakref

import pytest
from tests.runtimes import kit
from tests.support import gc_collect_harder

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


async def test_calls_on_different_instances_never_share_a_batch() -> None:
    """Calls on two shards make one batch per shard, each led with that shard as ``self``."""
    joins: list[str] = []
    batches: list[tuple[str, list[str]]] = []

    class Shard:
        def __init__(self, name: str) -> None:
            self.name = name

        @batch
        async def get(self, key: str) -> str:
            joins.append(key)
            keys = await collect(key)
            batches.append((self.name, keys))
            return scatter([f"{self.name}:{k}" for k in keys])

    east, west = Shard("east"), Shard("west")
    plan = [(east, "e1"), (west, "w1"), (east, "e2"), (west, "w2"), (east, "e3")]

    results = await kit.gather(*(functools.partial(shard.get, key) for shard, key in plan))

    assert results == ["east:e1", "west:w1", "east:e2", "west:w2", "east:e3"]
    east_joins = [key for key in joins if key.startswith("e")]
    west_joins = [key for key in joins if key.startswith("w")]
    assert sorted(batches) == [("east", east_joins), ("west", west_joins)]


async def test_a_method_batch_is_led_with_every_members_self() -> None:
    """Calls through the instance and through the class with the instance share one batch and one ``self``."""
    joins: list[int] = []
    leads: list[tuple[object, list[int]]] = []

    class Store:
        @batch
        async def load(self, key: int) -> tuple[object, int]:
            joins.append(key)
            keys = await collect(key)
            leads.append((self, keys))
            return scatter([(self, 10 * k) for k in keys])

    store = Store()
    results = await kit.gather(
        functools.partial(store.load, 1),
        functools.partial(Store.load, store, 2),
        functools.partial(Store.load, self=store, key=3),
    )

    assert results == [(store, 10), (store, 20), (store, 30)]
    assert leads == [(store, joins)]
    assert sorted(joins) == [1, 2, 3]


async def test_instances_are_not_kept_alive_by_the_library() -> None:
    """Once its calls have returned, an instance is freed as soon as the caller drops it."""
    joins: list[int] = []

    class Client:
        @batch
        async def fetch(self, key: int) -> int:
            joins.append(key)
            keys = await collect(key)
            return scatter([k + 1 for k in keys])

    client = Client()
    assert await kit.gather(*(functools.partial(client.fetch, k) for k in range(3))) == [1, 2, 3]
    alive = weakref.ref(client)
    del client
    gc_collect_harder()

    assert alive() is None
    assert sorted(joins) == [0, 1, 2]


async def test_a_classmethod_batches_per_class() -> None:
    """Calls through a class and its instances share a batch with that class as ``cls``; a subclass has its own."""
    joins: list[str] = []
    batches: list[tuple[str, list[str]]] = []

    class Model:
        @classmethod
        @batch
        async def find(cls, key: str) -> str:
            joins.append(key)
            keys = await collect(key)
            batches.append((cls.__name__, keys))
            return scatter([f"{cls.__name__}:{k}" for k in keys])

    class User(Model):
        pass

    plan = [(Model, "m1"), (User, "u1"), (Model(), "m2"), (User(), "u2")]
    results = await kit.gather(*(functools.partial(owner.find, key) for owner, key in plan))

    assert results == ["Model:m1", "User:u1", "Model:m2", "User:u2"]
    model_joins = [key for key in joins if key.startswith("m")]
    user_joins = [key for key in joins if key.startswith("u")]
    assert sorted(batches) == [("Model", model_joins), ("User", user_joins)]


async def test_a_staticmethod_shares_one_batch() -> None:
    """Calls through the class, its instances and a subclass all share one batch."""
    joins: list[int] = []
    batches: list[list[int]] = []

    class Codec:
        @staticmethod
        @batch
        async def encode(value: int) -> str:
            joins.append(value)
            values = await collect(value)
            batches.append(values)
            return scatter([hex(v) for v in values])

    class FastCodec(Codec):
        pass

    owners = [Codec, Codec(), FastCodec, FastCodec()]
    results = await kit.gather(*(functools.partial(owner.encode, 10 + i) for i, owner in enumerate(owners)))

    assert results == ["0xa", "0xb", "0xc", "0xd"]
    assert batches == [joins]
    assert sorted(joins) == [10, 11, 12, 13]
