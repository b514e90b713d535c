"""The generic preset: a job table mapped column by column (`table`, `columns`, `states`)."""

from __future__ import annotations

from psycopg import sql

from pipemon.db import column, literals, relation
from pipemon.incremental import keyset
from pipemon.sources.presets.base import STUCK_AFTER, QueueSchema, aggregate

ACTIVE_STATES = ("scheduled", "waiting", "running", "retrying")
OUTCOMES = ("succeeded", "failed", "cancelled")


class GenericSchema(QueueSchema):
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

    def raw(self, *states: str) -> sql.Composable:
        """The raw states mapped to any of `states`, as an IN list (NULL when none are)."""
        raws = [raw for raw, state in self.config.states.items() if state in states]
        return literals(raws) if raws else sql.SQL("NULL")

    def _to_pipemon(self, states: tuple[str, ...]) -> sql.Composable:
        """CASE mapping raw states to pipemon's; untyped literals so enum columns work."""
        whens = [sql.SQL("WHEN {state} IN ({raw}) THEN {name}").format(
            raw=self.raw(s), name=sql.Literal(s), **self.parts) for s in states]
        return sql.SQL("CASE {} END").format(sql.SQL(" ").join(whens))

    def active_sql(self) -> sql.Composable:
        return aggregate(sql.SQL(
            "SELECT {queue}::text AS queue,"
            " CASE WHEN {state} IN ({waiting}) AND {available_at} > now() THEN 'scheduled'"
            " ELSE {mapped} END AS state,"
            " greatest({created_at}, {available_at}) AS ready_at,"
            " ({state} IN ({running}) AND {started_at} < {stuck_after}) AS stuck"
            " FROM {rel} WHERE {state} IN ({active}){where_queue}"
        ).format(waiting=self.raw("waiting"), running=self.raw("running"),
                 mapped=self._to_pipemon(ACTIVE_STATES), active=self.raw(*ACTIVE_STATES),
                 stuck_after=STUCK_AFTER, where_queue=self.where_queue, **self.parts))

    def finished_sql(self, with_after: bool) -> sql.Composable:
        p = self.parts
        condition, tail = keyset(p["finished_at"], p["id"], with_after)
        return sql.SQL(
            "SELECT {id}, ({finished_at})::timestamptz, {queue}::text, {outcome},"
            " extract(epoch FROM {finished_at} - {started_at})::float8"
            " FROM {rel} WHERE {condition} AND {state} IN ({final}){where_queue}{tail}"
        ).format(condition=condition, tail=tail, final=self.raw(*OUTCOMES),
                 outcome=self._to_pipemon(OUTCOMES), where_queue=self.where_queue, **p)

    def started_sql(self, with_after: bool) -> sql.Composable:
        p = self.parts
        condition, tail = keyset(p["started_at"], p["id"], with_after)
        return sql.SQL(
            "SELECT {id}, ({started_at})::timestamptz, {queue}::text,"
            " extract(epoch FROM {started_at} - greatest({created_at}, {available_at}))::float8"
            " FROM {rel} WHERE {condition}{where_queue}{tail}"
        ).format(condition=condition, tail=tail, where_queue=self.where_queue, **p)

    def unmapped_sql(self) -> sql.Composable:
        # Scans the table: kept to a slow interval (unmapped_check_interval).
        return sql.SQL(
            "SELECT coalesce({state}::text, '(null)'), count(*) FROM {rel}"
            " WHERE ({state} IS NULL OR {state} NOT IN ({mapped})){where_queue} GROUP BY 1"
        ).format(mapped=literals(self.config.states), where_queue=self.where_queue,
                 **self.parts)
