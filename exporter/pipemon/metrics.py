"""The metric contract (names, types, labels, buckets) and the state pipemon accumulates itself.

Families are built fresh on every scrape from plain data: nothing here touches the
prometheus_client global registry.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from pipemon.encoders import line_start

# Media work, from a sub-second wait to a 12-hour transcode: 1.33-1.5x apart from 10 s to 4 h,
# so a quantile read from them is within a few percent with enough jobs (bench/README.md), and
# a boundary at every threshold an alert uses, so the SLI is exact there. A source's
# `buckets:` replaces them (more bounds, more series).
JOB_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900,
                       1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600, 43200)
POLL_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STORAGE_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Audio levels of analysis results (negative bounds: `le` may be any float). Peaks, dBFS: fine
# near full scale, where mastering lives; the clipping count does not depend on these
# (sources/analysis.py). Integrated loudness, LUFS: 0.5 LU apart from -16 to -12, so the median
# is within 0.25 LU around the -14 LUFS target, and a bound at the alert's limits (target +- 2).
PEAK_DBFS_BUCKETS = (-24, -18, -12, -9, -6, -5, -4, -3, -2, -1, -0.5, -0.1, 0)
LOUDNESS_LUFS_BUCKETS = (-40, -30, -24, -20, -18, -17, -16, -15.5, -15, -14.5, -14, -13.5, -13,
                         -12.5, -12, -11, -10, -8, -6)
# A peak above this counts as clipping (the analysis source's default `clipping_dbfs`: the AI
# Mixer's alert level).
CLIPPING_DBFS = -3.0

OTHER = "other"


# A source's constant labels (its `labels:`), by source name: added to every series whose
# `source` label names it.
ConstantLabels = dict[str, dict[str, str]]


@dataclass(frozen=True)
class Spec:
    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...]

    def family(self, constant: ConstantLabels | None = None) -> Metric:
        # Only series of a source take its constant labels; `source` is always the first label.
        constant = (constant or {}) if self.labels[:1] == ("source",) else {}
        if self.type == "gauge":
            return GaugeFamily(self.name, self.help, self.labels, constant)
        if self.type == "counter":
            return CounterFamily(self.name, self.help, self.labels, constant)
        return HistogramFamily(self.name, self.help, self.labels, constant)


class GaugeFamily(GaugeMetricFamily):
    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 constant: ConstantLabels) -> None:
        super().__init__(name, documentation, labels=labels)
        self.constant = constant

    def add_metric(self, labels, value, timestamp=None) -> None:
        start = len(self.samples)
        super().add_metric(labels, value, timestamp)
        _add_constant(self, labels, start)


class CounterFamily(CounterMetricFamily):
    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 constant: ConstantLabels) -> None:
        super().__init__(name, documentation, labels=labels)
        self.constant = constant

    def add_metric(self, labels, value, created=None, timestamp=None, exemplar=None) -> None:
        start = len(self.samples)
        super().add_metric(labels, value, created, timestamp, exemplar)
        _add_constant(self, labels, start)


def _add_constant(family: GaugeFamily | CounterFamily, labels, start: int) -> None:
    """The source's constant labels on the samples add_metric just appended (each has a label
    dict of its own)."""
    extra = family.constant.get(labels[0]) if family.constant else None
    if extra:
        for sample in family.samples[start:]:
            sample.labels.update(extra)


class HistogramFamily(HistogramMetricFamily):
    """A histogram family that carries its samples' text as well: HistogramSet renders a
    series once per change, not once per scrape (most series of a busy exporter are buckets of
    queues that had no new job since the last poll; bench/README.md, issue 19)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 constant: ConstantLabels | None = None) -> None:
        super().__init__(name, documentation, labels=labels)
        self.label_names = tuple(labels)
        self.constant = constant or {}
        self.lines: list[str] = []
        self.lined = 0  # how many of `samples` the lines render; encoders.py checks it


