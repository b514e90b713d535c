"""`kind: queue`: a job queue in PostgreSQL, read through a preset (`sources/presets/`).

Per poll, in one read-only transaction: the database's `now()`, the preset's schema version,
one grouped query over the active jobs (gauges), and two incremental reads (jobs finished since
the last poll, jobs started since the last poll) that feed counters and histograms. For the
generic preset a slow diagnostic query looks for raw states the mapping does not know, every
`unmapped_check_interval`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipemon import metrics as m
from pipemon.db import composed_once
from pipemon.incremental import IncrementalReader
from pipemon.schema import (
    Checked,
    duration,
    mapping,
    name,
    one_of,
    positive_duration,
    positive_int,
    section,
    string,
    string_list,
    value,
)
from pipemon.sources.jobs import (
    ACTIVE_STATES,
    STATES,
    JobBuckets,
    JobCounters,
    emit_gauges,
)
from pipemon.sources.pg import IncrementalPgConfig, PgSource
from pipemon.sources.presets.base import Preset
from pipemon.sources.presets.generic import GenericPreset
from pipemon.sources.presets.graphile_worker import GraphileWorkerPreset
from pipemon.sources.presets.oban import ObanPreset
from pipemon.sources.presets.pgboss import PgBossPreset
from pipemon.sources.presets.pgmq import PgmqPreset
from pipemon.sources.presets.pgqueuer import PgQueuerPreset
from pipemon.sources.presets.procrastinate import ProcrastinatePreset
from pipemon.sources.presets.river import RiverPreset
from pipemon.sources.recent import ExactQuantiles
from pipemon.verdict import CRITICAL, WARNING, Finding

log = logging.getLogger(__name__)

# `preset:` -> how that library's tables are read. A new library is one module and one line.
PRESETS: dict[str, type[Preset]] = {
    "generic": GenericPreset,
    "procrastinate": ProcrastinatePreset,
    "pgboss": PgBossPreset,
    "graphile_worker": GraphileWorkerPreset,
    "pgqueuer": PgQueuerPreset,
    "pgmq": PgmqPreset,
    "oban": ObanPreset,
    "river": RiverPreset,
}
MAX_RAW_STATES = 20
MAX_COMPLETIONS = 5000  # per queue, the newest: enough to know its normal gap
HOUR = timedelta(hours=1)
# The keys that map a table of your own; a library preset knows its tables.
GENERIC_ONLY = ("preset", "generic", ": the preset knows its schema")


@dataclass(frozen=True, kw_only=True)
class QueueColumns(Checked):
    id: str = value("Unique id of a job.")
    state: str = value("The job's state, mapped to pipemon's by `states`.")
    created_at: str = value("When the job was enqueued.")
    finished_at: str = value("When the job reached a final state.")
    queue: str | None = value("The job's queue (none: every job is in `default_queue`).",
                              string, None)
    available_at: str | None = value(
        "When the job may run (scheduled until then; none: when created).", string, None)
    started_at: str | None = value(
        "When the job's attempt started (none: no run or wait times, no stuck jobs).",
        string, None)


@dataclass(frozen=True, kw_only=True)
class QueueConfig(IncrementalPgConfig):
    preset: str = value("The queue library whose tables are read, or `generic` for a table of"
                        " your own.", one_of(*PRESETS), "generic")
    table: str = value("`generic`: the job table, view or parenthesised subquery.",
                       string, only_when=GENERIC_ONLY)
    columns: QueueColumns = section(QueueColumns, "`generic`: the job table's columns.",
                                    required=True, only_when=GENERIC_ONLY)
    failure_reason: str | None = value(
        "`generic`: SQL expression of why a failed job failed (a column such as `error`, or"
        " e.g. `payload->>'error_code'`): `pipemon_queue_job_failures_total{reason}`,"
        " normalised; none: not read.", string, None, only_when=GENERIC_ONLY)
    max_reasons: int = value("Distinct failure reasons exported at most; later ones are"
                             " `other`.", positive_int, 20)
    stage: str | None = value(
        "`generic`: SQL expression of the job's pipeline stage (a column, or e.g."
        " `payload->>'stage'`): run and wait times and finishes per stage"
        " (`pipemon_queue_stage_*`); none: not read.", string, None, only_when=GENERIC_ONLY)
    max_stages: int = value("Distinct stages exported at most; later ones are `other`.",
                            positive_int, 20)
    states: dict[str, str] = mapping(
        "`generic`: raw state value -> pipemon state (one of"
        f" {', '.join(STATES)}); raw states not listed are not read, and counted in"
        " `pipemon_queue_unmapped_jobs`.", one_of(*STATES), {s: s for s in STATES},
        shown_default="each pipemon state to itself", only_when=GENERIC_ONLY)
    max_reads: int | None = value(
        "`pgmq`: the reads your consumer gives a message before it gives up (archives it or"
        " moves it to a dead-letter queue): an archived message read more often counts as"
        " `failed`, and one still queued after more reads is permanently failed; none: pgmq"
        " records no failure, and every archived message succeeded.", positive_int, None,
        only_when=("preset", "pgmq", ": only pgmq counts a message's reads"))
    db_schema: str | None = value(
        "PostgreSQL schema of the library's tables (default: the library's own, e.g."
        " `pgboss`; procrastinate: the search path).", name, None, key="schema")
    stuck_after: float = value("A job running for longer is stuck (`pipemon_queue_stuck_jobs`).",
                               positive_duration, 1800.0)
    buckets: JobBuckets | None = section(
        JobBuckets, "Histogram bounds of run and wait times (default: a layout for media"
        " work).")
    exact_quantiles: ExactQuantiles | None = section(
        ExactQuantiles, "Exact run- and wait-time quantiles per queue over a recent window"
        " (default: none; docs/exporter.md).")
    queues: tuple[str, ...] = value("Only these queues; each is exported even while empty.",
                                    string_list, (), shown_default="all")
    default_queue: str = value("The queue name of jobs without one.", name, "default")
    max_queues: int = value("Distinct queue names exported at most; later ones are `other`.",
                            positive_int, 100)
    forget_idle_queues_after: float = value(
        "A queue without jobs for this long leaves the gauges.", positive_duration, 3600.0)
    unmapped_check_interval: float = value(
        "`generic`: how often to look for raw states missing from `states` (0s: never).",
        duration, 300.0)
    oldest_waiting_warning: float = value(
        "The verdict on /health warns when a queue's oldest waiting job has waited longer (as"
        " PipemonQueueOldestJobTooOld).", positive_duration, 600.0)
    oldest_waiting_critical: float = value("... and is critical past this.", positive_duration,
                                           1800.0)
    stall_gaps: int = value(
        "The verdict calls a queue stalled, as the rules do, when jobs wait and none has"
        " completed for this many of its normal gaps between completions (their mean over the"
        " hour up to the last one) ...", positive_int, 12)
    stall_min: float = value("... and for at least this long.", positive_duration, 60.0)


@dataclass(frozen=True)
class QueueSnapshot:
    jobs: dict[tuple[str, str], int]  # (queue, state) -> jobs
    oldest_waiting: dict[str, float]
    stuck: dict[str, int]
    permanently_failed: dict[str, int]
    unmapped: dict[str, int]
    stalled: dict[str, tuple[float, float]] = field(default_factory=dict)  # seconds, gap


class QueueSource(PgSource):
    config_type = QueueConfig
    specs = (m.QUEUE_JOBS, m.QUEUE_OLDEST_WAITING, m.QUEUE_STUCK, m.QUEUE_FINISHED,
             m.QUEUE_FAILURE_REASONS, m.QUEUE_STAGE_FINISHED, m.QUEUE_STAGE_RUN_SECONDS,
             m.QUEUE_STAGE_WAIT_SECONDS,
             m.QUEUE_RUN_SECONDS, m.QUEUE_WAIT_SECONDS, m.QUEUE_UNMAPPED,
             m.QUEUE_PERMANENTLY_FAILED, *m.QUEUE_WINDOW_SPECS)

    def __init__(self, config: QueueConfig):
        super().__init__(config)
        self.config: QueueConfig = config
        self.preset = PRESETS[config.preset](config)
        self._active_sql = composed_once(self.preset.active_sql)
        self.schema_version: str | None = None  # the library's, as the preset found it
        self.queue_cap = m.LabelCap(config.max_queues)
        self.raw_state_cap = m.LabelCap(MAX_RAW_STATES)
        self._lock = threading.Lock()
        self._jobs = JobCounters(
            self.preset.has_finished, self.preset.has_started,
            m.LabelCap(config.max_reasons)
            if config.failure_reason or self.preset.has_reasons else None,
            m.LabelCap(config.max_stages) if config.stage else None, config.buckets,
            config.exact_quantiles)
        self._last_active: dict[str, datetime] = {}
        self._unmapped: dict[str, int] = {}
        self._unmapped_checked_at: float | None = None
        self._completions: dict[str, deque[datetime]] = {}  # queue -> finish times, db clock
        window, page, cap = config.late_commit_window, config.page_size, config.max_rows_per_poll
        self.finished_reader = self.started_reader = None
        if self.preset.has_finished:
            self.finished_reader = IncrementalReader(
                f"{self.name}/finished", self.preset.finished_sql, window, page, cap,
                floor_sql=self.preset.id_floor_sql(), shape=self.preset.shape)
        if self.preset.has_started:
            self.started_reader = IncrementalReader(
                f"{self.name}/started", self.preset.started_sql, window, page, cap,
                floor_sql=self.preset.id_floor_sql(), shape=self.preset.shape)
        self._configured_queues = [self.queue_cap(q) for q in config.queues]
        for queue in self._configured_queues:
            self._touch(queue, None)

    # --- polling ---

    def _unmapped_due(self) -> bool:
        interval = self.config.unmapped_check_interval
        return interval > 0 and (self._unmapped_checked_at is None
                                 or time.monotonic() - self._unmapped_checked_at >= interval)

    def poll(self, deadline: float) -> QueueSnapshot:
        cfg = self.config
        check_unmapped = self._unmapped_due()
        with self.session.transaction(deadline) as cur:
            db_now = cur.rows("SELECT now()")[0][0]
            version = self.preset.detect(cur)
            active = cur.rows(self._active_sql(*self.preset.shape()), {"stuck": cfg.stuck_after})
            finished = self.finished_reader.read(cur, db_now) if self.finished_reader else []
            started = self.started_reader.read(cur, db_now) if self.started_reader else []
            unmapped = self.preset.unmapped(cur) if check_unmapped else None
        if version != self.schema_version:
            log.info("%s: %s schema version %s", self.name, self.preset.name, version)
            self.schema_version = version
        with self._lock:
            snapshot = self._apply(db_now, active, finished, started, unmapped)
            for reader in (self.finished_reader, self.started_reader):
                if reader is not None:
                    reader.commit()  # counted: only now may the readers move on
            return snapshot

    def _queue(self, raw: str | None) -> str:
        return self.queue_cap(raw or self.config.default_queue)

    def _touch(self, queue: str, at: datetime | None) -> None:
        """Remember `queue` as active at `at`, and give it zeroed counters."""
        if at is not None:
            self._last_active[queue] = max(at, self._last_active.get(queue, at))
        self._jobs.ensure(queue)

    def _apply(self, db_now, active, finished, started, unmapped) -> QueueSnapshot:
        jobs: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        stuck: dict[str, int] = {}
        dead: dict[str, int] = {}
        self._jobs.expire(db_now)
        for raw_queue, state, count, oldest_waiting, stuck_count in active:
            queue = self._queue(raw_queue)
            self._touch(queue, db_now)
            if state == "failed":  # permanently failed, kept in the table by the library
                dead[queue] = dead.get(queue, 0) + count
                continue
            jobs[(queue, state)] = jobs.get((queue, state), 0) + count
            oldest[queue] = max(oldest.get(queue, 0.0), oldest_waiting)
            stuck[queue] = stuck.get(queue, 0) + stuck_count
        for _id, ts, raw_queue, outcome, run_seconds, *reason_stage in finished:
            queue = self._queue(raw_queue)
            self._touch(queue, ts)
            self._jobs.finished(queue, outcome, run_seconds, *reason_stage, at=ts)
            if outcome in ("succeeded", "failed"):
                self._completions.setdefault(queue, deque(maxlen=MAX_COMPLETIONS)).append(ts)
        for _id, ts, raw_queue, wait_seconds, *stage in started:
            queue = self._queue(raw_queue)
            self._touch(queue, ts)
            self._jobs.started(queue, wait_seconds, *stage, at=ts)
        if unmapped is not None:
            self._record_unmapped(unmapped)
        # Queues seen recently (or configured) are exported with every state, zeros included.
        horizon = db_now - timedelta(seconds=self.config.forget_idle_queues_after)
        self._last_active = {q: t for q, t in self._last_active.items() if t >= horizon}
        for queue in {*self._configured_queues, *self._last_active}:
            for state in ACTIVE_STATES:
                jobs.setdefault((queue, state), 0)
            oldest.setdefault(queue, 0.0)
            stuck.setdefault(queue, 0)
            dead.setdefault(queue, 0)
        return QueueSnapshot(jobs, oldest, stuck, dead, dict(self._unmapped),
                             self._stalled(jobs, db_now))

    def _stalled(self, jobs, db_now: datetime) -> dict[str, tuple[float, float]]:
        """Queues where jobs wait and none has completed for stall_gaps normal gaps (at least
        stall_min): (seconds since the last completion, the normal gap)."""
        stalled = {}
        for queue, times in self._completions.items():
            if not jobs.get((queue, "waiting")) or len(times) < 2:
                continue
            last = max(times)
            hour = [t for t in times if t >= last - HOUR]
            if len(hour) < 2:
                continue
            gap = (last - min(hour)).total_seconds() / (len(hour) - 1)
            since = (db_now - last).total_seconds()
            if since > max(self.config.stall_gaps * gap, self.config.stall_min):
                stalled[queue] = (since, gap)
        return stalled

    def findings(self, snapshot: QueueSnapshot) -> list[Finding]:
        cfg, found = self.config, []
        for queue, (since, gap) in sorted(snapshot.stalled.items()):
            waiting = snapshot.jobs.get((queue, "waiting"), 0)
            found.append(Finding(CRITICAL, f"queue {queue} stalled: no job completed for"
                                           f" {since:.0f}s while {waiting} wait (normal gap"
                                           f" {gap:.1f}s)"))
        for queue, age in sorted(snapshot.oldest_waiting.items()):
            for status, limit in ((CRITICAL, cfg.oldest_waiting_critical),
                                  (WARNING, cfg.oldest_waiting_warning)):
                if age > limit and queue not in snapshot.stalled:
                    found.append(Finding(status, f"queue {queue}: the oldest waiting job has"
                                                 f" waited {age:.0f}s ({status} above"
                                                 f" {limit:.0f}s)"))
                    break
        found += [Finding(WARNING, f"queue {queue}: {count} jobs running longer than"
                                   " stuck_after")
                  for queue, count in sorted(snapshot.stuck.items()) if count]
        return found

    def _record_unmapped(self, rows) -> None:
        self._unmapped_checked_at = time.monotonic()
        self._unmapped = {}
        for raw_state, count in rows:
            label = self.raw_state_cap(raw_state)
            self._unmapped[label] = self._unmapped.get(label, 0) + count
        if self._unmapped:
            log.warning("%s: jobs in raw states missing from `states`: %s",
                        self.name, ", ".join(sorted(self._unmapped)))

    # --- exposition ---

    def collect(self, families: m.Families, snapshot: QueueSnapshot | None) -> None:
        if snapshot is not None:
            emit_gauges(families, self.name, snapshot.jobs, (
                (m.QUEUE_OLDEST_WAITING, snapshot.oldest_waiting), (m.QUEUE_STUCK, snapshot.stuck),
                (m.QUEUE_UNMAPPED, snapshot.unmapped)))
            if self.preset.keeps_failed:  # only libraries that keep failed jobs have these
                for queue, value in sorted(snapshot.permanently_failed.items()):
                    families(m.QUEUE_PERMANENTLY_FAILED).add_metric([self.name, queue], value)
        with self._lock:
            self._jobs.emit(families, self.name)
        for label, cap in (("queue", self.queue_cap), ("raw_state", self.raw_state_cap)):
            families(m.FOLDED_LABEL_VALUES).add_metric([self.name, label], len(cap.folded))

    def describe(self) -> dict:
        facts = {**super().describe(), "preset": self.preset.name,
                 "schema_version": self.schema_version}
        if self.config.preset != "generic":
            facts["table"] = f"{self.preset.name} schema"
        if self.preset.missing:
            facts["missing"] = self.preset.missing
        return facts
