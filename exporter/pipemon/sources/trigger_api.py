"""The HTTP side of `kind: trigger_dev`: GET JSON from Trigger.dev's management API.

Read from the server's code (triggerdotdev/trigger.dev at b082e44, 2026-08-21; the fake in
testkit/fake_trigger.py cites the same files):
- the key goes as `Authorization: Bearer`; a missing, empty or unknown key is a 401
  (`internal-packages/rbac/src/bearerCredentials.ts`), a valid key not allowed a 403;
- `x-trigger-api-version: 2025-07-16` selects the status names of the v4 engine, as the SDK
  sends it (`packages/core/src/v3/apiClient/version.ts`, `apps/webapp/app/api/versions.ts`);
- every answer carries `x-ratelimit-limit`, `-remaining` and `-reset` (epoch milliseconds); a
  refusal is a 429 with an application/problem+json body and no Retry-After
  (`apps/webapp/app/services/authorizationRateLimitMiddleware.server.ts`). The SDK waits until
  the reset (`packages/core/src/v3/apiClient/core.ts`); so does this client.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

from pipemon.errors import PollError, redact
from pipemon.secret import Secret

API_VERSION = "2025-07-16"
# Without a usable reset, as long as the server's default bucket takes to refill
# (250 requests per 10 s): then try again.
DEFAULT_THROTTLE_SECONDS = 10.0
MAX_THROTTLE_SECONDS = 300.0


class ApiError(PollError):
    """The server answered with an HTTP error status."""

    def __init__(self, reason: str, message: str, status: int):
        super().__init__(reason, message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    payload: dict
    server_now: datetime  # the API server's clock (Date header)


class Api:
    """GET JSON; every failure leaves as a PollError with a reason."""

    def __init__(self, base_url: str, key: Secret, secrets: list[str]):
        self._base = base_url
        self._key = key
        self._secrets = secrets
        self.not_before = 0.0  # monotonic time before which the rate limit asks us to wait
        self.ratelimit: tuple[int, int] | None = None  # (remaining, limit) of the last answer

    def get(self, path: str, params: dict, deadline: float) -> Answer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PollError("timeout", "the poll's deadline passed before the next request")
        url = f"{self._base}{path}?{urlencode(params, safe='[],')}"  # path: quoted by the caller
        request = urllib.request.Request(url, headers={
            "Authorization": f"Bearer {self._key.reveal()}", "Accept": "application/json",
            "x-trigger-api-version": API_VERSION, "User-Agent": "pipemon"})
        try:
            with urllib.request.urlopen(request, timeout=remaining) as response:
                body, headers = response.read(), response.headers
        except urllib.error.HTTPError as err:
            self._note_ratelimit(err.headers)
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
        self._note_ratelimit(headers)
        try:
            payload = json.loads(body)
            date = headers.get("Date")
            server_now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        except (ValueError, TypeError) as err:
            raise PollError("protocol", f"GET {path}: unreadable response: {err}") from None
        if not isinstance(payload, dict):
            raise PollError("protocol", f"GET {path}: the response is not a JSON object")
        return Answer(payload, server_now)

    def _note_ratelimit(self, headers) -> None:
        with suppress(KeyError, TypeError, ValueError):
            self.ratelimit = (int(headers["x-ratelimit-remaining"]),
                              int(headers["x-ratelimit-limit"]))

    def _http_error(self, path: str, err: urllib.error.HTTPError) -> ApiError:
        where, detail, status = f"GET {path}: HTTP {err.code}", _error_text(err), err.code
        if status in (401, 403):
            return ApiError("auth", f"{where}: the secret key was refused ({detail})", status)
        if status == 429:
            wait = throttle_seconds(err.headers)
            self.not_before = time.monotonic() + wait
            return ApiError("throttled", f"{where}: rate limited ({detail}), polling again in"
                                         f" {wait:.1f}s", status)
        reason = "server_error" if status >= 500 else "http_error"
        return ApiError(reason, f"{where}: {detail}", status)


def throttle_seconds(headers, now: float | None = None) -> float:
    """How long a 429 asks to wait: until `x-ratelimit-reset` (epoch ms), else Retry-After
    (which Trigger.dev does not send, but a proxy in front of it may), else a default."""
    now = time.time() if now is None else now
    try:
        return min(MAX_THROTTLE_SECONDS, max(0.0, int(headers["x-ratelimit-reset"]) / 1000 - now))
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("Retry-After")
    if value:
        try:
            return min(MAX_THROTTLE_SECONDS, max(0.0, float(value)))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value).timestamp()
            return min(MAX_THROTTLE_SECONDS, max(0.0, when - now))
        except (TypeError, ValueError):
            pass
    return DEFAULT_THROTTLE_SECONDS


def _error_text(err: urllib.error.HTTPError) -> str:
    """The server's own words: `error` (or `detail`) of its JSON body, cut short."""
    try:
        body = json.loads(err.read(2048) or b"null")
    except (ValueError, OSError):
        return "no JSON body"
    text = body.get("detail") or body.get("error") if isinstance(body, dict) else None
    return str(text)[:200] if text else "no error message"
