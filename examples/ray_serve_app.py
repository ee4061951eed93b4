"""Ray Serve: concresce inside a deployment, for its outbound I/O, beside ``serve.batch``.

Ray Serve's ``@serve.batch`` batches what a replica computes: the requests that reach one
replica within a short wait go through the model together. It does not batch what each
request fetches on the way (features from a store, rows from a database, an HTTP call). Here
the deployment does both: ``features()`` is a concresce ``@batch`` method, so the concurrent
requests of a replica share one bulk call to the feature store, and ``score()`` is a
``@serve.batch`` method, the model's batched forward pass.

Each replica batches its own requests (concresce is per process and per event loop, and a
method batches per instance), so with R replicas a batch holds about a R-th of the load:
see the "Scaling out" page.

Run it (it starts a local Ray instance, which takes up to a minute or two on a small machine)::

    uv run --group ray python examples/ray_serve_app.py         # 2000 requests to each version
    uv run --group ray python examples/ray_serve_app.py 300     # fewer
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from ray import serve

from concresce import batch, collect, scatter

#: Requests sent at once by the demo, to each version of the deployment.
REQUESTS = 2000


class FeatureStore:
    """Stands in for a remote feature store with a bulk API: one round trip per call.

    Like a real one, it takes a few connections at once: calls beyond them queue.
    """

    def __init__(self, *, latency: float = 0.005, connections: int = 4) -> None:
        self.latency = latency
        self.connections = connections
        self.calls = 0
        self.ids = 0
        self._slots: asyncio.Semaphore | None = None

    async def fetch_many(self, user_ids: list[int]) -> dict[int, list[float]]:
        if self._slots is None:  # made on the loop that serves the requests
            self._slots = asyncio.Semaphore(self.connections)
        async with self._slots:
            self.calls += 1
            self.ids += len(user_ids)
            await asyncio.sleep(self.latency)  # one round trip, however many ids
        return {user_id: [user_id % 7, user_id % 11, user_id % 13] for user_id in user_ids}


# --8<-- [start:deployment]
@serve.deployment(max_ongoing_requests=REQUESTS)
class Recommender:
    """One replica: fetches a user's features, then scores them with the (batched) model."""

    def __init__(self, *, batched_io: bool) -> None:
        self.store = FeatureStore()
        self.batched_io = batched_io
        self.model_batches = 0
        # Decorated here, in the replica, rather than with @batch on the method: Ray ships
        # a class defined in a script to its replicas with cloudpickle, by value, and a
        # @batch function copied that way loses track of its calls (collect() then says it
        # is "outside a call"). (A class the replicas import from an installed package is
        # pickled by reference instead; this example does not cover that case.)
        self.features = batch(max_window=0.002, max_size=500)(self._features)

    async def _features(self, user_id: int) -> list[float]:
        """The replica's concurrent requests share one bulk call to the feature store."""
        user_ids = await collect(user_id)
        return scatter(await self.store.fetch_many(user_ids))

    async def features_one_by_one(self, user_id: int) -> list[float]:
        """The N+1 version, for comparison: one call to the store per request."""
        return (await self.store.fetch_many([user_id]))[user_id]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def score(self, features: list[list[float]]) -> list[float]:
        """The model's forward pass, batched by Ray Serve (a sum stands in for the model)."""
        self.model_batches += 1
        return [float(sum(row)) for row in features]

    async def __call__(self, user_id: int) -> float:
        fetch = self.features if self.batched_io else self.features_one_by_one
        return await self.score(await fetch(user_id))

    def stats(self) -> dict[str, int]:
        return {"store_calls": self.store.calls, "store_ids": self.store.ids, "model_batches": self.model_batches}


# --8<-- [end:deployment]


def expected(user_id: int) -> float:
    return float(user_id % 7 + user_id % 11 + user_id % 13)


async def load(handle: Any, requests: int) -> tuple[float, list[float]]:
    """Send ``requests`` requests at once; return the wall time and the answers."""
    start = time.perf_counter()
    answers = await asyncio.gather(*(handle.remote(user_id) for user_id in range(requests)))
    return time.perf_counter() - start, list(answers)


def run_demo(requests: int = REQUESTS) -> dict[str, dict[str, float]]:
    """Serve both versions on a local Ray instance, load each, return what each measured."""
    import ray  # noqa: PLC0415 -- the demo's own runtime

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        results: dict[str, dict[str, float]] = {}
        for name, batched_io in (("one store call per request", False), ("concresce @batch", True)):
            app = Recommender.options(name=f"recommender_{batched_io}").bind(batched_io=batched_io)
            handle = serve.run(app, name=f"app_{batched_io}", route_prefix=None)
            asyncio.run(load(handle, 50))  # warm-up: the replica's first requests
            before = handle.stats.remote().result()
            seconds, answers = asyncio.run(load(handle, requests))
            after = handle.stats.remote().result()
            assert answers == [expected(user_id) for user_id in range(requests)], "a request got a wrong answer"
            calls = after["store_calls"] - before["store_calls"]
            results[name] = {
                "requests": requests,
                "seconds": seconds,
                "requests_per_second": requests / seconds,
                "store_calls": calls,
                "ids_per_store_call": (after["store_ids"] - before["store_ids"]) / calls,
                "model_batches": after["model_batches"] - before["model_batches"],
            }
            serve.delete(f"app_{batched_io}")
        return results
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else REQUESTS
    for name, result in run_demo(requests).items():
        print(
            f"{name:<28} {result['requests']:.0f} requests in {result['seconds']:.2f} s "
            f"({result['requests_per_second']:,.0f} req/s): {result['store_calls']:.0f} feature-store calls "
            f"({result['ids_per_store_call']:.1f} ids each), {result['model_batches']:.0f} model batches"
        )


if __name__ == "__main__":
    main()
