"""The generic preset: a job table mapped column by column (`table`, `columns`, `states`)."""

from __future__ import annotations

import logging

from psycopg import sql

from pipemon.db import Cursor, column, literals, relation
from pipemon.incremental import keyset
from pipemon.sources.jobs import ACTIVE_STATES, OUTCOMES
from pipemon.sources.presets.base import STUCK_AFTER, Preset

RAW = sql.Identifier("raw")  # the raw state column of active_sql's grouped rows

log = logging.getLogger(__name__)


class GenericPreset(Preset):
    name = "generic"

    def __init__(self, config):
        super().__init__(config)
        c = config.columns
        self.has_started = bool(c.started_at)
        self.parts = {
            "rel": relation(config.table),
            "id": sql.Identifier(c.id),
            "queue": sql.Identifier(c.queue) if c.queue else sql.Literal(config.default_queue),
            "state": sql.Identifier(c.state),
            "created_at": sql.Identifier(c.created_at),
            "available_at": column(c.available_at),
            "started_at": column(c.started_at),
            "finished_at": sql.Identifier(c.finished_at),
        }
        self.where_queue = (self.queue_filter(sql.Identifier(c.queue)) if c.queue
                            else sql.SQL(""))
        self._warned_full_scan = False

    def raw(self, *states: str) -> sql.Composable:
        """The raw states mapped to any of `states`, as an IN list (NULL when none are)."""
        raws = [raw for raw, state in self.config.states.items() if state in states]
        return literals(raws) if raws else sql.SQL("NULL")

    def _to_pipemon(self, states: tuple[str, ...]) -> sql.Composable:
        """CASE mapping the state column to pipemon's states."""
        return self._map_raw(states, self.parts["state"])

    def _map_raw(self, states: tuple[str, ...], raw: sql.Composable = RAW) -> sql.Composable:
        """CASE mapping raw states to pipemon's; untyped literals so enum columns work."""
        whens = [sql.SQL("WHEN {raw} IN ({values}) THEN {name}").format(
            raw=raw, values=self.raw(s), name=sql.Literal(s)) for s in states]
        return sql.SQL("CASE {} END").format(sql.SQL(" ").join(whens))

    def active_sql(self) -> sql.Composable:
        # Grouped by the raw columns first: the planner knows how many (queue, state) pairs
        # there are; grouped by the mapped CASE it guessed thousands of groups and sorted them
        # all (bench/README.md). The mapping then runs on a few rows. The raw queue column is
        # cast to text after grouping, so the groups come in the order of the index
        # docs/exporter.md recommends ((queue, state) INCLUDE the timestamps WHERE state IN
        # the active raws, `indexes()`): an index-only scan aggregated as it is read, no table
        # and no hash, 2.3 ms -> 1.1 ms at 10,000 active jobs
        # (bench/results/active-plan-2026-12-01.md). Without that index the same query reads
        # the rows through (state, queue), as before. now() and the stuck threshold are scalar
        # subqueries: computed once, not for every row.
        return sql.SQL(
            "WITH grouped AS (SELECT {queue} AS queue, {state} AS raw, count(*) AS jobs,"
            " count(*) FILTER (WHERE {available_at} > (SELECT now())) AS later,"
            " min(greatest({created_at}, {available_at}))"
            " FILTER (WHERE {available_at} > (SELECT now()) IS NOT TRUE) AS ready_at,"
            " count(*) FILTER (WHERE {started_at} < (SELECT {stuck_after})) AS stuck"
            " FROM {rel} WHERE {state} IN ({active}){where_queue} GROUP BY 1, 2)"
            " SELECT queue, state, sum(jobs)::bigint, coalesce(extract(epoch FROM"
            " now() - min(ready_at) FILTER (WHERE state = 'waiting')), 0)::float8,"
            " sum(stuck)::bigint FROM ("
            " SELECT queue::text AS queue, {mapped} AS state,"
            " CASE WHEN raw IN ({waiting}) THEN jobs - later ELSE jobs END AS jobs, ready_at,"
            " CASE WHEN raw IN ({running}) THEN stuck ELSE 0 END AS stuck FROM grouped"
            " UNION ALL SELECT queue::text, 'scheduled', later, NULL, 0 FROM grouped"
            " WHERE raw IN ({waiting}) AND later > 0"
            ") AS mapped GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(waiting=self.raw("waiting"), running=self.raw("running"),
                 mapped=self._map_raw(ACTIVE_STATES), active=self.raw(*ACTIVE_STATES),
                 stuck_after=STUCK_AFTER, where_queue=self.where_queue, **self.parts)

    def finished_sql(self, with_after: bool) -> sql.Composable:
        p = self.parts
        condition, tail = keyset(p["finished_at"], p["id"], with_after)
        return sql.SQL(
            "SELECT {id}, ({finished_at})::timestamptz, {queue}::text, {outcome},"
            " extract(epoch FROM {finished_at} - {started_at})::float8, {reason}, {stage}"
            " FROM {rel} WHERE {condition} AND {state} IN ({final}){where_queue}{tail}"
        ).format(condition=condition, tail=tail, final=self.raw(*OUTCOMES),
                 reason=_text(self.config.failure_reason), stage=_text(self.config.stage),
                 outcome=self._to_pipemon(OUTCOMES), where_queue=self.where_queue, **p)

    def started_sql(self, with_after: bool) -> sql.Composable:
        p = self.parts
        condition, tail = keyset(p["started_at"], p["id"], with_after)
        return sql.SQL(
            "SELECT {id}, ({started_at})::timestamptz, {queue}::text,"
            " extract(epoch FROM {started_at} - greatest({created_at}, {available_at}))::float8,"
            " {stage} FROM {rel} WHERE {condition}{where_queue}{tail}"
        ).format(condition=condition, tail=tail, where_queue=self.where_queue,
                 stage=_text(self.config.stage), **p)

    def unmapped(self, cur: Cursor) -> list[tuple[str, int]]:
        if self._state_indexed(cur):
            # Zero counts filtered here: a filter in SQL would run each count twice.
            return [row for row in cur.rows(self.unmapped_by_index_sql()) if row[1]]
        if not self._warned_full_scan:
            self._warned_full_scan = True
            log.warning("%s: no btree index starts with column %s of %s: the unmapped-state"
                        " check reads the whole table every unmapped_check_interval",
                        self.config.name, self.config.columns.state, self.config.table)
        return cur.rows(sql.SQL(
            "SELECT coalesce({state}::text, '(null)'), count(*) FROM {rel}"
            " WHERE ({state} IS NULL OR {state} NOT IN ({mapped})){where_queue} GROUP BY 1"
        ).format(mapped=literals(self.config.states), where_queue=self.where_queue,
                 **self.parts))

    def indexes(self, concurrently: bool = False) -> dict[str, sql.Composable]:
        """The indexes docs/exporter.md recommends for this mapping, by the query each serves
        (none for a subquery `table`: the tables it reads need them)."""
        rel = self.parts["rel"]
        if not isinstance(rel, sql.Identifier):
            return {}
        c, table = self.config.columns, self.config.table.strip().split(".")[-1]
        create = sql.SQL("CREATE INDEX CONCURRENTLY " if concurrently else "CREATE INDEX ")

        def index(suffix: str, keys: list[str], tail: str = "", *args) -> sql.Composable:
            return create + sql.SQL("{} ON {} ({})" + tail).format(
                sql.Identifier(f"{table}_{suffix}_idx"), rel,
                sql.SQL(", ").join(map(sql.Identifier, keys)), *args)

        by_queue = [c.queue, c.state] if c.queue else [c.state]
        by_state = by_queue[::-1]
        # The timestamps the active query reads, in the index so that it never reads the
        # table; WHERE the active raw states, so that it holds the active jobs only.
        covered = [col for col in dict.fromkeys((c.available_at, c.created_at, c.started_at))
                   if col and col not in by_queue]
        found = {
            "active jobs": index("active", by_queue, " INCLUDE ({}) WHERE {} IN ({})",
                                 sql.SQL(", ").join(map(sql.Identifier, covered)),
                                 self.parts["state"], self.raw(*ACTIVE_STATES)),
            "finished jobs": index(c.finished_at, [c.finished_at, c.id]),
        }
        if c.started_at:
            found["started jobs"] = index(c.started_at, [c.started_at, c.id])
        found["unmapped states"] = index("_".join(by_state), by_state)
        return found

    def _state_indexed(self, cur: Cursor) -> bool:
        """A plain btree index leads with the state column, so distinct states are cheap."""
        rel = self.parts["rel"]
        if not isinstance(rel, sql.Identifier):
            return False  # a subquery: no index of its own
        return cur.rows(
            "SELECT EXISTS (SELECT 1 FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam"
            " WHERE i.indrelid = to_regclass(%(table)s) AND a.attname = %(column)s"
            " AND am.amname = 'btree' AND i.indpred IS NULL AND i.indisvalid)",
            {"table": rel.as_string(), "column": self.config.columns.state})[0][0]

    def unmapped_by_index_sql(self) -> sql.Composable:
        # A loose index scan: one index probe per distinct state (a handful), then a count of
        # the unmapped ones only, instead of reading every row of a table with millions.
        return sql.SQL(
            "WITH RECURSIVE present(state) AS ("
            " (SELECT {state} FROM {rel} WHERE {state} IS NOT NULL ORDER BY 1 LIMIT 1)"
            " UNION ALL SELECT (SELECT {state} FROM {rel} WHERE {state} > present.state"
            " ORDER BY 1 LIMIT 1) FROM present WHERE present.state IS NOT NULL)"
            " SELECT raw, jobs FROM ("
            " SELECT state::text, (SELECT count(*) FROM {rel}"
            " WHERE {state} = present.state{where_queue})"
            " FROM present WHERE state IS NOT NULL AND state NOT IN ({mapped})"
            " UNION ALL SELECT '(null)', count(*) FROM {rel} WHERE {state} IS NULL{where_queue}"
            ") AS found(raw, jobs)"
        ).format(mapped=literals(self.config.states), where_queue=self.where_queue,
                 **self.parts)


def _text(expression: str | None) -> sql.Composable:
    """An operator's SQL expression (failure_reason, stage) as text, like `success` of analysis
    sources (the transaction is read-only), or NULL when it is not set."""
    return sql.SQL(f"({expression})::text" if expression else "NULL::text")
