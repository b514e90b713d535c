"""Real S3 endpoints for the storage tests: moto's server on loopback, and a faulty proxy to it.

The proxy forwards each HTTP request to moto unless its `rule` says otherwise: answer with an S3
error document (throttling, a missing key, denied access), corrupt the body of the answer, or
stall (accept and never answer, like an endpoint that hangs). Both listen on 127.0.0.1 on a port
the OS picks, and are stopped by the fixture that started them.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from testkit.net import LoopbackServer


class Moto:
    """moto's S3 server on 127.0.0.1; `stop()` and `start()` again keep the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            # ThreadedMotoServer.stop() leaves its listening socket open: close it, so that a
            # stopped server refuses connections (and leaks no socket).
            server._server.server_close()

    def reset(self) -> None:
        """moto keeps its buckets per process, not per server: forget them between tests."""
        self._post("/moto-api/reset", b"")

    def require_auth(self, enabled: bool) -> None:
        """Make moto check signatures and IAM policies (process-wide: switch it back after)."""
        count = b"0" if enabled else b"inf"
        self._post("/moto-api/reset-auth", count)

    def _post(self, path: str, data: bytes) -> None:
        # Not form-encoded: moto reads the raw body.
        request = urllib.request.Request(f"{self.url}{path}", data=data,
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()


BUCKET = "media"  # the bucket the tests and the demo probe


def s3_client(endpoint: str, key: str = "test-key", secret: str = "test-secret"):
    config = BotoConfig(region_name="auto", signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                                          aws_secret_access_key=secret, config=config)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: str


@dataclass(frozen=True)
class Respond:
    """Answer with an S3 error document instead of forwarding."""

    status: int
    code: str
    message: str = "injected by the test proxy"


class Stall:
    """Accept the request and never answer (until the proxy stops)."""


class Swallow:
    """Forward, then never answer: the request took effect but its answer is lost."""


class Corrupt:
    """Forward, then flip the first byte of the answer's body."""


Action = Respond | Stall | Swallow | Corrupt | None


class S3Proxy(LoopbackServer):
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.rule: Callable[[Request], Action] = lambda request: None
        self.seen: list[Request] = []
        self._released = threading.Event()
        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._released.set()  # let stalled requests go, or shutdown() would wait for them
        super().stop()

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 so that `Expect: 100-continue` (botocore sends it with a put) is answered
            # at once instead of after the client's one-second wait.
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet
                pass

            def handle_request(self):
                path, _, query = self.path.partition("?")
                request = Request(self.command, path, query)
                proxy.seen.append(request)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action = proxy.rule(request)
                if isinstance(action, Stall):
                    proxy._released.wait()
                    self.close_connection = True
                elif isinstance(action, Respond):
                    self._answer(action.status, [("Content-Type", "application/xml")],
                                 _error_document(action))
                else:
                    status, headers, data = self._forward(body)
                    if isinstance(action, Swallow):
                        proxy._released.wait()
                        self.close_connection = True
                        return
                    if isinstance(action, Corrupt) and data:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    self._answer(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_request

            def _forward(self, body: bytes | None):
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=10)
                try:
                    # The Host header is part of the SigV4 signature: pass it on unchanged.
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        conn.putheader(key, value)
                    conn.endheaders(body)
                    response = conn.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    conn.close()

            def _answer(self, status: int, headers, data: bytes) -> None:
                self.send_response(status)
                skip = {"connection", "transfer-encoding", "server", "date"}
                if self.command != "HEAD":  # a HEAD answer keeps the length of its GET
                    skip.add("content-length")
                    self.send_header("Content-Length", str(len(data)))
                for key, value in headers:
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


def _error_document(action: Respond) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{action.code}</Code><Message>{action.message}</Message>"
        "<RequestId>pipemon-test</RequestId></Error>"
    ).encode()
