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
from pipemon.db import relation
from pipemon.incremental import IncrementalReader, keyset
from pipemon.schema import (
    Checked,
    bucket_layout,
    positive_int,
    ratio,
    section,
    string,
    value,
)
from pipemon.sources.jobs import LAYOUT_SHOWN, RESULT_OUTCOMES
from pipemon.sources.pg import IncrementalPgConfig, PgSource
from pipemon.verdict import WARNING, Finding


@dataclass(frozen=True, kw_only=True)
class AnalysisColumns(Checked):
    id: str = value("Unique id of a result row.", string, "id")
    created_at: str = value("When the row was written.", string, "created_at")
    finished_at: str | None = value(
        "When the analysis finished, if it differs from `created_at`: new rows are read by it.",
        string, None)

    @property
    def read_by(self) -> str:
        return self.finished_at or self.created_at


@dataclass(frozen=True, kw_only=True)
class AnalysisBuckets(Checked):
    """`buckets:` of an analysis source."""

    duration: tuple[float, ...] = value(
        "Upper bounds of `pipemon_analysis_duration_seconds`.", bucket_layout,
        m.JOB_SECONDS_BUCKETS, shown_default=LAYOUT_SHOWN)


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig(IncrementalPgConfig):
    table: str = value("Table, view, `schema.table` or parenthesised subquery of the results.",
                       string, "audio_events_cache")
    columns: AnalysisColumns | None = section(
        AnalysisColumns, "Column names, when they differ from the defaults.")
    success: str = value("SQL predicate on a row that holds when the analysis succeeded.",
                         string, "timeline IS NOT NULL")
    duration_seconds: str | None = value(
        "SQL expression of a row's processing time in seconds (none: no duration histogram).",
        string, None)
    buckets: AnalysisBuckets | None = section(
        AnalysisBuckets, "Histogram bounds of processing times (default: a layout for media"
        " work).")

    success_ratio_warning: float = value(
        "The verdict on /health warns when the share of successful results over the last hour"
        " is below this (as PipemonAnalysisSuccessLow) ...", ratio, 0.95)
    min_results: int = value("... with at least this many results in that hour.",
                             positive_int, 20)

    @property
    def cols(self) -> AnalysisColumns:
        return self.columns or AnalysisColumns()


class AnalysisSource(PgSource):
    specs = (m.ANALYSIS_RESULTS, m.ANALYSIS_DURATION)

    config_type = AnalysisConfig

    def __init__(self, config: AnalysisConfig):
        super().__init__(config)
        self.config: AnalysisConfig = config
        self._lock = threading.Lock()
        self._results = m.CounterSet()
        for outcome in RESULT_OUTCOMES:
            self._results.ensure((outcome,))
        self._durations = m.HistogramSet((config.buckets or AnalysisBuckets()).duration)
        if config.duration_seconds:
            self._durations.ensure(())
        self._minutes: dict[int, list[int]] = {}  # minute -> [succeeded, all], the last hour
        self.reader = IncrementalReader(
            f"{self.name}/results", self._results_sql, config.late_commit_window,
            config.page_size, config.max_rows_per_poll)

    def _results_sql(self, with_after: bool) -> sql.Composable:
        cfg = self.config
        ts, id_ = sql.Identifier(cfg.cols.read_by), sql.Identifier(cfg.cols.id)
        condition, tail = keyset(ts, id_, with_after)
        # `success` and `duration_seconds` are SQL written by the operator, like a view would be;
        # the transaction is read-only, so they cannot change anything.
        return sql.SQL(
            "SELECT {id}, ({ts})::timestamptz, coalesce(({success})::boolean, false),"
            " ({duration})::float8 FROM {rel} WHERE {condition}{tail}"
        ).format(id=id_, ts=ts, success=sql.SQL(cfg.success),
                 duration=sql.SQL(cfg.duration_seconds or "NULL"), rel=relation(cfg.table),
                 condition=condition, tail=tail)

    def poll(self, deadline: float) -> None:
        with self.session.transaction(deadline) as cur:
            db_now = cur.rows("SELECT now()")[0][0]
            rows = self.reader.read(cur, db_now)
        with self._lock:
            minute = int(time.monotonic() // 60)
            self._minutes = {m: c for m, c in self._minutes.items() if m > minute - 60}
            for _id, _ts, ok, seconds in rows:
                self._results.inc(("succeeded" if ok else "failed",))
                counts = self._minutes.setdefault(minute, [0, 0])
                counts[0] += bool(ok)
                counts[1] += 1
                if seconds is not None:
                    self._durations.observe((), seconds)
            self.reader.commit()
        return None

    def findings(self, snapshot: None) -> list[Finding]:
        with self._lock:
            succeeded = sum(c[0] for c in self._minutes.values())
            total = sum(c[1] for c in self._minutes.values())
        if total < self.config.min_results or succeeded / total >= \
                self.config.success_ratio_warning:
            return []
        return [Finding(WARNING, f"analysis success {succeeded / total:.1%} over the last hour"
                                 f" ({total} results; warning below"
                                 f" {self.config.success_ratio_warning:.0%})")]

    def collect(self, families: m.Families, snapshot: None) -> None:
        with self._lock:
            self._results.emit(families(m.ANALYSIS_RESULTS), (self.name,))
            self._durations.emit(families(m.ANALYSIS_DURATION), (self.name,))
