"""`kind: queue`: a PostgreSQL job table mapped column by column (the generic preset).

Per poll, in one read-only transaction: the database's `now()`, one grouped query over the
active states (gauges), and two incremental reads (jobs finished since the last poll, jobs
started since the last poll) that feed counters and histograms. A slow diagnostic query looks
for raw states the mapping does not know, every `unmapped_check_interval`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from psycopg import sql

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
from pipemon.db import (
    column,
    dsn_secrets,
    literals,
    relation,
)
from pipemon.incremental import IncrementalReader, keyset
from pipemon.sources.pg import PgSource, read_dsn

log = logging.getLogger(__name__)

ACTIVE_STATES = ("scheduled", "waiting", "running", "retrying")
OUTCOMES = ("succeeded", "failed", "cancelled")
STATES = ACTIVE_STATES + OUTCOMES
MAX_RAW_STATES = 20


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

    @property
    def active_raw(self) -> list[str]:
        return [raw for raw, state in self.states.items() if state in ACTIVE_STATES]

    @property
    def terminal_raw(self) -> list[str]:
        return [raw for raw, state in self.states.items() if state in OUTCOMES]


def read_queue_columns(node: Node) -> QueueColumns | None:
    cols = node.child("columns")
    if cols is None:
        return None
    required = {k: cols.get(k) for k in ("id", "state", "created_at", "finished_at")}
    optional = {k: cols.get(k, string, None) for k in ("queue", "available_at", "started_at")}
    cols.finish()
    return QueueColumns(**required, **optional)


def read_queue_options(node: Node) -> dict:
    """Keys shared by every queue preset (the SQL mapping differs, these do not)."""
    options = {
        "dsn": read_dsn(node),
        "stuck_after": node.get("stuck_after", positive_duration, 1800.0),
        "late_commit_window": node.get("late_commit_window", duration, 120.0),
        "queues": node.get("queues", string_list, ()),
        "default_queue": node.get("default_queue", name, "default"),
        "max_queues": node.get("max_queues", positive_int, 100),
        "forget_idle_queues_after": node.get("forget_idle_queues_after", positive_duration, 3600.0),
        "unmapped_check_interval": node.get("unmapped_check_interval", duration, 300.0),
        "page_size": node.get("page_size", positive_int, 5000),
        "max_rows_per_poll": node.get("max_rows_per_poll", positive_int, 50000),
    }
    return options


def parse_config(node: Node, common: dict) -> QueueConfig:
    states = node.mapping("states", one_of(*STATES), default={s: s for s in STATES})
    return QueueConfig(
        **common,
        table=node.get("table"),
        columns=read_queue_columns(node),
        states=states,
        **read_queue_options(node),
    )


@dataclass(frozen=True)
class QueueSnapshot:
    jobs: dict[tuple[str, str], int]  # (queue, state) -> jobs
    oldest_waiting: dict[str, float]
    stuck: dict[str, int]
    unmapped: dict[str, int]


class QueueSource(PgSource):
    specs = (m.QUEUE_JOBS, m.QUEUE_OLDEST_WAITING, m.QUEUE_STUCK, m.QUEUE_FINISHED,
             m.QUEUE_RUN_SECONDS, m.QUEUE_WAIT_SECONDS, m.QUEUE_UNMAPPED)

    def __init__(self, config: QueueConfig):
        super().__init__(config)
        self.config: QueueConfig = config
        self.queue_cap = m.LabelCap(config.max_queues)
        self.raw_state_cap = m.LabelCap(MAX_RAW_STATES)
        self._lock = threading.Lock()
        self._finished = m.CounterSet()
        self._run_seconds = m.HistogramSet(m.JOB_SECONDS_BUCKETS)
        self._wait_seconds = m.HistogramSet(m.JOB_SECONDS_BUCKETS)
        self._last_active: dict[str, datetime] = {}
        self._unmapped: dict[str, int] = {}
        self._unmapped_checked_at: float | None = None
        c = config.columns
        window, page, cap = config.late_commit_window, config.page_size, config.max_rows_per_poll
        self.finished_reader = IncrementalReader(
            f"{self.name}/finished", self._finished_sql, window, page, cap)
        self.started_reader = (
            IncrementalReader(f"{self.name}/started", self._started_sql, window, page, cap)
            if c.started_at else None
        )
        self._configured_queues = [self.queue_cap(q) for q in config.queues]
        for queue in self._configured_queues:
            self._touch(queue, None)

    # --- SQL ---

    def _parts(self) -> dict[str, sql.Composable]:
        c = self.config.columns
        return {
            "rel": relation(self.config.table),
            "id": sql.Identifier(c.id),
            "queue": sql.Identifier(c.queue) if c.queue else sql.Literal(
                self.config.default_queue),
            "state": sql.Identifier(c.state),
            "created_at": sql.Identifier(c.created_at),
            "available_at": column(c.available_at),
            "started_at": column(c.started_at),
            "finished_at": sql.Identifier(c.finished_at),
        }

    def _queue_filter(self) -> sql.Composable:
        if not self.config.queues or not self.config.columns.queue:
            return sql.SQL("")
        return sql.SQL(" AND {queue} IN ({names})").format(
            queue=sql.Identifier(self.config.columns.queue), names=literals(self.config.queues))

    def _active_sql(self) -> sql.Composable:
        return sql.SQL(
            "SELECT {queue}::text, {state}::text, count(*),"
            " count(*) FILTER (WHERE {available_at} > now()),"
            " coalesce(extract(epoch FROM now() - min(greatest({created_at}, {available_at}))"
            "   FILTER (WHERE {available_at} IS NULL OR {available_at} <= now())), 0)::float8,"
            " count(*) FILTER (WHERE {started_at} < now() - make_interval(secs => %(stuck)s))"
            " FROM {rel} WHERE {state} IN ({active}){queue_filter} GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(active=literals(self.config.active_raw), queue_filter=self._queue_filter(),
                 **self._parts())

    def _finished_sql(self, with_after: bool) -> sql.Composable:
        p = self._parts()
        condition, tail = keyset(p["finished_at"], p["id"], with_after)
        return sql.SQL(
            "SELECT {id}, ({finished_at})::timestamptz, {queue}::text, {state}::text,"
            " extract(epoch FROM {finished_at} - {started_at})::float8"
            " FROM {rel} WHERE {condition} AND {state} IN ({terminal}){queue_filter}{tail}"
        ).format(condition=condition, tail=tail, terminal=literals(self.config.terminal_raw),
                 queue_filter=self._queue_filter(), **p)

    def _started_sql(self, with_after: bool) -> sql.Composable:
        p = self._parts()
        condition, tail = keyset(p["started_at"], p["id"], with_after)
        return sql.SQL(
            "SELECT {id}, ({started_at})::timestamptz, {queue}::text,"
            " extract(epoch FROM {started_at} - greatest({created_at}, {available_at}))::float8"
            " FROM {rel} WHERE {condition}{queue_filter}{tail}"
        ).format(condition=condition, tail=tail, queue_filter=self._queue_filter(), **p)

    def _unmapped_sql(self) -> sql.Composable:
        # Scans the table: kept to a slow interval (unmapped_check_interval).
        return sql.SQL(
            "SELECT coalesce({state}::text, '(null)'), count(*) FROM {rel}"
            " WHERE ({state} IS NULL OR {state} NOT IN ({mapped})){queue_filter} GROUP BY 1"
        ).format(mapped=literals(self.config.states), queue_filter=self._queue_filter(),
                 **self._parts())

    # --- polling ---

    def poll(self) -> QueueSnapshot:
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout
        unmapped_due = cfg.unmapped_check_interval > 0 and (
            self._unmapped_checked_at is None
            or time.monotonic() - self._unmapped_checked_at >= cfg.unmapped_check_interval
        )
        with self.session.transaction(deadline) as cur:
            db_now = cur.rows("SELECT now()")[0][0]
            active = cur.rows(self._active_sql(), {"stuck": cfg.stuck_after})
            finished = self.finished_reader.read(cur, db_now)
            started = self.started_reader.read(cur, db_now) if self.started_reader else []
            unmapped = cur.rows(self._unmapped_sql()) if unmapped_due else None
        with self._lock:
            return self._apply(db_now, active, finished, started, unmapped)

    def _touch(self, queue: str, at: datetime | None) -> None:
        """Remember `queue` as active at `at`, and give it zeroed counters."""
        if at is not None:
            self._last_active[queue] = max(at, self._last_active.get(queue, at))
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
        for raw_queue, raw_state, count, not_ready, oldest_ready, stuck_count in active:
            queue = self.queue_cap(raw_queue or self.config.default_queue)
            state = self.config.states[raw_state]
            self._touch(queue, db_now)
            if state == "waiting" and not_ready:
                # Ready later (run_at in the future): scheduled, whatever the raw state says.
                jobs[(queue, "scheduled")] = jobs.get((queue, "scheduled"), 0) + not_ready
                count -= not_ready
            jobs[(queue, state)] = jobs.get((queue, state), 0) + count
            if state == "waiting" and count:
                oldest[queue] = max(oldest.get(queue, 0.0), oldest_ready)
            if state == "running":
                stuck[queue] = stuck.get(queue, 0) + stuck_count
        for _id, ts, raw_queue, raw_state, run_seconds in finished:
            queue = self.queue_cap(raw_queue or self.config.default_queue)
            outcome = self.config.states[raw_state]
            self._touch(queue, ts)
            self._finished.inc((queue, outcome))
            if run_seconds is not None:
                self._run_seconds.observe((queue, outcome), run_seconds)
        for _id, ts, raw_queue, wait_seconds in started:
            queue = self.queue_cap(raw_queue or self.config.default_queue)
            self._touch(queue, ts)
            if wait_seconds is not None:
                self._wait_seconds.observe((queue,), wait_seconds)
        if unmapped is not None:
            self._unmapped_checked_at = time.monotonic()
            self._unmapped = {}
            for raw_state, count in unmapped:
                label = self.raw_state_cap(raw_state)
                self._unmapped[label] = self._unmapped.get(label, 0) + count
            if self._unmapped:
                log.warning("%s: jobs in raw states missing from `states`: %s",
                            self.name, ", ".join(sorted(self._unmapped)))
        # Queues seen recently (or configured) are exported with every state, zeros included.
        horizon = db_now - timedelta(seconds=self.config.forget_idle_queues_after)
        self._last_active = {q: t for q, t in self._last_active.items() if t >= horizon}
        for queue in {*self._configured_queues, *self._last_active}:
            for state in ACTIVE_STATES:
                jobs.setdefault((queue, state), 0)
            oldest.setdefault(queue, 0.0)
            stuck.setdefault(queue, 0)
        return QueueSnapshot(jobs, oldest, stuck, dict(self._unmapped))

    # --- exposition ---

    def collect(self, families: m.Families, snapshot: QueueSnapshot | None) -> None:
        src = (self.name,)
        if snapshot is not None:
            for (queue, state), value in sorted(snapshot.jobs.items()):
                families(m.QUEUE_JOBS).add_metric([self.name, queue, state], value)
            for queue, value in sorted(snapshot.oldest_waiting.items()):
                families(m.QUEUE_OLDEST_WAITING).add_metric([self.name, queue], value)
            for queue, value in sorted(snapshot.stuck.items()):
                families(m.QUEUE_STUCK).add_metric([self.name, queue], value)
            for raw_state, value in sorted(snapshot.unmapped.items()):
                families(m.QUEUE_UNMAPPED).add_metric([self.name, raw_state], value)
        with self._lock:
            self._finished.emit(families(m.QUEUE_FINISHED), src)
            self._run_seconds.emit(families(m.QUEUE_RUN_SECONDS), src)
            self._wait_seconds.emit(families(m.QUEUE_WAIT_SECONDS), src)
        for label, cap in (("queue", self.queue_cap), ("raw_state", self.raw_state_cap)):
            families(m.FOLDED_LABEL_VALUES).add_metric([self.name, label], len(cap.folded))
