"""examples/httpx_bulk_trio.py: its trio client against the service of httpx_bulk.py, served by uvicorn.

The tests run on trio, with its real clock (real sockets): uvicorn serves the app from a
thread of its own, on asyncio. trio runs the tasks of one scheduler round in random order, so
which caller of a batch leads, and the order of the ids in a bulk request, vary from run to
run: the tests assert what does not.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio.testing
from tests.support import copy_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


@pytest.fixture(scope="module", params=[pytest.param(("trio", {}), id="trio")])
def anyio_backend(request):
    """trio only, real clock (overrides the folder's asyncio and uvloop)."""
    return request.param


@pytest.fixture(scope="module")
def example(load_example):
    # The example imports the service from its neighbour httpx_bulk.py by name, as it does
    # when run as a script (the script's folder is then on sys.path).
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        return load_example("httpx_bulk_trio")


@pytest.fixture
def service(example):
    return example.ItemService()


@pytest.fixture
async def http(service, serve_asgi):
    async with httpx.AsyncClient(base_url=serve_asgi(service.app)) as http:
        yield http


@pytest.fixture
def client(example, http):
    return example.ItemClient(http)


def item(example, i: int) -> Any:
    return example.Item(id=i, name=f"item {i}", price_cents=100 * i)


async def outcomes(*calls: Callable[[], Awaitable[object]]) -> list[object]:
    """Run each call in a trio task of its own; what each returned or raised, in call order."""
    results: list[object] = [None] * len(calls)

    async def run(index: int, call: Callable[[], Awaitable[object]]) -> None:
        try:
            results[index] = await call()
        except Exception as error:  # noqa: BLE001 -- the outcome under test
            results[index] = error

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(run, index, call)
    return results


def fetches(client, *ids: int) -> list[Callable[[], Awaitable[object]]]:
    return [functools.partial(client.fetch_item, i) for i in ids]


async def test_main_sends_one_bulk_request_instead_of_forty(example, service, serve_asgi):
    outcome = await example.main(serve_asgi(service.app))

    assert outcome.requests["unbatched"] == {"GET": 40}
    # 40 callers arriving over 4 ms, a 5 ms window: one batch, unless the machine is slow.
    posts = outcome.requests["batched"]["POST"]
    assert outcome.requests["batched"] == {"POST": posts}
    assert 1 <= posts <= 3
    assert outcome.items == [item(example, i) for i in range(81, 101)] + [None] * 20
    # The service saw exactly what the client sent.
    assert service.requests == {"GET /items/{id}": 40, "POST /items:bulk-get": posts}
    assert sum(service.bulk_sizes) == 40


async def test_concurrent_calls_share_one_request_and_duplicates_are_sent_once(example, service, client):
    ids = (3, 1, 3, 200, 2, 1, 3)

    items = await outcomes(*fetches(client, *ids))

    assert items == [item(example, i) if i <= 100 else None for i in ids]
    assert items[0] is items[2]  # one result for the duplicates
    assert service.requests == {"POST /items:bulk-get": 1}
    assert service.bulk_sizes == [4]  # dedupe=True: 3, 1, 200, 2, in the order they joined


async def test_max_size_flushes_full_batches_at_once(example, service, client):
    items = await outcomes(*fetches(client, *range(1, 251)))

    assert items == [item(example, i) for i in range(1, 101)] + [None] * 150
    assert sorted(service.bulk_sizes) == [50, 100, 100]  # two full batches at once, then the window


async def test_a_failed_bulk_request_fails_every_caller_of_the_batch(service, client):
    service.available = False

    results = await outcomes(*fetches(client, 1, 2, 3))

    # Whichever caller led got the original; the others each got a copy of it.
    assert all(isinstance(result, httpx.HTTPStatusError) for result in results)
    assert [result.response.status_code for result in results] == [503, 503, 503]
    assert copy_of(results[0], results[1])
    assert copy_of(results[1], results[2])
    assert copy_of(results[0], results[2])
    assert service.requests == {"POST /items:bulk-get": 1}


async def test_a_bad_id_fails_its_own_caller_before_joining_a_batch(example, service, client):
    results = await outcomes(*fetches(client, 0, 5))

    assert isinstance(results[0], ValueError)
    assert results[1] == item(example, 5)
    assert service.bulk_sizes == [1]


async def test_the_deadline_of_the_bulk_section_fails_every_caller_of_the_batch(example, http):
    client = example.ItemClient(http, timeout=0)  # trio.fail_after(0): expired on entry

    results = await outcomes(*fetches(client, 1, 2, 3))

    # A deadline inside the body is shared work: its expiry is a fault of the batch, raised in
    # every caller, not a cancellation of the leader (nobody takes the batch over).
    assert all(isinstance(result, trio.TooSlowError) for result in results)
    assert len({id(result) for result in results}) == 3


async def test_a_caller_cancelled_by_its_cancel_scope_leaves_the_batch_alone(example, service, client):
    scope = trio.CancelScope()
    found: dict[int, object] = {}

    async def impatient() -> None:
        with scope:
            found[2] = await client.fetch_item(2)

    async def patient(i: int) -> None:
        found[i] = await client.fetch_item(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(patient, 1)
        nursery.start_soon(impatient)
        nursery.start_soon(patient, 3)
        # All three now wait in the open batch (its 5 ms window runs); the impatient one may
        # even have been the first to join, due to lead it: then the next member leads.
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()

    assert scope.cancelled_caught
    assert found == {1: item(example, 1), 3: item(example, 3)}
    assert service.bulk_sizes == [2]  # its id never reached the service


def test_the_demonstration_serves_the_app_in_a_thread_and_runs_the_client_on_trio(example, capsys):
    example.demo()

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "unbatched: {'GET': 40}"
    assert lines[1].startswith("batched: {'POST': ")
    assert lines[2] == "items 100 and 101: [Item(id=100, name='item 100', price_cents=10000), None]"
    assert lines[3].startswith("the service saw: {'GET /items/{id}': 40, 'POST /items:bulk-get': ")
