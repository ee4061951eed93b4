"""scatter(): positional and keyed routing, exception results, routing errors (SPEC.md, "Routing").

Each test runs one batch of concurrent calls whose leader scatters a given ``results``
value, and asserts what every member returned or raised.
"""

from __future__ import annotations

import asyncio
import collections
import types
from collections.abc import Iterator, Mapping

import pytest
from tests.support import Recorder, copy_of

from concresce import BatchRoutingError, MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


async def outcome(awaitable):
    """Await ``awaitable``; return ``("returned", value)`` or ``("raised", exception)``."""
    try:
        value = await awaitable
    except Exception as error:  # noqa: BLE001 -- the outcome is what the test asserts
        return ("raised", error)
    return ("returned", value)


def scattering(route):
    """Return a batched function whose leader returns ``route(items)`` (which calls scatter())."""

    @batch
    async def fetch(item):
        items = await collect(item)
        return route(items)

    return fetch


async def run_batch(fetch, items):
    """Call ``fetch`` concurrently once per item (one batch) and return each call's outcome."""
    return list(await asyncio.gather(*(outcome(fetch(item)) for item in items)))


def assert_same_error_everywhere(outs, error_type):
    """The leader (the first member) raised an ``error_type``, every follower a copy of it; return it."""
    assert [kind for kind, _ in outs] == ["raised"] * len(outs)
    error = outs[0][1]
    assert type(error) is error_type
    assert all(copy_of(other, error) for _, other in outs[1:])
    return error


class Interrupt(BaseException):
    """A BaseException that is not an Exception, like KeyboardInterrupt (which would stop the test run)."""


class OnlyIterable:
    """An iterable that is neither a sequence nor a collection."""

    def __init__(self, values):
        self.values = list(values)

    def __iter__(self) -> Iterator[object]:
        return iter(self.values)


class CustomMapping(Mapping):
    """A read-only Mapping that is not a dict."""

    def __init__(self, data, *, error=None):
        self.data = dict(data)
        self.error = error

    def __getitem__(self, key):
        if self.error is not None:
            raise self.error
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


# --------------------------------------------------------------------------------------
# Positional routing
# --------------------------------------------------------------------------------------


class ResultList(list):
    """A subclass of list: positional results like any list."""


ITERABLES = {
    "list": list,
    "list subclass": ResultList,
    "tuple": tuple,
    "generator": lambda values: (value for value in values),
    "iterator": lambda values: iter(list(values)),
    "range": lambda values: range(0, 10 * len(values), 10),
    "deque": collections.deque,
    "map": lambda values: map(int, values),
    "dict values": lambda values: dict(enumerate(values)).values(),
    "custom iterable": OnlyIterable,
}


@pytest.mark.parametrize("make", list(ITERABLES.values()), ids=list(ITERABLES))
async def test_positional_results_of_any_finite_iterable_are_routed(make):
    """A list, tuple, generator, range or any other finite iterable routes one result per caller."""
    fetch = scattering(lambda items: scatter(make([item * 10 for item in items])))

    outs = await run_batch(fetch, range(4))

    assert outs == [("returned", 0), ("returned", 10), ("returned", 20), ("returned", 30)]


async def test_positional_results_are_routed_in_collect_order():
    """The n-th result goes to the caller whose item was the n-th that collect() returned."""
    fetch = scattering(lambda items: scatter([item.upper() for item in items]))

    outs = await run_batch(fetch, ["c", "a", "d", "b"])

    assert outs == [("returned", "C"), ("returned", "A"), ("returned", "D"), ("returned", "B")]


@pytest.mark.parametrize("count", [3, 7])
async def test_positional_length_mismatch_fails_every_member(count):
    """A result count that differs from the number of callers is one BatchRoutingError, raised in every member."""
    fetch = scattering(lambda items: scatter(list(range(count))))

    outs = await run_batch(fetch, range(5))

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    assert str(error) == f"{fetch.__qualname__}: scatter() got {count} results for 5 callers"


