"""Small test helpers: free ports, waiting with a deadline, reading samples, running pipemon."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from pipemon.app import App
from pipemon.config import load


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


def write_config(path, sources: list[dict], **top: Any) -> str:
    path.write_text(yaml.safe_dump({**top, "sources": sources}, sort_keys=False))
    return str(path)


def build_app(tmp_path, sources: list[dict], **top: Any) -> App:
    config = load(write_config(tmp_path / "pipemon.yaml", sources, **top))
    return App(config, registry=CollectorRegistry())


def sample(app: App, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


def queue_source(dsn: str, **overrides: Any) -> dict:
    """The generic queue source for tests/schema (examples/schema.sql)."""
    source = {
        "name": "stems",
        "kind": "queue",
        "dsn": dsn,
        "timeout": "5s",
        "table": "jobs",
        "columns": {"id": "id", "queue": "queue", "state": "status",
                    "created_at": "created_at", "available_at": "run_at",
                    "started_at": "started_at", "finished_at": "finished_at"},
        "stuck_after": "30m",
    }
    source.update(overrides)
    return source


def url_dsn(dsn: str) -> str:
    """A libpq key=value DSN as a postgresql:// URL, which Node's pg understands."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    auth = quote(params.get("user", "postgres"), safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host = params.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{params.get('port', 5432)}/{params['dbname']}"


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
