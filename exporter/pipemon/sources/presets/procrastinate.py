"""procrastinate (Python): `procrastinate_jobs`, with times from `procrastinate_events`.

Jobs have no timestamps of their own: enqueue, start and finish times are events. Finished and
started jobs are read from the events table by event time, bounded below by event id (see
IncrementalReader._id_floor), so the primary key does the work and no index has to be added.
Stuck: running longer than `stuck_after`, or held by a worker whose heartbeat stopped (v3+).
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.incremental import keyset
from pipemon.sources.presets.base import STUCK_AFTER, Preset, aggregate

# procrastinate's own stalled-worker timeout is 30 s; twice that before calling a worker dead
DEAD_WORKER_AFTER = sql.SQL("now() - interval '60 seconds'")
READY_EVENTS = sql.SQL("'deferred', 'deferred_for_retry', 'retried', 'scheduled'")


class ProcrastinatePreset(Preset):
    name = "procrastinate"

    def __init__(self, config):
        super().__init__(config)
        self.heartbeats = False
        self.jobs = self.table("procrastinate_jobs")
        self.events = self.table("procrastinate_events")
        self.workers = self.table("procrastinate_workers")

    def detect(self, cur: Cursor) -> str:
        jobs, workers = cur.rows(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            (self.regclass("procrastinate_jobs"), self.regclass("procrastinate_workers")))[0]
        if not jobs:
            raise PollError("schema", "procrastinate_jobs not found: is procrastinate's schema "
                            "applied in this database (and `schema:` right)?")
        self.heartbeats = workers
        return "v3+ (worker heartbeats)" if workers else "v2 (no worker heartbeats)"

    def _ready_at(self, job_id: sql.Composable, before: sql.Composable) -> sql.Composable:
        """When the job last became ready to run: its latest defer/retry/schedule event."""
        return sql.SQL(
            "(SELECT max(d.at) FROM {events} d WHERE d.job_id = {job_id}"
            " AND d.type IN ({ready}) AND d.at <= {before})"
        ).format(events=self.events, job_id=job_id, ready=READY_EVENTS, before=before)

    def active_sql(self) -> sql.Composable:
        dead_worker = sql.SQL("false")
        if self.heartbeats:
            dead_worker = sql.SQL(
                "(j.worker_id IS NULL OR NOT EXISTS (SELECT 1 FROM {workers} w"
                " WHERE w.id = j.worker_id AND w.last_heartbeat > {dead}))"
            ).format(workers=self.workers, dead=DEAD_WORKER_AFTER)
        started = sql.SQL("(SELECT max(s.at) FROM {events} s WHERE s.job_id = j.id"
                          " AND s.type = 'started')").format(events=self.events)
        return aggregate(sql.SQL(
            "SELECT queue, state,"
            " CASE WHEN state = 'waiting' THEN coalesce(scheduled_at, {ready}) END AS ready_at,"
            " CASE WHEN state = 'running' THEN ({started} < {stuck_after} OR {dead_worker})"
            " END AS stuck"
            " FROM (SELECT j.id, j.worker_id, j.scheduled_at, j.queue_name::text AS queue,"
            "   CASE WHEN j.status = 'doing' THEN 'running'"
            "        WHEN j.attempts > 0 THEN 'retrying'"
            "        WHEN j.scheduled_at > now() THEN 'scheduled' ELSE 'waiting' END AS state"
            "   FROM {jobs} j WHERE j.status IN ('todo', 'doing'){where_queue}) AS j"
        ).format(ready=self._ready_at(sql.SQL("j.id"), sql.SQL("now()")), started=started,
                 stuck_after=STUCK_AFTER, dead_worker=dead_worker, jobs=self.jobs,
                 where_queue=self.queue_filter(sql.SQL("j.queue_name"))))

    def _events(self, types: str, with_after: bool) -> tuple[sql.Composable, sql.Composable]:
        condition, tail = keyset(sql.SQL("e.at"), sql.SQL("e.id"), with_after)
        where = sql.SQL(
            "FROM {events} e JOIN {jobs} j ON j.id = e.job_id"
            " WHERE e.id > %(id_floor)s AND {condition} AND e.type IN ({types}){where_queue}"
        ).format(events=self.events, jobs=self.jobs, condition=condition, types=sql.SQL(types),
                 where_queue=self.queue_filter(sql.SQL("j.queue_name")))
        return where, tail

    def finished_sql(self, with_after: bool) -> sql.Composable:
        where, tail = self._events("'succeeded', 'failed', 'cancelled', 'aborted'", with_after)
        return sql.SQL(
            "SELECT e.id, e.at, j.queue_name::text,"
            " CASE e.type WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'"
            " ELSE 'cancelled' END,"
            " extract(epoch FROM e.at - (SELECT max(s.at) FROM {events} s"
            "  WHERE s.job_id = e.job_id AND s.type = 'started' AND s.at <= e.at))::float8"
            " {where}{tail}"
        ).format(events=self.events, where=where, tail=tail)

    def started_sql(self, with_after: bool) -> sql.Composable:
        where, tail = self._events("'started'", with_after)
        return sql.SQL(
            "SELECT e.id, e.at, j.queue_name::text,"
            " extract(epoch FROM e.at - {ready})::float8 {where}{tail}"
        ).format(ready=self._ready_at(sql.SQL("e.job_id"), sql.SQL("e.at")), where=where,
                 tail=tail)

    def id_floor_sql(self) -> sql.Composable:
        return sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(self.events)
