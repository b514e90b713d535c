"""graphile-worker (Node): the public `graphile_worker.jobs` view, nothing private.

graphile-worker deletes a job when it succeeds, so neither success counts nor run times exist
in SQL: this preset exports what is true (waiting, scheduled, running, retrying, stuck, and
permanently failed jobs, which stay in the table) and says what is missing. The `queue` label
is the task identifier: graphile's named queues are serialisation locks, and most jobs have
none.
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.sources.presets.base import STUCK_AFTER, Preset, aggregate

# graphile-worker treats a lock older than 4 hours as abandoned and runs the job again.
LOCK_EXPIRED = sql.SQL("now() - interval '4 hours'")


class GraphileWorkerPreset(Preset):
    name = "graphile_worker"
    default_db_schema = "graphile_worker"
    has_finished = False
    has_started = False
    keeps_failed = True
    missing = ("finished-job counters and run/wait times: graphile-worker deletes jobs that "
               "succeed; permanently failed jobs are in pipemon_queue_permanently_failed_jobs")

    def detect(self, cur: Cursor) -> str:
        schema = self.db_schema
        if not cur.rows("SELECT to_regclass(%s) IS NOT NULL", (self.regclass("jobs"),))[0][0]:
            raise PollError("schema", f"no graphile-worker schema {schema!r} in this database "
                            "(has the worker run its migrations? is `schema:` right?)")
        migration = cur.rows(sql.SQL("SELECT max(id) FROM {}").format(
            self.table("migrations")))[0][0]
        return f"migration {migration}"

    def active_sql(self) -> sql.Composable:
        return aggregate(sql.SQL(
            "SELECT task_identifier AS queue,"
            " CASE WHEN locked_at > {expired} THEN 'running'"
            "      WHEN attempts >= max_attempts THEN 'failed'"
            "      WHEN attempts > 0 THEN 'retrying'"
            "      WHEN run_at > now() THEN 'scheduled' ELSE 'waiting' END AS state,"
            " run_at AS ready_at,"
            " (locked_at > {expired} AND locked_at < {stuck_after}) AS stuck"
            " FROM {jobs} WHERE true{where_queue}"
        ).format(expired=LOCK_EXPIRED, stuck_after=STUCK_AFTER, jobs=self.table("jobs"),
                 where_queue=self.queue_filter(sql.SQL("task_identifier"))))
