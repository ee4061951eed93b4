"""httpx: per-item lookups against an HTTP service with a bulk endpoint, one request per batch.

The service (FastAPI) has a per-item endpoint, ``GET /items/{id}``, and a bulk one,
``POST /items:bulk-get`` with ``{"ids": [...]}``. The client's ``fetch_item(item_id)`` is
written for one item and sends one bulk request per batch of concurrent calls, including
calls made by independent tasks a few milliseconds apart (see ``ItemClient``).

Run it (it serves the app on 127.0.0.1, on a free port, for the time of the demo)::

    uv run python examples/httpx_bulk.py
"""

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from concresce import batch, collect, scatter

# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------


class Item(BaseModel):
    id: int
    name: str
    price_cents: int


class BulkGetRequest(BaseModel):
    ids: list[int] = Field(max_length=100)


class BulkGetResponse(BaseModel):
    items: list[Item]  # the items that exist, in no particular order


class ItemService:
    """The HTTP service: ``app`` serves items 1 to 100 and counts the requests it gets."""

    def __init__(self) -> None:
        self.items = {i: Item(id=i, name=f"item {i}", price_cents=100 * i) for i in range(1, 101)}
        self.requests: Counter[str] = Counter()
        self.bulk_sizes: list[int] = []  # ids per bulk request
        self.available = True  # False: every request fails with 503
        self.app = FastAPI(title="items")

        @self.app.get("/items/{item_id}")
        async def get_item(item_id: int) -> Item:
            self.check("GET /items/{id}")
            if item_id not in self.items:
                raise HTTPException(status_code=404, detail=f"no item {item_id}")
            return self.items[item_id]

        @self.app.post("/items:bulk-get")
        async def bulk_get(request: BulkGetRequest) -> BulkGetResponse:
            self.check("POST /items:bulk-get")
            self.bulk_sizes.append(len(request.ids))
            return BulkGetResponse(items=[self.items[i] for i in set(request.ids) if i in self.items])

    def check(self, endpoint: str) -> None:
        self.requests[endpoint] += 1
        if not self.available:
            raise HTTPException(status_code=503, detail="down for maintenance")


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------


class ItemClient:
    """Fetch items one at a time; concurrent calls share one bulk request.

    Why ``max_window=0.005``: this client is meant to be called from the handlers of a
    web service, where each incoming request runs in a task of its own and reaches
    ``fetch_item()`` at its own time. Tick batching (``max_window=0``, the default) merges
    only the calls made in the same turn of the event loop: the lookups of *one* request
    (an ``asyncio.gather`` over its items), never those of two requests. A window of 5 ms
    also merges the lookups of every request that arrives within it, so under load N
    requests make a handful of bulk requests instead of N. The price is latency: the first
    caller of a batch waits up to 5 ms before its request goes out. That is small next to
    the HTTP round trip it saves (milliseconds on a LAN, tens across regions) and to the
    queueing that N separate requests cause when busy; choose a window well inside your
    latency budget. ``max_size=100`` (the bulk endpoint's limit) sends a full batch at
    once, without waiting for the window, and ``dedupe=True`` asks for a popular item once
    per batch, however many requests want it.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @batch(max_window=0.005, max_size=100, dedupe=True)
    async def fetch_item(self, item_id: int) -> Item | None:
        """The item with this id, or ``None`` if there is none."""
        if item_id < 1:
            # Before collect(): this caller alone fails, its batch never sees the bad id.
            msg = f"item ids start at 1, got {item_id}"
            raise ValueError(msg)
        item_ids = await collect(item_id)
        # Only the batch's leader gets here, with every caller's id. An exception from now
        # until scatter() (a 503, a time-out) is raised in every caller of the batch.
        response = await self.http.post("/items:bulk-get", json={"ids": item_ids})
        response.raise_for_status()
        found = BulkGetResponse.model_validate_json(response.content)
        return scatter({item.id: item for item in found.items}, default=None)

    async def fetch_item_unbatched(self, item_id: int) -> Item | None:
        """The same, one request per call: the N+1 way, for comparison."""
        response = await self.http.get(f"/items/{item_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return Item.model_validate_json(response.content)


# --------------------------------------------------------------------------------------
# The demonstration
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What ``main()`` saw: requests sent per scenario, and what the batched callers got."""

    requests: dict[str, Counter[str]] = field(default_factory=dict[str, Counter[str]])  # by HTTP method
    items: list[Item | None] = field(default_factory=list[Item | None])


async def arrive_later(delay: float, item_id: int, client: ItemClient) -> Item | None:
    """A caller that arrives ``delay`` seconds late, like an independent incoming request."""
    await asyncio.sleep(delay)
    return await client.fetch_item(item_id)


async def main(base_url: str) -> Outcome:
    """40 lookups (ids 81 to 120; 101 to 120 do not exist), unbatched then batched."""
    outcome = Outcome()
    ids = range(81, 121)
    for scenario in ("unbatched", "batched"):
        sent: Counter[str] = Counter()

        async def count(request: httpx.Request, sent: Counter[str] = sent) -> None:
            sent[request.method] += 1

        async with httpx.AsyncClient(base_url=base_url, event_hooks={"request": [count]}) as http:
            client = ItemClient(http)
            if scenario == "unbatched":
                await asyncio.gather(*(client.fetch_item_unbatched(i) for i in ids))
            else:
                # Independent callers, one every 0.1 ms: 4 ms from the first to the last.
                delays = itertools.count(0, 0.0001)
                outcome.items = list(await asyncio.gather(*(arrive_later(next(delays), i, client) for i in ids)))
        outcome.requests[scenario] = sent

    for scenario, sent in outcome.requests.items():
        print(f"{scenario}: {dict(sent)}")
    print("items 100 and 101:", outcome.items[19:21])
    return outcome


async def demo() -> None:
    """Serve the app on a free port of 127.0.0.1, run ``main()`` against it, stop."""
    service = ItemService()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no event to wait for
        if serving.done():
            await serving  # it failed to start: raise why
            return
        await asyncio.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        await main(f"http://{host}:{port}")
    finally:
        server.should_exit = True
        await serving
    print("the service saw:", dict(service.requests), "with ids per bulk request:", service.bulk_sizes)


if __name__ == "__main__":
    asyncio.run(demo())
