"""`kind: trigger_dev`: a Trigger.dev environment's queues and runs, via its management REST API.

Queue depth lives in Trigger.dev's Redis, not in a table we could read, so this source asks the
API (Trigger.dev Cloud or a self-hosted base URL, with the environment's secret key; the HTTP
side, its auth, version header and rate limit, is `trigger_api.py`). Per poll:

- `GET /api/v1/queues` (paged): running and queued runs, paused, concurrency limit: the gauges.
  Its names lose their `task/` prefix, so a task's own queue and a custom queue can share a
  name; they are told apart by `type`, and labelled as Trigger.dev names them inside:
  `task/<task id>` for a task's own queue, the bare name for a custom one.
- per queue, `GET /api/v1/runs?filter[queue]=...`: the active runs (stuck runs, starts), and the
  finished runs created since a bound (counters, run times). Run items carry no queue, so the
  queue filter is what labels them; each run id is counted once.

The runs list reads a replicated copy (ClickHouse) that lags behind the run store and filters by
creation time only (the last 7 days unless told otherwise), so the bound must not depend on what
one answer happened to hold:
- the active list is asked from the epoch, so runs older than 7 days are seen;
- every name either API version uses is asked for (a retrying run is `REATTEMPTING` in one);
- a run once seen active stays pending until it is counted: while it is absent from both lists
  (the copy lagging), the finished list keeps reaching back to its creation;
- runs never seen active were created after the previous poll, or within `replication_lag`
  before it: the finished list reaches back that far too.
Times come from the API server's clock (the HTTP Date header), not the exporter's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from pipemon import metrics as m
from pipemon.errors import PollError
from pipemon.schema import (
    described,
    duration,
    positive_duration,
    positive_int,
    secret,
    section,
    string,
    string_list,
    value,
)
from pipemon.secret import Secret
from pipemon.sources.base import Source, SourceConfig
from pipemon.sources.jobs import JobBuckets, JobCounters, emit_gauges
from pipemon.sources.recent import ExactQuantiles
from pipemon.sources.trigger_api import Api, ApiError
from pipemon.verdict import WARNING, Finding

log = logging.getLogger(__name__)

# `filter[status]` takes the names of both API versions, whatever the version header says, and
# maps each to internal statuses (apps/webapp/app/presenters/v3/ApiRunListPresenter.server.ts):
# every name is needed to see every run (EXECUTING does not match a retrying run, FAILED not an
# interrupted one).
ACTIVE_STATUSES = ("PENDING_VERSION", "WAITING_FOR_DEPLOY", "DELAYED", "QUEUED", "DEQUEUED",
                   "EXECUTING", "REATTEMPTING", "WAITING", "FROZEN")
OUTCOME_OF = {"COMPLETED": "succeeded", "CANCELED": "cancelled", "FAILED": "failed",
              "INTERRUPTED": "failed", "CRASHED": "failed", "SYSTEM_FAILURE": "failed",
              "TIMED_OUT": "failed", "EXPIRED": "failed"}
EXECUTING = ("EXECUTING", "REATTEMPTING")  # holding a worker: stuck when it lasts
# filter[createdAt][from] in epoch ms for "since ever": any bound lifts the 7-day default, but 0
# would not, being falsy in the server's JavaScript (SharedFilters.tsx `if (from)`).
EPOCH = "1"
# A run created just before a bound, as the API's clock saw it, must still be listed.
CLOCK_MARGIN = timedelta(seconds=60)
# A server without the queue metrics endpoint (before 2026-08) is asked again this much later.
METRICS_RECHECK = 3600.0
# A run seen active, then in neither list for this long, is given up (deleted, or its project
# gone): the finished list stops reaching back for it.
GIVE_UP_AFTER = timedelta(hours=1)
MAX_PAGE_SIZE = 100  # the runs list answers a larger page[size] with a 400
ERROR_REASONS = ("connect", "timeout", "auth", "throttled", "server_error", "http_error",
                 "protocol", "internal")


@described("http:// or https:// URL")
def _base_url(value) -> str:
    text = string(value).rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


@described(f"integer 1-{MAX_PAGE_SIZE}")
def _page_size(value) -> int:
    number = positive_int(value)
    if number > MAX_PAGE_SIZE:
        raise ValueError(f"Trigger.dev's runs list takes at most {MAX_PAGE_SIZE} per page (it"
                         f" answers more with HTTP 400), got {number}")
    return number


@described("duration, 0s or 1m-7d")
def _metrics_period(value) -> float:
    seconds = duration(value)
    if seconds and not 60 <= seconds <= 7 * 86400:
        raise ValueError(f"the metrics endpoint takes a period of 1m to 7d, got {value!r}")
    return seconds


def _shorthand(seconds: float) -> str:
    """`5m`, `1h`: the period the metrics endpoint takes (`^[1-9]\\d*[smhdw]$`)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@dataclass(frozen=True, kw_only=True)
