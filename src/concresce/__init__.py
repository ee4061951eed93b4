"""Transparent temporal coalescing and inline micro-batching for asyncio and trio.

Plain ``def`` functions called from threads have the same API in ``concresce.threads``.

Write an ``async def`` for one item; ``await collect(item)`` pools the items of concurrent
calls, one caller (the leader) makes one bulk call, and ``scatter(results)`` routes each
caller its own result.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._batch import batch as batch
from ._collect import collect as collect
from ._controls import Batched as Batched
from ._errors import BatchRoutingError as BatchRoutingError
from ._errors import MissingResultError as MissingResultError
from ._errors import OverloadedError as OverloadedError
from ._options import Auto as Auto
from ._otel import disable_tracing as disable_tracing
from ._otel import enable_tracing as enable_tracing
from ._scatter import scatter as scatter
from ._stats import BatchRecord as BatchRecord
from ._stats import BatchStats as BatchStats
from ._stats import Summary as Summary
from ._stats import Tuning as Tuning
from ._stats import add_observer as add_observer
from ._stats import remove_observer as remove_observer

try:
    __version__ = _version("concresce-inline")
except _PackageNotFoundError:  # pragma: no cover -- running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "Auto",
    "BatchRecord",
    "BatchRoutingError",
    "BatchStats",
    "Batched",
    "MissingResultError",
    "OverloadedError",
    "Summary",
    "Tuning",
    "__version__",
    "add_observer",
    "batch",
    "collect",
    "disable_tracing",
    "enable_tracing",
    "remove_observer",
    "scatter",
]


def _claim_public_names() -> None:
    # Tracebacks, reprs and docs show the public path, not the private module.
    for name in __all__:
        if name != "__version__":
            globals()[name].__module__ = __name__


_claim_public_names()
del _claim_public_names, _version, _PackageNotFoundError
