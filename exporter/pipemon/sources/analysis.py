"""`kind: analysis`: results written to an analysis table (e.g. `audio_events_cache`).

Each new row is one result: succeeded when the `success` SQL predicate holds, failed otherwise;
its processing time, when `duration_seconds` gives one, goes into a histogram. Rows are read
incrementally by `columns.finished_at` (default `columns.created_at`), like finished jobs.
Successful results may also carry audio levels (`peak_dbfs`, `loudness_lufs`): histograms, and
a count of the results whose peak is above `clipping_dbfs`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from psycopg import sql

from pipemon import metrics as m
from pipemon.db import relation
from pipemon.incremental import IncrementalReader, keyset
from pipemon.schema import (
    Checked,
    Node,
    bucket_layout,
    level_layout,
    number,
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
    peak: tuple[float, ...] = value(
        "Upper bounds of `pipemon_analysis_peak_dbfs`, dBFS, increasing.", level_layout,
        m.PEAK_DBFS_BUCKETS, shown_default="13 bounds, -24 to 0 dBFS")
    loudness: tuple[float, ...] = value(
        "Upper bounds of `pipemon_analysis_loudness_lufs`, LUFS, increasing.", level_layout,
        m.LOUDNESS_LUFS_BUCKETS, shown_default="19 bounds, -40 to -6 LUFS, 0.5 LU apart"
        " from -16 to -12")


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
    peak_dbfs: str | None = value(
        "SQL expression of a result's peak level in dBFS, e.g. a column; successful results"
        " with a finite value are observed (none: no peak histogram, no clipping count).",
        string, None)
    loudness_lufs: str | None = value(
        "SQL expression of a result's integrated loudness in LUFS, observed like `peak_dbfs`"
        " (none: no loudness histogram).", string, None)
    clipping_dbfs: float = value(
        "A successful result whose peak is above this level counts as clipping"
        " (`pipemon_analysis_clipped_total`, which PipemonAudioPeakHigh reads; -3: the AI"
        " Mixer's alert level).", number, m.CLIPPING_DBFS)
    buckets: AnalysisBuckets | None = section(
        AnalysisBuckets, "Histogram bounds of processing times and audio levels (default:"
        " layouts for media work and for audio).")

    success_ratio_warning: float = value(
        "The verdict on /health warns when the share of successful results over the last hour"
        " is below this (as PipemonAnalysisSuccessLow) ...", ratio, 0.95)
    min_results: int = value("... with at least this many results in that hour.",
                             positive_int, 20)

    @property
    def cols(self) -> AnalysisColumns:
        return self.columns or AnalysisColumns()

    def check(self, node: Node, parent: dict) -> None:
        super().check(node, parent)
        if node.has("clipping_dbfs") and not self.peak_dbfs:
            node.problem("clipping_dbfs", "not used without peak_dbfs (the expression of the"
                                          " peak level it is compared with)")


class AnalysisSource(PgSource):
    specs = (m.ANALYSIS_RESULTS, m.ANALYSIS_DURATION, m.ANALYSIS_PEAK, m.ANALYSIS_LOUDNESS,
             m.ANALYSIS_CLIPPED)

    config_type = AnalysisConfig

    def __init__(self, config: AnalysisConfig):
        super().__init__(config)
        self.config: AnalysisConfig = config
        self._lock = threading.Lock()
        self._results = m.CounterSet()
        for outcome in RESULT_OUTCOMES:
            self._results.ensure((outcome,))
        buckets = config.buckets or AnalysisBuckets()
        self._durations = m.HistogramSet(buckets.duration)
        if config.duration_seconds:
            self._durations.ensure(())
        # Levels are negative: no floor. Zero, not absent, from the start when configured.
        self._peaks = m.HistogramSet(buckets.peak, floor=None)
        self._loudness = m.HistogramSet(buckets.loudness, floor=None)
        self._clipped = m.CounterSet()
        if config.peak_dbfs:
            self._peaks.ensure(())
            self._clipped.ensure(())
        if config.loudness_lufs:
            self._loudness.ensure(())
        self._minutes: dict[int, list[int]] = {}  # minute -> [succeeded, all], the last hour
        self.reader = IncrementalReader(
            f"{self.name}/results", self._results_sql, config.late_commit_window,
            config.page_size, config.max_rows_per_poll)

    def _results_sql(self, with_after: bool) -> sql.Composable:
        cfg = self.config
        ts, id_ = sql.Identifier(cfg.cols.read_by), sql.Identifier(cfg.cols.id)
        condition, tail = keyset(ts, id_, with_after)
        # `success`, `duration_seconds` and the levels are SQL written by the operator, like a
        # view would be; the transaction is read-only, so they cannot change anything.
        return sql.SQL(
            "SELECT {id}, ({ts})::timestamptz, coalesce(({success})::boolean, false),"
            " ({duration})::float8, ({peak})::float8, ({loudness})::float8"
            " FROM {rel} WHERE {condition}{tail}"
        ).format(id=id_, ts=ts, success=sql.SQL(cfg.success),
                 duration=sql.SQL(cfg.duration_seconds or "NULL"),
                 peak=sql.SQL(cfg.peak_dbfs or "NULL"),
                 loudness=sql.SQL(cfg.loudness_lufs or "NULL"), rel=relation(cfg.table),
                 condition=condition, tail=tail)

    def poll(self, deadline: float) -> None:
        with self.session.transaction(deadline) as cur:
            db_now = cur.rows("SELECT now()")[0][0]
            rows = self.reader.read(cur, db_now)
        with self._lock:
            minute = int(time.monotonic() // 60)
            self._minutes = {m: c for m, c in self._minutes.items() if m > minute - 60}
            clipping = self.config.clipping_dbfs
            for _id, _ts, ok, seconds, peak, loudness in rows:
                self._results.inc(("succeeded" if ok else "failed",))
                counts = self._minutes.setdefault(minute, [0, 0])
                counts[0] += bool(ok)
                counts[1] += 1
                if seconds is not None:
                    self._durations.observe((), seconds)
                if not ok:
                    continue  # a failed analysis measured nothing
                # NULL, NaN and infinities (a silent track: -inf dBFS) are not observed: one
                # infinite value would make the histogram's _sum infinite for good.
                if peak is not None and math.isfinite(peak):
                    self._peaks.observe((), peak)
                    if peak > clipping:
                        self._clipped.inc(())
                if loudness is not None and math.isfinite(loudness):
                    self._loudness.observe((), loudness)
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
            self._peaks.emit(families(m.ANALYSIS_PEAK), (self.name,))
            self._loudness.emit(families(m.ANALYSIS_LOUDNESS), (self.name,))
            self._clipped.emit(families(m.ANALYSIS_CLIPPED), (self.name,))
