"""pgmq (Supabase Queues): one table per queue, `pgmq.q_<name>`, and its archive `pgmq.a_<name>`.

Read from pgmq's SQL (`pgmq.sql` 1.13.0, shipped in the `pgmq` package on PyPI): `send` inserts
with `vt` (visible from) and `read_ct` 0; `read` sets `last_read_at`, moves `vt` ahead by the
visibility timeout and adds 1 to `read_ct`; `archive` moves the row to `a_<name>` with
`archived_at`; `delete`, `pop` and `purge` leave nothing. pgmq has no state column, so:

- scheduled: not yet visible, never read (sent with a delay);
- running: read, its visibility timeout not expired (the lease of a consumer);
- waiting: visible, never read; retrying: visible again after a read (the lease expired
  without a delete or archive: the consumer failed or died);
- failed: read more than `max_reads` times and still there (only with `max_reads:`: pgmq
  itself redelivers for ever);
- finished: archived. pgmq records no outcome: succeeded, or failed when read more than
  `max_reads` times. Deleted and popped messages cannot be counted: nothing is left of them.

Run time is from the last read to the archive; wait time from the send to the first read (for a
message read more than once, the earlier reads are overwritten: no wait time). `last_read_at`
exists from pgmq 1.8.1: before it, no run or wait times and no stuck messages.

The queues are the rows of `pgmq.meta`, read at every poll: the queries are composed for the
queues found (`shape()`), and a new queue is read from the poll after it is created.
"""

from __future__ import annotations

from psycopg import sql

from pipemon.db import Cursor
from pipemon.errors import PollError
from pipemon.incremental import keyset_over
from pipemon.sources.presets.base import STUCK_AFTER, Preset, aggregate

NO_ROWS = sql.SQL("SELECT NULL::text, NULL::timestamptz, NULL::text, NULL::float8 WHERE false")