# --- self metrics ---
BUILD_INFO = Spec("pipemon_build_info", "gauge", "pipemon version; always 1.", ("version",))
SOURCE_UP = Spec(
    "pipemon_source_up", "gauge",
    "1 if the last poll of the source succeeded, 0 if it failed.", ("source", "kind"))
SOURCE_POLL_DURATION = Spec(
    "pipemon_source_poll_duration_seconds", "histogram",
    "Time taken by each poll of the source, failed polls included.", ("source", "kind"))
SOURCE_POLL_ERRORS = Spec(
    "pipemon_source_poll_errors_total", "counter",
    "Failed polls of the source, by reason.", ("source", "kind", "reason"))
SOURCE_LAST_SUCCESS = Spec(
    "pipemon_source_last_success_timestamp_seconds", "gauge",
    "Unix time of the last successful poll of the source.", ("source", "kind"))
FOLDED_LABEL_VALUES = Spec(
    "pipemon_source_folded_label_values", "gauge",
    "Distinct label values read from data that exceeded the cap and were reported as 'other'.",
    ("source", "label"))

# --- queue ---
QUEUE_JOBS = Spec(
    "pipemon_queue_jobs", "gauge",
    "Jobs currently in the queue by state (scheduled, waiting, running, retrying).",
    ("source", "queue", "state"))
QUEUE_OLDEST_WAITING = Spec(
    "pipemon_queue_oldest_waiting_seconds", "gauge",
    "Age of the oldest job ready to run but not started (0 when none wait).", ("source", "queue"))
QUEUE_STUCK = Spec(
    "pipemon_queue_stuck_jobs", "gauge",
    "Jobs running for longer than the source's stuck_after.", ("source", "queue"))
QUEUE_FINISHED = Spec(
    "pipemon_queue_jobs_finished_total", "counter",
    "Jobs that reached a final state since pipemon started, by outcome.",
    ("source", "queue", "outcome"))
QUEUE_FAILURE_REASONS = Spec(
    "pipemon_queue_job_failures_total", "counter",
    "Failed jobs by the reason the source's failure_reason gives (normalised: digits and ids"
    " folded; past max_reasons distinct reasons, 'other').", ("source", "queue", "reason"))
QUEUE_STAGE_FINISHED = Spec(
    "pipemon_queue_stage_jobs_finished_total", "counter",
    "Jobs that reached a final state, by the stage the source's `stage` gives, and outcome.",
    ("source", "queue", "stage", "outcome"))
QUEUE_STAGE_RUN_SECONDS = Spec(
    "pipemon_queue_stage_job_run_seconds", "histogram",
    "Run time of finished jobs by stage and outcome.", ("source", "queue", "stage", "outcome"))
QUEUE_STAGE_WAIT_SECONDS = Spec(
    "pipemon_queue_stage_job_wait_seconds", "histogram",
    "Wait of started jobs by stage, from ready to started.", ("source", "queue", "stage"))
QUEUE_RUN_SECONDS = Spec(
    "pipemon_queue_job_run_seconds", "histogram",
    "Run time (start to finish) of finished jobs.", ("source", "queue", "outcome"))
QUEUE_WAIT_SECONDS = Spec(
    "pipemon_queue_job_wait_seconds", "histogram",
    "Wait time (ready to started) of jobs, observed when they start.", ("source", "queue"))
# exact_quantiles: (sources/recent.py): gauges, since a quantile cannot be aggregated
QUEUE_RUN_WINDOW = Spec(
    "pipemon_queue_job_run_window_seconds", "gauge",
    "Exact quantile (percentile_cont) of the run times of the jobs that finished in the"
    " source's exact_quantiles window, every outcome.", ("source", "queue", "quantile"))
QUEUE_RUN_WINDOW_JOBS = Spec(
    "pipemon_queue_job_run_window_jobs", "gauge",
    "Finished jobs the run-time quantiles are over.", ("source", "queue"))
QUEUE_WAIT_WINDOW = Spec(
    "pipemon_queue_job_wait_window_seconds", "gauge",
    "Exact quantile (percentile_cont) of the wait times of the jobs that started in the"
    " source's exact_quantiles window.", ("source", "queue", "quantile"))
