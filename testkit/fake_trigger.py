"""A local stand-in for Trigger.dev's management API that behaves as the real server does.

Mirrors github:triggerdotdev/trigger.dev at b082e44389337dc6505d590737a6df70867cc8f4
(2026-08-21); W = apps/webapp/app, C = packages/core/src/v3. Each part, and what it mirrors:

  request pipeline (FakeTrigger._respond)
    apps/webapp/server.ts L206-224 (HSTS/X-Robots-Tag, trailing slash -> 301), L252 (limiter);
    W/services/routeBuilders/apiBuilder.server.ts L295-467 (auth -> params -> query -> handler,
    400 "Query Error" with zod issues L338-369, thrown error -> 500 L448-465);
    W/entry.server.tsx L172 (an unmatched route is Remix's 404 HTML document)
  auth (FakeTrigger._authenticate)
    W/services/authorizationRateLimitMiddleware.server.ts L261-280 (no header: problem+json);
    internal-packages/rbac/src/bearerCredentials.ts L90-101, L263-273 (route-level 401s)
  rate limiter (TokenBucket)
    W/services/authorizationRateLimitMiddleware.server.ts L302-357 (bucket key, headers, 429);
    W/services/apiRateLimit.server.ts L23-39 (env-id bucket), L89-103; W/env.server.ts L705-707;
    W/services/rateLimiterCore.server.ts L33-39 + patches/@upstash__ratelimit.patch over
    @upstash/ratelimit 1.1.3 tokenBucket (remaining -1 when empty, reset = refilledAt+interval)
  API version and statuses (api_status, status_booleans, FILTER_TO_INTERNAL)
    W/api/versions.ts L13-55; W/presenters/v3/ApiRetrieveRunPresenter.server.ts L334-494;
    C/schemas/api.ts L1212-1239; W/presenters/v3/ApiRunListPresenter.server.ts L368-426;
    W/v3/taskStatus.ts L3-12 (final statuses)
  GET /api/v1/runs (RunStore, FakeTrigger._list_runs, _parse_run_list, _run_item)
    W/routes/api.v1.runs.ts L12-52; ApiRunListPresenter.server.ts L30-164 (params), L184-364;
    W/utils/zod.ts L3-22 (CoercedDate); W/components/runs/v3/SharedFilters.tsx L144-217;
    W/presenters/v3/NextRunListPresenter.server.ts L100, L174-305 (to clamped), L318-374;
    W/services/runsRepository/runsRepository.server.ts L269-289, L336-342;
    W/services/runsRepository/clickhouseRunsRepository.server.ts L122-230 (keyset pages),
    L240-336 (hydrate from Postgres, in-memory status filter), L414-532 (filters);
    W/services/runsRepository/runsCursor.server.ts L24-47; C/isomorphic/friendlyId.ts L241-324
  GET /api/v1/queues and /api/v1/queues/{q} (Queue, _list_queues, _retrieve_queue)
    W/routes/api.v1.queues.ts L14-67; W/routes/api.v1.queues.$queueParam.ts L8-57;
    W/presenters/v3/QueueListPresenter.server.ts L14-15, L64-156, L307-383;
    W/presenters/v3/QueueRetrievePresenter.server.ts L22-177;
    W/presenters/v3/queueListPagination.server.ts L23-33;
    W/v3/services/createBackgroundWorker.server.ts L396-410, L537-559, L620-636
  GET /api/v1/queues/{q}/metrics (QueueMetrics, _queue_metrics)
    W/routes/api.v1.queues.$queueParam.metrics.ts L13-143; W/v3/queueDepthSeries.ts L11-49

Two details a quick reading gets wrong (the source decides):
- Header values are whitespace-trimmed before use (Node/Fetch Headers), so "Authorization: "
  counts as missing (problem+json) and "Bearer " becomes the token "Bearer" ("Invalid API key");
  "Invalid or Missing API key" needs a value that only JS trim() empties (e.g. "Bearer \\xa0").
- A page[before] page comes back oldest-first: the ASC rows are sliced, not reversed
  (clickhouseRunsRepository L157, L227, L273-274).

Deliberate simplifications:
- One project, one environment (its slug from the key prefix), root secret key only: no JWTs,
  PATs, preview branches, rotated keys, 403s or org rate-limit overrides; GET only; no CORS
  headers, gzip, ETag; queue names sort in code-point order (not Postgres collation).
- Only the four routes above exist; any other path is the Remix 404 HTML (an older server).
- Runs carry no metadata, machine, region, batch, schedule, bulk action or error: filters on
  those match nothing. Costs, durationMs and depth are 0, taskKind "STANDARD".
- The "ClickHouse" replica copies a run snapshot after `replication_lag` seconds; no merges,
  no FINAL. Deletes are not replicated (the copy stays; hydration drops the run).
- Queue running/queued and metrics figures are whatever the test sets (no run engine);
  metrics figures apply to any period. Date strings are ISO 8601 (naive = UTC) or RFC 2822.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.utils import parsedate_to_datetime
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from testkit.net import LoopbackServer

CURRENT_API_VERSION = "2025-07-16"  # W/api/versions.ts L7, C/apiClient/version.ts
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000

# ---------------------------------------------------------------------------------------------
# Statuses: internal TaskRunStatus, the two API vocabularies, and the filter mapping
# ---------------------------------------------------------------------------------------------

INTERNAL_STATUSES = (
    "DELAYED", "PENDING", "PENDING_VERSION", "WAITING_FOR_DEPLOY", "DEQUEUED", "EXECUTING",
    "WAITING_TO_RESUME", "RETRYING_AFTER_FAILURE", "PAUSED", "CANCELED", "INTERRUPTED",
    "COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "SYSTEM_FAILURE", "CRASHED", "EXPIRED",
    "TIMED_OUT",
)
FINAL_STATUSES = frozenset({
    "CANCELED", "INTERRUPTED", "COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS",
    "SYSTEM_FAILURE", "CRASHED", "EXPIRED", "TIMED_OUT",
})
_SAME = {s: s for s in ("DELAYED", "PENDING_VERSION", "EXECUTING", "CANCELED", "SYSTEM_FAILURE",
                        "CRASHED", "EXPIRED", "TIMED_OUT")}
V1_OUTPUT = {**_SAME, "WAITING_FOR_DEPLOY": "WAITING_FOR_DEPLOY", "PENDING": "QUEUED",
             "DEQUEUED": "EXECUTING", "RETRYING_AFTER_FAILURE": "REATTEMPTING",
             "PAUSED": "FROZEN", "WAITING_TO_RESUME": "FROZEN",
             "COMPLETED_SUCCESSFULLY": "COMPLETED", "COMPLETED_WITH_ERRORS": "FAILED",
             "INTERRUPTED": "INTERRUPTED"}
V2_OUTPUT = {**_SAME, "WAITING_FOR_DEPLOY": "PENDING_VERSION", "PENDING": "QUEUED",
             "DEQUEUED": "DEQUEUED", "RETRYING_AFTER_FAILURE": "EXECUTING",
             "PAUSED": "WAITING", "WAITING_TO_RESUME": "WAITING",
             "COMPLETED_SUCCESSFULLY": "COMPLETED", "COMPLETED_WITH_ERRORS": "FAILED",
             "INTERRUPTED": "FAILED"}
RUN_STATUS_V2 = ("PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "COMPLETED",
                 "CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE", "DELAYED", "EXPIRED",
                 "TIMED_OUT")
RUN_STATUS_V1 = ("PENDING_VERSION", "WAITING_FOR_DEPLOY", "QUEUED", "EXECUTING", "REATTEMPTING",
                 "FROZEN", "COMPLETED", "CANCELED", "FAILED", "CRASHED", "INTERRUPTED",
                 "SYSTEM_FAILURE", "DELAYED", "EXPIRED", "TIMED_OUT")
# apiStatusToRunStatuses: NOT the inverse of the output maps
FILTER_TO_INTERNAL = {
    "DELAYED": ("DELAYED",), "PENDING_VERSION": ("PENDING_VERSION",),
    "WAITING_FOR_DEPLOY": ("WAITING_FOR_DEPLOY",), "QUEUED": ("PENDING",),
    "EXECUTING": ("EXECUTING",), "REATTEMPTING": ("RETRYING_AFTER_FAILURE",),
    "FROZEN": ("PAUSED", "WAITING_TO_RESUME"), "CANCELED": ("CANCELED",),
    "COMPLETED": ("COMPLETED_SUCCESSFULLY",), "SYSTEM_FAILURE": ("SYSTEM_FAILURE",),
    "INTERRUPTED": ("INTERRUPTED",), "CRASHED": ("CRASHED",),
    "FAILED": ("COMPLETED_WITH_ERRORS",), "EXPIRED": ("EXPIRED",), "TIMED_OUT": ("TIMED_OUT",),
    "DEQUEUED": ("DEQUEUED",), "WAITING": ("WAITING_TO_RESUME",),
}
MACHINE_PRESETS = ("micro", "small-1x", "small-2x", "medium-1x", "medium-2x", "large-1x",
                   "large-2x")


def api_status(internal: str, api_version: str) -> str:
    """apiStatusFromRunStatus: V2 names only for exactly CURRENT_API_VERSION."""
    return (V2_OUTPUT if api_version == CURRENT_API_VERSION else V1_OUTPUT)[internal]


def status_booleans(status: str) -> dict[str, bool]:
    """apiBooleanHelpersFromRunStatus, from the API status (key order as the server's)."""
    completed = status in ("COMPLETED", "CANCELED", "FAILED", "CRASHED", "INTERRUPTED",
                           "SYSTEM_FAILURE")
    return {
        "isQueued": status in ("QUEUED", "WAITING_FOR_DEPLOY", "DELAYED", "PENDING_VERSION"),
        "isExecuting": status in ("EXECUTING", "REATTEMPTING", "FROZEN", "DEQUEUED"),
        "isCompleted": completed,
        "isFailed": completed and status != "COMPLETED",
        "isSuccess": completed and status == "COMPLETED",
        "isCancelled": status == "CANCELED",
        "isWaiting": status == "WAITING",
    }


# ---------------------------------------------------------------------------------------------
# Times, and the JavaScript / zod behaviour the server's parsing relies on
# ---------------------------------------------------------------------------------------------

def iso(moment: datetime) -> str:
    """Date.toISOString(): UTC, milliseconds, Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"an aware datetime is needed, not {moment!r}")
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _iso_ms(ms: int) -> str:
    return iso(EPOCH + timedelta(milliseconds=ms))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_JS_SPACE = " \t\n\v\f\r\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
            "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_JS_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _js_number(text: str) -> float:
    """Number(string) as JavaScript computes it ("" is 0, junk is NaN)."""
    s = text.strip(_JS_SPACE)
    if not s:
        return 0.0
    for prefix, base, digits in (("0x", 16, "0-9a-f"), ("0o", 8, "0-7"), ("0b", 2, "01")):
        if re.fullmatch(f"{prefix}[{digits}]+", s, re.IGNORECASE):
            return float(int(s[2:], base))
    if re.fullmatch(r"[+-]?Infinity", s):
        return -math.inf if s.startswith("-") else math.inf
    return float(s) if _JS_DECIMAL.fullmatch(s) else math.nan


def _js_round(x: float) -> int:
    return math.floor(x + 0.5)  # Math.round


def _js_str(x: float | int) -> str:
    """Number.prototype.toString for the values seen here."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _js_values(obj: Any) -> Any:
    """JSON.stringify writes 4.0 as 4: integral floats become ints."""
    if isinstance(obj, float) and math.isfinite(obj) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _js_values(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_js_values(v) for v in obj]
    return obj


def _decode_uri_component(text: str) -> str:
    """decodeURIComponent: raises ValueError (URIError) on a malformed escape."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "%":
            pair = text[i + 1:i + 3]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", pair):
                raise ValueError(f"URIError: malformed {text!r}")
            out.append(int(pair, 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode("utf-8")  # invalid UTF-8 raises too, as URIError does


def _route_param(segment: str) -> str:
    """A Remix `$param`: decoded, a "/" kept as %2F (React Router decodePath, lenient), then the
    routes' own `.replace(/%2F/g, "/")`."""
    try:
        decoded = _decode_uri_component(segment).replace("/", "%2F")
    except ValueError:
        decoded = segment
    return decoded.replace("%2F", "/")


def _parse_duration_ms(text: str) -> float | None:
    """parse-duration 2.x (en units): the sum of number+unit pairs, None if nothing parses."""
    units = {"year": 365.25 * DAY_MS, "yr": 365.25 * DAY_MS, "y": 365.25 * DAY_MS,
             "month": 365.25 * DAY_MS / 12, "mo": 365.25 * DAY_MS / 12,
             "mth": 365.25 * DAY_MS / 12, "week": 7 * DAY_MS, "wk": 7 * DAY_MS,
             "w": 7 * DAY_MS, "day": DAY_MS, "d": DAY_MS, "hour": 3_600_000, "hr": 3_600_000,
             "h": 3_600_000, "minute": 60_000, "min": 60_000, "m": 60_000, "second": 1000,
             "sec": 1000, "s": 1000, "millisecond": 1, "millisec": 1, "ms": 1, "": 1,
             "microsecond": 1e-3, "microsec": 1e-3, "us": 1e-3, "µs": 1e-3,
             "nanosecond": 1e-6, "nanosec": 1e-6, "ns": 1e-6}
    text = re.sub(r"(\d)[_ ,](\d)", r"\1\2", text)
    total = None
    for number, unit in re.findall(r"(-?(?:\d+\.?\d*|\d*\.?\d+)(?:e[-+]?\d+)?)\s*([^\W\d_]*)",
                                   text, re.IGNORECASE):
        ratio = units.get(unit) or units.get(re.sub("s$", "", unit.lower()))
        if ratio:
            total = (total or 0) + float(number) * ratio
    return total


def _parse_js_date(text: str) -> int | None:
    """CoercedDate: a numeric string is epoch ms, anything else `new Date(str)`; None = Invalid
    Date."""
    number = _js_number(text)
    if not math.isnan(number):
        return int(number) if abs(number) <= 8.64e15 else None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _to_ms(moment)


# zod 3.25 issues, as fromZodError(...).details carries them
def _issue_custom(path: str, message: str) -> dict:
    return {"code": "custom", "message": message, "path": [path]}


def _issue_enum(path: str, received: str, options: tuple[str, ...]) -> dict:
    expected = " | ".join(f"'{o}'" for o in options)
    return {"received": received, "code": "invalid_enum_value", "options": list(options),
            "path": [path], "message": f"Invalid enum value. Expected {expected}, received "
                                       f"'{received}'"}


def _zod_number(path: str, raw: str, *, minimum: int | None = None,
                maximum: int | None = None) -> tuple[float | None, list[dict]]:
    """z.coerce.number().int().positive()[.min(m)][.max(n)]: every failing check is reported."""
    n = _js_number(raw)
    if math.isnan(n):
        return None, [{"code": "invalid_type", "expected": "number", "received": "nan",
                       "path": [path], "message": "Expected number, received nan"}]
    issues = []
    if not (math.isfinite(n) and n.is_integer()):
        issues.append({"code": "invalid_type", "expected": "integer", "received": "float",
                       "message": "Expected integer, received float", "path": [path]})
    if not n > 0:
        issues.append({"code": "too_small", "minimum": 0, "type": "number", "inclusive": False,
                       "exact": False, "message": "Number must be greater than 0",
                       "path": [path]})
    if minimum is not None and not n >= minimum:
        issues.append({"code": "too_small", "minimum": minimum, "type": "number",
                       "inclusive": True, "exact": False,
                       "message": f"Number must be greater than or equal to {minimum}",
                       "path": [path]})
    if maximum is not None and not n <= maximum:
        issues.append({"code": "too_big", "maximum": maximum, "type": "number",
                       "inclusive": True, "exact": False,
                       "message": f"Number must be less than or equal to {maximum}",
                       "path": [path]})
    return n, issues


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str | None
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, obj: Any) -> Reply:
    """Remix json(): compact JSON.stringify, application/json; charset=utf-8."""
    body = json.dumps(_js_values(obj), separators=(",", ":"), ensure_ascii=False)
    return Reply(status, body.encode(), "application/json; charset=utf-8")