class TriggerDevConfig(SourceConfig):
    base_url: str = value("The API: Trigger.dev Cloud, or your self-hosted instance's URL.",
                          _base_url, "https://api.trigger.dev")
    secret_key: Secret = secret("The environment's secret API key (`tr_prod_...`).")
    queues: tuple[str, ...] = value(
        "Only these queues: `task/<task id>` or the task id for a task's own queue, the name"
        " for a custom queue.", string_list, (), shown_default="all")
    stuck_after: float = value("A run executing for longer is stuck.", positive_duration,
                               1800.0)
    buckets: JobBuckets | None = section(
        JobBuckets, "Histogram bounds of run and wait times (default: a layout for media"
        " work).")
    exact_quantiles: ExactQuantiles | None = section(
        ExactQuantiles, "Exact run- and wait-time quantiles per queue over a recent window"
        " (default: none; docs/exporter.md).")
    replication_lag: float = value(
        "How far the runs list (a replicated copy) may lag behind the run store; each poll"
        " looks this far back for runs it has not seen.", duration, 300.0)
    queue_metrics_period: float = value(
        "How often, and over what window, to read each queue's peak queued runs and throttled"
        " moments from `/api/v1/queues/{queue}/metrics` (servers since 2026-08; older ones are"
        " detected and skipped); 0s: never.", _metrics_period, 300.0)
    page_size: int = value("Items per page of the queues and runs lists.", _page_size,
                           MAX_PAGE_SIZE)
    max_pages: int = value("Pages read per list and poll at most.", positive_int, 20)
    max_queues: int = value("Distinct queue names exported at most; later ones are `other`.",
                            positive_int, 100)

    def secrets(self) -> list[str]:
        return [self.secret_key.reveal()] if self.secret_key else []


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def queue_key(item: dict) -> str:
    """The queue's name inside Trigger.dev, which `filter[queue]` takes and the label shows."""
    return f"task/{item['name']}" if item.get("type", "task") == "task" else item["name"]


@dataclass(frozen=True)
class QueueFigures:
    """What the queue metrics endpoint adds to polling, over its period."""

    peak_queued: int
    throttled: int


@dataclass(frozen=True)
class TriggerSnapshot:
    jobs: dict[tuple[str, str], int]
    paused: dict[str, int]
    concurrency_limit: dict[str, int]
    stuck: dict[str, int]


