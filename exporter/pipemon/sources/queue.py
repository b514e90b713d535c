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
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipemon import metrics as m
from pipemon.config import (
    Node,
    Secret,
    SourceConfig,
    duration,
    name,
    one_of,
    positive_duration,
    positive_int,
    string,
    string_list,
)
from pipemon.db import dsn_secrets
from pipemon.incremental import IncrementalReader
from pipemon.sources.pg import PgSource, read_dsn
from pipemon.sources.presets import PRESETS
from pipemon.sources.presets.generic import ACTIVE_STATES, OUTCOMES

log = logging.getLogger(__name__)

STATES = ACTIVE_STATES + OUTCOMES
MAX_RAW_STATES = 20
GENERIC_ONLY = ("table", "columns", "states")


@dataclass(frozen=True)
class QueueColumns:
    id: str
    state: str
    created_at: str
    finished_at: str
    queue: str | None = None
    available_at: str | None = None
    started_at: str | None = None


@dataclass(frozen=True)
class QueueConfig(SourceConfig):
    dsn: Secret | None = None
    preset: str = "generic"
    schema: str | None = None
    table: str = ""
    columns: QueueColumns | None = None
    states: dict[str, str] = field(default_factory=dict)
    stuck_after: float = 1800.0
    late_commit_window: float = 120.0
    queues: tuple[str, ...] = ()
    default_queue: str = "default"
    max_queues: int = 100
    forget_idle_queues_after: float = 3600.0
    unmapped_check_interval: float = 300.0
    page_size: int = 5000
    max_rows_per_poll: int = 50000

    def secrets(self) -> list[str]:
        return dsn_secrets(self.dsn)


def read_queue_columns(node: Node) -> QueueColumns | None:
    cols = node.child("columns")
    if cols is None:
        return None
    required = {k: cols.get(k) for k in ("id", "state", "created_at", "finished_at")}
    optional = {k: cols.get(k, string, None) for k in ("queue", "available_at", "started_at")}
    cols.finish()
    return QueueColumns(**required, **optional)


def parse_config(node: Node, common: dict) -> QueueConfig:
    preset = node.get("preset", one_of(*PRESETS), "generic")
    if preset == "generic":
        generic = {
            "table": node.get("table"),
            "columns": read_queue_columns(node),
            "states": node.mapping("states", one_of(*STATES), default={s: s for s in STATES}),
        }
    else:
        generic = {}
        for key in GENERIC_ONLY:
            if node.has(key):
                node.get(key, lambda v: v)
                node.problem(key, f"not used with preset {preset}: the preset knows its schema")
    return QueueConfig(
        **common,
        **generic,
        preset=preset,
        schema=node.get("schema", name, None),
        dsn=read_dsn(node),
        stuck_after=node.get("stuck_after", positive_duration, 1800.0),
        late_commit_window=node.get("late_commit_window", duration, 120.0),
        queues=node.get("queues", string_list, ()),
        default_queue=node.get("default_queue", name, "default"),
        max_queues=node.get("max_queues", positive_int, 100),
        forget_idle_queues_after=node.get("forget_idle_queues_after", positive_duration, 3600.0),
        unmapped_check_interval=node.get("unmapped_check_interval", duration, 300.0),
        page_size=node.get("page_size", positive_int, 5000),
        max_rows_per_poll=node.get("max_rows_per_poll", positive_int, 50000),
    )


@dataclass(frozen=True)
class QueueSnapshot:
    jobs: dict[tuple[str, str], int]  # (queue, state) -> jobs
    oldest_waiting: dict[str, float]
    stuck: dict[str, int]
    permanently_failed: dict[str, int]
    unmapped: dict[str, int]


