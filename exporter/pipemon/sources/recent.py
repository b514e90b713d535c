"""Exact quantiles of the job times of the last hour (or any window): `exact_quantiles:`.

A histogram's quantile is an interpolation inside a bucket: with a few hundred jobs per queue,
its p99 is off by as much as a bucket is wide (10-30 %; `python -m bench.bench_buckets`). The
peers get exact numbers by running `percentile_cont` over the last hour on every poll. pipemon
reads each finished job once already, so it keeps the window's times itself, sorted, and its
quantiles are `percentile_cont`'s over the same jobs at no database cost. They are gauges per
queue (a quantile cannot be summed across queues or replicas: the histograms stay the SLI the
rules use), beside the number of jobs they are over.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from pipemon import metrics as m
from pipemon.schema import Checked, described, positive_duration, positive_int, ratio, value


@described("list of ratios 0-1")
def quantile_list(raw) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"expected a non-empty list of numbers from 0 to 1, got {raw!r}")
    values = tuple(ratio(v) for v in raw)
    if len(set(values)) != len(values):
        raise ValueError(f"expected distinct quantiles, got {raw!r}")
    return tuple(sorted(values))


@dataclass(frozen=True, kw_only=True)
class ExactQuantiles(Checked):
    """`exact_quantiles:` of a queue-like source (docs/exporter.md, "Exact quantiles")."""

    window: float = value("Jobs that finished (run time) or started (wait time) this recently.",
                          positive_duration, 3600.0)
    quantiles: tuple[float, ...] = value("The quantiles exported.", quantile_list,
                                         (0.5, 0.95, 0.99), shown_default="[0.5, 0.95, 0.99]")
    max_jobs: int = value(
        "Times kept per queue at most (24 bytes each); past it the oldest leave the"
        " window early.", positive_int, 100_000)


class RecentValues:
    """The values of one series observed in the window: sorted by value for the quantiles,
    and by event time (late commits arrive out of order) to forget them. Plain arrays of
    doubles: 24 bytes a job."""

    def __init__(self) -> None:
        self.sorted = array("d")
        self._times = array("d")
        self._values = array("d")  # in the order of _times

    def add(self, at: float, observed: float, window: float, max_values: int) -> None:
        bisect.insort(self.sorted, observed)
        i = bisect.bisect_right(self._times, at)
        self._times.insert(i, at)
        self._values.insert(i, observed)
        if len(self._times) > max_values:
            self._drop(1)
        self.expire(at - window)  # nothing older than the newest time allows

    def expire(self, before: float) -> None:
        self._drop(bisect.bisect_right(self._times, before))

    def _drop(self, oldest: int) -> None:
        for gone in self._values[:oldest]:
            del self.sorted[bisect.bisect_left(self.sorted, gone)]
        del self._times[:oldest]
        del self._values[:oldest]

    def quantile(self, q: float) -> float:
        """percentile_cont(q): linear between the two closest ranks."""
        values = self.sorted
        if not values:
            return math.nan
        position = q * (len(values) - 1)
        low = math.floor(position)
        if low + 1 >= len(values):
            return values[-1]
        return values[low] + (values[low + 1] - values[low]) * (position - low)


class RecentTimes:
    """Per queue, the run times of the jobs finished and the wait times of the jobs started in
    the window. Not thread-safe: guard with the owner's lock."""

    def __init__(self, config: ExactQuantiles) -> None:
        self.config = config
        self._quantile_labels = tuple(floatToGoString(q) for q in config.quantiles)
        self._run: dict[str, RecentValues] = {}
        self._wait: dict[str, RecentValues] = {}

    def finished(self, queue: str, at: float, run_seconds: float | None) -> None:
        self._add(self._run, queue, at, run_seconds)

    def started(self, queue: str, at: float, wait_seconds: float | None) -> None:
        self._add(self._wait, queue, at, wait_seconds)

    def _add(self, series: dict[str, RecentValues], queue: str, at: float,
             observed: float | None) -> None:
        if observed is None or math.isnan(observed):
            return
        recent = series.setdefault(queue, RecentValues())
        recent.add(at, max(observed, 0.0), self.config.window, self.config.max_jobs)

    def expire(self, now: float) -> None:
        """Forget what is older than the window at `now` (the database's clock at a poll)."""
        for series in (self._run, self._wait):
            for recent in series.values():
                recent.expire(now - self.config.window)

    def emit(self, families: m.Families, source: str) -> None:
        for values_spec, jobs_spec, series in (
                (m.QUEUE_RUN_WINDOW, m.QUEUE_RUN_WINDOW_JOBS, self._run),
                (m.QUEUE_WAIT_WINDOW, m.QUEUE_WAIT_WINDOW_JOBS, self._wait)):
            for queue, recent in sorted(series.items()):
                families(jobs_spec).add_metric([source, queue], len(recent.sorted))
                if not recent.sorted:
                    continue  # no quantile of nothing: the series goes, as a gauge may
                family = families(values_spec)
                for q, label in zip(self.config.quantiles, self._quantile_labels, strict=True):
                    family.add_metric([source, queue, label], recent.quantile(q))