QUEUE_WAIT_WINDOW_JOBS = Spec(
    "pipemon_queue_job_wait_window_jobs", "gauge",
    "Started jobs the wait-time quantiles are over.", ("source", "queue"))
QUEUE_WINDOW_SPECS = (QUEUE_RUN_WINDOW, QUEUE_RUN_WINDOW_JOBS, QUEUE_WAIT_WINDOW,
                      QUEUE_WAIT_WINDOW_JOBS)
QUEUE_UNMAPPED = Spec(
    "pipemon_queue_unmapped_jobs", "gauge",
    "Jobs whose raw state is not in the source's `states` mapping (checked at a slow interval).",
    ("source", "raw_state"))

QUEUE_PERMANENTLY_FAILED = Spec(
    "pipemon_queue_permanently_failed_jobs", "gauge",
    "Jobs that used up their attempts and stay in the table (libraries that delete succeeded"
    " jobs, such as graphile-worker, have no finished counters: this is what they keep).",
    ("source", "queue"))

QUEUE_PAUSED = Spec(
    "pipemon_queue_paused", "gauge",
    "1 if the queue is paused (no new job starts), 0 if not (backends that can pause).",
    ("source", "queue"))
QUEUE_CONCURRENCY_LIMIT = Spec(
    "pipemon_queue_concurrency_limit", "gauge",
    "Jobs the queue may run at once, where the backend has such a limit.", ("source", "queue"))
TRIGGER_RATELIMIT_REMAINING = Spec(
    "pipemon_trigger_dev_ratelimit_remaining", "gauge",
    "Requests left in the environment's API rate limit at the last answer (the app's own API"
    " calls share it).", ("source",))
TRIGGER_PEAK_QUEUED = Spec(
    "pipemon_trigger_dev_queue_peak_queued", "gauge",
    "Most runs queued at once in the last queue_metrics_period, as Trigger.dev's run engine saw"
    " them (a burst between two polls included).", ("source", "queue"))
TRIGGER_THROTTLED = Spec(
    "pipemon_trigger_dev_queue_throttled_samples", "gauge",
    "Moments in the last queue_metrics_period at which the run engine saw the queue at its"
    " concurrency limit with runs queued (0: never held back by the limit).", ("source", "queue"))
TRIGGER_RATELIMIT_LIMIT = Spec(
    "pipemon_trigger_dev_ratelimit_limit", "gauge",
    "Size of the environment's API rate limit bucket, as the last answer said.", ("source",))

# --- analysis ---
ANALYSIS_RESULTS = Spec(
    "pipemon_analysis_results_total", "counter",
    "Analysis results written since pipemon started, by outcome.", ("source", "outcome"))
ANALYSIS_DURATION = Spec(
    "pipemon_analysis_duration_seconds", "histogram",
    "Processing time of analysis results.", ("source",))
ANALYSIS_PEAK = Spec(
    "pipemon_analysis_peak_dbfs", "histogram",
    "Peak level of successful analysis results, dBFS.", ("source",))
ANALYSIS_LOUDNESS = Spec(
    "pipemon_analysis_loudness_lufs", "histogram",
    "Integrated loudness of successful analysis results, LUFS.", ("source",))
ANALYSIS_CLIPPED = Spec(
    "pipemon_analysis_clipped_total", "counter",
    "Successful analysis results whose peak level is above the source's clipping_dbfs.",
    ("source",))

# --- storage (S3 / R2) ---
STORAGE_PROBE_SUCCESS = Spec(
    "pipemon_storage_probe_success", "gauge",
    "1 if the last probe of the bucket succeeded (put, get + checksum, delete; or head + list"
    " in read-only mode), 0 if any step failed.", ("source", "bucket"))
STORAGE_PROBE_DURATION = Spec(
    "pipemon_storage_probe_duration_seconds", "histogram",
    "Time taken by each successful probe operation, retries included.",
    ("source", "bucket", "operation"))
STORAGE_PROBE_FAILURES = Spec(
    "pipemon_storage_probe_failures_total", "counter",
    "Failed probe operations, by operation and reason.",
    ("source", "bucket", "operation", "reason"))
