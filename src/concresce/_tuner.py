"""The self-tuning flush of ``max_window="auto"``: how many batches run at once, how long to hold.

With ``"auto"`` every batch opens as with ``max_window=0`` (it is due on the next loop turn,
so a lone caller never waits). What the tuner decides is what happens when it is due while
batches of its partition are in flight:

* below the *in-flight limit* it is dispatched at once, as with tick batching;
* at or above it, it is *held*: it stays open and keeps collecting, and goes when a running
  batch ends (group commit) or when the *hold* expires, whichever comes first. It is held
  only if at least one more call is expected to join meanwhile (arrival rate x hold >= 1),
  like PostgreSQL's ``commit_delay``, which waits only when ``commit_siblings`` are active.

The hold is the estimated duration of a batch (the cost model: round trip + per-item cost x
size, fitted on the batches that ended), capped by ``Auto(ceiling=...)``. The in-flight limit
is hill-climbed, like TensorFlow's adaptive batch scheduler: every ``EPOCH`` batches it
moves one step; it keeps its direction while the epoch's *power* (Kleinrock's: throughput
divided by latency, which both a closed and an open load want high) does not drop, and turns
back when it drops by more than ``TOLERANCE``. It stays within 1 and ``max_concurrency``, and one above the most
batches seen in flight (a limit no load reaches tells nothing).

Everything here runs once per batch, at its due time and when it ends; nothing per call, no
timer of its own, no task or thread. ``Tuner`` is a plain object driven by numbers, so that
its decisions can be tested without an event loop.
"""

from __future__ import annotations

from typing import Final, final

from ._stats import Tuning

__all__ = ["ALPHA", "EPOCH", "START", "TOLERANCE", "Tuner"]

#: Weight of the newest batch in the running estimates (an EWMA over about 10 batches).
ALPHA: Final = 0.1
#: Below this variance of the batch sizes, the per-item cost is taken as 0 (all round trip).
FLAT: Final = 1e-9
#: A power this much below the last epoch's turns the climb back; smaller drops are noise.
TOLERANCE: Final = 0.05
#: Batches per step of the in-flight limit.
EPOCH: Final = 16
#: The in-flight limit before any step: two batches, one collecting while one runs...
#: and one more in flight, the best fixed policy under a database-bound load (issue 13).
START: Final = 2


