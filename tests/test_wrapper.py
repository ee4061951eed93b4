"""The generated wrapper: it takes the decorated function's own parameters and passes them on."""

from __future__ import annotations

import asyncio
import inspect
import traceback

import pytest

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


async def test_every_kind_of_parameter_reaches_the_body_as_passed():
    """Positional-only, defaulted, keyword-only, *args and **kwargs parameters arrive unchanged."""
    seen = []

    async def body(a, b=2, /, c=3, *rest, d, e=5, **extra):
        seen.append((a, b, c, rest, d, e, extra))
        items = await collect(a)
        return scatter(items)

    work = batch(body)
    results = await asyncio.gather(
        work(1, d=4),
        work(10, 20, 30, 40, 50, d=60, e=70, f=80),
        work(100, c=300, d=400),
    )

    assert results == [1, 10, 100]
    assert seen == [
        (1, 2, 3, (), 4, 5, {}),
        (10, 20, 30, (40, 50), 60, 70, {"f": 80}),
        (100, 2, 300, (), 400, 5, {}),
    ]
    assert inspect.signature(work) == inspect.signature(body)


async def test_defaults_are_the_very_objects_of_the_definition():
    """A default value is passed as the same object, whatever its repr looks like."""

    class Odd:
        def __repr__(self) -> str:
            return "not valid Python ("

    marker = Odd()
    shared: list[int] = []
    seen = []

    @batch
    async def work(x, marker=marker, shared=shared):
        seen.append((marker, shared))
        items = await collect(x)
        return scatter(items)

    assert await work(1) == 1
    assert seen[0][0] is marker
    assert seen[0][1] is shared


async def test_wrong_arguments_fail_like_the_undecorated_function():
    """Calling with a missing or unexpected argument is the same TypeError as without @batch."""

    @batch
    async def work(x, *, flag):
        items = await collect(x)
        return scatter(items)

    with pytest.raises(TypeError, match="flag"):
        await work(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        await work(1, flag=True, other=2)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["call", "task", "result", "fn", "batcher", "args", "id"])
async def test_parameter_named_like_a_wrapper_variable_still_works(name):
    """A parameter whose name the wrapper uses internally gets the generic wrapper, with the same results."""
    namespace: dict[str, object] = {"collect": collect, "scatter": scatter}
    source = f"async def work(x, {name}=7):\n    items = await collect((x, {name}))\n    return scatter(items)\n"
    exec(source, namespace)  # noqa: S102 -- a test building a function with a chosen parameter name
    work = batch(namespace["work"])  # type: ignore[arg-type]

    results = await asyncio.gather(work(1), work(2, **{name: 8}))

    assert results == [(1, 7), (2, 8)]


async def test_method_with_a_reserved_parameter_name_still_batches_per_instance():
    """A method whose parameter names force the generic wrapper still batches per instance."""
    led = []

    class Repo:
        @batch
        async def get(self, call):
            items = await collect(call)
            led.append((self, list(items)))
            return scatter(items)

    first, second = Repo(), Repo()
    assert await asyncio.gather(first.get(1), second.get(2), first.get(3)) == [1, 2, 3]
    assert led == [(first, [1, 3]), (second, [2])]


async def test_tracebacks_through_the_wrapper_show_its_source():
    """A traceback through the generated wrapper names it and shows its source line."""

    @batch
    async def work(x):
        items = await collect(x)
        message = f"bulk failed for {items}"
        raise ValueError(message)

    with pytest.raises(ValueError, match="bulk failed") as caught:
        await work(1)
    frames = traceback.extract_tb(caught.value.__traceback__)
    [wrapper_frame] = [frame for frame in frames if "concresce wrapper of" in frame.filename]
    assert "test_tracebacks_through_the_wrapper_show_its_source.<locals>.work" in wrapper_frame.filename
    assert wrapper_frame.line == "result = await fn(x)"
