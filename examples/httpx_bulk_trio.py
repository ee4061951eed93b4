"""httpx on trio: per-item lookups from trio tasks, one bulk request per batch.

The client side of ``httpx_bulk.py``, for trio. The service is that example's FastAPI app,
unchanged: a per-item endpoint, ``GET /items/{id}``, and a bulk one, ``POST /items:bulk-get``
with ``{"ids": [...]}``. The callers are trio tasks: ``httpx.AsyncClient`` runs on trio, and
so does ``@batch``, so ``fetch_item(item_id)`` is written for one item and the concurrent
calls of a nursery's tasks share one bulk request (see ``ItemClient``).

uvicorn does not run on trio: the demonstration serves the app from a thread of its own (with
its own asyncio event loop) and runs the client with ``trio.run``.

Run it (it serves the app on 127.0.0.1, on a free port, for the time of the demo)::

    uv run python examples/httpx_bulk_trio.py
"""

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field

import httpx
import trio
import uvicorn
from fastapi import FastAPI

# The service of the asyncio example, as it is (this file sits next to it).
from httpx_bulk import BulkGetResponse, Item, ItemService

from concresce import batch, collect, scatter

# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------


class ItemClient:
    """Fetch items one at a time from trio tasks; concurrent calls share one bulk request.

    The options are those of ``httpx_bulk.ItemClient``, for the same reasons: a 5 ms window
    merges the lookups of independent callers (each incoming request of a service is a task
    of its own), ``max_size=100`` is the bulk endpoint's limit, and ``dedupe=True`` asks for
    a popular item once per batch. On trio the window follows trio's clock, and it is kept by
    the batch's first caller, waiting with a deadline: there is no background task.

    Deadlines follow trio's cancel scopes. The one in the bulk section
    (``trio.fail_after(self.timeout)``) bounds the shared request: when it expires, every
    caller of the batch gets ``trio.TooSlowError``. A deadline of one caller belongs around
    its call (``with trio.move_on_after(0.2): await client.fetch_item(7)``) and affects that
    caller alone: if it was leading, the next caller of the batch takes the request over.
    """

    def __init__(self, http: httpx.AsyncClient, *, timeout: float = 5.0) -> None:
        self.http = http
        self.timeout = timeout

    @batch(max_window=0.005, max_size=100, dedupe=True)
    async def fetch_item(self, item_id: int) -> Item | None:
        """The item with this id, or ``None`` if there is none."""
        if item_id < 1:
            # Before collect(): this caller alone fails, its batch never sees the bad id.
            msg = f"item ids start at 1, got {item_id}"
            raise ValueError(msg)
        item_ids = await collect(item_id)
        # Only the batch's leader gets here, with every caller's id. An exception from now
        # until scatter() (a 503, the deadline below) is raised in every caller of the batch.
        with trio.fail_after(self.timeout):
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


async def arrive_later(
    delay: float, fetch: Callable[[int], Awaitable[Item | None]], item_id: int, found: list[Item | None], index: int
) -> None:
    """A caller that arrives ``delay`` seconds late, like an independent incoming request.

    A nursery's task returns nothing: what it fetched goes to ``found[index]``.
    """
    await trio.sleep(delay)
    found[index] = await fetch(item_id)


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
            fetch = client.fetch_item if scenario == "batched" else client.fetch_item_unbatched
            found: list[Item | None] = [None] * len(ids)
            # Independent callers, one every 0.1 ms: 4 ms from the first to the last.
            async with trio.open_nursery() as nursery:
                for index, item_id in enumerate(ids):
                    nursery.start_soon(arrive_later, index * 0.0001, fetch, item_id, found, index)
        if scenario == "batched":
            outcome.items = found
        outcome.requests[scenario] = sent

    for scenario, sent in outcome.requests.items():
        print(f"{scenario}: {dict(sent)}")
    print("items 100 and 101:", outcome.items[19:21])
    return outcome


@contextlib.contextmanager
def serve_in_a_thread(app: FastAPI) -> Generator[str, None, None]:
    """Serve ``app`` on a free port of 127.0.0.1 with uvicorn, in a thread; yield its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:  # uvicorn offers no event to wait for
            if not thread.is_alive():
                msg = "the server stopped while starting (see its log)"
                raise RuntimeError(msg)
            time.sleep(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()


def demo() -> None:
    """Serve the app, run ``main()`` against it on trio, stop."""
    service = ItemService()
    with serve_in_a_thread(service.app) as base_url:
        trio.run(main, base_url)
    print("the service saw:", dict(service.requests), "with ids per bulk request:", service.bulk_sizes)


if __name__ == "__main__":
    demo()
