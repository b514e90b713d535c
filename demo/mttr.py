"""The demo's MTTR per fault, read from the relay's history (pipemon_relay.alerts): each
occurrence's `starts_at` and `ends_at` are Prometheus's own (the alert turning firing, and
resolved), so `ends_at - starts_at` is the time to resolution the Incidents dashboard shows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import psycopg

SLACK = 5  # seconds: an occurrence starting this much before its fault's injection still counts
WAIT = 60  # seconds the summary waits for the relay to hear of the last resolutions


@dataclass
class Occurrence:
    alertname: str
    labels: dict
    starts_at: datetime
    ends_at: datetime | None

    @property
    def seconds(self) -> float | None:
        return None if self.ends_at is None else (self.ends_at - self.starts_at).total_seconds()


def history(dsn: str, since: float) -> list[Occurrence]:
    """The occurrences the relay recorded that started after `since` (a Unix time)."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute("SELECT alertname, labels, starts_at, ends_at"
                            " FROM pipemon_relay.alerts WHERE starts_at >= to_timestamp(%s)"
                            " ORDER BY starts_at", (since,)).fetchall()
    return [Occurrence(*row) for row in rows]


def matching(occurrences: list[Occurrence], alertname: str, labels: dict,
             since: float) -> list[Occurrence]:
    return [o for o in occurrences if o.alertname == alertname
            and o.starts_at.timestamp() >= since - SLACK
            and all(o.labels.get(k) == v for k, v in labels.items())]


def wait_for_resolutions(dsn: str, since: float, wanted: list[tuple[str, dict, float]],
                         timeout: float = WAIT) -> list[Occurrence]:
    """The history once each wanted (alertname, labels, injected at) has a resolved occurrence,
    or after `timeout` seconds: what the relay has by then."""
    deadline = time.monotonic() + timeout
    while True:
        found = history(dsn, since)
        done = all(any(o.ends_at for o in matching(found, name, labels, at))
                   for name, labels, at in wanted)
        if done or time.monotonic() >= deadline:
            return found
        time.sleep(1)


def describe(seconds: float | None) -> str:
    if seconds is None:
        return "still firing"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"
