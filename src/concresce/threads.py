"""Inline micro-batching for plain ``def`` functions called from many threads.

The same model as ``concresce`` on asyncio and trio, for WSGI apps, thread pools and sync
drivers: write the function for one item, ``collect(item)`` pools the items of the calls
made meanwhile by other threads, one caller (the leader) makes one bulk call and
``scatter(results)`` routes each caller its own result. Batches are dispatched by group
commit: at once while one of ``max_concurrency`` slots is free, collecting while all are busy.

```python
from concresce.threads import batch, collect, scatter

@batch(max_concurrency=4)  # the size of the connection pool
def get_user(user_id: int) -> User | None:
    ids = collect(user_id)        # blocks this thread; the leader gets every id
    rows = db.fetch_users(ids)    # only the leader runs this
    return scatter({row.id: row for row in rows}, default=None)
```

See the "Threads" page of the documentation.
"""

from ._thread_batch import batch, scatter
from ._thread_collect import collect
from ._thread_controls import ThreadBatched

__all__ = ["ThreadBatched", "batch", "collect", "scatter"]


def _claim_public_names() -> None:
    # Tracebacks, reprs and docs show the public path, not the private module.
    for name in __all__:
        globals()[name].__module__ = __name__


_claim_public_names()
del _claim_public_names