STORAGE_OBJECTS = Spec(
    "pipemon_storage_objects", "gauge",
    "Objects under the prefix at the last inventory (a lower bound when truncated).",
    ("source", "bucket", "prefix"))
STORAGE_BYTES = Spec(
    "pipemon_storage_bytes", "gauge",
    "Bytes stored under the prefix at the last inventory (a lower bound when truncated).",
    ("source", "bucket", "prefix"))
STORAGE_INVENTORY_TRUNCATED = Spec(
    "pipemon_storage_inventory_truncated", "gauge",
    "1 if the last inventory of the prefix stopped at max_pages or at its deadline.",
    ("source", "bucket", "prefix"))
STORAGE_INVENTORY_ERRORS = Spec(
    "pipemon_storage_inventory_errors_total", "counter",
    "Inventory runs that failed, by reason.", ("source", "bucket", "reason"))

# --- checks (user SQL) ---
# pipemon_check_value has the check's own label columns besides these two: add_sample() below.
CHECK_VALUE = Spec(
    "pipemon_check_value", "gauge",
    "The value the check's SQL returned, one series per row (label columns as labels).",
    ("source", "check"))
CHECK_UP = Spec(
    "pipemon_check_up", "gauge",
    "1 if the last run of the check succeeded, 0 if it failed (see pipemon_check_errors_total).",
    ("source", "check"))
CHECK_ERRORS = Spec(
    "pipemon_check_errors_total", "counter",
    "Failed runs of the check, by reason.", ("source", "check", "reason"))
CHECK_DURATION = Spec(
    "pipemon_check_duration_seconds", "gauge",
    "Time taken by the last run of the check.", ("source", "check"))

# --- host (worker tools and scratch directories) ---
HOST_TOOL_UP = Spec(
    "pipemon_host_tool_up", "gauge",
    "1 if the tool's command exited 0 within its timeout at the last poll, 0 otherwise.",
    ("source", "tool"))
HOST_TOOL_DURATION = Spec(
    "pipemon_host_tool_duration_seconds", "gauge",
    "Time taken by the tool's command at the last poll.", ("source", "tool"))
HOST_TOOL_INFO = Spec(
    "pipemon_host_tool_info", "gauge",
    "Always 1 while the tool is up; `version` is read from its output.",
    ("source", "tool", "version"))
HOST_TOOL_FAILURES = Spec(
    "pipemon_host_tool_failures_total", "counter",
    "Failed runs of the tool's command, by reason.", ("source", "tool", "reason"))
HOST_TOOLS = Spec(
    "pipemon_host_tools", "gauge",
    "Tools configured on the host by role (`transcoder`: the host cannot transcode without one"
    " of them up).", ("source", "role"))
HOST_TOOLS_UP = Spec(
    "pipemon_host_tools_up", "gauge",
    "Tools of that role up at the last poll.", ("source", "role"))
HOST_SCRATCH_WRITABLE = Spec(
    "pipemon_host_scratch_writable", "gauge",
    "1 if a file could be created and deleted in the directory at the last poll.",
    ("source", "path"))
HOST_SCRATCH_BYTES = Spec(
    "pipemon_host_scratch_bytes", "gauge",
    "Total size of the regular files under the directory.", ("source", "path"))
HOST_SCRATCH_FILES = Spec(
    "pipemon_host_scratch_files", "gauge",
    "Regular files under the directory.", ("source", "path"))
HOST_SCRATCH_OLD_FILES = Spec(
    "pipemon_host_scratch_old_files", "gauge",
    "Regular files under the directory last modified longer ago than old_after.",
    ("source", "path"))
HOST_SCRATCH_WALK_TRUNCATED = Spec(
    "pipemon_host_scratch_walk_truncated", "gauge",
    "1 if the walk stopped at max_entries or at its deadline (bytes and files are lower bounds).",
    ("source", "path"))
HOST_SCRATCH_FREE_BYTES = Spec(
    "pipemon_host_scratch_free_bytes", "gauge",
    "Bytes available to unprivileged users on the directory's filesystem.", ("source", "path"))