class QueueSource(PgSource):
    specs = (m.QUEUE_JOBS, m.QUEUE_OLDEST_WAITING, m.QUEUE_STUCK, m.QUEUE_FINISHED,
             m.QUEUE_RUN_SECONDS, m.QUEUE_WAIT_SECONDS, m.QUEUE_UNMAPPED,
             m.QUEUE_PERMANENTLY_FAILED)

    def __init__(self, config: QueueConfig):
        super().__init__(config)
        self.config: QueueConfig = config
        self.schema = PRESETS[config.preset](config)
        self.schema_version: str | None = None
        self.queue_cap = m.LabelCap(config.max_queues)
        self.raw_state_cap = m.LabelCap(MAX_RAW_STATES)
        self._lock = threading.Lock()
        self._finished = m.CounterSet()
        self._run_seconds = m.HistogramSet(m.JOB_SECONDS_BUCKETS)
        self._wait_seconds = m.HistogramSet(m.JOB_SECONDS_BUCKETS)
        self._last_active: dict[str, datetime] = {}
        self._unmapped: dict[str, int] = {}
        self._unmapped_checked_at: float | None = None
        window, page, cap = config.late_commit_window, config.page_size, config.max_rows_per_poll
        self.finished_reader = self.started_reader = None
        if self.schema.has_finished:
            self.finished_reader = IncrementalReader(
                f"{self.name}/finished", self.schema.finished_sql, window, page, cap,
                floor_sql=self.schema.id_floor_sql())
        if self.schema.has_started:
            self.started_reader = IncrementalReader(
                f"{self.name}/started", self.schema.started_sql, window, page, cap,
                floor_sql=self.schema.id_floor_sql())
        self._configured_queues = [self.queue_cap(q) for q in config.queues]
        for queue in self._configured_queues:
            self._touch(queue, None)

    # --- polling ---

    def _unmapped_due(self) -> bool:
        interval = self.config.unmapped_check_interval
        return interval > 0 and (self._unmapped_checked_at is None
                                 or time.monotonic() - self._unmapped_checked_at >= interval)

    def poll(self) -> QueueSnapshot:
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout
        check_unmapped = self._unmapped_due()
        with self.session.transaction(deadline) as cur:
            db_now = cur.rows("SELECT now()")[0][0]
            version = self.schema.detect(cur)
            active = cur.rows(self.schema.active_sql(), {"stuck": cfg.stuck_after})
            finished = self.finished_reader.read(cur, db_now) if self.finished_reader else []
            started = self.started_reader.read(cur, db_now) if self.started_reader else []
            unmapped = self.schema.unmapped(cur) if check_unmapped else None
        if version != self.schema_version:
            log.info("%s: %s schema version %s", self.name, self.schema.name, version)
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
        if self.finished_reader:
            for outcome in OUTCOMES:
                self._finished.ensure((queue, outcome))
                if self.started_reader:
                    self._run_seconds.ensure((queue, outcome))
        if self.started_reader:
            self._wait_seconds.ensure((queue,))

    def _apply(self, db_now, active, finished, started, unmapped) -> QueueSnapshot:
        jobs: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        stuck: dict[str, int] = {}
        dead: dict[str, int] = {}
        for raw_queue, state, count, oldest_waiting, stuck_count in active:
            queue = self._queue(raw_queue)
            self._touch(queue, db_now)
            if state == "failed":  # permanently failed, kept in the table by the library
                dead[queue] = dead.get(queue, 0) + count
                continue
            jobs[(queue, state)] = jobs.get((queue, state), 0) + count
            oldest[queue] = max(oldest.get(queue, 0.0), oldest_waiting)
            stuck[queue] = stuck.get(queue, 0) + stuck_count
        for _id, ts, raw_queue, outcome, run_seconds in finished:
            queue = self._queue(raw_queue)
            self._touch(queue, ts)
            self._finished.inc((queue, outcome))
            if run_seconds is not None and self.started_reader:
                self._run_seconds.observe((queue, outcome), run_seconds)
        for _id, ts, raw_queue, wait_seconds in started:
            queue = self._queue(raw_queue)
            self._touch(queue, ts)
            if wait_seconds is not None:
                self._wait_seconds.observe((queue,), wait_seconds)
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
        return QueueSnapshot(jobs, oldest, stuck, dead, dict(self._unmapped))

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
        src = (self.name,)
        if snapshot is not None:
            for (queue, state), value in sorted(snapshot.jobs.items()):
                families(m.QUEUE_JOBS).add_metric([self.name, queue, state], value)
            for spec, values in ((m.QUEUE_OLDEST_WAITING, snapshot.oldest_waiting),
                                 (m.QUEUE_STUCK, snapshot.stuck),
                                 (m.QUEUE_UNMAPPED, snapshot.unmapped)):
                for label, value in sorted(values.items()):
                    families(spec).add_metric([self.name, label], value)
            if not self.schema.has_finished:  # only libraries that keep failed jobs have these
                for queue, value in sorted(snapshot.permanently_failed.items()):
                    families(m.QUEUE_PERMANENTLY_FAILED).add_metric([self.name, queue], value)
        with self._lock:
            self._finished.emit(families(m.QUEUE_FINISHED), src)
            self._run_seconds.emit(families(m.QUEUE_RUN_SECONDS), src)
            self._wait_seconds.emit(families(m.QUEUE_WAIT_SECONDS), src)
        for label, cap in (("queue", self.queue_cap), ("raw_state", self.raw_state_cap)):
            families(m.FOLDED_LABEL_VALUES).add_metric([self.name, label], len(cap.folded))

    def describe(self) -> dict:
        facts = {**super().describe(), "preset": self.schema.name,
                 "schema_version": self.schema_version}
        if self.config.preset != "generic":
            facts["table"] = f"{self.schema.name} schema"
        if self.schema.missing:
            facts["missing"] = self.schema.missing
        return facts
