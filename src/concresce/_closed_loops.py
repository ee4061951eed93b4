"""Nothing global outlives its event loop, even one closed by hand with calls pending.

Test runners and embedders close loops with ``loop.close()`` without cancelling what still
runs on them. The tasks, calls and batches then form reference cycles that only the garbage
collector frees, and two global tables would keep them alive for ever: the table of current
calls (``CALLS``, keyed by task) and each function's partitions (keyed by loop). So at the
start of every full collection, entries that belong to closed loops are dropped from both,
and that same collection frees the rest. Calls on running loops are never touched: a loop
that is closed can never run them again.

The sweep costs nothing per call; per full collection it looks at each current call and
partition once.
"""

from __future__ import annotations

import gc
from typing import Any, Final

from ._batcher import BATCHERS
from ._calls import CALLS, OUTER
from ._runtime import loop_of

__all__ = ["sweep_closed_loops"]

# A full collection: the only one that can free a whole loop's cycles anyway.
_FULL: Final = 2


def sweep_closed_loops() -> None:
    """Drop the current calls, partitions and drain() waiters of every closed event loop."""
    for task in list(CALLS):
        loop = loop_of(task)
        if loop is not None and loop.is_closed():
            CALLS.pop(task, None)
            OUTER.pop(task, None)
    for batcher in list(BATCHERS):
        if batcher.home is not None:
            continue  # a thread-batched function: its loop never closes, its lock guards it
        partitions = batcher.partitions
        for key, part in list(partitions.items()):
            if part.loop.is_closed():
                partitions.pop(key, None)
        drainers = batcher.drainers
        for fut in list(drainers):
            if fut.get_loop().is_closed():
                drainers.remove(fut)


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start" and info.get("generation") == _FULL:
        sweep_closed_loops()


gc.callbacks.append(_on_collection)
