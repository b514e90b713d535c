"""pg-boss (Node): the `job` table of schema `pgboss`, v10 and later.

pg-boss 10 (schema versions 21-24) partitions `job` by queue and moves finished jobs to
`archive` after 12 h; pg-boss 12 (up to schema version 46) may keep one shared partition. Both
keep the columns read here on the parent table `job`, so one set of queries serves both.
A retry rewrites `started_on`, so each attempt's start is observed once, and run time is that of
the last attempt.
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.incremental import keyset
from pipemon.sources.presets.base import STUCK_AFTER, Preset, aggregate

OLDEST_SUPPORTED, NEWEST_KNOWN = 21, 46


class PgBossPreset(Preset):
    name = "pgboss"
    default_db_schema = "pgboss"

    def __init__(self, config):
        super().__init__(config)
        self.job = self.table("job")
        self.where_queue = self.queue_filter(sql.SQL("name"))

    def detect(self, cur: Cursor) -> str:
        schema = self.db_schema
        if not cur.rows("SELECT to_regclass(%s) IS NOT NULL", (self.regclass("version"),))[0][0]:
            raise PollError("schema", f"no pg-boss schema {schema!r} in this database "
                            "(has pg-boss started once? is `schema:` right?)")
        rows = cur.rows(sql.SQL("SELECT max(version) FROM {}").format(self.table("version")))
        version = rows[0][0]
        if version is None or not OLDEST_SUPPORTED <= int(version) <= NEWEST_KNOWN:
            raise PollError("schema", f"pg-boss schema version {version} is not supported: "
                            f"pipemon reads versions {OLDEST_SUPPORTED} (pg-boss 10) to "
                            f"{NEWEST_KNOWN} (pg-boss 12)")
        return str(version)

    def active_sql(self) -> sql.Composable:
        return aggregate(sql.SQL(
            "SELECT name AS queue,"
            " CASE state WHEN 'active' THEN 'running' WHEN 'retry' THEN 'retrying'"
            " ELSE CASE WHEN start_after > now() THEN 'scheduled' ELSE 'waiting' END END"
            " AS state,"
            " greatest(created_on, start_after) AS ready_at,"
            " (state = 'active' AND started_on < {stuck_after}) AS stuck"
            " FROM {job} WHERE state < 'completed'{where_queue}"
        ).format(job=self.job, stuck_after=STUCK_AFTER, where_queue=self.where_queue))

    def finished_sql(self, with_after: bool) -> sql.Composable:
        condition, tail = keyset(sql.SQL("completed_on"), sql.SQL("id"), with_after)
        return sql.SQL(
            "SELECT id, completed_on, name,"
            " CASE state WHEN 'completed' THEN 'succeeded' WHEN 'failed' THEN 'failed'"
            " ELSE 'cancelled' END,"
            " extract(epoch FROM completed_on - started_on)::float8"
            " FROM {job} WHERE {condition} AND state > 'active'{where_queue}{tail}"
        ).format(job=self.job, condition=condition, tail=tail, where_queue=self.where_queue)

    def started_sql(self, with_after: bool) -> sql.Composable:
        condition, tail = keyset(sql.SQL("started_on"), sql.SQL("id"), with_after)
        return sql.SQL(
            "SELECT id, started_on, name,"
            " extract(epoch FROM started_on - greatest(created_on, start_after))::float8"
            " FROM {job} WHERE {condition}{where_queue}{tail}"
        ).format(job=self.job, condition=condition, tail=tail, where_queue=self.where_queue)