@final
class Tuner:
    """The estimates and choices of one decorated function with ``max_window="auto"``.

    Args:
        ceiling: The longest hold, in seconds, or ``None`` (the estimated batch duration).
        bound: ``max_concurrency``: the in-flight limit never exceeds it (``None``: no bound).
    """

    __slots__ = (
        "batches",
        "bound",
        "ceiling",
        "direction",
        "duration",
        "epoch_batches",
        "epoch_items",
        "epoch_latency",
        "epoch_start",
        "gap",
        "last_end",
        "limit",
        "peak",
        "power",
        "size",
        "size_duration",
        "size_squared",
    )

    def __init__(self, ceiling: float | None, bound: int | None) -> None:
        self.ceiling = ceiling
        self.bound = bound
        self.limit = START if bound is None else min(START, bound)
        self.direction = 1
        self.power = 0.0  # the last epoch's; 0 before the first
        self.batches = 0
        # EWMAs of size, duration, size^2 and size x duration: a weighted least-squares fit of
        # duration = round trip + per-item cost x size over the recent batches.
        self.size = self.duration = self.size_squared = self.size_duration = 0.0
        self.gap = 0.0  # EWMA of the time between two batch ends
        self.last_end: float | None = None  # when the last batch ended
        self.epoch_start = 0.0
        self.epoch_batches = self.epoch_items = 0
        self.epoch_latency = 0.0
        self.peak = 0  # the most batches in flight seen in this epoch

    def set_bounds(self, ceiling: float | None, bound: int | None) -> None:
        """New bounds (``configure()``): the estimates stay, the limit moves inside them."""
        self.ceiling = ceiling
        self.bound = bound
        if bound is not None and self.limit > bound:
            self.limit = bound

    # -- the estimates -------------------------------------------------------------------

    def cost(self) -> tuple[float, float]:
        """The fitted ``(round trip, per-item cost)`` in seconds, both >= 0."""
        size = self.size
        spread = self.size_squared - size * size
        # Sizes that (almost) never vary say nothing about the per-item cost: all round trip.
        per_item = (self.size_duration - size * self.duration) / spread if spread > FLAT else 0.0
        per_item = max(per_item, 0.0)
        return max(self.duration - per_item * size, 0.0), per_item

    def rate(self) -> float:
        """Items per second, from the recent batch ends (0 before two ends)."""
        return self.size / self.gap if self.gap > 0 else 0.0

    def hold_limit(self) -> float:
        """How long a due batch is held at most: a batch's estimated duration, capped."""
        if not self.batches:
            return 0.0
        round_trip, per_item = self.cost()
        hold = round_trip + per_item * self.size
        ceiling = self.ceiling
        return hold if ceiling is None or hold < ceiling else ceiling

    # -- the decisions -------------------------------------------------------------------

    def hold(self, running: int) -> float:
        """Seconds to hold a batch that is due while ``running`` batches are in flight (0: go)."""
        if running < self.limit:
            return 0.0
        hold = self.hold_limit()
        # Hold only if someone is expected to join meanwhile; otherwise it would wait for nothing.
        return hold if self.rate() * hold >= 1.0 else 0.0

    def ended(self, size: int, latency: float, duration: float, now: float, running: int) -> None:
        """A batch of ``size`` items ended at ``now`` after running ``duration`` seconds.

        ``latency`` is the time from its opening to its end; ``running`` counts the batches in
        flight when it ended, itself included.
        """
        alpha = ALPHA
        batches = self.batches = self.batches + 1
        if batches == 1:  # the first batch is the estimate
            alpha = 1.0
        mean = self.size
        self.size = mean + alpha * (size - mean)
        self.duration += alpha * (duration - self.duration)
        self.size_squared += alpha * (size * size - self.size_squared)
        self.size_duration += alpha * (size * duration - self.size_duration)
        last = self.last_end
        self.last_end = now
        if last is None:
            self.epoch_start = now  # the first epoch starts at the first end
            return
        # Not below 0: a function used on loops with different clocks (trio offsets its own).
        gap = now - last
        if gap < 0:
            gap = 0.0
        mean = self.gap
        self.gap = gap if mean == 0 else mean + ALPHA * (gap - mean)
        self.epoch_items += size
        self.epoch_latency += size * latency
        if running > self.peak:  # noqa: PLR1730 -- max() parses its arguments: 3x the cost
            self.peak = running
        epoch = self.epoch_batches = self.epoch_batches + 1
        if epoch >= EPOCH:
            self.step(now)

    def step(self, now: float) -> None:
        """End an epoch: move the in-flight limit one step, turning back if power dropped."""
        elapsed = now - self.epoch_start
        items = self.epoch_items
        latency = self.epoch_latency / items if items else 0.0
        power = items / elapsed / latency if elapsed > 0 and latency > 0 else 0.0
        if power < self.power * (1 - TOLERANCE):
            self.direction = -self.direction
        self.power = power
        top = self.peak + 1
        bound = self.bound
        if bound is not None and bound < top:
            top = bound
        limit = self.limit + self.direction
        if limit < 1 or limit > top:
            # Against a bound: stay inside it, and probe the other way next.
            limit = max(1, min(limit, top))
            self.direction = -self.direction
        self.limit = limit
        self.epoch_start = now
        self.epoch_batches = self.epoch_items = self.peak = 0
        self.epoch_latency = 0.0

    def tuning(self, limit: int | None = None) -> Tuning:
        """A frozen snapshot of the choices and estimates (with ``limit`` as the in-flight limit)."""
        round_trip, per_item = self.cost()
        return Tuning(
            in_flight_limit=self.limit if limit is None else limit,
            hold_limit=self.hold_limit(),
            round_trip=round_trip,
            per_item=per_item,
            arrival_rate=self.rate(),
            mean_size=self.size,
            power=self.power,
            batches=self.batches,
        )