def problem_reply(status: int, obj: dict) -> Reply:
    """The middleware's res.send(JSON.stringify(obj, null, 2)) with problem+json; Express 4
    appends the charset to a string body's type."""
    body = json.dumps(_js_values(obj), indent=2, ensure_ascii=False)
    return Reply(status, body.encode(), "application/problem+json; charset=utf-8")


def query_error(issues: list[dict]) -> Reply:
    return json_reply(400, {"error": "Query Error", "details": issues})


# Remix renders its error boundary; the exact document is not known, only that it is HTML
NOT_FOUND_HTML = (b'<!DOCTYPE html><html lang="en"><head><meta charSet="utf-8"/>'
                  b"<title>404 Not Found</title></head><body><h1>404</h1>"
                  b"<p>Not Found</p></body></html>")


def not_found_html() -> Reply:
    return Reply(404, NOT_FOUND_HTML, "text/html")


# ---------------------------------------------------------------------------------------------
# Rate limiter: @upstash/ratelimit tokenBucket as patched by Trigger.dev
# ---------------------------------------------------------------------------------------------

@dataclass
class _Bucket:
    refilled_at: int
    tokens: int
    expires_at: int


class TokenBucket:
    """One bucket per identifier; `limit` is the Lua script, one token per request."""

    def __init__(self, max_tokens: int, refill: int, refill_seconds: float):
        self.max_tokens = max_tokens
        self.refill = refill
        self.interval_ms = round(refill_seconds * 1000)
        self._buckets: dict[str, _Bucket] = {}

    def limit(self, identifier: str, now: int) -> tuple[bool, int, int, int]:
        """(success, limit, remaining - unclamped, reset in epoch ms)."""
        bucket = self._buckets.get(identifier)
        if bucket is not None and now >= bucket.expires_at:  # PEXPIRE ran out
            bucket = None
        refilled_at, tokens = (now, self.max_tokens) if bucket is None else \
            (bucket.refilled_at, bucket.tokens)
        if now >= refilled_at + self.interval_ms:
            refills = (now - refilled_at) // self.interval_ms
            tokens = min(self.max_tokens, tokens + refills * self.refill)
            refilled_at += refills * self.interval_ms
        if tokens < 1:  # the patch: `tokens < incrementBy`; nothing is written
            return False, self.max_tokens, -1, refilled_at + self.interval_ms
        remaining = tokens - 1
        expire = math.ceil((self.max_tokens - remaining) / self.refill) * self.interval_ms
        self._buckets[identifier] = _Bucket(refilled_at, remaining, now + expire)
        return True, self.max_tokens, remaining, refilled_at + self.interval_ms

    def empty(self, identifier: str, seconds: float, now: int) -> None:
        """Test hook: no tokens left, the next refill `seconds` from now."""
        reset = now + round(seconds * 1000)
        expire = math.ceil(self.max_tokens / self.refill) * self.interval_ms
        self._buckets[identifier] = _Bucket(reset - self.interval_ms, 0,
                                            max(now + expire, reset + 1))


