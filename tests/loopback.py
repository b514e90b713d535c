"""A socketserver on 127.0.0.1 served from a thread of its own: what every local stand-in
(S3 proxy, Slack/PagerDuty/SMTP sinks, fake Trigger.dev) is built on."""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class LoopbackServer:
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
