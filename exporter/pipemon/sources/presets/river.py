"""River (Go): the `river_job` table.

Read from River's schema (its migrations 002-007, `riverdriver/riverpgxv5/migration/main/`) and
the statements its client runs (`riverdriver/riverpgxv5/internal/dbsqlc/river_job.sql`):
`JobGetAvailable` moves a job to `running` and stamps `attempted_at` with the database's
`now()`; `JobSetStateIfRunningMany` finishes it, with `finalized_at` from the worker's clock;
`JobSchedule` makes due `scheduled` and `retryable` jobs `available`. Every timestamp is
timestamptz. `finalized_at` is set in the three final states only (a CHECK constraint says so),
and River's index on (state, finalized_at) serves the finished read.

A failed attempt moves `scheduled_at` to the retry's due time, and a retry due within 5 s goes
straight to `available` with that future `scheduled_at`: an attempt's wait, and a run, are known
only when `scheduled_at` is not after `attempted_at` (a job cancelled or discarded between
attempts did not run last).
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.incremental import keyset
from pipemon.sources.presets.base import STUCK_AFTER, Preset, aggregate, unknown_states

KNOWN = ("available", "cancelled", "completed", "discarded", "pending", "retryable", "running",
         "scheduled")
ACTIVE = sql.SQL("'available', 'pending', 'retryable', 'running', 'scheduled'")
# the last attempt began at or after it was due: it ran (and waited) as this row says
RAN = sql.SQL("scheduled_at <= attempted_at")


class RiverPreset(Preset):
    name = "river"
    has_reasons = True  # the last error's message, or River's unique-conflict discard

    def __init__(self, config):
        super().__init__(config)
        self.jobs = self.table("river_job")
        self.where_queue = self.queue_filter(sql.SQL("queue"))

    def detect(self, cur: Cursor) -> str:
        if not cur.rows("SELECT to_regclass(%s) IS NOT NULL", (self.regclass("river_job"),)
                        )[0][0]:
            raise PollError("schema", "no river_job table in this database (have River's"
                            " migrations run? is `schema:` River's schema?)")
        # `pending` came with migration 004; the queries name it.
        if not cur.rows("SELECT EXISTS (SELECT FROM pg_enum WHERE enumlabel = 'pending'"
                        " AND enumtypid = to_regtype(%s))", (self.regclass("river_job_state"),)
                        )[0][0]:
            raise PollError("schema", "River's schema is older than its migration 004 (no"
                            " `pending` state): run River's migrations (`river migrate-up`)")
        if not cur.rows("SELECT to_regclass(%s) IS NOT NULL",
                        (self.regclass("river_migration"),))[0][0]:
            return "n/a (no river_migration)"  # the tables made by other migration tools
        version = cur.rows(sql.SQL("SELECT max(version) FROM {}").format(
            self.table("river_migration")))[0][0]
        return f"migration {version}"

    def active_sql(self) -> sql.Composable:
        # `pending` jobs wait for something other than a worker (River Pro's workflows and
        # sequences): `scheduled`, as jobs not yet due are.
        return aggregate(sql.SQL(
            "SELECT queue,"
            " CASE WHEN state = 'running' THEN 'running'"
            "  WHEN state = 'retryable' OR attempt > 0 THEN 'retrying'"
            "  WHEN state = 'pending' OR scheduled_at > now() THEN 'scheduled'"
            "  ELSE 'waiting' END AS state,"
            " scheduled_at AS ready_at,"
            " (state = 'running' AND attempted_at < {stuck_after}) AS stuck"
            " FROM {jobs} WHERE state IN ({active}){where_queue}"
        ).format(stuck_after=STUCK_AFTER, jobs=self.jobs, active=ACTIVE,
                 where_queue=self.where_queue))

    def unmapped(self, cur: Cursor) -> list[tuple[str, int]]:
        # An enum: an unknown state is one a newer River added. River's fetching index leads
        # with the state.
        return cur.rows(unknown_states(self.jobs, KNOWN, self.queue_filter(sql.SQL("j.queue"))))

    def finished_sql(self, with_after: bool) -> sql.Composable:
        condition, tail = keyset(sql.SQL("finalized_at"), sql.SQL("id"), with_after)
        return sql.SQL(
            "SELECT id, finalized_at, queue,"
            " CASE state WHEN 'completed' THEN 'succeeded' WHEN 'discarded' THEN 'failed'"
            "  ELSE 'cancelled' END,"
            " CASE WHEN {ran} THEN extract(epoch FROM finalized_at - attempted_at)::float8 END,"
            # River's scheduler discards a job whose unique key another job holds
            " CASE WHEN state = 'discarded' THEN coalesce("
            "  'unique key conflict: ' || (metadata ->> 'unique_key_conflict'),"
            "  errors[array_upper(errors, 1)] ->> 'error') END"
            " FROM {jobs} WHERE state IN ('cancelled', 'completed', 'discarded')"
            " AND {condition}{where_queue}{tail}"
        ).format(ran=RAN, jobs=self.jobs, condition=condition, where_queue=self.where_queue,
                 tail=tail)

    def started_sql(self, with_after: bool) -> sql.Composable:
        condition, tail = keyset(sql.SQL("attempted_at"), sql.SQL("id"), with_after)
        return sql.SQL(
            "SELECT id, attempted_at, queue,"
            " CASE WHEN {ran} THEN extract(epoch FROM attempted_at - scheduled_at)::float8 END"
            " FROM {jobs} WHERE {condition}{where_queue}{tail}"
        ).format(ran=RAN, jobs=self.jobs, condition=condition, where_queue=self.where_queue,
                 tail=tail)
