"""How the database runs a queue source's poll queries, and the index that makes a slow one
cheap (`pipemon check-config --explain`).

Each of the source's queries (active jobs, finished jobs, started jobs) is planned with the
parameters of a steady-state poll by `EXPLAIN (VERBOSE, FORMAT JSON)`, in the source's read-only
transaction, without running it (`analyze=True` runs it, as a poll would, to count heap
fetches). A finding is `ok` when every table is read the way docs/exporter.md "The indexes a job
table needs" says: the active jobs by an index-only scan, the incremental reads by an index on
their time column, no large table read whole. Otherwise it names what the plan reads and, for
the generic preset on a table (not a subquery), the index to create.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from psycopg import sql

from pipemon.db import Cursor, PgSession
from pipemon.incremental import window_params
from pipemon.sources.presets.base import Preset
from pipemon.sources.presets.generic import GenericPreset
from pipemon.sources.queue import PRESETS, QueueConfig

#: A table the planner estimates smaller than this is read whole without harm.
SMALL_TABLE = 10_000
SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan")


@dataclass(frozen=True)
class PlanFinding:
    query: str  # "active jobs", "finished jobs", "started jobs", "unmapped states"
    ok: bool
    plan: str  # how the tables are read, e.g. "Index Only Scan using jobs_active_idx on jobs"
    advice: str = ""  # what to do about it, e.g. "create: CREATE INDEX CONCURRENTLY ..."

    def __str__(self) -> str:
        text = f"{self.query}: {'ok' if self.ok else 'slow'}: {self.plan}"
        return f"{text}; {self.advice}" if self.advice else text


def explain_source(config: QueueConfig, analyze: bool = False) -> list[PlanFinding]:
    """The findings for one `kind: queue` source config, over its own read-only session
    (PollError, as a poll's, when the database cannot be reached or read)."""
    session = PgSession(config.dsn, config.timeout)
    try:
        with session.transaction(time.monotonic() + config.timeout) as cur:
            return explain_queue(PRESETS[config.preset](config), cur, analyze)
    finally:
        session.close()


def explain_queue(preset: Preset, cur: Cursor, analyze: bool = False) -> list[PlanFinding]:
    """The findings for a preset's poll queries, planned through `cur` (read-only)."""
    cfg = preset.config
    preset.detect(cur)
    db_now = cur.rows("SELECT now()")[0][0]
    window = window_params(db_now - timedelta(seconds=cfg.late_commit_window), cfg.page_size,
                           None, {})
    indexes = preset.indexes(concurrently=True) if isinstance(preset, GenericPreset) else {}
    shape = preset.shape()
    queries = [("active jobs", preset.active_sql(*shape), {"stuck": cfg.stuck_after}, None)]
    if preset.has_finished:
        queries.append(("finished jobs", preset.finished_sql(False, *shape), window,
                        _time_column(preset, "finished_at")))
    if preset.has_started:
        queries.append(("started jobs", preset.started_sql(False, *shape), window,
                        _time_column(preset, "started_at")))
    found = []
    for label, query, params, time_column in queries:
        options = "ANALYZE, VERBOSE, FORMAT JSON" if analyze else "VERBOSE, FORMAT JSON"
        plan = cur.rows(sql.SQL(f"EXPLAIN ({options}) ") + query, params)[0][0][0]["Plan"]
        scans = _scans(plan)
        create = indexes.get(label)
        advice = f"create: {create.as_string(cur.connection)}" if create is not None else (
            "" if isinstance(preset, GenericPreset) else "see docs/queues.md for its indexes")
        found.append(_judge(cur, label, scans, advice, time_column, preset, analyze))
    if isinstance(preset, GenericPreset) and cfg.unmapped_check_interval > 0:
        found.append(_unmapped(preset, cur, indexes))
    return found


def _time_column(preset: Preset, key: str) -> str | None:
    """The column an incremental read's index must lead with (None: not known here, as for a
    library's tables or a subquery's, whose columns may be renamed)."""
    if not isinstance(preset, GenericPreset) or not isinstance(preset.parts["rel"],
                                                                sql.Identifier):
        return None
    return getattr(preset.config.columns, key)


def _scans(node: dict) -> list[dict]:
    """The table scans of a plan, each with the index a bitmap scan under it uses."""
    found = []
    if node["Node Type"] in SCANS and "Relation Name" in node:
        scan = dict(node)
        if node["Node Type"] == "Bitmap Heap Scan":
            scan["Index Name"] = ", ".join(
                n["Index Name"] for n in _walk(node) if n["Node Type"] == "Bitmap Index Scan")
        found.append(scan)
    for child in node.get("Plans", []):
        found += _scans(child)
    return found


def _walk(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def _describe(scan: dict, analyze: bool) -> str:
    text = scan["Node Type"]
    if scan.get("Index Name"):
        text += f" using {scan['Index Name']}"
    text += f" on {scan['Relation Name']}"
    if analyze and scan["Node Type"] == "Index Only Scan":
        rows = scan["Actual Rows"] * scan["Actual Loops"]
        text += f" ({scan.get('Heap Fetches', 0):,} heap fetches for {rows:,} rows)"
    return text


def _table_rows(cur: Cursor, scan: dict) -> float:
    """The planner's estimate of the rows in the scanned table."""
    name = sql.Identifier(scan.get("Schema", "public"), scan["Relation Name"]).as_string(
        cur.connection)
    found = cur.rows("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%(t)s)",
                     {"t": name})
    return max(0.0, float(found[0][0])) if found else 0.0


def _index_columns(cur: Cursor, scan: dict) -> list[str]:
    """The columns of the index a scan uses, keys first, then INCLUDE columns."""
    if not scan.get("Index Name") or "," in scan["Index Name"]:
        return []
    name = sql.Identifier(scan.get("Schema", "public"), scan["Index Name"]).as_string(
        cur.connection)
    return [row[0] for row in cur.rows(
        "SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
        " JOIN pg_attribute a ON a.attnum = k.attnum"
        " WHERE i.indexrelid = to_regclass(%(i)s) AND a.attrelid = i.indrelid ORDER BY k.n",
        {"i": name})]


def _judge(cur: Cursor, label: str, scans: list[dict], advice: str, time_column: str | None,
           preset: Preset, analyze: bool) -> PlanFinding:
    plan = ", ".join(_describe(s, analyze) for s in scans) or "no table read"
    for scan in scans:
        if scan["Node Type"] == "Seq Scan":
            rows = _table_rows(cur, scan)
            if rows >= SMALL_TABLE:
                return PlanFinding(label, False, f"{plan} (reads all ~{rows:,.0f} rows)", advice)
    if label == "active jobs" and isinstance(preset, GenericPreset):
        vacuum = ("the index covers the query, but the table's pages are not all-visible, so"
                  " the rows are read anyway: VACUUM the table (let autovacuum run more often"
                  " on it)")
        heap = [s for s in scans if s["Node Type"] in ("Index Scan", "Bitmap Heap Scan")]
        if heap:
            if _covers(preset, _index_columns(cur, heap[0])):
                return PlanFinding(label, False, plan, vacuum)  # the planner expects that
            return PlanFinding(label, False, f"{plan} (reads every active job's row)", advice)
        for scan in scans:
            rows = scan.get("Actual Rows", 0) * scan.get("Actual Loops", 0)
            if analyze and scan["Node Type"] == "Index Only Scan" and \
                    scan.get("Heap Fetches", 0) > rows / 10:
                return PlanFinding(label, False, plan, vacuum)
    if time_column is not None:
        for scan in scans:
            columns = _index_columns(cur, scan)
            if columns and columns[0] != time_column:
                return PlanFinding(label, False, f"{plan} (not by {time_column})", advice)
    return PlanFinding(label, True, plan)


def _covers(preset: GenericPreset, columns: list[str]) -> bool:
    c = preset.config.columns
    needed = {c.queue, c.state, c.available_at, c.created_at, c.started_at} - {None}
    return bool(columns) and needed <= set(columns)


def _unmapped(preset: GenericPreset, cur: Cursor, indexes: dict) -> PlanFinding:
    label = "unmapped states"
    if preset._state_indexed(cur):
        return PlanFinding(label, True, f"a btree index leads with {preset.config.columns.state}")
    create = indexes.get(label)
    return PlanFinding(label, False, "reads the whole table every unmapped_check_interval",
                       f"create: {create.as_string(cur.connection)}" if create is not None
                       else "")