# ---------------------------------------------------------------------------------------------
# Runs: Postgres (the truth) and the ClickHouse replica the list reads
# ---------------------------------------------------------------------------------------------

_CUID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_FRIENDLY_ALPHABET = "123456789abcdefghijkmnopqrstuvwxyz"  # friendlyId.ts L4


def _base36(n: int, width: int) -> str:
    digits = ""
    while n:
        n, d = divmod(n, 36)
        digits = _CUID_ALPHABET[d] + digits
    return digits.rjust(width, "0")[-width:]


@dataclass
class Run:
    id: str  # internal (cuid); ClickHouse run_id
    friendly_id: str  # "run_" + id
    task: str
    status: str  # internal TaskRunStatus
    created_ms: int
    updated_ms: int
    queue: str  # "task/<taskId>" or a custom queue's name
    started_ms: int | None = None
    completed_ms: int | None = None
    delay_until_ms: int | None = None
    is_test: bool = False
    tags: tuple[str, ...] = ()
    version: str | None = None


class RunStore:
    """TaskRun rows (the truth) and their ClickHouse copies, which follow `lag` seconds after
    each write unless paused."""

    def __init__(self):
        self.truth: dict[str, Run] = {}
        self.replica: dict[str, Run] = {}
        self.lag = 0.0
        self.paused = False
        self._pending: list[tuple[float, Run]] = []
        self._counter = itertools.count()

    def new_id(self) -> str:
        """A cuid-shaped internal id: c + time + counter + random (25 characters)."""
        rand = "".join(random.choices(_CUID_ALPHABET, k=12))
        return "c" + _base36(_now_ms(), 8) + _base36(next(self._counter), 4) + rand

    def write(self, run: Run) -> None:
        self.truth[run.id] = run
        self._pending.append((time.monotonic() + self.lag, replace(run)))

    def sync(self) -> None:
        if self.paused:
            return
        now = time.monotonic()
        due = [snapshot for at, snapshot in self._pending if at <= now]
        self._pending = [(at, snapshot) for at, snapshot in self._pending if at > now]
        for snapshot in due:
            self.replica[snapshot.id] = snapshot

    def flush(self) -> None:
        self.paused = False
        for _, snapshot in self._pending:
            self.replica[snapshot.id] = snapshot
        self._pending = []


