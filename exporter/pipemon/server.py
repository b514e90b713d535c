"""HTTP: /metrics (bodies from exposition.py), /healthz, /readyz, /health (JSON) and /.

/healthz says whether the process and its poll loops are alive, never whether a database is up,
or Kubernetes would restart pipemon every time the database blinks. /readyz and /health carry
the sources' status.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from pipemon.app import VERSION, App
from pipemon.webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)


class _WorkerThreads(ThreadingMixIn):
    """Requests on reused threads. ThreadingMixIn starts a thread per connection: with a
    scrape per poll, a thread start (and the handshake with the new thread) per scrape, which
    showed in the CPU per hour (bench/README.md, issue 19). A connection goes to an idle worker
    if there is one, else to a new thread, so a client that holds connections open never makes
    a scrape wait; up to `max_idle` workers wait for the next connection, the rest end."""

    daemon_threads = True
    max_idle = 8

    def __init__(self, *args, **kwargs) -> None:
        self._connections: queue.SimpleQueue = queue.SimpleQueue()
        self._workers_lock = threading.Lock()
        self._idle = 0
        self._closed = False
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        with self._workers_lock:
            if self._idle:
                self._idle -= 1  # claimed: that worker's next get() is this connection
                self._connections.put((request, client_address))
                return
        threading.Thread(target=self._work, args=((request, client_address),),
                         name="http-worker", daemon=True).start()

    def _work(self, connection) -> None:
        while connection is not None:
            self.process_request_thread(*connection)
            with self._workers_lock:
                if self._closed or self._idle >= self.max_idle:
                    return
                self._idle += 1
            connection = self._connections.get()

    def server_close(self) -> None:
        super().server_close()
        with self._workers_lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._connections.put(None)  # an idle worker's last get(): it returns


class _Server(_WorkerThreads, WSGIServer):
    allow_reuse_address = True
    # socketserver's default backlog is 5: the 6th simultaneous scraper waited for a SYN
    # retransmit (1 s, 3 s, ...). Measured with bench/bench_load.py.
    request_queue_size = 128
    tls_context: ssl.SSLContext | None = None  # swapped by a web config reload

    def get_request(self):
        # Wrapping each connection, not the listening socket, lets a reload change certificates
        # (or turn TLS on or off) for the next connection.
        sock, address = self.socket.accept()
        context = self.tls_context
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up or fails the TLS handshake is not pipemon's error.
        log.debug("connection from %s failed", client_address[0], exc_info=True)

    def serve_until_woken(self) -> None:
        """Accept connections until `wake()`. socketserver's serve_forever wakes every
        poll_interval to look for shutdown(), 5 times a second: an idle process's main cost
        (bench/README.md, issue 19). This loop sleeps until a connection or wake() arrives."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._woken, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is self._woken for key, _ in events):
                    return
                self._handle_request_noblock()

    def server_bind(self) -> None:
        self._woken, self._waker = socket.socketpair()
        super().server_bind()

    def wake(self) -> None:
        self._waker.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._woken.close()
        self._waker.close()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that sends nothing for this long is dropped

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake runs here, on the connection's own thread, not in accept().
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def parse_listen_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:9864`, `[::1]:9864` or `:9864` (all interfaces) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    ago = max(0.0, time.time() - ts)
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({ago:.0f}s ago)"


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:  # a status of the operator's choosing that http.HTTPStatus lacks
        return "Status"


def landing_page(app: App) -> str:
    rows = []
    health = app.health()
    verdict = health["verdict"]
    findings = {part["source"]: "; ".join(f"{f['status']}: {f['text']}" for f in part["findings"])
                for part in verdict["components"]}
    statuses = {part["source"]: part["status"] for part in verdict["components"]}
    for s in health["sources"]:
        error = s["last_error"]
        error_text = f"{error['reason']}: {error['message']}" if error else ""
        duration = s["last_duration_seconds"]
        details = "; ".join(f"{key.replace('_', ' ')}: {s[key]}" for key in
                            ("preset", "schema_version", "missing") if s.get(key))
        cells = [
            s["name"], s["kind"], s["status"], statuses.get(s["name"], ""),
            findings.get(s["name"], ""), s.get("target", ""), s.get("table", ""),
            _when(s["last_poll"]), _when(s["last_success"]),
            "" if duration is None else f"{duration * 1000:.1f} ms", error_text, details,
        ]
        rows.append(
            f'<tr class="{html.escape(s["status"])}">'
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in (
        "source", "kind", "status", "verdict", "findings", "target", "table", "last poll",
        "last success", "duration", "last error", "details"))
    summary = ", ".join(f"{n} {status}" for status, n in verdict["summary"].items() if n)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>pipemon</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
tr.down td:nth-child(3){{color:#b00;font-weight:bold}}tr.up td:nth-child(3){{color:#070}}
p.critical b{{color:#b00}}p.warning b{{color:#b60}}p.healthy b{{color:#070}}</style>
</head><body><h1>pipemon {html.escape(VERSION)}</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/health">/health</a> (JSON) &middot;
<a href="/readyz">/readyz</a> &middot; <a href="/healthz">/healthz</a></p>
<p class="{html.escape(verdict["status"])}">Verdict: <b>{html.escape(verdict["status"])}</b>
({html.escape(summary)})</p>
<table><tr>{header}</tr>
{"".join(rows)}
</table></body></html>
"""


def with_headers(wsgi_app, headers: dict[str, str]):
    """Add the web config's response headers to every response."""

    def wrapped(environ, start_response):
        def start(status, response_headers, exc_info=None):
            return start_response(status, [*response_headers, *headers.items()], exc_info)

        return wsgi_app(environ, start)

    return wrapped


def make_app(app: App, web: WebConfig | None = None):
    """The WSGI application serving every endpoint, behind basic auth when configured."""
    handler = _endpoints(app)
    if web is not None and web.headers:
        handler = with_headers(handler, web.headers)
    if web is not None and web.users:
        handler = BasicAuth(handler, web.users)
    return handler


class _LiveNames:
    """`?name[]=` over the families collected now. prometheus_client's own restricted registry
    only asks the collectors whose names it learned from describe() at register time, so the
    families of a source kind added by a config reload would never be served."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def restricted_registry(self, names) -> _Restricted:
        return _Restricted(self._registry, frozenset(names))

    def collect(self):
        return self._registry.collect()


class _Restricted:
    def __init__(self, registry: CollectorRegistry, names: frozenset[str]):
        self._registry, self._names = registry, names

    def collect(self):
        """Each family with only the samples named (sample names, as prometheus_client)."""
        for family in self._registry.collect():
            samples = [s for s in family.samples if s.name in self._names]
            if samples:
                kept = copy.copy(family)
                kept.samples = samples
                yield kept


def _endpoints(app: App):
    # `?name[]=` asks for a subset: rare (debugging), so rendered per request, uncached.
    filtered_metrics_app = make_wsgi_app(_LiveNames(app.registry))

    def metrics(environ, start_response) -> list[bytes]:
        if "name[]" in parse_qs(environ.get("QUERY_STRING", "")):
            return filtered_metrics_app(environ, start_response)
        content_type, gzipped, body = app.exposition.body(
            environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING"))
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Vary", "Accept, Accept-Encoding")])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    def respond(start_response, status: str, body: str, content_type: str) -> list[bytes]:
        data = body.encode("utf-8")
        start_response(status, [("Content-Type", content_type),
                                ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]

    def dispatch(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return respond(start_response, "405 Method Not Allowed", "GET only\n", "text/plain")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            ok = app.scheduler.alive()
            return respond(start_response, "200 OK" if ok else "503 Service Unavailable",
                           "ok\n" if ok else "poll loop dead or hung\n", "text/plain")
        if path == "/readyz":
            ok = app.ready
            return respond(start_response, "200 OK" if ok else "503 Service Unavailable",
                           "ready\n" if ok else "waiting for first polls\n", "text/plain")
        if path == "/health":
            body = app.health()
            body["timestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
            code = app.health_status(body)
            status = f"{code} {_phrase(code)}"
            return respond(start_response, status, json.dumps(body, indent=2) + "\n",
                           "application/json")
        if path == "/":
            return respond(start_response, "200 OK", landing_page(app),
                           "text/html; charset=utf-8")
        return respond(start_response, "404 Not Found", "not found\n", "text/plain")

    return dispatch


class HttpServer:
    """The threaded server on its own thread; `stop()` closes the socket. `make_handler(web)`
    gives the WSGI application for a web config (the exporter's: `HttpServer.of(app, ...)`)."""

    def __init__(self, make_handler: Callable[[WebConfig | None], Callable], host: str,
                 port: int, web: WebConfig | None = None):
        server_class = _Server6 if ":" in host else _Server
        self._make_handler = make_handler
        self._handler = make_handler(web)
        self._server = make_server(host, port, self._dispatch, server_class=server_class,
                                   handler_class=_QuietHandler)
        self._server.tls_context = web.tls if web is not None else None
        self._thread = threading.Thread(target=self._server.serve_until_woken, name="http",
                                        daemon=True)

    @classmethod
    def of(cls, app: App, host: str, port: int, web: WebConfig | None = None) -> HttpServer:
        """The exporter's server."""
        return cls(lambda config: make_app(app, config), host, port, web)

    def _dispatch(self, environ, start_response):
        return self._handler(environ, start_response)

    def apply(self, web: WebConfig) -> None:
        """Serve the next requests and connections with a new web config."""
        self._handler = self._make_handler(web)
        self._server.tls_context = web.tls

    @property
    def port(self) -> int:
        return self._server.server_port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.wake()
            self._thread.join()
        self._server.server_close()
