"""What a queue preset provides: the SQL that maps one queue library's schema to pipemon's.

A preset writes three kinds of query, each returning pipemon's vocabulary already, so the queue
source never needs to know which library it reads:

- `active_sql()`: one row per active job: (queue, state, ready_at, stuck), where state is
  `scheduled`, `waiting`, `running`, `retrying` or, for libraries that keep them, `failed` for
  permanently failed jobs still in the table. `aggregate()` groups them.
- `finished_sql(with_after)`: jobs finished since %(since)s: (id, ts, queue, outcome, run_seconds)
  and, where the preset can tell, (reason, stage) as text.
- `started_sql(with_after)`: jobs started since %(since)s: (id, ts, queue, wait_seconds) and,
  where the preset can tell, the stage.
Both incremental queries use `incremental.keyset()` for their WHERE tail and ORDER BY.
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor, literals

STUCK_AFTER = sql.SQL("now() - make_interval(secs => %(stuck)s)")


class Preset:
    #: shown on the landing page and /health
    name = "generic"
    #: finished-job counters and run-time histograms can be read
    has_finished = True
    #: start events (wait-time histograms) can be read
    has_started = True
    #: permanently failed jobs stay in the table (active_sql's `failed` state), waiting for a
    #: person: pipemon_queue_permanently_failed_jobs
    keeps_failed = False
    #: finished_sql's 6th column is why a failed job failed (failures by reason)
    has_reasons = False
    #: what the preset cannot export, said on the landing page and /health instead of inventing
    missing: str | None = None
    #: the default PostgreSQL schema of the library's tables
    default_db_schema: str | None = None

    def __init__(self, config):
        self.config = config

    def detect(self, cur: Cursor) -> str:
        """The library's schema version found in the database; PollError when unsupported."""
        return "n/a"

    def active_sql(self) -> sql.Composable:
        raise NotImplementedError

    def finished_sql(self, with_after: bool) -> sql.Composable:
        raise NotImplementedError

    def started_sql(self, with_after: bool) -> sql.Composable:
        raise NotImplementedError

    def shape(self) -> tuple:
        """What the queries depend on besides the config, as `detect()` found it; passed to
        the query builders, which are composed once per distinct shape. A library with a
        table per queue (pgmq) gives its queues."""
        return ()

    def unmapped(self, cur: Cursor) -> list[tuple[str, int]] | None:
        """(raw state, jobs) for jobs in states the preset does not know; None when that
        cannot happen."""
        return None

    def id_floor_sql(self) -> sql.Composable | None:
        """See IncrementalReader: an id bound that lets a finished query use the primary key."""
        return None

    # --- helpers for presets ---

    @property
    def db_schema(self) -> str | None:
        """The PostgreSQL schema of the library's tables: the config's `schema`, else the
        library's default."""
        return self.config.db_schema or self.default_db_schema

    def regclass(self, name: str) -> str:
        """The library's table `name` as `to_regclass()` takes it: in its schema, or on the
        search path when it has none."""
        schema = self.db_schema
        return f'"{schema}".{name}' if schema else name

    def table(self, name: str) -> sql.Composable:
        schema = self.db_schema
        return sql.Identifier(schema, name) if schema else sql.Identifier(name)

    def queue_filter(self, queue_expr: sql.Composable) -> sql.Composable:
        if not self.config.queues:
            return sql.SQL("")
        return sql.SQL(" AND {} IN ({})").format(queue_expr, literals(self.config.queues))


def aggregate(active_rows: sql.Composable) -> sql.Composable:
    """Group the preset's active rows into (queue, state, jobs, oldest waiting age, stuck)."""
    return sql.SQL(
        "SELECT queue, state, count(*),"
        " coalesce(extract(epoch FROM now() - min(ready_at) FILTER (WHERE state = 'waiting')),"
        " 0)::float8, count(*) FILTER (WHERE stuck)"
        " FROM ({rows}) AS active GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(rows=active_rows)


def unknown_states(jobs: sql.Composable, known: tuple[str, ...],
                   where_queue: sql.Composable) -> sql.Composable:
    """(raw state, jobs) for the states of `jobs.state` not in `known`: one probe per distinct
    state of an index that leads with it (a skip scan), then a count of the unknown ones only.
    `where_queue` filters on `j.queue`."""
    return sql.SQL(
        "WITH RECURSIVE present(state) AS ("
        " (SELECT state FROM {jobs} ORDER BY 1 LIMIT 1)"
        " UNION ALL SELECT (SELECT state FROM {jobs} WHERE state > present.state"
        "  ORDER BY 1 LIMIT 1) FROM present WHERE present.state IS NOT NULL)"
        " SELECT state::text, (SELECT count(*) FROM {jobs} j WHERE j.state = present.state"
        "{where_queue}) FROM present"
        " WHERE state IS NOT NULL AND state::text NOT IN ({known})"
    ).format(jobs=jobs, where_queue=where_queue,
             known=sql.SQL(", ").join(sql.Literal(s) for s in known))

