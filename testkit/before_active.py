"""The generic preset's active-jobs query as it was before the covering index (commit
dc94f03): the reference the new one must agree with (tests/test_active_plan.py) and the
"before" of bench/bench_active_plan.py."""

from __future__ import annotations

from psycopg import sql

from pipemon.sources.jobs import ACTIVE_STATES
from pipemon.sources.presets.base import STUCK_AFTER
from pipemon.sources.presets.generic import GenericPreset


def before_active_sql(p: GenericPreset) -> sql.Composable:
    """The active-jobs query as it was before the covering index (commit dc94f03): the
    reference the new one must agree with."""
    return sql.SQL(
        "WITH grouped AS (SELECT {queue}::text AS queue, {state} AS raw, count(*) AS jobs,"
        " count(*) FILTER (WHERE {available_at} > now()) AS later,"
        " min(greatest({created_at}, {available_at}))"
        " FILTER (WHERE {available_at} > now() IS NOT TRUE) AS ready_at,"
        " count(*) FILTER (WHERE {started_at} < {stuck_after}) AS stuck"
        " FROM {rel} WHERE {state} IN ({active}){where_queue} GROUP BY 1, 2)"
        " SELECT queue, state, sum(jobs)::bigint, coalesce(extract(epoch FROM"
        " now() - min(ready_at) FILTER (WHERE state = 'waiting')), 0)::float8,"
        " sum(stuck)::bigint FROM ("
        " SELECT queue, {mapped} AS state,"
        " CASE WHEN raw IN ({waiting}) THEN jobs - later ELSE jobs END AS jobs, ready_at,"
        " CASE WHEN raw IN ({running}) THEN stuck ELSE 0 END AS stuck FROM grouped"
        " UNION ALL SELECT queue, 'scheduled', later, NULL, 0 FROM grouped"
        " WHERE raw IN ({waiting}) AND later > 0"
        ") AS mapped GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(waiting=p.raw("waiting"), running=p.raw("running"),
             mapped=p._map_raw(ACTIVE_STATES), active=p.raw(*ACTIVE_STATES),
             stuck_after=STUCK_AFTER, where_queue=p.where_queue, **p.parts)
