"""`kind: trigger_dev`: a Trigger.dev environment's queues and runs, via its management REST API.

Queue depth lives in Trigger.dev's Redis, not in a table we could read, so this source asks the
API (Trigger.dev Cloud or a self-hosted base URL, with the environment's secret key):

- `GET /api/v1/queues?page=N&perPage=M` -> `{"data": [{"name", "running", "queued", "paused",
  "concurrencyLimit", ...}], "pagination": {"currentPage", "totalPages", "count"}}`: the gauges.
- `GET /api/v1/runs?filter[status]=...&filter[createdAt][from]=ISO&page[size]=N&page[after]=ID`
  -> `{"data": [{"id", "status", "taskIdentifier", "createdAt", "startedAt", "finishedAt",
  "delayedUntil", ...}], "pagination": {"next", "previous"}}`: active runs (stuck runs, starts)
  and finished runs (counters, run times).

The runs list filters by creation time only. A run that finishes after the last poll was either
active at the last poll or created since, so each poll lists the finished runs created since the
oldest run that was active at the previous poll, and counts each run id once. Run-based series
are labelled with the task identifier, which is also the name of the task's own queue. Times
come from the API server's clock (the HTTP Date header), not the exporter's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

from pipemon import metrics as m
from pipemon.errors import PollError, redact
from pipemon.schema import (
    described,
    positive_duration,
    positive_int,
    secret,
    string,
    string_list,
    value,
)
from pipemon.secret import Secret
from pipemon.sources.base import Source, SourceConfig
from pipemon.sources.jobs import JobCounters, emit_gauges

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "DELAYED")
# Trigger.dev's final run statuses in pipemon's outcomes (pipemon.sources.jobs.OUTCOMES)
OUTCOME_OF = {"COMPLETED": "succeeded", "CANCELED": "cancelled", "FAILED": "failed",
              "CRASHED": "failed", "SYSTEM_FAILURE": "failed", "TIMED_OUT": "failed",
              "EXPIRED": "failed"}
# A run created just before the bound, as the API's clock saw it, must still be listed.
CLOCK_MARGIN = timedelta(seconds=60)
ERROR_REASONS = ("connect", "timeout", "auth", "throttled", "server_error", "http_error",
                 "protocol", "internal")


@described("http:// or https:// URL")
def _base_url(value) -> str:
    text = string(value).rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


@dataclass(frozen=True, kw_only=True)
class TriggerDevConfig(SourceConfig):
    base_url: str = value("The API: Trigger.dev Cloud, or your self-hosted instance's URL.",
                          _base_url, "https://api.trigger.dev")
    secret_key: Secret = secret("The environment's secret API key (`tr_prod_...`).")
    queues: tuple[str, ...] = value("Only these queues and tasks.", string_list, (),
                                    shown_default="all")
    stuck_after: float = value("A run executing for longer is stuck.", positive_duration,
                               1800.0)
    page_size: int = value("Items per page of the queues and runs lists.", positive_int, 100)
    max_pages: int = value("Pages read per list and poll at most.", positive_int, 20)
    max_queues: int = value("Distinct queue names exported at most; later ones are `other`.",
                            positive_int, 100)

    def secrets(self) -> list[str]:
        return [self.secret_key.reveal()] if self.secret_key else []


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class Api:
    """GET JSON from the management API; every failure leaves as a PollError with a reason."""

    def __init__(self, config: TriggerDevConfig):
        self._base = config.base_url
        self._key = config.secret_key
        self._secrets = config.secrets()
        self.not_before = 0.0  # monotonic time before which Retry-After asks us not to call

    def get(self, path: str, params: dict, deadline: float) -> tuple[dict, datetime]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PollError("timeout", "poll deadline passed before the next request")
        url = f"{self._base}{path}?{urlencode(params, safe='[],')}"
        request = urllib.request.Request(url, headers={
            "Authorization": f"Bearer {self._key.reveal()}", "Accept": "application/json",
            "User-Agent": "pipemon"})
        try:
            with urllib.request.urlopen(request, timeout=remaining) as response:
                body, date = response.read(), response.headers.get("Date")
        except urllib.error.HTTPError as err:
            raise self._http_error(path, err) from None
        except TimeoutError:
            raise PollError("timeout", f"GET {path}: no answer within the timeout") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise PollError("timeout", f"GET {path}: no answer within the timeout") from None
            raise PollError("connect", redact(f"GET {path}: {err.reason}", self._secrets)) \
                from None
        except OSError as err:  # e.g. the connection reset mid-response
            raise PollError("connect", redact(f"GET {path}: {err}", self._secrets)) from None
        try:
            payload = json.loads(body)
            server_now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        except (ValueError, TypeError) as err:
            raise PollError("protocol", f"GET {path}: unreadable response: {err}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise PollError("protocol", f"GET {path}: response has no 'data' list")
        return payload, server_now

    def _http_error(self, path: str, err: urllib.error.HTTPError) -> PollError:
        where = f"GET {path}: HTTP {err.code}"
        if err.code in (401, 403):
            return PollError("auth", f"{where}: the secret key was refused")
        if err.code == 429:
            wait = _retry_after(err.headers.get("Retry-After"))
            self.not_before = time.monotonic() + wait
            return PollError("throttled", f"{where}: rate limited, retrying in {wait:.0f}s")
        if err.code >= 500:
            return PollError("server_error", where)
        return PollError("http_error", where)


def _retry_after(value: str | None, default: float = 60.0) -> float:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class TriggerSnapshot:
    jobs: dict[tuple[str, str], int]
    paused: dict[str, int]
    concurrency_limit: dict[str, int]
    stuck: dict[str, int]


class TriggerDevSource(Source):
    config_type = TriggerDevConfig
    specs = (m.QUEUE_JOBS, m.QUEUE_STUCK, m.QUEUE_PAUSED, m.QUEUE_CONCURRENCY_LIMIT,
             m.QUEUE_FINISHED, m.QUEUE_RUN_SECONDS, m.QUEUE_WAIT_SECONDS)
    error_reasons = ERROR_REASONS

    def __init__(self, config: TriggerDevConfig):
        super().__init__(config)
        self.config: TriggerDevConfig = config
        self.api = Api(config)
        self.queue_cap = m.LabelCap(config.max_queues)
        self._lock = threading.Lock()
        self._jobs = JobCounters()
        self._floor: datetime | None = None  # runs finished before pipemon started: not counted
        self._created_bound: datetime | None = None
        self._counted: dict[str, datetime] = {}  # finished run id -> createdAt
        self._started: dict[str, datetime] = {}  # run id whose start was observed -> createdAt

    def _wanted(self, name: str) -> bool:
        return not self.config.queues or name in self.config.queues

    def _queue_list(self, deadline: float) -> list[dict]:
        items, page = [], 1
        while True:
            payload, _ = self.api.get(
                "/api/v1/queues", {"page": page, "perPage": self.config.page_size}, deadline)
            items.extend(payload["data"])
            if page >= ((payload.get("pagination") or {}).get("totalPages") or 1):
                return items
            if page >= self.config.max_pages:
                log.warning("%s: more than %d pages of queues; the rest is not read",
                            self.name, page)
                return items
            page += 1

    def _runs(self, statuses, deadline, created_from: datetime | None = None):
        """Runs in `statuses` (created since `created_from`), and the API server's time."""
        params = {"filter[status]": ",".join(statuses), "page[size]": self.config.page_size}
        if created_from is not None:
            params["filter[createdAt][from]"] = created_from.astimezone(UTC).isoformat(
                timespec="seconds").replace("+00:00", "Z")
        items = []
        for _ in range(self.config.max_pages):
            payload, server_now = self.api.get("/api/v1/runs", params, deadline)
            items.extend(payload["data"])
            after = (payload.get("pagination") or {}).get("next")
            if not after:
                return items, server_now
            params = {**params, "page[after]": after}
        log.warning("%s: more than %d pages of runs; the rest is not read", self.name,
                    self.config.max_pages)
        return items, server_now

    def poll(self, deadline: float) -> TriggerSnapshot:
        if time.monotonic() < self.api.not_before:
            wait = self.api.not_before - time.monotonic()
            raise PollError("throttled", f"waiting {wait:.0f}s more, as Retry-After asked")
        queues = self._queue_list(deadline)
        active, server_now = self._runs(ACTIVE_STATUSES, deadline)
        first_poll = self._floor is None
        finished = [] if first_poll else self._runs(
            tuple(OUTCOME_OF), deadline, self._created_bound - CLOCK_MARGIN)[0]
        with self._lock:
            if first_poll:
                self._floor = server_now
                self._started.update({r["id"]: _time(r["createdAt"]) for r in active
                                      if r.get("startedAt")})
            snapshot = self._apply(queues, active, finished, server_now)
            created = [_time(r["createdAt"]) for r in active]
            self._created_bound = min([*created, server_now])
            self._forget_before(self._created_bound - 2 * CLOCK_MARGIN)
            return snapshot

    def _queue(self, name: str) -> str:
        queue = self.queue_cap(name)
        self._jobs.ensure(queue)
        return queue

    def _observe_start(self, run: dict, queue: str) -> None:
        started = _time(run.get("startedAt"))
        if started is None or run["id"] in self._started:
            return
        self._started[run["id"]] = _time(run["createdAt"])
        ready = max(filter(None, (_time(run["createdAt"]), _time(run.get("delayedUntil")))))
        self._jobs.started(queue, (started - ready).total_seconds())

    def _apply(self, queues, active, finished, server_now) -> TriggerSnapshot:
        jobs, paused, limits, stuck = {}, {}, {}, {}
        for q in queues:
            if not self._wanted(q["name"]):
                continue
            name = self._queue(q["name"])
            jobs[(name, "waiting")] = jobs.get((name, "waiting"), 0) + int(q.get("queued") or 0)
            jobs[(name, "running")] = jobs.get((name, "running"), 0) + int(q.get("running") or 0)
            paused[name] = 1 if q.get("paused") else 0
            if q.get("concurrencyLimit") is not None:
                limits[name] = int(q["concurrencyLimit"])
            stuck.setdefault(name, 0)
        stuck_before = server_now - timedelta(seconds=self.config.stuck_after)
        for run in active:
            if not self._wanted(run["taskIdentifier"]):
                continue
            queue = self._queue(run["taskIdentifier"])
            started = _time(run.get("startedAt"))
            if run["status"] == "EXECUTING" and started and started < stuck_before:
                stuck[queue] = stuck.get(queue, 0) + 1
            self._observe_start(run, queue)
        for run in finished:
            finished_at = _time(run.get("finishedAt"))
            if (not self._wanted(run["taskIdentifier"]) or run["id"] in self._counted
                    or finished_at is None or finished_at <= self._floor):
                continue
            queue, outcome = self._queue(run["taskIdentifier"]), OUTCOME_OF[run["status"]]
            self._counted[run["id"]] = _time(run["createdAt"])
            started = _time(run.get("startedAt"))
            self._jobs.finished(queue, outcome, None if started is None
                                else (finished_at - started).total_seconds())
            self._observe_start(run, queue)
        return TriggerSnapshot(jobs, paused, limits, stuck)

    def _forget_before(self, bound: datetime) -> None:
        """Runs created before the bound are never listed again: no need to remember them."""
        self._counted = {k: v for k, v in self._counted.items() if v >= bound}
        self._started = {k: v for k, v in self._started.items() if v >= bound}

    def collect(self, families: m.Families, snapshot: TriggerSnapshot | None) -> None:
        if snapshot is not None:
            emit_gauges(families, self.name, snapshot.jobs, (
                (m.QUEUE_STUCK, snapshot.stuck), (m.QUEUE_PAUSED, snapshot.paused),
                (m.QUEUE_CONCURRENCY_LIMIT, snapshot.concurrency_limit)))
        with self._lock:
            self._jobs.emit(families, self.name)
        families(m.FOLDED_LABEL_VALUES).add_metric([self.name, "queue"],
                                                   len(self.queue_cap.folded))

    def describe(self) -> dict:
        return {"target": self.config.base_url, "table": "queues and runs API",
                "missing": "scheduled/retrying job counts and the oldest waiting age: the "
                           "queues API reports only queued and running"}