def encode_cursor(created_ms: int, run_id: str) -> str:
    raw = json.dumps({"c": created_ms, "r": run_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _not_json(constant: str):
    raise ValueError(f"JSON.parse rejects {constant}")  # NaN, Infinity


def decode_cursor(cursor: str) -> tuple[int, str] | str:
    """(createdAtMs, runId) for a composite cursor, else the string itself (a legacy run id)."""
    chars = re.sub(r"[^A-Za-z0-9+/_-]", "", cursor.split("=", 1)[0])  # Buffer is lenient
    chars = chars[:len(chars) - len(chars) % 4] if len(chars) % 4 == 1 else chars
    try:
        raw = base64.b64decode(chars.translate(str.maketrans("-_", "+/")) + "=" * (-len(chars) % 4))
        value = json.loads(raw.decode("utf-8", "replace"), parse_constant=_not_json)
    except ValueError:
        return cursor
    if isinstance(value, dict):
        c, r = value.get("c"), value.get("r")
        c_ok = isinstance(c, int | float) and not isinstance(c, bool) and float(c).is_integer()
        if c_ok and isinstance(r, str) and r:
            return int(c), r
    return cursor


_RUN_FILTER_LISTS = ("filter[taskIdentifier]", "filter[version]", "filter[tag]",
                     "filter[queue]", "filter[region]", "filter[env]")


def _parse_run_list(params: dict[str, str]) -> tuple[dict, list[dict]]:
    """ApiRunListSearchParams: every issue, in the schema's key order."""
    issues: list[dict] = []
    out: dict[str, Any] = {}
    if "page[size]" in params:
        size, found = _zod_number("page[size]", params["page[size]"], minimum=1, maximum=100)
        issues += found
        out["size"] = size
    for key in ("page[after]", "page[before]"):
        out[key] = params.get(key)
    statuses = params.get("filter[status]")
    if statuses:
        tokens = statuses.split(",")
        bad = [t for t in tokens if t not in RUN_STATUS_V2 and t not in RUN_STATUS_V1]
        if bad:
            issues.append(_issue_custom("filter[status]",
                                        f"Invalid status values: {', '.join(bad)}"))
        out["statuses"] = list(dict.fromkeys(tokens))
    for key in _RUN_FILTER_LISTS:
        out[key] = params[key].split(",") if params.get(key) else None
    for key in ("filter[bulkAction]", "filter[schedule]", "filter[error]", "filter[batch]"):
        out[key] = params.get(key)
    is_test = params.get("filter[isTest]")
    if is_test and is_test not in ("true", "false"):
        issues.append(_issue_custom("filter[isTest]", f"Invalid value for isTest: {is_test}"))
    out["isTest"] = None if not is_test else is_test == "true"
    for bound in ("from", "to"):
        key = f"filter[createdAt][{bound}]"
        if key in params:
            ms = _parse_js_date(params[key])
            if ms is None:
                issues.append({"code": "invalid_date", "path": [key], "message": "Invalid date"})
            out[bound] = ms
    out["period"] = params.get("filter[createdAt][period]")
    machines = params.get("filter[machine]")
    if machines:
        bad = [m for m in machines.split(",") if m not in MACHINE_PRESETS]
        if bad:
            issues.append(_issue_custom("filter[machine]",
                                        f"Invalid machine values: {', '.join(bad)}"))
    out["machines"] = machines.split(",") if machines else None
    return out, issues


def _time_window(opts: dict, now: int) -> tuple[float | None, int | None]:
    """timeFilters: period wins, else from/to (to clamped to now), else the default 7d."""
    period, start, end = opts["period"], opts.get("from"), opts.get("to")
    if period:
        ms = _parse_duration_ms(period)
        return (now - ms if ms else None), None  # unparsable (or 0): no bound at all
    if start or end:  # epoch 0 is falsy here, as in JavaScript
        return (start or None), (min(end, now) if end else None)
    return now - 7 * DAY_MS, None


# ---------------------------------------------------------------------------------------------
# Queues and their metrics
# ---------------------------------------------------------------------------------------------

@dataclass
class Queue:
    friendly_id: str
    name: str  # internal: "task/<taskId>" or the custom name
    type: str  # "task" (VIRTUAL) | "custom" (NAMED)
    orderable_name: str
    running: int = 0  # run-engine (Redis) counters
    queued: int = 0
    paused: bool = False
    concurrency_limit: int | None = None
    concurrency_limit_base: int | None = None
    overridden_at: datetime | None = None
    overridden_by: str | None = None  # the user's displayName ?? name
    override_percent: float | None = None

    def item(self) -> dict:
        """toQueueItem plus the list's concurrencyLimitOverridePercent."""
        return {
            "id": self.friendly_id,
            "name": re.sub(r"^task/", "", self.name),
            "type": self.type,
            "running": self.running,
            "queued": self.queued,
            "paused": self.paused,
            "concurrencyLimit": self.concurrency_limit,
            "concurrency": {
                "current": self.concurrency_limit,
                "base": self.concurrency_limit_base,
                "override": self.concurrency_limit if self.overridden_at else None,
                "overriddenBy": self.overridden_by,
                "overriddenAt": iso(self.overridden_at) if self.overridden_at else None,
            },
            "releaseConcurrencyOnWaitpoint": True,
            "concurrencyLimitOverridePercent": self.override_percent,
        }


@dataclass
class QueueMetrics:
    """What ClickHouse's queue_metrics_v1 would sum up for a queue's window."""
    wait_p50_ms: float | None = None
    wait_p95_ms: float | None = None
    peak_queued: int = 0
    started: int = 0
    throttled: int = 0
    depth: list[tuple[datetime, int]] = field(default_factory=list)  # (sample time, depth)


_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


def _metrics_params(params: dict[str, str]) -> tuple[str, str, list[dict]]:
    issues = []
    kind = params.get("type", "task")
    if kind not in ("task", "custom"):
        issues.append(_issue_enum("type", kind, ("task", "custom")))
    period = params.get("period", "1h")
    if not re.fullmatch(r"[1-9][0-9]*[smhdw]", period):
        issues.append({"validation": "regex", "code": "invalid_string", "message":
                       "period must be a shorthand like '15m', '1h', or '24h'",
                       "path": ["period"]})
    unit = _UNIT_MS.get(period[-1:]) if period else None
    size = _js_number(period[:-1]) * unit if unit else math.nan  # the refine runs regardless
    if not size <= 7 * DAY_MS:
        issues.append(_issue_custom("period", "period is too large (max 7d)"))
    return kind, period, issues


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

_HTTP_OWS = " \t"


class FakeTrigger(LoopbackServer):
    """Trigger.dev's management API on 127.0.0.1 (a port of its own). See the module doc."""

    def __init__(self, secret_key: str, *, engine: str = "V2", queue_metrics: bool = True,
                 max_tokens: int = 750, refill: int = 250, refill_seconds: float = 10.0):
        self.secret_key = secret_key
        self.engine = engine  # "V1": a v3 project, the queue routes answer 400 engine-version
        self.queue_metrics = queue_metrics  # False: a server from before the metrics route
        self.limiter = TokenBucket(max_tokens, refill, refill_seconds)
        self.runs = RunStore()
        self.queues: dict[str, Queue] = {}  # by internal name
        self.metrics: dict[str, QueueMetrics] = {}  # by internal name
        slug = re.match(r"tr_([a-z]+)_", secret_key)
        self.env = {"id": self.runs.new_id(), "name": slug.group(1) if slug else "prod"}
        if self.env["name"] == "dev":  # a DEVELOPMENT env names its member
            self.env["user"] = "Fake Developer"
        # test hooks
        self.requests: list[tuple[float, str, dict, dict]] = []  # (monotonic, path, query, headers)
        self.fail_with: tuple | None = None  # (status, headers[, body]) while set
        self.delay = 0.0  # seconds before each answer
        self.body_override: bytes | None = None  # a 200 with these bytes while set
        self._lock = threading.RLock()
        self._connections: set = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                fake._connections.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    fake._connections.discard(self.connection)

            def send_response(self, code, message=None):  # Date, and no Server header
                self.send_response_only(code, message)
                self.send_header("Date", self.date_time_string())

            def do_GET(self):
                reply = fake._serve(self.path, self.headers)
                self.send_response(reply.status)
                if reply.content_type:
                    self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for key, value in reply.headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        super().__init__(server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop()
        for connection in list(self._connections):  # kept-alive clients see it go away too
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    # -- the Python API for tests -------------------------------------------------------------

    @property
    def replication_lag(self) -> float:
        return self.runs.lag

    @replication_lag.setter
    def replication_lag(self, seconds: float) -> None:
        self.runs.lag = seconds

    def add_queue(self, name: str, type: str = "task", running: int = 0, queued: int = 0,
                  paused: bool = False, concurrency_limit: int | None = None) -> str:
        """A TaskQueue (version V2); returns its internal name."""
        if type not in ("task", "custom"):
            raise ValueError(f"queue type is task or custom, not {type!r}")
        task_id = re.sub(r"^task/", "", name)
        internal = f"task/{task_id}" if type == "task" else name
        friendly = "queue_" + "".join(random.choices(_FRIENDLY_ALPHABET, k=21))
        with self._lock:
            self.queues[internal] = Queue(friendly, internal, type,
                                          task_id if type == "task" else name, running, queued,
                                          paused, concurrency_limit)
        return internal

    def add_run(self, task: str, status: str, created: datetime, *, queue: str | None = None,
                started: datetime | None = None, finished: datetime | None = None,
                delayed_until: datetime | None = None, run_id: str | None = None,
                is_test: bool = False, tags: tuple[str, ...] = (),
                version: str | None = None) -> str:
        """A TaskRun with an internal status; returns its friendly id ("run_...")."""
        self._check_status(status)
        with self._lock:
            internal = run_id.removeprefix("run_") if run_id else self.runs.new_id()
            moments = [_to_ms(m) for m in (created, started, finished) if m is not None]
            self.runs.write(Run(
                internal, f"run_{internal}", task, status, _to_ms(created), max(moments),
                queue or f"task/{task}", started and _to_ms(started),
                finished and _to_ms(finished), delayed_until and _to_ms(delayed_until),
                is_test, tuple(tags), version))
        return f"run_{internal}"

    def update_run(self, run_id: str, **changes: Any) -> None:
        """Change the truth (status, started, finished, delayed_until, queue, tags, is_test);
        the replica follows per the replication settings. updatedAt becomes now."""
        names = {"status": "status", "started": "started_ms", "finished": "completed_ms",
                 "delayed_until": "delay_until_ms", "queue": "queue", "tags": "tags",
                 "is_test": "is_test"}
        unknown = set(changes) - set(names)
        if unknown:
            raise TypeError(f"update_run cannot change {sorted(unknown)}")
        if "status" in changes:
            self._check_status(changes["status"])
        values = {names[k]: _to_ms(v) if isinstance(v, datetime) else v
                  for k, v in changes.items()}
        with self._lock:
            run = self.runs.truth[run_id.removeprefix("run_")]
            self.runs.write(replace(run, updated_ms=_now_ms(), **values))

    def delete_run(self, run_id: str) -> None:
        """Gone from Postgres; the ClickHouse copy stays, so pages can come back short."""
        with self._lock:
            del self.runs.truth[run_id.removeprefix("run_")]

    def replicate(self) -> None:
        """Copy every pending write to the replica now, and resume replication."""
        with self._lock:
            self.runs.flush()

    def pause_replication(self) -> None:
        """Stop copying (what was already due is copied first) until replicate()."""
        with self._lock:
            self.runs.sync()
            self.runs.paused = True

    def throttle_for(self, seconds: float) -> None:
        """Empty the key's bucket: 429s until `seconds` from now (x-ratelimit-reset)."""
        with self._lock:
            self.limiter.empty(self._bucket_id(f"Bearer {self.secret_key}"), seconds, _now_ms())

    def set_queue_metrics(self, queue_key: str, *, wait_p50_ms: float | None = None,
                          wait_p95_ms: float | None = None, peak_queued: int = 0,
                          started: int = 0, throttled: int = 0,
                          depth: list[tuple[datetime, int]] | None = None) -> None:
        """The figures the metrics route reports for `queue_key` (its internal name)."""
        with self._lock:
            self.metrics[queue_key] = QueueMetrics(wait_p50_ms, wait_p95_ms, peak_queued,
                                                   started, throttled, list(depth or []))

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in INTERNAL_STATUSES:
            raise ValueError(f"{status!r} is not an internal TaskRunStatus")

    # -- the request pipeline ------------------------------------------------------------------

    def _serve(self, raw_path: str, headers) -> Reply:
        parts = urlsplit(raw_path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))  # last value wins
        self.requests.append((time.monotonic(), parts.path, params,
                              {k.lower(): v for k, v in headers.items()}))
        if self.delay:
            time.sleep(self.delay)  # the fault under test: a server slower than the timeout
        with self._lock:
            reply = self._respond(parts.path, parts.query, params, headers)
        reply.headers += [("Strict-Transport-Security", f"max-age={60 * 60 * 24 * 365 * 100}"),
                          ("X-Robots-Tag", "noindex, nofollow")]
        return reply

    def _respond(self, path: str, query: str, params: dict[str, str], headers) -> Reply:
        if path.endswith("/") and len(path) > 1:  # Express, before anything else
            target = re.sub("/+", "/", path[:-1]) + (f"?{query}" if query else "")
            reply = Reply(301, f"Moved Permanently. Redirecting to {target}".encode(),
                          "text/plain; charset=utf-8")
            reply.headers.append(("Location", target))
            return reply
        if not path.startswith("/api"):
            return not_found_html()
        authorization = (headers.get("Authorization") or "").strip(_HTTP_OWS)
        if not authorization:
            return problem_reply(401, {
                "title": "Unauthorized", "status": 401,
                "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
                "detail": "No authorization header provided",
                "error": "No authorization header provided"})
        now = _now_ms()
        success, limit, remaining, reset = self.limiter.limit(self._bucket_id(authorization),
                                                              now)
        rate_headers = [("x-ratelimit-limit", str(limit)),
                        ("x-ratelimit-remaining", str(max(0, remaining))),
                        ("x-ratelimit-reset", str(reset))]
        if success:
            reply = self._route(path, params, headers, authorization)
        else:
            wait = max(0.0, (reset - _now_ms()) / 1000)
            message = (f"Rate limit exceeded {max(0, remaining)}/{limit} requests remaining. "
                       f"Retry in {_js_str(wait)} seconds.")
            reply = problem_reply(429, {
                "title": "Rate Limit Exceeded", "status": 429,
                "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/429",
                "detail": message, "reset": reset, "limit": limit, "remaining": remaining,
                "secondsUntilReset": wait, "error": message})
        reply.headers[:0] = [h for h in rate_headers
                             if h[0] not in {k.lower() for k, _ in reply.headers}]
        return reply

    def _bucket_id(self, authorization: str) -> str:
        """The env id for a key that resolves, else sha256 of the header (middleware L302-315)."""
        if authorization.removeprefix("Bearer ").strip(_JS_SPACE) == self.secret_key:
            return self.env["id"]
        return hashlib.sha256(authorization.encode("latin-1", "replace")).hexdigest()

    def _authenticate(self, authorization: str) -> Reply | None:
        token = authorization.removeprefix("Bearer ").strip(_JS_SPACE)
        if not token:
            return json_reply(401, {"error": "Invalid or Missing API key"})
        if token != self.secret_key:
            return json_reply(401, {"error": "Invalid API key"})
        return None

    def _route(self, path: str, params: dict[str, str], headers, authorization: str) -> Reply:
        handler = None
        if path == "/api/v1/runs":
            version = headers.get("x-trigger-api-version") or ""
            handler = partial(self._list_runs, params, version)
        elif path == "/api/v1/queues":
            handler = partial(self._list_queues, params)
        elif match := re.fullmatch(r"/api/v1/queues/([^/]+)", path):
            handler = partial(self._retrieve_queue, match.group(1), params)
        elif self.queue_metrics and (match := re.fullmatch(r"/api/v1/queues/([^/]+)/metrics",
                                                           path)):
            handler = partial(self._queue_metrics, match.group(1), params)
        if handler is not None and (denied := self._authenticate(authorization)):
            return denied
        if self.fail_with is not None:
            status, fail_headers, *body = self.fail_with
            reply = json_reply(status, {"error": HTTPStatus(status).phrase})
            if body:
                reply.body = body[0] if isinstance(body[0], bytes) else str(body[0]).encode()
            reply.headers = list(fail_headers.items())
            if any(k.lower() == "content-type" for k in fail_headers):
                reply.content_type = None
            return reply
        if self.body_override is not None:
            return Reply(200, self.body_override, "application/json; charset=utf-8")
        if handler is None:
            return not_found_html()  # no such route (a metrics route on an older server)
        try:
            return handler()
        except Exception:  # the route builder's catch-all
            return json_reply(500, {"error": "Internal Server Error"})

    # -- routes --------------------------------------------------------------------------------

    def _list_runs(self, params: dict[str, str], api_version: str) -> Reply:
        opts, issues = _parse_run_list(params)
        if issues:
            return query_error(issues)
        self.runs.sync()
        now = _now_ms()
        statuses = [s for token in opts.get("statuses") or () for s in FILTER_TO_INTERNAL[token]]
        lower, upper = _time_window(opts, now)
        wanted = {key: set(opts[key]) if opts[key] else None for key in _RUN_FILTER_LISTS}
        unmodelled = (opts["filter[region]"] or opts["machines"] or opts["filter[bulkAction]"]
                      or opts["filter[schedule]"] or opts["filter[error]"]
                      or opts["filter[batch]"])

        def matches(row: Run) -> bool:  # the ClickHouse WHERE, on the replica's copy
            return not unmodelled and all((
                not wanted["filter[taskIdentifier]"]
                or row.task in wanted["filter[taskIdentifier]"],
                not wanted["filter[version]"] or row.version in wanted["filter[version]"],
                not statuses or row.status in statuses,
                not wanted["filter[tag]"] or bool(wanted["filter[tag]"] & set(row.tags)),
                lower is None or row.created_ms >= lower,
                upper is None or row.created_ms <= upper,
                opts["isTest"] is None or row.is_test == opts["isTest"],
                not wanted["filter[queue]"] or row.queue in wanted["filter[queue]"],
            ))

        size = int(opts.get("size") or 25)
        cursor = opts["page[before]"] or opts["page[after]"]
        forward = not opts["page[before]"]
        rows = [row for row in self.runs.replica.values() if matches(row)]
        if cursor:
            decoded = decode_cursor(cursor)
            if isinstance(decoded, tuple):
                def past(r):
                    return (r.created_ms, r.id) < decoded if forward else \
                        (r.created_ms, r.id) > decoded
            else:  # a legacy bare run id: the old run_id-only predicate
                def past(r):
                    return r.id < decoded if forward else r.id > decoded
            rows = [row for row in rows if past(row)]
        rows.sort(key=lambda r: (r.created_ms, r.id), reverse=forward)
        rows = rows[:size + 1]
        has_more = len(rows) > size

        def cursor_of(index: int) -> str | None:
            return encode_cursor(rows[index].created_ms, rows[index].id) \
                if -len(rows) <= index < len(rows) else None

        if forward:
            previous = cursor_of(0) if cursor else None
            following = cursor_of(size - 1) if has_more else None
        else:  # rows are ASC here; reversed[1] is rows[-2], reversed[size] is rows[0]
            previous = cursor_of(len(rows) - 2) if has_more else None
            following = cursor_of(0)
        runs = [self.runs.truth[r.id] for r in rows[:size] if r.id in self.runs.truth]
        if statuses:  # "ClickHouse is slightly delayed": filtered again on the truth
            runs = [run for run in runs if run.status in statuses]
        pagination = {k: v for k, v in (("next", following), ("previous", previous)) if v}
        return json_reply(200, {"data": [self._run_item(run, api_version) for run in runs],
                                "pagination": pagination})

    def _run_item(self, run: Run, api_version: str) -> dict:
        status = api_status(run.status, api_version)
        item: dict[str, Any] = {"id": run.friendly_id, "status": status,
                                "taskIdentifier": run.task}
        if run.version:
            item["version"] = run.version
        item["createdAt"] = _iso_ms(run.created_ms)
        item["updatedAt"] = _iso_ms(run.updated_ms)
        if run.started_ms is not None:
            item["startedAt"] = _iso_ms(run.started_ms)
        if run.status in FINAL_STATUSES:  # completedAt ?? updatedAt
            item["finishedAt"] = _iso_ms(run.completed_ms if run.completed_ms is not None
                                         else run.updated_ms)
        if run.delay_until_ms is not None:
            item["delayedUntil"] = _iso_ms(run.delay_until_ms)
        item.update({"isTest": run.is_test, "env": dict(self.env), "tags": sorted(run.tags),
                     "costInCents": 0, "baseCostInCents": 0, "durationMs": 0, "depth": 0,
                     "taskKind": "STANDARD", **status_booleans(status)})
        return item

    def _list_queues(self, params: dict[str, str]) -> Reply:
        issues, values = [], {}
        for key in ("page", "perPage"):
            if key in params:
                values[key], found = _zod_number(key, params[key])
                issues += found
        if issues:
            return query_error(issues)
        if self.engine == "V1":
            return json_reply(400, {"error": "engine-version"})
        page = int(values.get("page") or 1)
        per_page = min(int(values.get("perPage") or 25), 100)
        ordered = sorted(self.queues.values(), key=lambda q: (q.orderable_name, q.name))
        chunk = ordered[(page - 1) * per_page: page * per_page]
        return json_reply(200, {"data": [q.item() for q in chunk], "pagination": {
            "currentPage": page, "totalPages": math.ceil(len(ordered) / per_page),
            "count": len(ordered)}})

    def _retrieve_queue(self, segment: str, params: dict[str, str]) -> Reply:
        kind = params.get("type", "id")
        if kind not in ("id", "task", "custom"):
            return query_error([_issue_enum("type", kind, ("id", "task", "custom"))])
        if self.engine == "V1":
            return json_reply(400, {"error": "engine-version"})
        param = _route_param(segment)
        if kind == "id":
            found = next((q for q in self.queues.values() if q.friendly_id == param), None)
        else:
            name = _decode_uri_component(param).replace("%2F", "/")  # URIError -> 500
            if kind == "task":
                name = "task/" + re.sub(r"^task/", "", name)
            found = self.queues.get(name)
        if found is None:
            return json_reply(404, {"error": "queue-not-found"})
        return json_reply(200, found.item())

    def _queue_metrics(self, segment: str, params: dict[str, str]) -> Reply:
        kind, period, issues = _metrics_params(params)
        if issues:
            return query_error(issues)
        name = _route_param(segment)
        queue = f"task/{name}" if kind == "task" and not name.startswith("task/") else name
        window_ms = int(period[:-1]) * _UNIT_MS[period[-1]]
        bucket_ms = max(60, _js_round(window_ms / 1000 / 12)) * 1000
        end = math.ceil(_now_ms() / bucket_ms) * bucket_ms
        start = end - window_ms
        grid_start = start // bucket_ms * bucket_ms
        buckets = _js_round((end - grid_start) / bucket_ms)
        figures = self.metrics.get(queue, QueueMetrics())
        by_index: dict[int, int] = {}
        for moment, depth in figures.depth:
            index = _js_round((_to_ms(moment) // bucket_ms * bucket_ms - grid_start) / bucket_ms)
            if 0 <= index < buckets:
                by_index[index] = max(depth, by_index.get(index, depth))
        trend, last = [], 0
        for index in range(buckets):  # carry the previous depth into empty buckets
            last = by_index.get(index, last)
            trend.append(last)
        per_min = Decimal(figures.started / (window_ms / 60_000))

        def finite(value: float | None) -> float | None:
            return value if value is not None and math.isfinite(value) else None

        return json_reply(200, {
            "queue": queue, "period": period, "from": _iso_ms(start), "to": _iso_ms(end),
            "waitMs": {"p50": finite(figures.wait_p50_ms), "p95": finite(figures.wait_p95_ms)},
            "peakQueued": figures.peak_queued, "startedCount": figures.started,
            "startedPerMin": float(per_min.quantize(Decimal("0.01"), ROUND_HALF_UP)),
            "throttledCount": figures.throttled, "bucketIntervalMs": bucket_ms,
            "depthTrend": trend})