async def test_positional_results_from_a_failing_generator_fail_every_member():
    """A results generator that raises is a fault of the leader: its exception (or a copy) reaches every member."""
    boom = ValueError("generator failed")

    def failing(items):
        yield items[0]
        raise boom

    fetch = scattering(lambda items: scatter(failing(items)))

    outs = await run_batch(fetch, range(3))

    assert outs[0] == ("raised", boom)
    assert all(copy_of(error, boom) for _, error in outs[1:])


@pytest.mark.parametrize(
    ("results", "kind"),
    [
        ("abc", "str"),
        (b"abc", "bytes"),
        (bytearray(b"abc"), "bytearray"),
        ({0, 1, 2}, "set"),
        (frozenset({0, 1, 2}), "frozenset"),
    ],
    ids=["str", "bytes", "bytearray", "set", "frozenset"],
)
async def test_positional_results_of_unsupported_type_fail_every_member(results, kind):
    """str, bytes, bytearray and set results are a BatchRoutingError in every member, even when their length matches."""
    fetch = scattering(lambda items: scatter(results))

    outs = await run_batch(fetch, range(3))

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    assert str(error) == (
        f"{fetch.__qualname__}: scatter() got a {kind}; pass a list with one result per "
        "collected item, in collect() order, or a mapping keyed by item"
    )


@pytest.mark.parametrize("results", [42, None, object()], ids=["int", "None", "object"])
async def test_results_that_are_neither_mapping_nor_iterable_fail_every_member(results):
    """A non-iterable, non-mapping results value is a BatchRoutingError in every member, caused by the TypeError."""
    fetch = scattering(lambda items: scatter(results))

    outs = await run_batch(fetch, range(3))

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    assert str(error) == (
        f"{fetch.__qualname__}: scatter() got {type(results).__name__}, "
        "which is neither a mapping nor an iterable of results"
    )
    assert type(error.__cause__) is TypeError


@pytest.mark.parametrize("option", [{"key": str}, {"default": None}], ids=["key", "default"])
async def test_key_or_default_with_positional_results_fails_every_member(option):
    """key= or default= with results that are not a mapping is a BatchRoutingError in every member."""
    fetch = scattering(lambda items: scatter(list(items), **option))

    outs = await run_batch(fetch, range(3))

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    assert str(error) == (
        f"{fetch.__qualname__}: scatter() got key= or default= with list results; they apply to a mapping only"
    )


# --------------------------------------------------------------------------------------
# Keyed routing
# --------------------------------------------------------------------------------------

MAPPINGS = {
    "dict": dict,
    "MappingProxyType": lambda data: types.MappingProxyType(dict(data)),
    "custom Mapping": CustomMapping,
    "OrderedDict": collections.OrderedDict,
}


@pytest.mark.parametrize("make", list(MAPPINGS.values()), ids=list(MAPPINGS))
async def test_keyed_results_of_any_mapping_are_routed_by_item(make):
    """Any Mapping routes results[item] to each caller."""
    fetch = scattering(lambda items: scatter(make({item: f"r{item}" for item in items})))

    outs = await run_batch(fetch, range(3))

    assert outs == [("returned", "r0"), ("returned", "r1"), ("returned", "r2")]


async def test_keyed_results_use_the_item_itself_as_key_by_default():
    """Without key=, each caller's item (compared by equality) is its key."""
    results = {("user", 2): "two", ("user", 1): "one"}
    fetch = scattering(lambda items: scatter(results))

    outs = await run_batch(fetch, [("user", 1), ("user", 2)])

    assert outs == [("returned", "one"), ("returned", "two")]


