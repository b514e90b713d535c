"""A local stand-in for Trigger.dev's management API (no real Trigger.dev can run here).

It serves the shapes documented for Trigger.dev's v3/v4 REST API:
- GET /api/v1/queues?page&perPage -> {"data": [queue], "pagination": {"currentPage",
  "totalPages", "count"}} (docs: Management API, "List Queues");
- GET /api/v1/runs?filter[status]&filter[createdAt][from]&page[size]&page[after] ->
  {"data": [run], "pagination": {"next", "previous"}}, newest first (docs: "List runs").
Responses carry the HTTP Date header, as the real API does. It records every request, and can be
told to answer 429 with Retry-After, 500, or slowly.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from testkit.net import LoopbackServer


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeTrigger(LoopbackServer):
    def __init__(self, secret_key: str):
        self.secret_key = secret_key
        self.queues: list[dict] = []
        self.runs: list[dict] = []
        self.requests: list[tuple[float, str, dict]] = []
        self.fail_with: tuple[int, dict] | None = None  # (status, headers) for the next calls
        self.delay = 0.0
        self.body_override: bytes | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        super().__init__(server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_run(self, run_id, task, status, created, started=None, finished=None, **extra):
        self.runs.append({"id": run_id, "taskIdentifier": task, "status": status,
                          "createdAt": iso(created), "startedAt": started and iso(started),
                          "finishedAt": finished and iso(finished), "isTest": False, **extra})

    def set_run(self, run_id, **changes):
        run = next(r for r in self.runs if r["id"] == run_id)
        run.update({k: iso(v) if isinstance(v, datetime) else v for k, v in changes.items()})

    def _send(self, handler, status: int, body: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def handle(self, handler) -> None:
        url = urlparse(handler.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((time.monotonic(), url.path, params))
        if self.delay:
            time.sleep(self.delay)  # the fault under test: a server slower than the timeout
        if handler.headers.get("Authorization") != f"Bearer {self.secret_key}":
            return self._send(handler, 401, b'{"error": "Invalid or Missing API key"}')
        if self.fail_with:
            status, headers = self.fail_with
            return self._send(handler, status, b'{"error": "fault"}', headers)
        if self.body_override is not None:
            return self._send(handler, 200, self.body_override)
        if url.path == "/api/v1/queues":
            body = self._queues(int(params.get("page", 1)), int(params.get("perPage", 10)))
        elif url.path == "/api/v1/runs":
            body = self._runs(params)
        else:
            return self._send(handler, 404, b'{"error": "Not found"}')
        self._send(handler, 200, json.dumps(body).encode())

    def _queues(self, page: int, per_page: int) -> dict:
        total = max(1, -(-len(self.queues) // per_page))
        chunk = self.queues[(page - 1) * per_page: page * per_page]
        return {"data": chunk, "pagination": {"currentPage": page, "totalPages": total,
                                              "count": len(self.queues)}}

    def _runs(self, params: dict) -> dict:
        statuses = params.get("filter[status]", "").split(",")
        since = params.get("filter[createdAt][from]")
        runs = [r for r in self.runs if r["status"] in statuses
                and (since is None or r["createdAt"] >= since.replace("Z", ".000Z"))]
        runs.sort(key=lambda r: (r["createdAt"], r["id"]), reverse=True)
        if "page[after]" in params:
            ids = [r["id"] for r in runs]
            runs = runs[ids.index(params["page[after]"]) + 1:]
        size = int(params.get("page[size]", 25))
        page, rest = runs[:size], runs[size:]
        return {"data": page, "pagination": {"next": page[-1]["id"] if rest else None,
                                             "previous": None}}
