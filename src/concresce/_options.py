"""Validation of ``@batch``'s options, shared by the decorator and ``configure()``.

Every check names the option and what was given, and returns the normalised value.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from datetime import timedelta
from numbers import Real
from typing import TYPE_CHECKING, Any, Final, cast, final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "RENAMED",
    "Auto",
    "check_callable",
    "check_flag",
    "check_limit",
    "check_weight_limit",
    "check_window",
    "unknown_option",
]


@final
@dataclass(frozen=True, slots=True)
class Auto:
    """``max_window=Auto(ceiling=...)``: the self-tuning flush, holding a batch at most ``ceiling``.

    ``max_window="auto"`` is ``Auto()``: every batch is due on the next loop turn, and one
    that is due while the function's in-flight limit is reached is held (keeps collecting)
    until a running batch ends, for at most the estimated duration of a batch. ``ceiling``
    caps that hold (see *Semantics*, "The self-tuning flush").

    Attributes:
        ceiling: The longest hold, in seconds (a number or a ``datetime.timedelta``, > 0 and
            finite), or ``None``: no cap but the estimated batch duration.

    Example:
        ```python
        @batch(max_window=Auto(ceiling=0.002), max_concurrency=8)
        async def get_users(user_id: int) -> User: ...
        ```

    Added in version 0.3.
    """

    ceiling: float | timedelta | None = None

    def __post_init__(self) -> None:
        ceiling = self.ceiling
        if ceiling is not None and not (check_seconds("ceiling", ceiling) > 0):
            msg = f"Auto(ceiling=...) must be > 0 and finite, or None, got {ceiling!r}"
            raise ValueError(msg)

    @property
    def seconds(self) -> float | None:
        """The ceiling in seconds, or ``None``."""
        ceiling = self.ceiling
        return None if ceiling is None else check_seconds("ceiling", ceiling)


def check_window(value: object, *, threads: bool = False) -> float | Auto:
    """``max_window``: seconds, or an ``Auto`` (the spelling ``"auto"`` is ``Auto()``).

    With ``threads`` (``concresce.threads``), seconds only: threads flush by group commit.
    """
    if threads and (isinstance(value, Auto) or (isinstance(value, str) and value == "auto")):
        msg = (
            f"max_window={value!r} is for async functions (concresce.batch); a thread-batched function "
            "already adapts to its load by group commit: set max_concurrency to your pool size, and "
            "max_window to a number of seconds if you want batches to wait"
        )
        raise ValueError(msg)
    if isinstance(value, str) and value == "auto":
        return Auto()
    if isinstance(value, Auto):
        return value
    return check_seconds("max_window", value)


def check_seconds(name: str, value: object) -> float:
    if isinstance(value, timedelta):
        # The spelling of other releases (`window=timedelta(milliseconds=5)`): stored as seconds.
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, Real):
        also = ', "auto" or an Auto()' if name == "max_window" else ""
        msg = f"{name} must be a number of seconds or a datetime.timedelta (>= 0 and finite){also}, got {value!r}"
        raise TypeError(msg)
    else:
        seconds = float(value)
    if not (seconds >= 0 and math.isfinite(seconds)):
        msg = f"{name} must be >= 0 and finite, got {value!r}"
        raise ValueError(msg)
    return seconds


def check_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an int >= 1 or None, got {value!r}"
        raise TypeError(msg)
    if value < 1:
        msg = f"{name} must be >= 1 or None, got {value!r}"
        raise ValueError(msg)
    return value


def check_callable(name: str, value: object) -> Callable[..., Any] | None:
    if value is None or callable(value):
        return cast("Callable[..., Any] | None", value)
    msg = f"{name} must be a callable or None, got {value!r}"
    raise TypeError(msg)


def check_weight_limit(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        msg = f"max_weight must be a number > 0 or None, got {value!r}"
        raise TypeError(msg)
    limit = float(value)
    if not (limit > 0 and math.isfinite(limit)):
        msg = f"max_weight must be > 0 and finite, or None, got {value!r}"
        raise ValueError(msg)
    return limit


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}"
        raise TypeError(msg)
    return value


#: Keywords of other releases and what they are here (1.x to 5.x: ``window=timedelta(...)``).
RENAMED: Final = {"window": "max_window", "size": "max_size", "batch_size": "max_size"}


def unknown_option(where: str, name: str, options: tuple[str, ...]) -> str:
    """The message for an option ``where`` does not have: its name here, or the closest one."""
    option = RENAMED.get(name)
    if option in options:
        return f"{where} has no option {name}=; it is called {option}= here"
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"did you mean {close[0]}=? " if close else ""
    return f"{where} got an unexpected option {name}=; {hint}its options are: {', '.join(options)}"


def check_timeout(what: str, value: object) -> float:
    """A time-out of the thread API (``collect()``, ``drain()``): seconds >= 0, finite, or a timedelta."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, Real):
        msg = f"{what}'s timeout must be a number of seconds or None, got {value!r}"
        raise TypeError(msg)
    seconds = float(value)
    if not (seconds >= 0 and seconds != float("inf")):
        msg = f"{what}'s timeout must be >= 0 and finite, got {value!r}"
        raise ValueError(msg)
    return seconds
