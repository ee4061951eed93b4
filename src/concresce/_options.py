"""Validation of ``@batch``'s options, shared by the decorator and ``configure()``.

Every check names the option and what was given, and returns the normalised value.
"""

from __future__ import annotations

import difflib
import math
from datetime import timedelta
from numbers import Real
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "RENAMED",
    "check_callable",
    "check_flag",
    "check_limit",
    "check_weight_limit",
    "check_window",
    "unknown_option",
]


def check_window(value: object) -> float:
    if isinstance(value, timedelta):
        # The spelling of other releases (`window=timedelta(milliseconds=5)`): stored as seconds.
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, Real):
        msg = f"max_window must be a number of seconds or a datetime.timedelta (>= 0 and finite), got {value!r}"
        raise TypeError(msg)
    else:
        seconds = float(value)
    if not (seconds >= 0 and math.isfinite(seconds)):
        msg = f"max_window must be >= 0 and finite, got {value!r}"
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
    """A time-out of the thread API (``collect()``, ``drain()``): seconds >= 0, finite."""
    if isinstance(value, bool) or not isinstance(value, Real):
        msg = f"{what}'s timeout must be a number of seconds or None, got {value!r}"
        raise TypeError(msg)
    seconds = float(value)
    if not (seconds >= 0 and seconds != float("inf")):
        msg = f"{what}'s timeout must be >= 0 and finite, got {value!r}"
        raise ValueError(msg)
    return seconds
