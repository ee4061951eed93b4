"""``floor`` on trio: the least a coalescer can do when its callers are trio tasks.

The trio counterpart of ``Floor`` in ``_systems.py``, written by hand for this one case and
measured in the same run as ``concresce`` on trio, so that the ratio between the two is the
cost of the library on trio, not of trio itself. Imported only by a process that measures
something on trio (trio is a test dependency of the project, never a runtime one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import trio
from outcome import Value
from trio.lowlevel import Abort, checkpoint, current_task, reschedule, wait_task_rescheduled

if TYPE_CHECKING:
    from _systems import Backend
    from trio.lowlevel import Task


@final
class _TrioFloorBatch:
    __slots__ = ("full", "items", "tasks")

    def __init__(self, item: int, full: trio.Event | None) -> None:
        self.items = [item]
        # The followers' tasks, in item order after the leader's; None for one cancelled since.
        self.tasks: list[Task | None] = []
        self.full = full  # set at max_size; None with tick flush, where the leader waits one round


@final
class TrioFloor:
    """The minimal correct inline coalescer on trio, for one ``trio.run`` at a time.

    The first caller leads: it opens a batch and waits for the flush; every later caller
    appends its item and its task and parks in ``wait_task_rescheduled`` (one per follower,
    nothing else: no event, no channel) until the leader reschedules it with its result.

    The flush: with tick flush (``window == 0``) the leader waits one scheduler round
    (``checkpoint()``), so every task trio runs in the current round, the opener's included,
    reaches the batch first; a batch that fills up in that round is closed at once (the next
    caller opens the next batch) and its leader still resumes in the next round. With a window
    the leader waits for ``trio.Event`` set at ``max_size``, under ``move_on_after(window)``.
    A follower cancelled while it waits is dropped from the routing (its abort succeeds); a
    cancelled *leader* strands its followers, as ``Floor``'s does: a floor, not a library.
    """

    __slots__ = ("_backend", "_max_size", "_open", "_window")

    def __init__(self, backend: Backend, max_size: int | None, window: float) -> None:
        self._backend = backend
        self._max_size = max_size
        self._window = window
        self._open: _TrioFloorBatch | None = None

    async def load(self, item: int) -> int:
        """Return ``backend([..., item, ...])``'s result for ``item``."""
        batch = self._open
        if batch is not None:
            tasks = batch.tasks
            index = len(tasks)
            tasks.append(current_task())
            batch.items.append(item)
            if len(batch.items) == self._max_size:
                self._open = None  # full: closed now, whenever its leader resumes
                if batch.full is not None:
                    batch.full.set()

            def abort(_: object) -> Abort:  # cancelled while parked: leave, be skipped at routing
                tasks[index] = None
                return Abort.SUCCEEDED

            result: int = await wait_task_rescheduled(abort)
            return result
        batch = self._open = _TrioFloorBatch(item, None if self._window == 0 else trio.Event())
        if batch.full is None:
            await checkpoint()
        else:
            with trio.move_on_after(self._window):
                await batch.full.wait()
        if self._open is batch:
            self._open = None
        results = await self._backend(batch.items)
        for task, result in zip(batch.tasks, results[1:], strict=True):
            if task is not None:
                reschedule(task, Value(result))
        return results[0]
