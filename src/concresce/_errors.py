"""The exceptions concresce raises.

The tree::

    Exception
     ├── BatchRoutingError           scatter() cannot route the results to the callers
     │    └── MissingResultError     a keyed result is missing for one caller (also a KeyError)
     └── OverloadedError             max_pending calls already wait: this call was refused

Misuse of the API (``collect()`` outside a ``@batch`` call, ``scatter()`` twice, a leader that
returns without ``scatter()``...) raises the built-in ``RuntimeError``; bad decorator options
raise ``TypeError`` or ``ValueError`` when the function is decorated.
"""

from __future__ import annotations

from typing import final

__all__ = ["BatchRoutingError", "MissingResultError", "OverloadedError"]


class BatchRoutingError(Exception):
    """``scatter()`` could not route the leader's results to the members of the batch.

    Raised in every member of the batch (the leader included, from ``scatter()``) when the
    results as a whole cannot be routed: a length mismatch, an unsupported type, an
    unhashable item without ``key``, or a ``key`` function that raised. The message names
    the decorated function and says what was wrong.

    Added in version 0.3.
    """


@final
class MissingResultError(BatchRoutingError, KeyError):
    """A keyed ``scatter()`` has no result for this caller's key.

    Raised in that caller alone; every other member of the batch still gets its result.
    It is a ``KeyError`` too, so ``except KeyError`` handlers written for a plain
    ``results[key]`` lookup keep working.

    Attributes:
        key: The key that was looked up and not found.

    Added in version 0.3.
    """

    def __init__(self, message: str, key: object) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message like a key; show it as a sentence.
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[MissingResultError], tuple[str, object]]:
        # Exceptions pickle as cls(*args); keep `key` across a pickle round trip.
        return (type(self), (str(self.args[0]), self.key))


@final
class OverloadedError(Exception):
    """A call was refused because ``max_pending`` calls of its partition already wait.

    Raised from ``collect()`` at once, in the refused call alone, before it joins a batch:
    the calls already waiting are unaffected. Catch it to answer "busy" (HTTP 503, a retry
    later) instead of queueing without bound.

    Attributes:
        function: The decorated function's qualified name.
        limit: Its ``max_pending``.

    Added in version 0.3.
    """

    def __init__(self, function: str, limit: int) -> None:
        super().__init__(
            f"{function}: {limit} calls are already waiting for a batch (max_pending={limit}); "
            "this call was refused instead of queueing without bound",
        )
        self.function = function
        self.limit = limit

    def __reduce__(self) -> tuple[type[OverloadedError], tuple[str, int]]:
        return (type(self), (self.function, self.limit))
