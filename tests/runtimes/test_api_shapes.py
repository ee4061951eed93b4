"""The public API's shapes and the checks made at decoration time, on every runtime.

SPEC.md "Public API" (the names, ``collect()`` returning a list, ``scatter()``'s signature, the
error classes) and the decoration rules of "Batches and the barrier" (option checks, what can be
decorated). The checks made at decoration time run no event loop: those tests are plain
functions; the rest runs on every backend.
"""

from __future__ import annotations

import functools
import inspect

import pytest
from tests.runtimes import kit

import concresce
from concresce import BatchRoutingError, MissingResultError, batch, collect, scatter

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------------------
# Names and signatures
# --------------------------------------------------------------------------------------


def test_the_contracts_names_are_exported_from_concresce() -> None:
    """batch, collect, scatter and both error classes are public names of ``concresce`` itself."""
    names = ("batch", "collect", "scatter", "BatchRoutingError", "MissingResultError")

    assert set(names) <= set(concresce.__all__)
    assert [getattr(concresce, name) for name in names] == [
        batch,
        collect,
        scatter,
        BatchRoutingError,
        MissingResultError,
    ]


def test_collect_and_scatter_have_the_contracts_signatures() -> None:
    """``async def collect(item)``; ``scatter(results, /, *, key=None, default=<missing>)``."""
    assert inspect.iscoroutinefunction(collect)
    assert [(p.name, p.kind) for p in inspect.signature(collect).parameters.values()] == [
        ("item", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    parameters = inspect.signature(scatter).parameters
    assert [(p.name, p.kind) for p in parameters.values()] == [
        ("results", inspect.Parameter.POSITIONAL_ONLY),
        ("key", inspect.Parameter.KEYWORD_ONLY),
        ("default", inspect.Parameter.KEYWORD_ONLY),
    ]
    assert parameters["results"].default is inspect.Parameter.empty
    assert parameters["key"].default is None
    # "default" has a private sentinel: None is a real default (scatter(rows, default=None)).
    assert parameters["default"].default is not None
    assert parameters["default"].default is not inspect.Parameter.empty


def test_the_error_classes_form_the_contracts_tree() -> None:
    """BatchRoutingError is an Exception; MissingResultError is both a BatchRoutingError and a KeyError."""
    assert issubclass(BatchRoutingError, Exception)
    assert not issubclass(BatchRoutingError, KeyError)
    assert issubclass(MissingResultError, BatchRoutingError)
    assert issubclass(MissingResultError, KeyError)


async def test_collect_returns_a_list_of_the_items_of_its_batch() -> None:
    """collect() returns a ``list`` (items that are tuples stay items), the leader's own, a batch of one included."""
    joins: list[tuple[int, int]] = []
    got: list[list[object]] = []

    @batch(max_size=2)
    async def add(pair: tuple[int, int]) -> int:
        joins.append(pair)
        pairs = await collect(pair)
        got.append(pairs)
        sums = [a + b for a, b in pairs]
        pairs.append("appended by the leader")  # its own list: the routing does not see it
        return scatter(sums)

    pairs = [(1, 2), (3, 4), (5, 6)]
    assert await kit.gather(*(functools.partial(add, pair) for pair in pairs)) == [3, 7, 11]

    assert sorted(joins) == pairs
    assert all(type(items) is list for items in got)
    assert sorted(got, key=lambda items: joins.index(items[0])) == [
        [joins[0], joins[1], "appended by the leader"],
        [joins[2], "appended by the leader"],
    ]


@pytest.mark.parametrize(
    "decorate",
    [batch, batch(), batch(max_window=0, max_size=10)],
    ids=["@batch", "@batch()", "@batch(options)"],
)
async def test_bare_and_called_decorator_forms_batch_concurrent_calls(decorate) -> None:
    """``@batch``, ``@batch()`` and ``@batch(...)`` each make concurrent calls share one batch."""
    joins: list[int] = []
    batches: list[list[int]] = []

    @decorate
    async def double(n: int) -> int:
        joins.append(n)
        numbers = await collect(n)
        batches.append(numbers)
        return scatter([2 * number for number in numbers])

    assert await kit.gather(*(functools.partial(double, n) for n in range(4))) == [0, 2, 4, 6]
    assert sorted(joins) == [0, 1, 2, 3]
    assert batches == [joins]


async def test_scatter_takes_its_results_by_position_and_its_options_by_keyword() -> None:
    """``scatter(results=...)`` and a positional ``key`` are TypeErrors in the leader, which can still route."""
    refused: list[str] = []

    def refusal(wrong) -> None:
        try:
            wrong()
        except TypeError as error:
            refused.append(type(error).__name__)

    @batch
    async def upper(word: str) -> str:
        words = await collect(word)
        refusal(lambda: scatter(results=words))  # type: ignore[call-overload]
        refusal(lambda: scatter({}, str))  # type: ignore[call-overload]
        return scatter([w.upper() for w in words])

    assert await kit.gather(functools.partial(upper, "a"), functools.partial(upper, "b")) == ["A", "B"]
    assert refused == ["TypeError", "TypeError"]


# --------------------------------------------------------------------------------------
# Checks at decoration time
# --------------------------------------------------------------------------------------

INVALID_OPTIONS = [
    ({"max_window": -1}, ValueError),
    ({"max_window": -1e-9}, ValueError),
    ({"max_window": float("inf")}, ValueError),
    ({"max_window": float("nan")}, ValueError),
    ({"max_window": "0.1"}, TypeError),
    ({"max_window": None}, TypeError),
    ({"max_window": True}, TypeError),
    ({"max_size": 0}, ValueError),
    ({"max_size": -3}, ValueError),
    ({"max_size": 2.0}, TypeError),
    ({"max_size": "10"}, TypeError),
    ({"max_size": False}, TypeError),
    ({"max_concurrency": 0}, ValueError),
    ({"max_concurrency": 1.5}, TypeError),
    ({"max_concurrency": True}, TypeError),
    ({"group_by": "tenant"}, TypeError),
    ({"group_by": 3}, TypeError),
]


@pytest.mark.parametrize(("options", "error"), INVALID_OPTIONS, ids=repr)
def test_an_invalid_option_is_refused_at_decoration_naming_the_parameter(options, error) -> None:
    """Out of range: ValueError; wrong type: TypeError; both from ``batch(...)``, before any call."""
    (parameter,) = options

    with pytest.raises(error) as info:
        batch(**options)

    assert type(info.value) is error
    assert str(info.value).startswith(f"{parameter} must be ")


@pytest.mark.parametrize(
    "options",
    [
        {"max_window": 0},
        {"max_window": 0.0},
        {"max_window": 2},
        {"max_size": None},
        {"max_size": 1},
        {"max_concurrency": None},
        {"max_concurrency": 1},
        {"group_by": None},
        {"group_by": len},
    ],
    ids=repr,
)
def test_every_boundary_value_is_accepted(options) -> None:
    """The edges of each option's range decorate an ``async def`` into a coroutine function."""

    async def fetch(item: str) -> str:
        return item

    assert inspect.iscoroutinefunction(batch(**options)(fetch))


def plain_function(x: int) -> int:
    return x


async def async_generator_function(x: int):
    yield x


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (plain_function, "plain_function"),
        (async_generator_function, "async_generator_function"),
        (AsyncCallable(), "AsyncCallable"),
        (lambda x: x, "<lambda>"),
        (0.05, "0.05"),
    ],
    ids=["def", "async-generator", "async-callable-instance", "lambda", "number"],
)
def test_decorating_anything_but_an_async_def_is_a_type_error_naming_it(given, named) -> None:
    """``@batch`` and ``@batch(...)`` refuse anything but an ``async def`` function, naming what they got."""
    for decorate in (batch, batch(max_size=5)):
        with pytest.raises(TypeError) as info:
            decorate(given)
        assert type(info.value) is TypeError
        assert named in str(info.value)
        assert "async def" in str(info.value)
