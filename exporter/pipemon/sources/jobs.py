"""pipemon's job vocabulary, and the finished-job series every queue-like source keeps.

Every queue backend (a PostgreSQL preset, Trigger.dev) maps its own states onto these, so the
rules and dashboards read one vocabulary whatever runs the jobs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pipemon import metrics as m
from pipemon.schema import Checked, bucket_layout, value
from pipemon.sources.recent import ExactQuantiles, RecentTimes

#: states of a job not finished yet (pipemon_queue_jobs{state})
ACTIVE_STATES = ("scheduled", "waiting", "running", "retrying")
#: how a job ended (pipemon_queue_jobs_finished_total{outcome})
OUTCOMES = ("succeeded", "failed", "cancelled")
STATES = ACTIVE_STATES + OUTCOMES
#: how an analysis result ended (pipemon_analysis_results_total{outcome})
RESULT_OUTCOMES = ("succeeded", "failed")

# Incremental reads (pipemon.incremental): rows per page and per poll, by default.
ROWS_PER_PAGE = 5000
ROWS_PER_POLL = 50000


LAYOUT_SHOWN = "27 bounds, 0.5s to 12h"


@dataclass(frozen=True, kw_only=True)
class JobBuckets(Checked):
    """`buckets:` of a queue-like source (docs/exporter.md, "Histogram buckets")."""

    run: tuple[float, ...] = value(
        "Upper bounds of the run-time histograms (`pipemon_queue_job_run_seconds`, and per"
        " stage).", bucket_layout, m.JOB_SECONDS_BUCKETS, shown_default=LAYOUT_SHOWN)
    wait: tuple[float, ...] = value(
        "Upper bounds of the wait-time histograms (`pipemon_queue_job_wait_seconds`, and per"
        " stage).", bucket_layout, m.JOB_SECONDS_BUCKETS, shown_default=LAYOUT_SHOWN)


MAX_REASON_LENGTH = 64
_ID = re.compile(r"\b(?=[0-9a-f-]*\d)[0-9a-f]{8,}(?:-[0-9a-f]{4,})*\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def normalise_reason(raw) -> str:
    """One label value per kind of failure: trimmed, one line, ids and numbers folded (so
    "timeout after 31s" and "timeout after 32s" are one reason), cut short."""
    text = " ".join(str(raw or "").split())
    text = _NUMBER.sub("N", _ID.sub("ID", text))
    return text[:MAX_REASON_LENGTH].rstrip() or "unknown"


class JobCounters:
    """Finished jobs by (queue, outcome), run times by (queue, outcome) and wait times by
    queue, for the queues a source has seen. Not thread-safe: guard with the owner's lock.

    A backend that cannot see finished jobs keeps no counters (a zero would claim that nothing
    finished); one that cannot see starts keeps no run or wait times.
    """

    def __init__(self, finished: bool = True, started: bool = True,
                 reasons: m.LabelCap | None = None, stages: m.LabelCap | None = None,
                 buckets: JobBuckets | None = None, exact: ExactQuantiles | None = None):
        buckets = buckets or JobBuckets()
        self._recent = RecentTimes(exact) if exact is not None else None
        self._reasons = reasons  # failure reasons kept, with their cap (None: not read)
        self._failures = m.CounterSet()
        self._stages = stages  # stages kept, with their cap (None: not read)
        self._stage_finished = m.CounterSet()
        self._stage_run = m.HistogramSet(buckets.run)
        self._stage_wait = m.HistogramSet(buckets.wait)
        self._finished = m.CounterSet() if finished else None
        self._run_seconds = m.HistogramSet(buckets.run) if finished and started else None
        self._wait_seconds = m.HistogramSet(buckets.wait) if started else None

    def ensure(self, queue: str) -> None:
        """Zeroed series for `queue`, so rate() sees its first job."""
        for outcome in OUTCOMES:
            if self._finished is not None:
                self._finished.ensure((queue, outcome))
            if self._run_seconds is not None:
                self._run_seconds.ensure((queue, outcome))
        if self._wait_seconds is not None:
            self._wait_seconds.ensure((queue,))

    def finished(self, queue: str, outcome: str, run_seconds: float | None,
                 reason=None, stage=None, *, at: datetime | None = None) -> None:
        """A job finished `at` (for exact_quantiles' window)."""
        self.ensure(queue)
        self._finished.inc((queue, outcome))
        if self._recent is not None and at is not None and self._run_seconds is not None:
            self._recent.finished(queue, at.timestamp(), run_seconds)
        if outcome == "failed" and self._reasons is not None:
            self._failures.inc((queue, self._reasons(normalise_reason(reason))))
        if run_seconds is not None and self._run_seconds is not None:
            self._run_seconds.observe((queue, outcome), run_seconds)
        if self._stages is not None:
            labels = (queue, self._stage(stage), outcome)
            self._stage_finished.inc(labels)
            if run_seconds is not None and self._run_seconds is not None:
                self._stage_run.observe(labels, run_seconds)

    def _stage(self, raw) -> str:
        return self._stages(" ".join(str(raw).split()) if raw else "none")

    def started(self, queue: str, wait_seconds: float | None, stage=None, *,
                at: datetime | None = None) -> None:
        self.ensure(queue)
        if self._recent is not None and at is not None and self._wait_seconds is not None:
            self._recent.started(queue, at.timestamp(), wait_seconds)
        if wait_seconds is not None:
            self._wait_seconds.observe((queue,), wait_seconds)
            if self._stages is not None:
                self._stage_wait.observe((queue, self._stage(stage)), wait_seconds)

    def expire(self, now: datetime) -> None:
        """The exact_quantiles window ends at `now` (the database's clock at a poll)."""
        if self._recent is not None:
            self._recent.expire(now.timestamp())

    def emit(self, families: m.Families, source: str) -> None:
        if self._recent is not None:
            self._recent.emit(families, source)
        if self._reasons is not None:
            self._failures.emit(families(m.QUEUE_FAILURE_REASONS), (source,))
            families(m.FOLDED_LABEL_VALUES).add_metric([source, "reason"],
                                                       len(self._reasons.folded))
        if self._stages is not None:
            self._stage_finished.emit(families(m.QUEUE_STAGE_FINISHED), (source,))
            self._stage_run.emit(families(m.QUEUE_STAGE_RUN_SECONDS), (source,))
            self._stage_wait.emit(families(m.QUEUE_STAGE_WAIT_SECONDS), (source,))
            families(m.FOLDED_LABEL_VALUES).add_metric([source, "stage"],
                                                       len(self._stages.folded))
        for spec, values in ((m.QUEUE_FINISHED, self._finished),
                             (m.QUEUE_RUN_SECONDS, self._run_seconds),
                             (m.QUEUE_WAIT_SECONDS, self._wait_seconds)):
            if values is not None:
                values.emit(families(spec), (source,))


def emit_gauges(families: m.Families, source: str, jobs: dict[tuple[str, str], float],
                per_queue: Iterable[tuple[m.Spec, dict[str, float]]]) -> None:
    """pipemon_queue_jobs{queue,state} and the per-queue gauges of one snapshot."""
    for (queue, state), jobs_now in sorted(jobs.items()):
        families(m.QUEUE_JOBS).add_metric([source, queue, state], jobs_now)
    for spec, values in per_queue:
        for label, number in sorted(values.items()):
            families(spec).add_metric([source, label], number)
