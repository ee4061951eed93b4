"""What a user's type checker infers from concresce.threads.

Type-checked by mypy --strict and pyright strict in CI; never executed. A line ending in
`# type: ignore[...]` must be an error: a checker that stopped seeing it fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import assert_type

from concresce import BatchStats
from concresce.threads import ThreadBatched, batch, collect, scatter

if TYPE_CHECKING:
    from collections.abc import Callable


@batch
def bare(user_id: int) -> str:
    ids = collect(user_id)
    assert_type(ids, list[int])
    return scatter({i: str(i) for i in ids})


@batch(max_size=10, max_concurrency=4, max_window=0.001)
def with_options(user_id: int, *, table: str = "users") -> str | None:
    ids = collect(user_id, timeout=1.5)
    return scatter({i: f"{table}{i}" for i in ids if i}, default=None)


typed: ThreadBatched[[int], str] = bare
assert_type(bare(1), str)
assert_type(with_options(1, table="t"), str | None)
assert_type(bare.stats(), BatchStats)
assert_type(bare.flush(), int)
assert_type(bare.drain(timeout=2.0), None)
bare.configure(max_size=5, max_concurrency=None)
bare("1")  # type: ignore[arg-type]
with_options(1, table=2)  # type: ignore[arg-type]
bare.configure(window=1)  # type: ignore[call-arg]


class Repository:
    @batch(max_concurrency=2)
    def get(self, key: str) -> bytes:
        keys = collect(key)
        return scatter([k.encode() for k in keys])


assert_type(Repository().get("k"), bytes)
bound: ThreadBatched[[str], bytes] = Repository().get


def takes_plain(fn: Callable[[int], str]) -> None:
    """A thread-batched function is a plain callable of the same signature."""


takes_plain(bare)
