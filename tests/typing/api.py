"""What a user's type checker infers from concresce's API.

Type-checked by mypy --strict and pyright strict in CI; never executed. A line ending in
`# type: ignore[...]` must be an error: with warn_unused_ignores (mypy) and
reportUnnecessaryTypeIgnoreComment (pyright), a checker that stopped seeing it fails.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import assert_type

from concresce import (
    Auto,
    Batched,
    BatchRecord,
    BatchRoutingError,
    BatchStats,
    MissingResultError,
    OverloadedError,
    Summary,
    Tuning,
    add_observer,
    batch,
    collect,
    scatter,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Hashable


@batch
async def bare(user_id: int) -> str:
    ids = await collect(user_id)
    assert_type(ids, list[int])
    names = {i: str(i) for i in ids}
    return scatter(names)


def by_tenant(tenant: str, user_id: int) -> Hashable:
    return (tenant, user_id % 2)


@batch(max_window=0.05, max_size=100, group_by=by_tenant, dedupe=True, max_concurrency=2)
async def configured(tenant: str, user_id: int) -> float:
    ids = await collect(user_id)
    return scatter([float(i) for i in ids])


@batch()
async def keyed_with_default(key: str) -> bytes | None:
    keys = await collect(key)
    found: dict[str, bytes] = {k: k.encode() for k in keys}
    value = scatter(found, default=None)
    assert_type(value, "bytes | None")
    return value


class Repository:
    @batch
    async def get(self, row_id: int) -> tuple[int, str]:
        ids = await collect(row_id)
        return scatter([(i, "row") for i in ids])

    @classmethod
    @batch(max_size=10)
    async def by_class(cls, row_id: int) -> int:
        ids = await collect(row_id)
        return scatter(ids)

    @staticmethod
    @batch
    async def shared(row_id: int) -> int:
        ids = await collect(row_id)
        return scatter(ids)


async def usage(blobs: tuple[bytes, ...]) -> None:
    as_callable: Callable[[int], Coroutine[Any, Any, str]] = bare
    assert_type(await as_callable(1), str)
    assert_type(await bare(1), str)
    assert_type(await configured("t", 1), float)
    assert_type(await configured(tenant="t", user_id=1), float)
    assert_type(await keyed_with_default("k"), "bytes | None")
    repo = Repository()
    assert_type(await repo.get(1), tuple[int, str])
    assert_type(await Repository.by_class(1), int)
    # (Repository.shared, a @staticmethod over @batch: see pyright_only.py.)
    results = await asyncio.gather(bare(1), bare(2))
    assert_type(results, tuple[str, str])
    coroutine: Coroutine[Any, Any, str] = bare(3)
    assert_type(await coroutine, str)
    assert_type(scatter([1, 2]), int)
    assert_type(scatter(blobs), bytes)
    assert_type(scatter({1: "a"}), str)
    assert_type(scatter({1: "a"}, key=len), str)
    assert_type(scatter({1: "a"}, default=0), "str | int")

    # Wrong arguments are errors: parameters survive the decorator (PEP 612).
    await bare("1")  # type: ignore[arg-type]
    await configured("t")  # type: ignore[call-arg]
    await repo.get(row_id="x")  # type: ignore[arg-type]


async def controls() -> None:
    # The controls are typed on functions, on methods through an instance, and on classmethods.
    assert_type(bare.stats(), BatchStats)
    assert_type(bare.stats(reset=True).batch_size, Summary)
    assert_type(bare.stats().flushes["tick"], int)
    assert_type(Repository().get.stats(), BatchStats)
    assert_type(Repository.by_class.stats(), BatchStats)
    bare.configure(max_window=0.01, max_size=None, max_concurrency=2, max_pending=100)
    bare.configure(max_window=timedelta(milliseconds=5))
    bare.configure(max_window="auto")
    bare.configure(max_window=Auto(ceiling=0.002))
    assert_type(bare.stats().tuning, Tuning | None)
    assert_type(bare.flush(), int)
    await bare.drain()
    await Repository().get.drain()
    bare.configure(max_size="10")  # type: ignore[arg-type]
    bare.configure(0.1)  # type: ignore[call-arg]
    decorated: Batched[[int], str] = bare
    assert_type(await decorated(1), str)


def observe(record: BatchRecord) -> None:
    outcome: Literal["ok", "error", "handover"] = record.outcome
    assert_type(record.outcome, Literal["ok", "error", "handover"])
    del outcome
    assert_type(record.error, "type[BaseException] | None")
    assert_type(record.tuning, Tuning | None)


@batch(weight=len, max_weight=4096, max_pending=1000, observer=observe)
async def weighted(text: str) -> int:
    texts = await collect(text)
    return scatter([len(t) for t in texts])


def errors() -> None:
    add_observer(observe)
    assert_type(OverloadedError("f", 3).limit, int)
    assert issubclass(MissingResultError, KeyError)
    assert issubclass(MissingResultError, BatchRoutingError)
    error = MissingResultError("f: scatter() has no result for key 3", 3)
    assert_type(error.key, object)


# Options are keyword-only and typed; a window may be a timedelta.
batch(max_window="0.1")  # type: ignore[call-overload]
batch(max_size=1.5)  # type: ignore[call-overload]
batch(max_window=timedelta(milliseconds=5))
batch(max_window="auto", max_concurrency=4)
batch(max_window=Auto(ceiling=timedelta(milliseconds=2)))
batch(max_window="Auto")  # type: ignore[call-overload]
batch(0.05, 100)  # type: ignore[call-overload]
batch(window=timedelta(milliseconds=5))  # type: ignore[call-overload]


@batch  # type: ignore[arg-type]
def not_async(x: int) -> int:
    return x
