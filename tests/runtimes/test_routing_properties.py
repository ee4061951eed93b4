"""scatter()'s routing against a model, over random batches and failures, on every runtime.

Each example makes concurrent calls (split into batches by a random ``max_size``) whose leaders
route their results in a random shape (positional, keyed, keyed with ``key=`` or a default, or
a list of the wrong length), with random per-item fates: a value, an ``Exception`` result, or a
key missing from the mapping. The model says what each caller gets from its batch as recorded
(who joined which batch); the outcome of every call must be exactly that.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.runtimes import kit
from tests.support import property_examples

from concresce import BatchRoutingError, MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio

Shape = Literal["list", "generator", "dict", "dict_default", "dict_key", "too_few", "too_many"]
Fate = Literal["value", "error", "missing"]

DEFAULT = "<default>"


class ItemError(Exception):
    """The per-item failure routed to one caller."""


def route(shape: Shape, fates: dict[int, Fate], items: list[Any], errors: dict[int, ItemError]) -> object:
    """The leader's scatter() of ``items`` in ``shape``."""
    ids = [item["id"] if shape == "dict_key" else item for item in items]
    results: dict[int, object] = {}
    for i in ids:
        if fates[i] == "error":
            results[i] = errors[i] = ItemError(f"item {i}")
        elif fates[i] == "value" or shape not in ("dict", "dict_default", "dict_key"):
            results[i] = ("r", i)
    if shape in ("list", "too_few", "too_many"):
        values = [results[i] for i in ids]
        return scatter({"list": values, "too_few": values[:-1], "too_many": [*values, "extra"]}[shape])
    if shape == "generator":
        return scatter(results[i] for i in ids)
    if shape == "dict_key":
        return scatter({("unasked", -1): "extra", **results}, key=lambda item: item["id"])
    if shape == "dict_default":
        return scatter(results, default=DEFAULT)
    return scatter(results)


def expected_outcome(shape: Shape, fate: Fate, call: int, size: int, errors: dict[int, ItemError]) -> object:
    """What call ``call``, in a batch of ``size`` calls, gets."""
    if shape in ("too_few", "too_many"):
        count = size - 1 if shape == "too_few" else size + 1
        return ("routing error", f"got {count} results for {size} callers")
    if fate == "error":
        return ("raised", errors[call])
    if fate == "missing" and shape in ("dict", "dict_key"):
        return ("missing", call)
    if fate == "missing" and shape == "dict_default":
        return ("returned", DEFAULT)
    return ("returned", ("r", call))


def observed(outcome: object, fetch: Any) -> object:
    """A call's outcome in the model's terms."""
    prefix = f"{fetch.__qualname__}: scatter() "
    if type(outcome) is MissingResultError:
        assert str(outcome).startswith(f"{prefix}has no result for key {outcome.key!r}")
        return ("missing", outcome.key)
    if type(outcome) is BatchRoutingError:
        assert str(outcome).startswith(prefix)
        return ("routing error", str(outcome).removeprefix(prefix))
    if isinstance(outcome, BaseException):
        return ("raised", outcome)
    return ("returned", outcome)


@settings(
    max_examples=property_examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shape=st.sampled_from(["list", "generator", "dict", "dict_default", "dict_key", "too_few", "too_many"]),
    fates=st.lists(st.sampled_from(["value", "value", "error", "missing"]), min_size=1, max_size=9),
    max_size=st.sampled_from([None, 1, 2, 3, 4]),
)
async def test_every_caller_gets_what_its_leaders_results_route_to_it(
    shape: Shape, fates: list[Fate], max_size: int | None
) -> None:
    """Values, per-item exceptions, defaults, missing keys and whole-batch routing errors land where the model says."""
    plan = dict(enumerate(fates))
    joins: list[int] = []
    batches: list[list[int]] = []
    errors: dict[int, ItemError] = {}

    @batch(max_size=max_size)
    async def fetch(item: Any) -> object:
        joins.append(item["id"] if shape == "dict_key" else item)
        items = await collect(item)
        batches.append([item["id"] if shape == "dict_key" else item for item in items])
        return route(shape, plan, items, errors)

    calls = [functools.partial(fetch, {"id": i} if shape == "dict_key" else i) for i in plan]
    outcomes = await kit.outcomes(*calls)

    # The batches: max_size runs of the join order (all joined in one turn), each led by its first.
    step = max_size or len(plan)
    assert sorted(batches, key=lambda b: joins.index(b[0])) == [joins[i : i + step] for i in range(0, len(joins), step)]
    size = {call: len(members) for members in batches for call in members}
    assert [observed(outcome, fetch) for outcome in outcomes] == [
        expected_outcome(shape, plan[call], call, size[call], errors) for call in plan
    ]
