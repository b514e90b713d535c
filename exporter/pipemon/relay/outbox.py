"""Delivers the outbox: each due row, one at a time, in a transaction of its own that holds the
row (FOR UPDATE SKIP LOCKED: two relays never send one row) while it is sent, then marks it
delivered or due again after a backoff. A relay killed mid-send leaves the row undelivered; it
is sent again with the same id, which the service drops as a duplicate (channels.py)."""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg
from psycopg import sql

from pipemon.errors import first_line, redact
from pipemon.relay.channels import Delivery, DeliveryFailed
from pipemon.relay.config import DeliveryConfig
from pipemon.relay.store import SchemaBehind, Store

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, store: Store, channels: dict, config: DeliveryConfig, metrics,
                 secrets: list[str]):
        self.store = store
        self.channels = channels
        self.config = config
        self.metrics = metrics
        self._secrets = secrets

    def backoff(self, attempts: int, retry_after: float = 0.0) -> float:
        wait = min(self.config.retry_min * 2 ** max(attempts - 1, 0), self.config.retry_max)
        return max(wait, min(retry_after, self.config.retry_max))

    def deliver_one(self) -> bool:
        """Send the next due row, if any; True when there was one."""
        with self.store.transaction() as conn:
            row = conn.execute(sql.SQL(
                "SELECT o.id, o.channel, o.event, o.attempts, a.alertname, a.severity,"
                " a.fingerprint, a.labels, a.annotations, a.starts_at, a.ends_at"
                " FROM {s}.outbox o JOIN {s}.alerts a ON a.id = o.alert_id"
                " WHERE o.delivered_at IS NULL AND o.next_attempt_at <= now()"
                " AND o.channel = ANY(%s)"
                " ORDER BY o.next_attempt_at, o.id LIMIT 1 FOR UPDATE OF o SKIP LOCKED"
            ).format(s=self.store.schema), (list(self.channels),)).fetchone()
            if row is None:
                return False
            outbox_id, channel, event, attempts, *alert = row
            delivery = Delivery(outbox_id, event, *alert)
            try:
                self.channels[channel].send(delivery)
            except DeliveryFailed as err:
                wait = self.backoff(attempts + 1, err.retry_after)
                conn.execute(sql.SQL(
                    "UPDATE {}.outbox SET attempts = attempts + 1, last_error = %s,"
                    " next_attempt_at = now() + %s WHERE id = %s").format(self.store.schema),
                    (f"{err.reason}: {err}", timedelta(seconds=wait), outbox_id))
                self.metrics.deliveries.labels(channel, "failed").inc()
                self.metrics.delivery_failures.labels(channel, err.reason).inc()
                log.warning("%s delivery of %s (%s) failed, next try in %.0fs: %s: %s",
                            channel, delivery.alertname, event, wait, err.reason,
                            redact(str(err), self._secrets))
                return True
            conn.execute(sql.SQL(
                "UPDATE {}.outbox SET attempts = attempts + 1, delivered_at = now(),"
                " last_error = NULL WHERE id = %s").format(self.store.schema), (outbox_id,))
            self.metrics.deliveries.labels(channel, "delivered").inc()
            return True

    def deliver_due(self, limit: int = 1000) -> None:
        """Every due row (at most `limit`, so that a stop is not held up)."""
        try:
            for _ in range(limit):
                if not self.deliver_one():
                    return
        except (psycopg.Error, OSError, SchemaBehind) as err:
            log.warning("outbox: history database unavailable: %s",
                        first_line(err, self._secrets))
