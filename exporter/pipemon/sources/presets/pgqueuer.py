"""pgqueuer (Python): live jobs in `pgqueuer`, every transition a row of `pgqueuer_log`.

pgqueuer deletes a job when it finishes (unless its entrypoint holds failures), so finished
jobs, run and wait times come from the log, by its `created` index; active jobs from the job
table, which holds only queued, picked and held-failed rows. There is no queue column: the
entrypoint is the `queue` label. Read from pgqueuer 1.6.0's schema declaration
(`pgqueuer/domain/schema/queue.py`, `queue_log.py`) and its queries (`adapters/persistence/qb.py`);
the log exists since 0.19 and `attempts` since 1.0, the oldest release this preset reads.

A retried job is queued again with `attempts + 1`: `retrying` until picked. Run time is from the
job's latest `picked` row; wait time from the `queued` row before the pick, or from
`execute_after` when a delay made it ready later.
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.incremental import keyset
from pipemon.sources.presets.base import STUCK_AFTER, Preset, aggregate

# pgqueuer beats every 15 s and re-picks a job whose heartbeat is 30 s old; twice that before
# calling its worker dead.
DEAD_WORKER_AFTER = sql.SQL("now() - interval '60 seconds'")


class PgQueuerPreset(Preset):
    name = "pgqueuer"
    has_reasons = True  # the exception type pgqueuer logs with each failure
    keeps_failed = True

    def __init__(self, config):
        super().__init__(config)
        self.jobs = self.table("pgqueuer")
        self.log = self.table("pgqueuer_log")

    def detect(self, cur: Cursor) -> str:
        jobs, log, persistence, attempts = cur.rows(
            "SELECT to_regclass(%(jobs)s) IS NOT NULL, to_regclass(%(log)s) IS NOT NULL,"
            " (SELECT relpersistence FROM pg_class WHERE oid = to_regclass(%(log)s)),"
            " EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%(jobs)s)"
            "  AND attname = 'attempts' AND NOT attisdropped)",
            {"jobs": self.regclass("pgqueuer"), "log": self.regclass("pgqueuer_log")})[0]
        if not jobs:
            raise PollError("schema", "no pgqueuer table in this database (has `pgq install`"
                            " run? is `schema:` right?)")
        if not log or not attempts:
            raise PollError("schema", "pgqueuer's schema is older than 1.0 (no pgqueuer_log or"
                            " no attempts column): run `pgq upgrade`")
        # An unlogged log (upgrades from 0.19-1.3) is emptied by a crash and unreadable on a
        # standby: say so where the version is shown.
        return "1.0+ (unlogged log)" if persistence == "u" else "1.0+"

    def active_sql(self) -> sql.Composable:
        return aggregate(sql.SQL(
            "SELECT entrypoint AS queue,"
            " CASE status WHEN 'picked' THEN 'running' WHEN 'failed' THEN 'failed'"
            "  ELSE CASE WHEN attempts > 0 THEN 'retrying'"
            "   WHEN execute_after > now() THEN 'scheduled' ELSE 'waiting' END END AS state,"
            " execute_after AS ready_at,"
            " (status = 'picked' AND (updated < {stuck_after} OR heartbeat < {dead}))"
            " AS stuck"
            " FROM {jobs} WHERE status IN ('queued', 'picked', 'failed'){where_queue}"
        ).format(stuck_after=STUCK_AFTER, dead=DEAD_WORKER_AFTER, jobs=self.jobs,
                 where_queue=self.queue_filter(sql.SQL("entrypoint"))))

    def unmapped(self, cur: Cursor) -> list[tuple[str, int]]:
        # The job table is small (live jobs only): a status a newer pgqueuer leaves there.
        return cur.rows(sql.SQL(
            "SELECT status::text, count(*) FROM {jobs}"
            " WHERE status::text NOT IN ('queued', 'picked', 'failed'){where_queue} GROUP BY 1"
        ).format(jobs=self.jobs, where_queue=self.queue_filter(sql.SQL("entrypoint"))))

    def finished_sql(self, with_after: bool) -> sql.Composable:
        condition, tail = keyset(sql.SQL("l.created"), sql.SQL("l.id"), with_after)
        return sql.SQL(
            "SELECT l.id, l.created, l.entrypoint,"
            " CASE l.status WHEN 'successful' THEN 'succeeded'"
            "  WHEN 'exception' THEN 'failed' WHEN 'failed' THEN 'failed' ELSE 'cancelled' END,"
            " extract(epoch FROM l.created - (SELECT max(p.created) FROM {log} p"
            "  WHERE p.job_id = l.job_id AND p.status = 'picked' AND p.created <= l.created)"
            " )::float8,"
            " l.traceback->>'exception_type'"
            " FROM {log} l WHERE {condition}"
            " AND l.status IN ('successful', 'exception', 'failed', 'canceled', 'deleted')"
            "{where_queue}{tail}"
        ).format(log=self.log, condition=condition, tail=tail,
                 where_queue=self.queue_filter(sql.SQL("l.entrypoint")))

    def started_sql(self, with_after: bool) -> sql.Composable:
        condition, tail = keyset(sql.SQL("l.created"), sql.SQL("l.id"), with_after)
        # The log row before the pick: `queued` (enqueue, retry, requeue) starts the wait; a
        # re-pick of a job whose worker died has no known ready time (NULL: not observed).
        return sql.SQL(
            "SELECT l.id, l.created, l.entrypoint,"
            " CASE WHEN prev.status = 'queued' THEN extract(epoch FROM l.created - greatest("
            "  prev.created, (SELECT j.execute_after FROM {jobs} j WHERE j.id = l.job_id"
            "  AND j.execute_after <= l.created)))::float8 END"
            " FROM {log} l LEFT JOIN LATERAL (SELECT p.status, p.created FROM {log} p"
            "  WHERE p.job_id = l.job_id AND p.created <= l.created AND p.id <> l.id"
            "  ORDER BY p.created DESC, p.id DESC LIMIT 1) prev ON true"
            " WHERE {condition} AND l.status = 'picked'{where_queue}{tail}"
        ).format(jobs=self.jobs, log=self.log, condition=condition, tail=tail,
                 where_queue=self.queue_filter(sql.SQL("l.entrypoint")))
