"""The tuner of ``max_window="auto"`` as a pure function: scripted batch ends in, decisions out (issue 13).

No event loop: each test drives a ``Tuner`` with the numbers a partition would report when
its batches end (size, latency, duration, the time, the batches in flight) and asserts what it
decides: how long a due batch is held, and the in-flight limit it climbs to.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support import property_examples

from concresce import Tuning
from concresce._tuner import EPOCH, START, Tuner


def feed(
    tuner: Tuner,
    now: float,
    *,
    batches: int,
    size: int = 10,
    latency: float = 0.002,
    duration: float = 0.001,
    gap: float = 0.001,
    running: int = 1,
) -> float:
    """Report ``batches`` equal batch ends, ``gap`` seconds apart; return the time of the last."""
    for _ in range(batches):
        now += gap
        tuner.ended(size, latency, duration, now, running)
    return now


def test_a_new_tuner_never_holds():
    """Before any batch ended there is no estimate: a due batch goes at once, as with tick batching."""
    tuner = Tuner(None, None)

    assert tuner.limit == START == 2
    assert [tuner.hold(running) for running in (1, 2, 3, 100)] == [0.0, 0.0, 0.0, 0.0]
    assert tuner.tuning() == Tuning(
        in_flight_limit=2,
        hold_limit=0.0,
        round_trip=0.0,
        per_item=0.0,
        arrival_rate=0.0,
        mean_size=0.0,
        power=0.0,
        batches=0,
    )


def test_the_cost_model_recovers_round_trip_and_per_item_cost():
    """Durations of 2 ms + 0.1 ms per item, over varied sizes, fit back to those two numbers."""
    tuner = Tuner(None, None)
    now = 0.0
    for size in [1, 5, 20, 3, 12, 8, 30, 2] * 3:
        now += 0.01
        tuner.ended(size, 0.003, 0.002 + 0.0001 * size, now, 1)

    round_trip, per_item = tuner.cost()

    assert round_trip == pytest.approx(0.002, rel=1e-6)
    assert per_item == pytest.approx(0.0001, rel=1e-6)
    assert tuner.rate() == pytest.approx(tuner.size / 0.01)


def test_sizes_that_never_vary_are_all_round_trip():
    """With one batch size only, the slope is unknown: the whole duration is the round trip."""
    tuner = Tuner(None, None)
    feed(tuner, 0.0, batches=5, size=7, duration=0.004)

    assert tuner.cost() == (pytest.approx(0.004), 0.0)


def test_a_batch_due_below_the_in_flight_limit_goes_at_once():
    """Below the limit nothing is held, however many calls are expected."""
    tuner = Tuner(None, None)
    feed(tuner, 0.0, batches=5, gap=0.0001, duration=0.005)

    assert tuner.hold(1) == 0.0  # limit 2


def test_a_batch_due_at_the_limit_is_held_for_a_batch_duration():
    """At the limit, with calls arriving faster than one per batch duration, it is held that long."""
    tuner = Tuner(None, None)
    feed(tuner, 0.0, batches=5, size=10, gap=0.0001, duration=0.005)

    assert tuner.rate() == pytest.approx(10 / 0.0001)
    assert tuner.hold(2) == pytest.approx(0.005)
    assert tuner.hold(3) == pytest.approx(0.005)


def test_the_ceiling_caps_the_hold():
    """``Auto(ceiling=...)``: the hold never exceeds it."""
    tuner = Tuner(0.001, None)
    feed(tuner, 0.0, batches=5, size=10, gap=0.0001, duration=0.005)

    assert tuner.hold(2) == 0.001
    assert tuner.tuning().hold_limit == 0.001


def test_a_batch_is_not_held_when_nobody_is_expected_to_join():
    """Sparse arrivals (one item per second, batches of 5 ms): holding would only add latency."""
    tuner = Tuner(None, None)
    feed(tuner, 0.0, batches=5, size=1, gap=1.0, duration=0.005)

    assert tuner.rate() == pytest.approx(1.0)
    assert tuner.hold(2) == 0.0


#: The mean latency of an item (s) at each in-flight limit, in a scripted backend whose
#: best limit is 4; throughput stays the same, so power is best at 4.
LATENCY = {1: 0.004, 2: 0.003, 3: 0.002, 4: 0.001, 5: 0.002, 6: 0.003, 7: 0.004}


def test_the_in_flight_limit_climbs_to_the_best_power_and_stays_around_it():
    """Each epoch moves the limit one step; it turns back when power drops, so it circles 4."""
    tuner = Tuner(None, None)
    now = feed(tuner, 0.0, batches=1)  # the first end starts the first epoch
    limits = []
    powers = []
    for _ in range(10):
        limit = tuner.limit
        now = feed(tuner, now, batches=EPOCH, latency=LATENCY[limit], running=limit)
        limits.append(tuner.limit)
        powers.append(round(tuner.power))

    assert limits == [3, 4, 5, 4, 3, 4, 5, 4, 3, 4]
    # items / s = 10 / 1 ms; power = that / latency
    assert powers == [3333333, 5000000, 10000000, 5000000, 10000000, 5000000, 10000000, 5000000, 10000000, 5000000]


def test_the_limit_goes_no_higher_than_one_above_the_batches_seen_in_flight():
    """A lone caller's batches never overlap: the limit stays within 1 and 2, probing both."""
    tuner = Tuner(None, None)
    now = feed(tuner, 0.0, batches=1)
    limits = []
    for _ in range(8):
        now = feed(tuner, now, batches=EPOCH, running=1)
        limits.append(tuner.limit)

    assert limits == [2, 1, 1, 2, 2, 1, 1, 2]  # the same power each epoch: it walks to a bound, then back


