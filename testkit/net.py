"""Loopback plumbing: free ports, waiting with a deadline, plain HTTP GETs, and a socketserver
served from a thread of its own (what every local stand-in is built on: the S3 proxy, the
Slack/PagerDuty/SMTP sinks, the fake Trigger.dev)."""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GaveUp(AssertionError):
    """Raised by a check when what it waits for can no longer happen (a process exited)."""


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    """Poll `check` until it returns something truthy; fail saying what it returned last."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except GaveUp:
            raise
        except Exception as exc:  # the thing waited for may not answer yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last saw: {last!r}")


def stays(check: Callable[[], Any], duration: float, what: str, interval: float = 0.25) -> None:
    """Poll `check` for `duration` seconds; fail at once, saying what it returned, if it ever
    returns something falsy (the counterpart of wait_until: a condition that must hold)."""
    deadline = time.monotonic() + duration
    while True:
        last = check()
        if not last:
            raise AssertionError(f"{what} stopped holding; last saw: {last!r}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def http_request(url: str, headers: dict[str, str] | None = None, timeout: float = 5,
                 method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    """`method` (GET) `url` on a new connection: (status, body as sent, e.g. still gzipped). Any
    status is returned, not raised, and redirects are not followed; a connection that fails
    raises OSError (or http.client.HTTPException for a broken answer)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body as text) of a GET."""
    status, body = http_request(url, timeout=timeout)
    return status, body.decode()


class LoopbackServer:
    """A socketserver on 127.0.0.1 served from a thread of its own."""

    def __init__(self, server: socketserver.BaseServer):
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the thread (safe to call twice)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
