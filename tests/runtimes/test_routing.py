"""scatter()'s routing, on every runtime (SPEC.md "Routing").

Each test runs one batch of concurrent calls whose leader routes a given ``results`` value and
asserts what every caller returned or raised. Results are computed from the items, so a result
routed to the wrong caller shows; where the leader's share matters, the body picks the failing
slot by its place in ``collect()``'s list (0 is the leader's own item, 1 a follower's).
"""

from __future__ import annotations

import collections
import functools
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from tests.runtimes import kit

from concresce import BatchRoutingError, MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


class Batch:
    """One batch of calls of a function whose leader returns ``route(items)``."""

    def __init__(self, route: Callable[[list[Any]], Any]) -> None:
        self.joins: list[Any] = []
        self.leads: list[tuple[Any, list[Any]]] = []

        @batch
        async def fetch(item: Any) -> Any:
            self.joins.append(item)
            items = await collect(item)
            self.leads.append((item, items))
            return route(items)

        self.fetch = fetch

    async def run(self, *items: Any) -> list[Any]:
        """Call ``fetch`` once per item, concurrently; return each call's result or exception, in order."""
        outcomes = await kit.outcomes(*(functools.partial(self.fetch, item) for item in items))
        assert self.leads == [(self.joins[0], self.joins)]  # one batch, led by its first member
        return outcomes

    def error(self, what: str) -> str:
        return f"{self.fetch.__qualname__}: scatter() {what}"


def assert_routing_error_everywhere(outcomes: list[Any], message: str) -> None:
    """Every caller got a BatchRoutingError (the leader's or a copy of it) with exactly ``message``."""
    assert [type(outcome) for outcome in outcomes] == [BatchRoutingError] * len(outcomes)
    assert [str(outcome) for outcome in outcomes] == [message] * len(outcomes)


class OnlyIterable:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


class ReadOnlyMapping(Mapping):
    def __init__(self, data: dict[Any, Any]) -> None:
        self.data = data

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


# --------------------------------------------------------------------------------------
# Positional
# --------------------------------------------------------------------------------------

POSITIONAL = {
    "list": list,
    "tuple": tuple,
    "generator": lambda values: (value for value in values),
    "deque": collections.deque,
    "dict.values()": lambda values: dict(enumerate(values)).values(),
    "map": lambda values: map(str.upper, values),
    "custom iterable": OnlyIterable,
}


@pytest.mark.parametrize("make", POSITIONAL.values(), ids=POSITIONAL)
async def test_positional_results_go_one_per_item_in_collect_order(make) -> None:
    """A list, tuple or any finite iterable: the n-th result goes to the caller of collect()'s n-th item."""
    run = Batch(lambda items: scatter(make([item.upper() for item in items])))

    assert await run.run("a", "b", "c", "d") == ["A", "B", "C", "D"]


@pytest.mark.parametrize(("results", "callers"), [(3, 5), (6, 5), (0, 2)])
async def test_a_length_mismatch_is_a_routing_error_in_every_member(results: int, callers: int) -> None:
    """Too few or too many results: every member, the leader included, gets a BatchRoutingError saying so."""
    run = Batch(lambda items: scatter(list(range(results))))

    outcomes = await run.run(*range(callers))

    assert_routing_error_everywhere(outcomes, run.error(f"got {results} results for {callers} callers"))


@pytest.mark.parametrize(
    ("results", "kind"),
    [("abc", "str"), (b"abc", "bytes"), (bytearray(b"abc"), "bytearray"), ({1, 2, 3}, "set")],
    ids=["str", "bytes", "bytearray", "set"],
)
async def test_an_unsupported_type_is_a_routing_error_in_every_member(results: object, kind: str) -> None:
    """str, bytes, bytearray (and an unordered set) are refused even when their length matches the batch."""
    run = Batch(lambda items: scatter(results))

    outcomes = await run.run(1, 2, 3)

    assert_routing_error_everywhere(
        outcomes,
        run.error(
            f"got a {kind}; pass a list with one result per collected item, in collect() order, "
            "or a mapping keyed by item"
        ),
    )


async def test_results_that_are_neither_iterable_nor_a_mapping_are_a_routing_error_in_every_member() -> None:
    """A number is no results at all: every member gets a BatchRoutingError naming its type."""
    run = Batch(lambda items: scatter(42))

    outcomes = await run.run(1, 2)

    assert_routing_error_everywhere(
        outcomes, run.error("got int, which is neither a mapping nor an iterable of results")
    )