class TriggerDevSource(Source):
    config_type = TriggerDevConfig
    specs = (m.QUEUE_JOBS, m.QUEUE_STUCK, m.QUEUE_PAUSED, m.QUEUE_CONCURRENCY_LIMIT,
             m.QUEUE_FINISHED, m.QUEUE_RUN_SECONDS, m.QUEUE_WAIT_SECONDS,
             m.TRIGGER_PEAK_QUEUED, m.TRIGGER_THROTTLED, m.TRIGGER_RATELIMIT_REMAINING,
             m.TRIGGER_RATELIMIT_LIMIT, *m.QUEUE_WINDOW_SPECS)
    error_reasons = ERROR_REASONS

    def __init__(self, config: TriggerDevConfig):
        super().__init__(config)
        self.config: TriggerDevConfig = config
        self.api = Api(config.base_url, config.secret_key, config.secrets())
        self.queue_cap = m.LabelCap(config.max_queues)
        self._lock = threading.Lock()
        self._jobs = JobCounters(buckets=config.buckets, exact=config.exact_quantiles)
        self._floor: datetime | None = None  # runs finished before pipemon started: not counted
        self._last_now: datetime | None = None  # the server's time at the last poll
        self._pending: dict[str, dict[str, datetime]] = {}  # queue -> run id -> createdAt
        self._absent_since: dict[str, datetime] = {}  # pending run id -> first poll without it
        self._counted: dict[str, datetime] = {}  # finished run id -> createdAt
        self._started: dict[str, datetime] = {}  # run id whose start was observed -> createdAt
        self._figures: dict[str, QueueFigures] = {}  # queue label -> the last figures read
        self._figures_due = 0.0  # monotonic time of the next read of the queue metrics

    def _wanted(self, item: dict) -> bool:
        wanted = self.config.queues
        return not wanted or item["name"] in wanted or queue_key(item) in wanted

    # --- reading ---

    def _queue_list(self, deadline: float) -> tuple[list[dict], datetime]:
        items, page = [], 1
        while True:
            answer = self.api.get("/api/v1/queues",
                                  {"page": page, "perPage": self.config.page_size}, deadline)
            data, pages = answer.payload.get("data"), answer.payload.get("pagination") or {}
            if not isinstance(data, list):
                raise PollError("protocol", "GET /api/v1/queues: the response has no data list")
            items.extend(data)
            if page >= (pages.get("totalPages") or 1):
                return items, answer.server_now
            if page >= self.config.max_pages:
                log.warning("%s: more than %d pages of queues; the rest is not read",
                            self.name, page)
                return items, answer.server_now
            page += 1

    def _runs(self, queue: str, statuses, created_from: str, deadline: float) -> list[dict]:
        """The runs of `queue` in `statuses` created since `created_from` (epoch ms)."""
        params = {"filter[queue]": queue, "filter[status]": ",".join(statuses),
                  "filter[createdAt][from]": created_from, "page[size]": self.config.page_size}
        items = []
        for _ in range(self.config.max_pages):
            payload = self.api.get("/api/v1/runs", params, deadline).payload
            data = payload.get("data")
            if not isinstance(data, list):
                raise PollError("protocol", "GET /api/v1/runs: the response has no data list")
            items.extend(data)
            after = (payload.get("pagination") or {}).get("next")
            if not after:
                return items
            params = {**params, "page[after]": after}
        log.warning("%s: more than %d pages of runs of %s; the rest is not read", self.name,
                    self.config.max_pages, queue)
        return items

    def _bound(self, queue: str, active_ids: set[str]) -> str:
        """Where the finished list of `queue` must start: before every run that may have
        finished since the last poll and is not counted yet."""
        bound = self._last_now - timedelta(seconds=self.config.replication_lag)
        absent = [created for run_id, created in self._pending.get(queue, {}).items()
                  if run_id not in active_ids]
        return _ms(min([bound, *absent]) - CLOCK_MARGIN)

    def poll(self, deadline: float) -> TriggerSnapshot:
        if self.api.not_before > (now := time.monotonic()):
            raise PollError("throttled", f"waiting {self.api.not_before - now:.1f}s more, until"
                                         " the rate limit resets")
        queues, server_now = self._queue_list(deadline)
        queues = [item for item in queues if self._wanted(item)]
        first_poll = self._floor is None
        active: dict[str, list[dict]] = {}
        finished: dict[str, list[dict]] = {}
        for item in queues:
            key = queue_key(item)
            active[key] = self._runs(key, ACTIVE_STATUSES, EPOCH, deadline)
            if not first_poll:
                ids = {run["id"] for run in active[key]}
                finished[key] = self._runs(key, tuple(OUTCOME_OF), self._bound(key, ids),
                                           deadline)
        if self.config.queue_metrics_period and time.monotonic() >= self._figures_due:
            self._read_figures(queues, deadline)
        with self._lock:
            if first_poll:
                self._floor = server_now
                self._started.update({run["id"]: _time(run["createdAt"])
                                      for runs in active.values() for run in runs
                                      if run.get("startedAt")})
            snapshot = self._apply(queues, active, finished, server_now)
            self._last_now = server_now
            return snapshot

    def _read_figures(self, queues: list[dict], deadline: float) -> None:
        """Each queue's figures from the metrics endpoint. A server without it (a 404) is asked
        again an hour later; any other failure leaves them out until the next read."""
        period = self.config.queue_metrics_period
        figures = {}
        try:
            for item in queues:
                path = f"/api/v1/queues/{quote(item['name'], safe='')}/metrics"
                payload = self.api.get(path, {"type": item.get("type", "task"),
                                              "period": _shorthand(period)}, deadline).payload
                figures[self.queue_cap(queue_key(item))] = QueueFigures(
                    int(payload.get("peakQueued") or 0), int(payload.get("throttledCount") or 0))
        except PollError as err:
            if isinstance(err, ApiError) and err.status == 404:
                log.info("%s: %s has no queue metrics endpoint (added 2026-08): asking again in"
                         " an hour", self.name, self.config.base_url)
                self._figures_due = time.monotonic() + METRICS_RECHECK
            else:
                log.warning("%s: queue metrics not read (%s): %s", self.name, err.reason,
                            err.message, extra={"source": self.name, "reason": err.reason})
                self._figures_due = time.monotonic() + period
            figures = {}
        else:
            self._figures_due = time.monotonic() + period
        with self._lock:
            self._figures = figures

    # --- counting ---

    def _queue(self, key: str) -> str:
        label = self.queue_cap(key)
        self._jobs.ensure(label)
        return label

    def _observe_start(self, run: dict, label: str) -> None:
        started = _time(run.get("startedAt"))
        if started is None or run["id"] in self._started:
            return
        self._started[run["id"]] = _time(run["createdAt"])
        ready = max(filter(None, (_time(run["createdAt"]), _time(run.get("delayedUntil")))))
        self._jobs.started(label, (started - ready).total_seconds(), at=started)

    def _apply(self, queues, active, finished, server_now) -> TriggerSnapshot:
        jobs, paused, limits, stuck = {}, {}, {}, {}
        self._jobs.expire(server_now)
        for item in queues:
            label = self._queue(queue_key(item))
            for state, field in (("waiting", "queued"), ("running", "running")):
                jobs[(label, state)] = jobs.get((label, state), 0) + int(item.get(field) or 0)
            paused[label] = max(paused.get(label, 0), 1 if item.get("paused") else 0)
            if item.get("concurrencyLimit") is not None:
                limits[label] = int(item["concurrencyLimit"])
            stuck.setdefault(label, 0)
        stuck_before = server_now - timedelta(seconds=self.config.stuck_after)
        for key, runs in active.items():
            label = self._queue(key)
            pending = self._pending.setdefault(key, {})
            for run in runs:
                started = _time(run.get("startedAt"))
                if run["status"] in EXECUTING and started and started < stuck_before:
                    stuck[label] = stuck.get(label, 0) + 1
                self._observe_start(run, label)
                if run["id"] not in self._counted:
                    pending[run["id"]] = _time(run["createdAt"])
        for key, runs in finished.items():
            label = self._queue(key)
            for run in runs:
                self._count(run, label, self._pending.get(key, {}))
            self._give_up_absent(key, {run["id"] for run in active[key]}, server_now)
        # A queue gone from the list (deleted, or no longer wanted) takes its pending runs along.
        self._pending = {key: runs for key, runs in self._pending.items() if key in active}
        pending_ids = {run_id for runs in self._pending.values() for run_id in runs}
        self._absent_since = {k: v for k, v in self._absent_since.items() if k in pending_ids}
        self._forget_old()
        return TriggerSnapshot(jobs, paused, limits, stuck)

    def _give_up_absent(self, key: str, active_ids: set[str], server_now: datetime) -> None:
        pending = self._pending.get(key, {})
        for run_id in list(pending):
            if run_id in active_ids:
                self._absent_since.pop(run_id, None)
                continue
            since = self._absent_since.setdefault(run_id, server_now)
            if server_now - since > GIVE_UP_AFTER:
                log.warning("%s: run %s of %s has been in neither the active nor the finished"
                            " runs for %s: no longer looked for", self.name, run_id, key,
                            GIVE_UP_AFTER)
                del pending[run_id]
                del self._absent_since[run_id]

    def _count(self, run: dict, label: str, pending: dict[str, datetime]) -> None:
        finished_at = _time(run.get("finishedAt"))
        outcome = OUTCOME_OF.get(run.get("status"))
        if run["id"] in self._counted or finished_at is None or outcome is None:
            return
        pending.pop(run["id"], None)
        self._absent_since.pop(run["id"], None)
        self._counted[run["id"]] = _time(run["createdAt"])
        if finished_at <= self._floor:
            return  # finished before pipemon started
        started = _time(run.get("startedAt"))
        self._jobs.finished(label, outcome, None if started is None
                            else (finished_at - started).total_seconds(), at=finished_at)
        self._observe_start(run, label)

    def _forget_old(self) -> None:
        """Ids created before every list's lower bound are never listed again as finished."""
        oldest = min((created for runs in self._pending.values() for created in runs.values()),
                     default=None)
        bound = (self._last_now or datetime.now(UTC)) - timedelta(
            seconds=self.config.replication_lag) - 2 * CLOCK_MARGIN
        if oldest is not None:
            bound = min(bound, oldest - CLOCK_MARGIN)
        self._counted = {k: v for k, v in self._counted.items() if v >= bound}
        self._started = {k: v for k, v in self._started.items() if v >= bound}

    def findings(self, snapshot: TriggerSnapshot) -> list[Finding]:
        return [Finding(WARNING, f"queue {queue}: {count} runs executing longer than"
                                 " stuck_after")
                for queue, count in sorted(snapshot.stuck.items()) if count]

    # --- exposition ---

    def collect(self, families: m.Families, snapshot: TriggerSnapshot | None) -> None:
        if snapshot is not None:
            emit_gauges(families, self.name, snapshot.jobs, (
                (m.QUEUE_STUCK, snapshot.stuck), (m.QUEUE_PAUSED, snapshot.paused),
                (m.QUEUE_CONCURRENCY_LIMIT, snapshot.concurrency_limit)))
        with self._lock:
            self._jobs.emit(families, self.name)
            figures = sorted(self._figures.items())
        families(m.FOLDED_LABEL_VALUES).add_metric([self.name, "queue"],
                                                   len(self.queue_cap.folded))
        for label, figure in figures:
            families(m.TRIGGER_PEAK_QUEUED).add_metric([self.name, label], figure.peak_queued)
            families(m.TRIGGER_THROTTLED).add_metric([self.name, label], figure.throttled)
        if self.api.ratelimit is not None:
            remaining, limit = self.api.ratelimit
            families(m.TRIGGER_RATELIMIT_REMAINING).add_metric([self.name], remaining)
            families(m.TRIGGER_RATELIMIT_LIMIT).add_metric([self.name], limit)

    def describe(self) -> dict:
        return {"target": self.config.base_url, "table": "queues and runs API",
                "missing": "scheduled/retrying job counts and the oldest waiting age: the "
                           "queues API reports only queued and running"}