HOST_SCRATCH_FS_SIZE = Spec(
    "pipemon_host_scratch_filesystem_size_bytes", "gauge",
    "Size of the directory's filesystem.", ("source", "path"))
HOST_SCRATCH_ERRORS = Spec(
    "pipemon_host_scratch_errors_total", "counter",
    "Polls that found the directory unusable, by reason.", ("source", "path", "reason"))

CONFIG_RELOAD_OK = Spec(
    "pipemon_config_last_reload_successful", "gauge",
    "1 if the last reload of the config (SIGHUP) and of the web config succeeded, 0 if a new"
    " file was refused.", ())
CONFIG_RELOAD_TIME = Spec(
    "pipemon_config_last_reload_success_timestamp_seconds", "gauge",
    "Unix time of the last successful config load (start or reload).", ())

SELF_SPECS = (BUILD_INFO, SOURCE_UP, SOURCE_POLL_DURATION, SOURCE_POLL_ERRORS,
              SOURCE_LAST_SUCCESS, FOLDED_LABEL_VALUES, CONFIG_RELOAD_OK, CONFIG_RELOAD_TIME)


class Families:
    """The families of one scrape, one per metric name, however many sources feed it."""

    def __init__(self, constant: ConstantLabels | None = None) -> None:
        self._families: dict[str, Metric] = {}
        self._constant = constant or {}

    def __call__(self, spec: Spec) -> Metric:
        family = self._families.get(spec.name)
        if family is None:
            family = self._families[spec.name] = spec.family(self._constant)
        return family

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class CounterSet:
    """Monotonic totals keyed by label values. Not thread-safe: guard with the owner's lock."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def ensure(self, labels: tuple[str, ...]) -> None:
        self.values.setdefault(labels, 0.0)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def emit(self, family: Metric, prefix: tuple[str, ...]) -> None:
        for labels, value in sorted(self.values.items()):
            family.add_metric([*prefix, *labels], value)


class HistogramSet:
    """Histograms keyed by label values, with fixed buckets. Guard with the owner's lock."""

    def __init__(self, buckets: Iterable[float], floor: float | None = 0.0) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.floor = floor  # lowest value observed (None: levels, which are negative)
        # rendered once, not per scrape
        self._le = tuple(floatToGoString(b) for b in (*self.bounds, math.inf))
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._text: dict[tuple[str, ...], _SeriesText] = {}

    def ensure(self, labels: tuple[str, ...]) -> None:
        if labels not in self._counts:
            self._counts[labels] = [0] * (len(self.bounds) + 1)
            self._sums[labels] = 0.0

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        if value is None or math.isnan(value):
            return
        if self.floor is not None:  # clock skew between writers must not give negative durations
            value = max(value, self.floor)
        self.ensure(labels)
        self._counts[labels][bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self._sums[labels] += value
        if labels in self._text:
            self._text[labels].samples = None  # stale: rendered again at the next emit

    def emit(self, family: HistogramFamily, prefix: tuple[str, ...]) -> None:
        constant = family.constant.get(prefix[0]) if family.constant else None
        key = (family.name, prefix, constant)
        for labels in sorted(self._counts):
            text = self._text.get(labels)
            if text is None or text.key != key:
                text = self._text[labels] = _SeriesText(family, key, labels, self._le)
            if text.samples is None:
                text.render(family.name, self._counts[labels], self._sums[labels])
            family.samples.extend(text.samples)
            family.lines.append(text.lines)
            family.lined += len(text.samples)


class _SeriesText:
    """One histogram series as HistogramMetricFamily.add_metric makes its samples and
    encoders.py writes its lines. Between observations nothing changes; at one, only the values
    do: the label dicts and the start of each line up to its value are kept."""

    __slots__ = ("key", "lines", "per_bucket", "samples", "series", "starts")

    def __init__(self, family: HistogramFamily, key: tuple, labels: tuple[str, ...],
                 le: tuple[str, ...]) -> None:
        name, prefix, constant = key  # the family, the labels before `labels`, the source's
        self.key = key
        self.series = dict(zip(family.label_names, (*prefix, *labels), strict=True))
        self.series.update(constant or {})
        self.per_bucket = [{**self.series, "le": bound} for bound in le]
        self.starts = [*(line_start(name + "_bucket", d) for d in self.per_bucket),
                       line_start(name + "_count", self.series),
                       line_start(name + "_sum", self.series)]
        self.samples: list[Sample] | None = None  # None: render before use
        self.lines = ""

    def render(self, name: str, counts: list[int], total: float) -> None:
        cumulative = list(itertools.accumulate(counts))
        self.samples = [Sample(name + "_bucket", d, c)
                        for d, c in zip(self.per_bucket, cumulative, strict=True)]
        self.samples += [Sample(name + "_count", self.series, cumulative[-1]),
                         Sample(name + "_sum", self.series, total)]
        self.lines = "".join(f"{start}{_count_text(value)}\n" for start, value in
                             zip(self.starts, (*cumulative, cumulative[-1], total), strict=True))


def _count_text(value: float) -> str:
    """floatToGoString(value), without its float() and repr() for the common small count."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"
    return floatToGoString(value)


MAX_LABEL_LENGTH = 128


def label_value(raw) -> str:
    """A label value read from data: text, and not absurdly long. A long value keeps its start
    and a short hash of the whole, so two long names that share a start stay two series."""
    text = raw if isinstance(raw, str) else "" if raw is None else str(raw)
    if not text.isascii():  # a lone surrogate (JSON can hold one) could not be rendered
        text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= MAX_LABEL_LENGTH:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8]
    return f"{text[:MAX_LABEL_LENGTH - 9]}~{digest}"


class LabelCap:
    """Admits at most `limit` distinct values of a label read from data; the rest become 'other'.

    Admission is for the process lifetime, so a counter's label set never churns. The folded
    values are remembered up to a bound, so the diagnostic cannot itself grow without limit.
    """

    MAX_TRACKED_FOLDED = 10_000

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[str] = set()
        self.folded: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, raw) -> str:
        value = label_value(raw)
        with self._lock:
            if value in self._admitted:
                return value
            if len(self._admitted) < self.limit:
                self._admitted.add(value)
                return value
            if len(self.folded) < self.MAX_TRACKED_FOLDED:
                self.folded.add(value)
            return OTHER


LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Labels the Prometheus server sets on every series it scrapes (the Prometheus Operator's
# ServiceMonitor adds the Kubernetes ones): a series that has one already keeps it as
# `exported_<name>`, which no rule or dashboard reads.
TARGET_LABELS = ("job", "instance", "namespace", "service", "pod", "container", "endpoint")
# Labels pipemon's alert rules and Prometheus set on alerts.
RULE_LABELS = ("alertname", "alertstate", "severity", "slo", "escalation")


def own_labels() -> frozenset[str]:
    """Every label name pipemon's series carry (from the specs here), plus the histogram's
    and summary's."""
    return frozenset({"le", "quantile"}.union(
        *(spec.labels for spec in globals().values() if isinstance(spec, Spec))))


def constant_label_problem(name: str) -> str | None:
    """Why `name` cannot be a source's constant label, or None."""
    if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
        return ("not a Prometheus label name (letters, digits and '_', not starting with a"
                " digit or '__')")
    if name in own_labels():
        return "a label of pipemon's own series: choose another name"
    if name in RULE_LABELS:
        return f"the rules set {name!r} on alerts: choose another name"
    if name in TARGET_LABELS:
        return (f"Prometheus sets {name!r} on every series it scrapes (these would get"
                f" exported_{name}): choose another name")
    return None


def add_sample(family: GaugeFamily, labels: dict[str, str], value: float) -> None:
    """A sample with its own label names (pipemon_check_value: each check has its columns)."""
    labels = dict(labels)
    labels.update(getattr(family, "constant", {}).get(labels["source"], {}))
    family.samples.append(Sample(family.name, labels, value))