async def test_keyed_results_use_the_key_function():
    """With key=, each caller receives results[key(item)], so unhashable items work."""
    seen = Recorder()

    def key(item):
        seen(item["id"])
        return item["id"]

    fetch = scattering(lambda items: scatter({item["id"]: item["id"] * 10 for item in items}, key=key))

    outs = await run_batch(fetch, [{"id": 1}, {"id": 2}, {"id": 3}])

    assert outs == [("returned", 10), ("returned", 20), ("returned", 30)]
    assert sorted(seen) == [1, 2, 3]


async def test_keyed_results_ignore_order_and_extra_keys():
    """A mapping's order does not matter and keys that no caller asked for are ignored."""
    fetch = scattering(lambda items: scatter({"z": "extra", "c": "C", "b": "B", "y": "extra", "a": "A"}))

    outs = await run_batch(fetch, ["a", "b", "c"])

    assert outs == [("returned", "A"), ("returned", "B"), ("returned", "C")]


async def test_missing_key_with_default_gives_the_default():
    """A caller whose key is missing receives default when one is passed."""
    fallback = object()
    fetch = scattering(lambda items: scatter({"a": "A"}, default=fallback))

    outs = await run_batch(fetch, ["a", "b", "c"])

    assert outs == [("returned", "A"), ("returned", fallback), ("returned", fallback)]


async def test_missing_key_with_default_none_gives_none():
    """default=None is a real default, not "no default"."""
    fetch = scattering(lambda items: scatter({"b": "B"}, default=None))

    outs = await run_batch(fetch, ["a", "b"])

    assert outs == [("returned", None), ("returned", "B")]


async def test_missing_key_without_default_fails_that_caller_alone():
    """A follower whose key is missing alone gets a MissingResultError naming the key; the others get their results."""
    fetch = scattering(lambda items: scatter({"a": "A", "c": "C"}))

    outs = await run_batch(fetch, ["a", "b", "c"])

    assert outs[0] == ("returned", "A")
    assert outs[2] == ("returned", "C")
    kind, error = outs[1]
    assert kind == "raised"
    assert type(error) is MissingResultError
    assert isinstance(error, KeyError)
    assert isinstance(error, BatchRoutingError)
    assert error.key == "b"
    assert str(error).startswith(f"{fetch.__qualname__}: scatter() has no result for key 'b'")
    assert "scatter(results, default=None)" in str(error)  # the fix, for a key that may be missing


async def test_missing_key_of_the_leader_is_raised_from_scatter_after_followers_are_served():
    """A leader whose own key is missing gets MissingResultError from scatter(), once the followers are served."""
    record = Recorder()

    @batch
    async def fetch(item):
        items = await collect(item)
        try:
            return scatter({"b": "B", "c": "C"})
        except MissingResultError as error:
            record("leader caught", error.key, items)
            await asyncio.sleep(0)
            record("leader re-raises")
            raise

    async def caller(item):
        result = await fetch(item)
        record("returned", item, result)
        return result

    outs = await run_batch(caller, ["a", "b", "c"])

    assert outs[1:] == [("returned", "B"), ("returned", "C")]
    kind, error = outs[0]
    assert kind == "raised"
    assert type(error) is MissingResultError
    assert error.key == "a"
    assert record == [
        ("leader caught", "a", ["a", "b", "c"]),
        ("returned", "b", "B"),
        ("returned", "c", "C"),
        "leader re-raises",
    ]


async def test_unhashable_item_without_key_fails_every_member():
    """Keyed results with an unhashable item and no key= are a BatchRoutingError in every member that suggests key=."""
    fetch = scattering(lambda items: scatter({1: "one", 2: "two"}))

    outs = await run_batch(fetch, [1, [2], 3])

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    message = str(error)
    assert message.startswith(f"{fetch.__qualname__}: scatter() got a mapping but item [2] cannot be looked up in it")
    assert message.endswith("pass key= to map each item to a hashable key")
    assert type(error.__cause__) is TypeError


