"""Transparent temporal coalescing and inline micro-batching for asyncio.

Write an ``async def`` for one item; ``await collect(item)`` pools the items of concurrent
calls, one caller (the leader) makes one bulk call, and ``scatter(results)`` routes each
caller its own result.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._batch import batch as batch
from ._collect import collect as collect
from ._errors import BatchRoutingError as BatchRoutingError
from ._errors import MissingResultError as MissingResultError
from ._scatter import scatter as scatter

try:
    __version__ = _version("concresce")
except _PackageNotFoundError:  # pragma: no cover -- running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["BatchRoutingError", "MissingResultError", "__version__", "batch", "collect", "scatter"]

# Tracebacks, reprs and docs show the public path, not the private module.
for _name in ("BatchRoutingError", "MissingResultError", "batch", "collect", "scatter"):
    globals()[_name].__module__ = __name__
del _name, _version, _PackageNotFoundError
