"""Typing that pyright gets right and mypy does not (checked by pyright only; never executed).

mypy applies ``Batched.__get__``'s ``@classmethod`` overload to a ``@staticmethod`` over
``@batch`` as well, and so drops its first parameter; pyright follows the overloads as written.
docs/decisions.md records the limitation.
"""

from __future__ import annotations

from typing_extensions import assert_type

from concresce import batch, collect, scatter


class Repository:
    @staticmethod
    @batch
    async def shared(row_id: int) -> int:
        ids = await collect(row_id)
        return scatter(ids)


async def usage() -> None:
    assert_type(await Repository.shared(1), int)
    assert_type(await Repository().shared(1), int)
    assert_type(Repository.shared.stats().calls, int)