async def test_key_function_raising_fails_every_member():
    """A key function that raises is a BatchRoutingError in every member, caused by the original exception."""
    boom = ValueError("bad item")

    def key(item):
        if item == 2:
            raise boom
        return item

    fetch = scattering(lambda items: scatter({1: "one", 2: "two", 3: "three"}, key=key))

    outs = await run_batch(fetch, [1, 2, 3])

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    assert str(error) == f"{fetch.__qualname__}: scatter()'s key function raised ValueError for item 2: bad item"
    assert error.__cause__ is boom


async def test_mapping_lookup_raising_fails_every_member():
    """A mapping lookup raising something other than KeyError is a BatchRoutingError in every member, caused by it."""
    boom = RuntimeError("connection lost")
    fetch = scattering(lambda items: scatter(CustomMapping({1: "one"}, error=boom)))

    outs = await run_batch(fetch, [1, 2])

    error = assert_same_error_everywhere(outs, BatchRoutingError)
    assert str(error) == f"{fetch.__qualname__}: scatter() could not look up key 1: RuntimeError: connection lost"
    assert error.__cause__ is boom


# --------------------------------------------------------------------------------------
# Exception results
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["positional", "keyed"])
@pytest.mark.parametrize("failing", [0, 1], ids=["leader", "follower"])
async def test_exception_result_is_raised_in_its_caller_alone(mode, failing):
    """A result that is an Exception instance is raised, the very object, in that caller alone."""
    error = LookupError(f"no result for {failing}")
    values = {item: (error if item == failing else item * 10) for item in range(3)}
    if mode == "positional":
        fetch = scattering(lambda items: scatter([values[item] for item in items]))
    else:
        fetch = scattering(lambda items: scatter(values))

    outs = await run_batch(fetch, range(3))

    expected = [("returned", 0), ("returned", 10), ("returned", 20)]
    expected[failing] = ("raised", error)
    assert outs == expected


@pytest.mark.parametrize(
    "value",
    [asyncio.CancelledError(), Interrupt(), ValueError],
    ids=["CancelledError instance", "BaseException instance", "exception class"],
)
@pytest.mark.parametrize("slot", [0, 1], ids=["leader", "follower"])
async def test_result_that_is_not_an_exception_instance_is_returned(value, slot):
    """Only Exception instances are raised: a BaseException instance or an exception class is returned as a value."""
    fetch = scattering(lambda items: scatter([value if item == slot else item for item in items]))

    outs = await run_batch(fetch, range(2))

    expected = [("returned", 0), ("returned", 1)]
    expected[slot] = ("returned", value)
    assert outs == expected
    assert outs[slot][1] is value


# --------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------

ROUTING_ERRORS = {
    "length mismatch": lambda items: scatter([1]),
    "str": lambda items: scatter("ab"),
    "non-iterable": lambda items: scatter(1),
    "key with list": lambda items: scatter([1, 2], key=str),
    "unhashable item": lambda items: scatter({}),
    "key raising": lambda items: scatter({}, key=lambda item: 1 / 0),
    "lookup raising": lambda items: scatter(CustomMapping({}, error=ValueError("x"))),
    "missing key": lambda items: scatter({}),
}


@pytest.mark.parametrize("route", list(ROUTING_ERRORS.values()), ids=list(ROUTING_ERRORS))
async def test_routing_error_messages_name_the_decorated_function(route):
    """Every routing error, in every member, starts with the decorated function's qualified name."""

    class Repository:
        @batch
        async def fetch(self, item):
            items = await collect(item)
            return route(items)

    repository = Repository()
    items = [[1], [2]] if route is ROUTING_ERRORS["unhashable item"] else [1, 2]

    outs = await asyncio.gather(*(outcome(repository.fetch(item)) for item in items))

    qualname = Repository.fetch.__qualname__
    assert qualname.endswith("<locals>.Repository.fetch")
    for kind, error in outs:
        assert kind == "raised"
        assert isinstance(error, BatchRoutingError)
        assert str(error).startswith(f"{qualname}: scatter()")
