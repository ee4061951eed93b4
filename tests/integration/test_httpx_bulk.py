"""examples/httpx_bulk.py: its client against its service, served by uvicorn."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from tests.support import copy_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def example(load_example):
    return load_example("httpx_bulk")


@pytest.fixture
def service(example):
    return example.ItemService()


@pytest.fixture
async def client(example, service, serve_asgi):
    async with httpx.AsyncClient(base_url=serve_asgi(service.app)) as http:
        yield example.ItemClient(http)


async def test_main_sends_one_bulk_request_instead_of_forty(example, service, serve_asgi):
    outcome = await example.main(serve_asgi(service.app))

    assert outcome.requests["unbatched"] == {"GET": 40}
    # 40 callers arriving over 4 ms, a 5 ms window: one batch, unless the machine is slow.
    posts = outcome.requests["batched"]["POST"]
    assert outcome.requests["batched"] == {"POST": posts}
    assert 1 <= posts <= 3
    assert (
        outcome.items
        == [example.Item(id=i, name=f"item {i}", price_cents=100 * i) for i in range(81, 101)] + [None] * 20
    )
    # The service saw exactly what the client sent.
    assert service.requests == {"GET /items/{id}": 40, "POST /items:bulk-get": posts}
    assert sum(service.bulk_sizes) == 40


async def test_concurrent_calls_share_one_request_and_duplicates_are_sent_once(example, service, client):
    ids = [3, 1, 3, 200, 2, 1, 3]

    items = await asyncio.gather(*(client.fetch_item(i) for i in ids))

    assert [None if item is None else item.id for item in items] == [3, 1, 3, None, 2, 1, 3]
    assert items[0] is items[2]  # one result for the duplicates
    assert service.requests == {"POST /items:bulk-get": 1}
    assert service.bulk_sizes == [4]  # dedupe=True: 3, 1, 200, 2


async def test_max_size_flushes_full_batches_at_once(service, client):
    items = await asyncio.gather(*(client.fetch_item(i) for i in range(1, 251)))

    assert [None if item is None else item.id for item in items] == [*range(1, 101)] + [None] * 150
    assert sorted(service.bulk_sizes) == [50, 100, 100]  # two full batches at once, then the window


async def test_a_failed_bulk_request_fails_every_caller_of_the_batch(service, client):
    service.available = False

    results = await asyncio.gather(*(client.fetch_item(i) for i in (1, 2, 3)), return_exceptions=True)

    assert isinstance(results[0], httpx.HTTPStatusError)
    assert results[0].response.status_code == 503
    assert copy_of(results[1], results[0])
    assert copy_of(results[2], results[0])
    assert results[1].response.status_code == 503
    assert service.requests == {"POST /items:bulk-get": 1}


async def test_a_bad_id_fails_its_own_caller_before_joining_a_batch(example, service, client):
    results = await asyncio.gather(client.fetch_item(0), client.fetch_item(5), return_exceptions=True)

    assert isinstance(results[0], ValueError)
    assert results[1] == example.Item(id=5, name="item 5", price_cents=500)
    assert service.bulk_sizes == [1]


async def test_serve_asgi_serves_several_apps_at_once(example, serve_asgi):
    first, second = example.ItemService(), example.ItemService()
    second.items.clear()
    urls = {serve_asgi(first.app), serve_asgi(second.app)}
    assert len(urls) == 2

    async with httpx.AsyncClient() as http:
        responses = [await http.get(f"{url}/items/7") for url in sorted(urls)]

    assert sorted(response.status_code for response in responses) == [200, 404]
    assert first.requests == second.requests == {"GET /items/{id}": 1}
