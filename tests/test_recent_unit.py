"""sources/recent.py: the window of job times behind exact_quantiles."""

from __future__ import annotations

import random
import statistics

import pytest

from pipemon.sources.recent import ExactQuantiles, RecentValues, quantile_list


def test_quantiles_are_percentile_cont():
    rng = random.Random(7)
    values = [rng.lognormvariate(4, 1) for _ in range(501)]
    recent = RecentValues()
    for i, v in enumerate(values):
        recent.add(at=i, observed=v, window=10_000, max_values=10_000)
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # R type 7 = percentile_cont
    for q in (0.01, 0.5, 0.95, 0.99):
        assert recent.quantile(q) == pytest.approx(cuts[round(q * 100) - 1], rel=1e-12)
    assert recent.quantile(0) == min(values) and recent.quantile(1) == max(values)
    one = RecentValues()
    one.add(at=0, observed=3.0, window=60, max_values=10)
    assert one.quantile(0.99) == 3.0


def test_the_window_forgets_by_event_time_not_arrival_and_caps_its_size():
    recent = RecentValues()
    # A late commit arrives after newer jobs; it leaves the window by its own time.
    for at, value in ((100, 1.0), (130, 2.0), (90, 3.0), (140, 4.0)):
        recent.add(at=at, observed=value, window=60, max_values=100)
    assert list(recent.sorted) == [1.0, 2.0, 3.0, 4.0]
    recent.expire(before=95)  # window end 155
    assert list(recent.sorted) == [1.0, 2.0, 4.0]
    recent.expire(before=120)
    assert list(recent.sorted) == [2.0, 4.0]
    capped = RecentValues()
    for at in range(10):
        capped.add(at=at, observed=float(at), window=1000, max_values=4)
    assert list(capped.sorted) == [6.0, 7.0, 8.0, 9.0]  # the oldest left early


def test_equal_values_leave_one_at_a_time():
    recent = RecentValues()
    for at in range(5):
        recent.add(at=at, observed=7.0, window=1000, max_values=100)
    recent.expire(before=1)
    assert list(recent.sorted) == [7.0, 7.0, 7.0]


@pytest.mark.parametrize("raw, problem", [
    ([], "non-empty list"), ([0.5, 1.5], "ratio from 0 to 1"), ([0.5, 0.5], "distinct"),
    ("0.99", "non-empty list")])
def test_bad_quantile_lists(raw, problem):
    with pytest.raises(ValueError, match=problem):
        quantile_list(raw)


def test_defaults():
    config = ExactQuantiles()
    assert (config.window, config.quantiles, config.max_jobs) == (3600.0, (0.5, 0.95, 0.99),
                                                                  100_000)
