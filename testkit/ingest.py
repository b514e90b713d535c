"""Local stand-ins for Sentry's and PostHog's ingestion endpoints, for the relay's tests, which
drive the real `sentry-sdk` envelope and the real `posthog` request against them. Each answers
as the real server does, read from its source:

Sentry (Relay, github.com/getsentry/relay):
- `relay-server/src/endpoints/mod.rs` @01e78ef1: `POST /api/{project_id}/envelope/`; repeated
  slashes collapse (`middlewares/normalize_path.rs` @51ac5bfe).
- `extractors/request_meta.rs` @01aef71f: the key from `X-Sentry-Auth: Sentry sentry_key=...`,
  `Authorization: Sentry ...` or the query's `sentry_key`; none, or more than one, is 401.
- `endpoints/common.rs` and `utils/api.rs` @08276107: errors are `{"detail": ...}`: 400
  `empty request body` / `invalid event envelope`; 403 for a key or project it does not know;
  413 past the limits of `relay-config/src/config.rs` @00191ff7 (an event 1 MiB, an envelope
  200 MiB); success is 200 `{"id": "<event_id>"}` (`endpoints/envelope.rs`).
- Content-Encoding gzip, deflate (and br when `brotli` is installed) are decompressed.
- Sentry drops an event whose `event_id` it has stored already: `events` keeps one per id.

PostHog (capture, github.com/PostHog/posthog `rust/capture/src/`):
- `router.rs` @bb3f43db: `POST /batch` and `/batch/`, a 20 MB body limit (413).
- `v0_request.rs` @f12243d7, `utils.rs` @027cd531: gzip by `Content-Encoding` or by the body's
  magic bytes `1f 8b 08`; bad gzip or bad JSON is a 400 with a plain-text reason.
- `token.rs` @14b6bb00, `api.rs` @7101862b: no `api_key` is 401 `event submitted without an
  api_key`; an empty one, one over 64 characters, a non-ASCII one or a personal key (`phx_`) is
  401; any other key is accepted (keys are not looked up at the edge). Success is 200
  `{"status":1}`.
- PostHog keeps one event per `uuid`: `events` keeps one per uuid.

`fail(n, status)` answers the next n requests with that status (and records nothing), as an
outage would; stopping the sink (and starting one on the same port) is a refused connection;
`hold()` stores an event but keeps its answer back.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from testkit.net import LoopbackServer

SENTRY_EVENT_LIMIT = 1024 * 1024
SENTRY_ENVELOPE_LIMIT = 200 * 1024 * 1024
POSTHOG_BATCH_LIMIT = 20 * 1024 * 1024


class _Ingest(LoopbackServer):
    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.requests = 0  # every request that reached the handler
        self.events: dict[str, dict] = {}  # by id, once each
        self.duplicates = 0  # events that arrived again with an id already stored
        self._failures: list[int] = []
        self.held = threading.Event()  # set while an answer is held back (`hold()`)
        self._release: threading.Event | None = None
        server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        server.daemon_threads = True
        super().__init__(server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, count: int, status: int = 503) -> None:
        with self.lock:
            self._failures += [status] * count

    def hold(self) -> None:
        """Store what arrives, but hold the answer back until `release()`: the sender cannot
        know the delivery worked (a crash of the sender in between is the case tested)."""
        self._release = threading.Event()

    def release(self) -> None:
        if self._release is not None:
            self._release.set()
        self._release = None

    def _store(self, event_id: str, event: dict) -> None:
        with self.lock:
            if event_id in self.events:
                self.duplicates += 1
            else:
                self.events[event_id] = event

    def answer(self, path: str, headers, body: bytes) -> tuple[int, dict | str]:
        raise NotImplementedError

    def _handler_class(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink.lock:
                    sink.requests += 1
                    failure = sink._failures.pop(0) if sink._failures else None
                if failure is not None:
                    status, reply = failure, {"detail": "unavailable"}
                else:
                    status, reply = sink.answer(self.path, self.headers, body)
                    release = sink._release
                    if release is not None:
                        sink.held.set()
                        release.wait(30)
                data = (json.dumps(reply) if isinstance(reply, dict) else reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if isinstance(reply, dict)
                                 else "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


class SentrySink(_Ingest):
    def __init__(self, key: str, project: int, port: int = 0) -> None:
        self.key, self.project = key, project
        super().__init__(port)

    @property
    def dsn(self) -> str:
        return f"http://{self.key}@127.0.0.1:{self.port}/{self.project}"

    def answer(self, path: str, headers, body: bytes) -> tuple[int, dict]:
        parts = urlsplit(path)
        match = re.fullmatch(r"/+api/+(\d+)/+envelope/*", parts.path)
        if not match:
            return 404, {"detail": "not found"}
        keys = _sentry_keys(headers, parts.query)
        if len(keys) != 1:
            return 401, {"detail": "missing authorization information" if not keys
                         else "multiple authorization payloads"}
        if keys[0] != self.key or int(match[1]) != self.project:
            return 403, {"detail": "event submission rejected with_reason: ProjectId"}
        try:
            body = _decompress(headers.get("Content-Encoding", ""), body)
        except (OSError, zlib.error, EOFError):
            return 400, {"detail": "invalid event envelope"}
        if not body:
            return 400, {"detail": "empty request body"}
        if len(body) > SENTRY_ENVELOPE_LIMIT:
            return 413, {"detail": "envelope exceeded size limits"}
        try:
            header, items = _envelope(body)
        except (ValueError, json.JSONDecodeError):
            return 400, {"detail": "invalid event envelope"}
        event_id = header.get("event_id")
        for item_header, payload in items:
            if item_header.get("type") != "event":
                continue
            if len(payload) > SENTRY_EVENT_LIMIT:
                return 413, {"detail": "envelope exceeded size limits for type 'event'"}
            event = json.loads(payload)
            event_id = event.get("event_id") or event_id
            self._store(event_id, event)
        return 200, ({"id": event_id} if event_id else {})


def _sentry_keys(headers, query: str) -> list[str]:
    found = []
    for name in ("X-Sentry-Auth", "Authorization"):
        value = headers.get(name) or ""
        if value[:7].lower() == "sentry ":
            fields = dict(part.strip().split("=", 1) for part in value[7:].split(",")
                          if "=" in part)
            if fields.get("sentry_key"):
                found.append(fields["sentry_key"])
    found += parse_qs(query).get("sentry_key", [])
    return found


def _decompress(encoding: str, body: bytes) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only when a client sends it: sentry-sdk does when brotli is installed

        return brotli.decompress(body)
    return body


def _envelope(body: bytes) -> tuple[dict, list[tuple[dict, bytes]]]:
    """(envelope header, [(item header, payload)]) as Relay reads them: an item's `length`, or
    up to the next newline."""
    first, _, rest = body.partition(b"\n")
    header = json.loads(first)
    if not isinstance(header, dict):
        raise ValueError("envelope header")
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        item = json.loads(line)
        if not isinstance(item, dict) or "type" not in item:
            raise ValueError("item header")
        if "length" in item:
            length = int(item["length"])
            if len(rest) < length:
                raise ValueError("short item")
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item, payload))
    return header, items


class PostHogSink(_Ingest):
    def answer(self, path: str, headers, body: bytes) -> tuple[int, dict | str]:
        if urlsplit(path).path not in ("/batch", "/batch/"):
            return 404, "not found"
        if len(body) > POSTHOG_BATCH_LIMIT:
            return 413, "payload too large"
        if headers.get("Content-Encoding", "").lower() == "gzip" or body[:3] == b"\x1f\x8b\x08":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return 400, "failed to decode request: invalid GZIP data"
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return 400, f"failed to parse request: {err}"
        if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
            return 400, "failed to parse request: expected a batch"
        token = data.get("api_key")
        if token is None:
            return 401, "event submitted without an api_key"
        token = str(token).strip()
        if (not token or len(token) > 64 or not token.isascii() or token.startswith("phx_")
                or "\0" in token):
            return 401, "API key is not valid"
        if not data["batch"]:
            return 400, "request holds no event"
        for event in data["batch"]:
            if not event.get("event") or not event.get("distinct_id"):
                return 400, "missing event name or distinct_id"
        for event in data["batch"]:
            self._store(event.get("uuid") or json.dumps(event, sort_keys=True), event)
        return 200, {"status": 1}
