"""`kind: analysis`: results written to an analysis table (e.g. `audio_events_cache`).

Each new row is one result: succeeded when the `success` SQL predicate holds, failed otherwise;
its processing time, when `duration_seconds` gives one, goes into a histogram. Rows are read
incrementally by `columns.finished_at` (default `columns.created_at`), like finished jobs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from psycopg import sql

from pipemon import metrics as m
from pipemon.config import Node, Secret, SourceConfig, duration, positive_int, string
from pipemon.db import dsn_secrets, relation
from pipemon.incremental import IncrementalReader, keyset
from pipemon.sources.pg import PgSource, read_dsn

OUTCOMES = ("succeeded", "failed")


@dataclass(frozen=True)
class AnalysisConfig(SourceConfig):
    dsn: Secret | None = None
    table: str = ""
    id_column: str = "id"
    time_column: str = "created_at"
    success: str = "timeline IS NOT NULL"
    duration_seconds: str | None = None
    late_commit_window: float = 120.0
    page_size: int = 5000
    max_rows_per_poll: int = 50000

    def secrets(self) -> list[str]:
        return dsn_secrets(self.dsn)


def parse_config(node: Node, common: dict) -> AnalysisConfig:
    cols = node.child("columns", required=False)
    id_column, time_column = "id", "created_at"
    if cols is not None:
        id_column = cols.get("id", string, "id")
        created_at = cols.get("created_at", string, "created_at")
        time_column = cols.get("finished_at", string, None) or created_at
        cols.finish()
    return AnalysisConfig(
        **common,
        dsn=read_dsn(node),
        table=node.get("table", string, "audio_events_cache"),
        id_column=id_column,
        time_column=time_column,
        success=node.get("success", string, "timeline IS NOT NULL"),
        duration_seconds=node.get("duration_seconds", string, None),
        late_commit_window=node.get("late_commit_window", duration, 120.0),
        page_size=node.get("page_size", positive_int, 5000),
        max_rows_per_poll=node.get("max_rows_per_poll", positive_int, 50000),
    )


class AnalysisSource(PgSource):
    specs = (m.ANALYSIS_RESULTS, m.ANALYSIS_DURATION)

    def __init__(self, config: AnalysisConfig):
        super().__init__(config)
        self.config: AnalysisConfig = config
        self._lock = threading.Lock()
        self._results = m.CounterSet()
        for outcome in OUTCOMES:
            self._results.ensure((outcome,))
        self._durations = m.HistogramSet(m.JOB_SECONDS_BUCKETS)
        if config.duration_seconds:
            self._durations.ensure(())
        self.reader = IncrementalReader(
            f"{self.name}/results", self._results_sql, config.late_commit_window,
            config.page_size, config.max_rows_per_poll)

    def _results_sql(self, with_after: bool) -> sql.Composable:
        cfg = self.config
        ts, id_ = sql.Identifier(cfg.time_column), sql.Identifier(cfg.id_column)
        condition, tail = keyset(ts, id_, with_after)
        # `success` and `duration_seconds` are SQL written by the operator, like a view would be;
        # the transaction is read-only, so they cannot change anything.
        return sql.SQL(
            "SELECT {id}, ({ts})::timestamptz, coalesce(({success})::boolean, false),"
            " ({duration})::float8 FROM {rel} WHERE {condition}{tail}"
        ).format(id=id_, ts=ts, success=sql.SQL(cfg.success),
                 duration=sql.SQL(cfg.duration_seconds or "NULL"), rel=relation(cfg.table),
                 condition=condition, tail=tail)

    def poll(self) -> None:
        deadline = time.monotonic() + self.config.timeout
        with self.session.transaction(deadline) as cur:
            db_now = cur.rows("SELECT now()")[0][0]
            rows = self.reader.read(cur, db_now)
        with self._lock:
            for _id, _ts, ok, seconds in rows:
                self._results.inc(("succeeded" if ok else "failed",))
                if seconds is not None:
                    self._durations.observe((), seconds)
            self.reader.commit()
        return None

    def collect(self, families: m.Families, snapshot: None) -> None:
        with self._lock:
            self._results.emit(families(m.ANALYSIS_RESULTS), (self.name,))
            self._durations.emit(families(m.ANALYSIS_DURATION), (self.name,))