def test_max_concurrency_bounds_the_limit():
    """``max_concurrency=1`` makes the tuner group commit: the limit is always 1."""
    tuner = Tuner(None, 1)
    now = feed(tuner, 0.0, batches=1)
    limits = []
    for _ in range(4):
        now = feed(tuner, now, batches=EPOCH, running=1, latency=0.001 * (4 - len(limits)))
        limits.append(tuner.limit)

    assert limits == [1, 1, 1, 1]


def test_new_bounds_keep_the_estimates_and_pull_the_limit_inside():
    """``configure(max_concurrency=...)`` lowers the limit to the bound; the estimates stay."""
    tuner = Tuner(None, None)
    now = feed(tuner, 0.0, batches=1)
    feed(tuner, now, batches=EPOCH, running=3)
    assert tuner.limit == 3
    before = tuner.tuning()

    tuner.set_bounds(0.5, 2)

    assert tuner.limit == 2
    assert tuner.ceiling == 0.5
    assert tuner.tuning() == Tuning(**{**_fields(before), "in_flight_limit": 2})
    tuner.set_bounds(None, None)
    assert tuner.limit == 2


def _fields(tuning: Tuning) -> dict[str, float]:
    return {name: getattr(tuning, name) for name in Tuning.__slots__}


def test_an_epoch_without_elapsed_time_has_no_power():
    """Batch ends all at one instant (a virtual clock): power 0, which turns the climb back."""
    tuner = Tuner(None, None)
    feed(tuner, 1.0, batches=1, gap=0.0)
    feed(tuner, 1.0, batches=EPOCH, gap=0.0, running=5)

    assert tuner.power == 0.0
    assert tuner.rate() == 0.0  # no time between ends: no rate either
    assert tuner.limit == 3  # 0 is not below the 0 it started from: the climb went on


# -- properties -------------------------------------------------------------------------

ends = st.lists(
    st.tuples(
        st.integers(1, 500),  # size
        st.floats(0, 1),  # latency
        st.floats(0, 1),  # duration
        st.floats(0, 1),  # gap to the previous end
        st.integers(1, 20),  # batches in flight
    ),
    max_size=120,
)


@settings(deadline=None, max_examples=property_examples(500))
@given(
    ends=ends,
    bound=st.none() | st.integers(1, 8),
    ceiling=st.none() | st.floats(1e-6, 1),
)
def test_the_tuner_never_crosses_its_bounds(ends, bound, ceiling):
    """Whatever it observes: the limit within 1 and ``max_concurrency``, every hold within the ceiling."""
    tuner = Tuner(ceiling, bound)
    now = 0.0
    for size, latency, duration, gap, running in ends:
        now += gap
        tuner.ended(size, latency, duration, now, running)
        assert 1 <= tuner.limit <= (bound or math.inf)
        round_trip, per_item = tuner.cost()
        assert round_trip >= 0
        assert per_item >= 0
        for in_flight in range(1, 10):
            hold = tuner.hold(in_flight)
            assert hold >= 0
            assert math.isfinite(hold)
            if ceiling is not None:
                assert hold <= ceiling
            if in_flight < tuner.limit:
                assert hold == 0


def test_a_batch_end_before_the_last_one_counts_as_no_gap():
    """Loops with different clocks feed one tuner (trio offsets its own): a negative gap is 0."""
    tuner = Tuner(None, None)
    tuner.ended(4, 0.001, 0.001, 100.0, 1)
    tuner.ended(4, 0.001, 0.001, 101.0, 1)
    assert tuner.gap == 1.0
    tuner.ended(4, 0.001, 0.001, 5.0, 1)  # another loop's clock

    assert tuner.gap == pytest.approx(0.9)  # an EWMA step toward 0, not toward -96
    assert tuner.rate() == pytest.approx(4 / 0.9)
