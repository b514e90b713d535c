"""Oban (Elixir, and oban-py for Python): the `oban_jobs` table.

Read from oban-py 0.7's SQL (`oban/queries/install.sql`, `fetch_jobs.sql`, `ack_job.sql`,
`rescue_jobs.sql`), which writes the same table Elixir Oban does. Oban keeps finished jobs
(`completed`, `discarded`, `cancelled`) until its pruner deletes them (a day by default), with
a timestamp per final state, each with a partial index of Oban's own.

Every timestamp is `timestamp without time zone` holding UTC. Compared naively with `now()`, an
age would be off by the session's UTC offset: the columns are compared with
`<timestamptz> AT TIME ZONE 'UTC'` (a constant, so Oban's indexes serve), and returned as
`col AT TIME ZONE 'UTC'` (a timestamptz), whatever the server's TimeZone.

A failed attempt moves `scheduled_at` to the retry's due time before the next attempt starts, so
a wait is known only when `scheduled_at` is not after `attempted_at`. Oban's lifeline puts a job
that has been executing for `rescue_after` (300 s in oban-py) back to `available` even when its
worker is alive: `stuck_after` means something only below it.
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.incremental import keyset_over
from pipemon.sources.presets.base import Preset, aggregate, unknown_states

UTC_NOW = sql.SQL("(now() AT TIME ZONE 'UTC')")
KNOWN = ("available", "scheduled", "executing", "retryable", "completed", "discarded",
         "cancelled")
# The final states, each with the column Oban stamps and the partial index on it.
FINAL = (("completed", "completed_at", "succeeded"), ("discarded", "discarded_at", "failed"),
         ("cancelled", "cancelled_at", "cancelled"))


def utc(param: str) -> sql.Composable:
    """A timestamptz parameter as Oban's naive UTC, for comparing with its columns."""
    return sql.SQL("(%({})s::timestamptz AT TIME ZONE 'UTC')").format(sql.SQL(param))


class ObanPreset(Preset):
    name = "oban"
    has_reasons = True  # the exception type of the last error

    def __init__(self, config):
        super().__init__(config)
        self.jobs = self.table("oban_jobs")
        self.where_queue = self.queue_filter(sql.SQL("queue"))

    def detect(self, cur: Cursor) -> str:
        if not cur.rows("SELECT to_regclass(%s) IS NOT NULL", (self.regclass("oban_jobs"),)
                        )[0][0]:
            raise PollError("schema", "no oban_jobs table in this database (has Oban's schema"
                            " been installed? is `schema:` its prefix?)")
        return "n/a"  # Oban records no schema version

    def active_sql(self) -> sql.Composable:
        return aggregate(sql.SQL(
            "SELECT queue,"
            " CASE WHEN state = 'executing' THEN 'running'"
            "  WHEN state = 'retryable' OR attempt > 0 THEN 'retrying'"
            "  WHEN scheduled_at > {now} THEN 'scheduled' ELSE 'waiting' END AS state,"
            " scheduled_at AT TIME ZONE 'UTC' AS ready_at,"
            " (state = 'executing' AND attempted_at <"
            "  ((now() - make_interval(secs => %(stuck)s)) AT TIME ZONE 'UTC')) AS stuck"
            " FROM {jobs} WHERE state IN ('available', 'scheduled', 'executing', 'retryable')"
            "{where_queue}"
        ).format(now=UTC_NOW, jobs=self.jobs, where_queue=self.where_queue))

    def unmapped(self, cur: Cursor) -> list[tuple[str, int]]:
        # Oban's index leads with the state. Unknown: `suspended`, which oban-py reads but never
        # writes, or newer ones.
        return cur.rows(unknown_states(self.jobs, KNOWN, self.queue_filter(sql.SQL("j.queue"))))

    def _window(self, column: str, with_after: bool) -> sql.Composable:
        """The raw column's range for one read: the index does it; keyset() then applies the
        exact bounds to the converted timestamp."""
        bound = sql.SQL("{col} > {since}").format(col=sql.Identifier(column),
                                                  since=utc("since"))
        if with_after:
            bound += sql.SQL(" AND {col} >= {after}").format(col=sql.Identifier(column),
                                                            after=utc("after_ts"))
        return bound


    def finished_sql(self, with_after: bool) -> sql.Composable:
        # The last error is a traceback; its last line starts with the exception's type.
        reason = sql.SQL(
            "split_part((regexp_match(errors -> -1 ->> 'error', '([^\\n]+)\\n*$'))[1], ':', 1)")
        parts = []
        for state, column, outcome in FINAL:
            # A job cancelled before it ran (cancel_job) keeps an older attempt's attempted_at.
            started = sql.SQL(
                "CASE WHEN meta ? 'cancel_attempted_at' THEN NULL ELSE attempted_at END"
            ) if state == "cancelled" else sql.SQL("attempted_at")
            parts.append(sql.SQL(
                "SELECT id, {col} AT TIME ZONE 'UTC' AS ts, queue, {outcome} AS outcome,"
                " extract(epoch FROM {col} - {started})::float8 AS run_seconds,"
                " {reason} AS reason FROM {jobs} WHERE state = {state} AND {window}{where_queue}"
            ).format(col=sql.Identifier(column), outcome=sql.Literal(outcome), started=started,
                     reason=reason if outcome != "succeeded" else sql.SQL("NULL::text"),
                     jobs=self.jobs, state=sql.Literal(state),
                     window=self._window(column, with_after), where_queue=self.where_queue))
        return keyset_over(sql.SQL(" UNION ALL ").join(parts), "outcome, run_seconds, reason",
                           with_after)

    def started_sql(self, with_after: bool) -> sql.Composable:
        return keyset_over(sql.SQL(
            "SELECT id, attempted_at AT TIME ZONE 'UTC' AS ts, queue,"
            " CASE WHEN scheduled_at <= attempted_at"
            "  THEN extract(epoch FROM attempted_at - scheduled_at)::float8 END AS wait_seconds"
            " FROM {jobs} WHERE {window}{where_queue}"
        ).format(jobs=self.jobs, window=self._window("attempted_at", with_after),
                 where_queue=self.where_queue), "wait_seconds", with_after)