class PgmqPreset(Preset):
    name = "pgmq"
    default_db_schema = "pgmq"
    keeps_failed = True

    def __init__(self, config):
        super().__init__(config)
        self._queues: tuple[str, ...] = ()
        self._last_read = True  # pgmq 1.8.1+

    @property
    def missing(self) -> str:
        gone = "messages deleted or popped (pgmq keeps nothing of them)"
        if self._last_read:
            return gone
        return f"{gone}; run and wait times and stuck messages (pgmq before 1.8.1)"

    def shape(self) -> tuple:
        return (self._last_read, *self._queues)

    def detect(self, cur: Cursor) -> str:
        schema = self.db_schema
        if not cur.rows("SELECT to_regclass(%s) IS NOT NULL", (self.regclass("meta"),))[0][0]:
            raise PollError("schema", f"no pgmq schema {schema!r} in this database (is pgmq"
                            " installed? is `schema:` right?)")
        # A queue's table is its name in lower case (pgmq.format_table_name); partitioned
        # queues (pg_partman) are read the same way, through their parent tables.
        rows = cur.rows(sql.SQL(
            "SELECT m.queue_name::text,"
            " EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = t.oid"
            "  AND attname = 'last_read_at' AND NOT attisdropped)"
            " FROM {meta} m, LATERAL (SELECT to_regclass(format('%%I.%%I', %(schema)s::text,"
            "  'q_' || lower(m.queue_name))) AS oid) t"
            " WHERE t.oid IS NOT NULL ORDER BY 1"
        ).format(meta=self.table("meta")), {"schema": schema})
        wanted = set(self.config.queues)
        self._queues = tuple(name for name, _ in rows if not wanted or name in wanted)
        self._last_read = all(last_read for _, last_read in rows)
        return "1.8.1+" if self._last_read else "before 1.8.1 (no last_read_at)"

    def _parts(self, queues: tuple[str, ...], part) -> sql.Composable:
        return sql.SQL(" UNION ALL ").join(part(name) for name in queues)

    def _q(self, name: str) -> sql.Composable:
        return self.table(f"q_{name.lower()}")

    def _a(self, name: str) -> sql.Composable:
        return self.table(f"a_{name.lower()}")

    def _failed(self) -> sql.Composable:
        limit = self.config.max_reads
        return sql.SQL("false") if limit is None else sql.SQL("read_ct > {}").format(limit)

    def active_sql(self, last_read: bool = True, *queues: str) -> sql.Composable:
        if not queues:
            return aggregate(sql.SQL("SELECT NULL::text AS queue, NULL::text AS state,"
                                     " NULL::timestamptz AS ready_at, false AS stuck WHERE false"))
        stuck = sql.SQL("(vt > now() AND read_ct > 0 AND last_read_at < {})").format(
            STUCK_AFTER) if last_read else sql.SQL("false")

        def part(name: str) -> sql.Composable:
            return sql.SQL(
                "SELECT {label}::text AS queue,"
                " CASE WHEN {failed} THEN 'failed'"
                "  WHEN vt > now() THEN CASE WHEN read_ct = 0 THEN 'scheduled' ELSE 'running' END"
                "  WHEN read_ct = 0 THEN 'waiting' ELSE 'retrying' END AS state,"
                " vt AS ready_at, {stuck} AS stuck FROM {q}"
            ).format(label=sql.Literal(name), failed=self._failed(), stuck=stuck,
                     q=self._q(name))

        return aggregate(self._parts(queues, part))

    def finished_sql(self, with_after: bool, last_read: bool = True, *queues: str
                     ) -> sql.Composable:
        if not queues:
            return NO_ROWS
        outcome = sql.SQL("'succeeded'") if self.config.max_reads is None else sql.SQL(
            "CASE WHEN read_ct > {} THEN 'failed' ELSE 'succeeded' END").format(
                self.config.max_reads)
        # archived_at is the archiving transaction's start, last_read_at the clock at the read:
        # read and archived in one transaction, the difference is negative.
        run = sql.SQL("greatest(extract(epoch FROM archived_at - last_read_at), 0)::float8"
                      ) if last_read else sql.SQL("NULL::float8")

        def part(name: str) -> sql.Composable:
            return sql.SQL(
                "SELECT {prefix} || msg_id AS id, archived_at AS ts, {label}::text AS queue,"
                " {outcome} AS outcome, {run} AS run_seconds FROM {a}"
                " WHERE archived_at > %(since)s"
            ).format(prefix=sql.Literal(f"{name}:"), label=sql.Literal(name), outcome=outcome,
                     run=run, a=self._a(name))

        return keyset_over(self._parts(queues, part), "outcome, run_seconds", with_after)

    def started_sql(self, with_after: bool, last_read: bool = True, *queues: str
                    ) -> sql.Composable:
        if not queues or not last_read:
            return NO_ROWS
        # A message read once waited from its send to that read; a later read overwrote the
        # first: its wait is not known. `vt >= last_read_at` after a read: the vt index bounds
        # the live part, the archived_at index the archived part.
        columns = sql.SQL(
            "SELECT {prefix} || msg_id AS id, last_read_at AS ts, {label}::text AS queue,"
            " CASE WHEN read_ct = 1 THEN"
            "  greatest(extract(epoch FROM last_read_at - enqueued_at), 0)::float8 END"
            " AS wait_seconds FROM ")

        def part(name: str) -> sql.Composable:
            fill = {"prefix": sql.Literal(f"{name}:"), "label": sql.Literal(name)}
            return sql.SQL(
                "{live}{q} WHERE vt > %(since)s AND last_read_at > %(since)s UNION ALL"
                " {archived}{a} WHERE archived_at > %(since)s AND last_read_at > %(since)s"
            ).format(live=columns.format(**fill), q=self._q(name),
                     archived=columns.format(**fill), a=self._a(name))

        return keyset_over(self._parts(queues, part), "wait_seconds", with_after)