# --------------------------------------------------------------------------------------
# Keyed
# --------------------------------------------------------------------------------------

MAPPINGS = {
    "dict": dict,
    "MappingProxyType": types.MappingProxyType,
    "custom Mapping": ReadOnlyMapping,
    "OrderedDict": collections.OrderedDict,
}


@pytest.mark.parametrize("make", MAPPINGS.values(), ids=MAPPINGS)
async def test_a_mapping_routes_each_caller_the_result_of_its_item(make) -> None:
    """Keyed by the items themselves; the mapping's order does not matter and extra keys are ignored."""
    run = Batch(lambda items: scatter(make({"extra": "X", **{item: item.upper() for item in reversed(items)}})))

    assert await run.run("a", "b", "c") == ["A", "B", "C"]


async def test_a_key_function_maps_each_item_to_its_key() -> None:
    """With key=, each caller receives results[key(item)]: unhashable items are routed too."""
    run = Batch(
        lambda items: scatter({item["id"]: f"user {item['id']}" for item in items}, key=lambda item: item["id"])
    )

    assert await run.run({"id": 1}, {"id": 2}, {"id": 3}) == ["user 1", "user 2", "user 3"]


@pytest.mark.parametrize("default", [None, 0, "fallback"])
async def test_a_missing_key_gives_the_default_when_one_is_passed(default: object) -> None:
    """A caller whose key is missing receives default (None included), whether it leads or follows."""
    run = Batch(lambda items: scatter({items[2]: "found"}, default=default))

    outcomes = await run.run("a", "b", "c", "d")

    expected = dict.fromkeys("abcd", default) | {run.joins[2]: "found"}
    assert outcomes == [expected[item] for item in "abcd"]


@pytest.mark.parametrize("slot", [0, 1], ids=["leader", "follower"])
async def test_a_missing_key_without_default_fails_that_caller_alone(slot: int) -> None:
    """That caller gets MissingResultError naming the key (a KeyError too); every other caller gets its result."""
    run = Batch(lambda items: scatter({item: item.upper() for i, item in enumerate(items) if i != slot}))

    outcomes = await run.run("a", "b", "c")

    missing = run.joins[slot]
    by_item = dict(zip("abc", outcomes, strict=True))
    error = by_item.pop(missing)
    assert by_item == {item: item.upper() for item in "abc" if item != missing}
    assert type(error) is MissingResultError
    assert isinstance(error, KeyError)
    assert error.key == missing
    assert str(error).startswith(run.error(f"has no result for key {missing!r}"))


async def test_an_unhashable_item_without_key_is_a_routing_error_in_every_member() -> None:
    """Mapping results and an item that cannot be a key: every member gets a BatchRoutingError that suggests key=."""
    run = Batch(lambda items: scatter({1: "one", 3: "three"}))

    outcomes = await run.run(1, [2], 3)

    assert [type(outcome) for outcome in outcomes] == [BatchRoutingError] * 3
    for outcome in outcomes:
        message = str(outcome)
        assert message.startswith(run.error("got a mapping but item [2] cannot be looked up in it"))
        assert message.endswith("pass key= to map each item to a hashable key")


# --------------------------------------------------------------------------------------
# Exception results
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["positional", "keyed"])
@pytest.mark.parametrize("slot", [0, 1], ids=["leader", "follower"])
async def test_an_exception_result_is_raised_in_that_caller_alone(shape: str, slot: int) -> None:
    """An Exception instance routed to one caller is raised there, the very object; the others get their results."""
    errors: list[Exception] = []

    def route(items: list[str]) -> object:
        results: list[object] = [item.upper() for item in items]
        errors.append(LookupError(f"nothing for {items[slot]}"))
        results[slot] = errors[0]
        return scatter(results if shape == "positional" else dict(zip(items, results, strict=True)))

    run = Batch(route)

    outcomes = await run.run("a", "b", "c")

    failed = run.joins[slot]
    assert outcomes == [errors[0] if item == failed else item.upper() for item in "abc"]
    assert outcomes["abc".index(failed)] is errors[0]


async def test_only_exception_instances_are_raised() -> None:
    """An exception class, or a BaseException that is not an Exception, is routed as a plain value."""

    class Stop(BaseException):
        pass

    stop = Stop()
    values = {"a": ValueError, "b": stop, "c": "C"}
    run = Batch(lambda items: scatter([values[item] for item in items]))

    outcomes = await run.run("a", "b", "c")

    assert outcomes == [ValueError, stop, "C"]
    assert outcomes[1] is stop
