"""The relay's HTTP side: Alertmanager posts to /webhook, the history answers /api/alerts, its
own metrics are on /metrics.

A webhook call is answered 200 only once its alerts are committed to the database; when the
database cannot take them the answer is 503, which Alertmanager retries (it does not retry a
4xx: a payload that is not one is refused with 400, a wrong token with 401).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from datetime import UTC, datetime

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from psycopg import sql

from pipemon.errors import first_line
from pipemon.relay.channels import PostHogChannel, SentryChannel
from pipemon.relay.config import DeliveryConfig, RelayConfig
from pipemon.relay.outbox import Outbox
from pipemon.relay.store import SchemaBehind, Store
from pipemon.relay.webhook import MAX_BODY, Alert, BadPayload, parse
from pipemon.server import with_headers
from pipemon.webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)

# Firing to resolved: from an alert that clears itself within a minute (noise) to one that
# takes a working day.
RESOLUTION_BUCKETS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400)
REFRESH_SECONDS = 15.0
OUTBOX_SECONDS = 1.0  # how often due deliveries are looked for, besides a new alert's wake-up


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.notifications = Counter(
            "pipemon_relay_notifications", "Webhook calls by result: stored, invalid (400),"
            " unauthorized (401), unavailable (503: the database could not take them).",
            ["result"], registry=r)
        for result in ("stored", "invalid", "unauthorized", "unavailable"):
            self.notifications.labels(result)
        self.alerts = Counter(
            "pipemon_relay_alerts_received", "Alerts in the stored notifications, by status and"
            " severity (Alertmanager repeats them: see pipemon_relay_active_alerts).",
            ["status", "severity"], registry=r)
        self.occurrences = Counter(
            "pipemon_relay_occurrences", "Alert occurrences recorded (an alert firing, once"
            " however often it is notified): incidents per alert.", ["alertname", "severity"],
            registry=r)
        self.resolution = Histogram(
            "pipemon_alert_resolution_seconds", "Firing to resolved of each alert occurrence"
            " (Alertmanager's startsAt to endsAt), observed when the relay is first told: MTTR.",
            ["alertname", "severity"], buckets=RESOLUTION_BUCKETS, registry=r)
        self.active = Gauge(
            "pipemon_relay_active_alerts", "Alert occurrences firing and not yet resolved, in"
            " the history.", ["alertname", "severity"], registry=r)
        self.database_up = Gauge(
            "pipemon_relay_database_up", "1 when the last use of the history database worked.",
            registry=r)
        self.deliveries = Counter(
            "pipemon_relay_deliveries", "Outbox deliveries by channel and result (delivered,"
            " failed: tried again later).", ["channel", "result"], registry=r)
        self.delivery_failures = Counter(
            "pipemon_relay_delivery_failures", "Failed deliveries by channel and reason"
            " (connect, server_error, rate_limited, rejected, dropped).", ["channel", "reason"],
            registry=r)
        self.outbox_pending = Gauge(
            "pipemon_relay_outbox_pending", "Deliveries not yet made, by channel.", ["channel"],
            registry=r)
        self.outbox_oldest = Gauge(
            "pipemon_relay_outbox_oldest_seconds", "Age of the oldest delivery not yet made"
            " (0 when none).", ["channel"], registry=r)

    def channels(self, names) -> None:
        for name in names:
            for result in ("delivered", "failed"):
                self.deliveries.labels(name, result)
            for reason in ("connect", "server_error", "rate_limited", "rejected", "dropped"):
                self.delivery_failures.labels(name, reason)
            self.outbox_pending.labels(name)
            self.outbox_oldest.labels(name)


class Relay:
    def __init__(self, config: RelayConfig, store: Store | None = None):
        self.config = config
        self.store = store or Store(config.database)
        self.metrics = RelayMetrics()
        self._secrets = config.secrets()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        delivery = config.delivery or DeliveryConfig()
        senders = {}
        if config.sentry:
            senders["sentry"] = SentryChannel(config.sentry, delivery.timeout)
        if config.posthog:
            senders["posthog"] = PostHogChannel(config.posthog, delivery.timeout)
        self.metrics.channels(senders)
        # a connection of its own: a slow delivery never holds up a webhook call
        self.outbox = Outbox(Store(config.database), senders, delivery, self.metrics,
                             self._secrets)

    # --- the webhook ---

    def channels(self, alert: Alert) -> list[str]:
        """The channels an alert is passed on to."""
        found = []
        if self.config.sentry and alert.severity in self.config.sentry.severities:
            found.append("sentry")
        if self.config.posthog:
            found.append("posthog")
        return found

    def authorized(self, header: str | None) -> bool:
        token = self.config.bearer_token
        if token is None:
            return True
        scheme, _, credentials = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), token.reveal().encode())

    def webhook(self, body: bytes, authorization: str | None) -> tuple[int, str]:
        """(HTTP status, message) for one call of Alertmanager's webhook."""
        if not self.authorized(authorization):
            self.metrics.notifications.labels("unauthorized").inc()
            log.warning("webhook call refused: missing or wrong bearer token")
            return 401, "unauthorized"
        try:
            notification = parse(body)
        except BadPayload as err:
            self.metrics.notifications.labels("invalid").inc()
            log.warning("webhook payload refused: %s", err)
            return 400, f"bad payload: {err}"
        try:
            recorded = self.store.record(notification.alerts, self.channels,
                                         datetime.now(UTC))
        except (psycopg.Error, OSError, SchemaBehind) as err:
            self.metrics.notifications.labels("unavailable").inc()
            self.metrics.database_up.set(0)
            message = first_line(err, self._secrets)
            log.error("webhook call not stored, Alertmanager will retry: %s", message)
            return 503, "history database unavailable"
        self.metrics.database_up.set(1)
        self.metrics.notifications.labels("stored").inc()
        for alert in notification.alerts:
            self.metrics.alerts.labels(alert.status, alert.severity).inc()
        for name, severity in recorded.started:
            self.metrics.occurrences.labels(name, severity).inc()
            # the histogram's series at zero while it fires: increase() then counts the first
            # resolution too (it cannot count the first sample of a series)
            self.metrics.resolution.labels(name, severity)
        for name, severity, seconds in recorded.resolved:
            self.metrics.resolution.labels(name, severity).observe(seconds)
        if self.outbox.channels:
            self._wake.set()
        log.info("stored %d alerts of %s (%s)", len(notification.alerts),
                 notification.group_key, notification.status)
        return 200, "stored"

    # --- the history ---

    def active_alerts(self) -> list[dict]:
        with self.store.transaction() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT alertname, severity, labels, annotations, starts_at, first_notified_at,"
                " last_notified_at FROM {}.alerts WHERE resolved_at IS NULL"
                " ORDER BY starts_at").format(self.store.schema)).fetchall()
        return [{"alertname": r[0], "severity": r[1], "labels": r[2], "annotations": r[3],
                 "startsAt": r[4].isoformat(), "firstNotifiedAt": r[5].isoformat(),
                 "lastNotifiedAt": r[6].isoformat()} for r in rows]

    def refresh(self) -> None:
        """The gauges read from the history."""
        pending = dict.fromkeys(self.outbox.channels, (0, 0.0))
        try:
            with self.store.transaction() as conn:
                rows = conn.execute(sql.SQL(
                    "SELECT alertname, severity, count(*) FILTER (WHERE resolved_at IS NULL)"
                    " FROM {}.alerts GROUP BY 1, 2").format(self.store.schema)).fetchall()
                waiting = conn.execute(sql.SQL(
                    "SELECT channel, count(*), extract(epoch FROM now() - min(created_at))"
                    "::float8 FROM {}.outbox WHERE delivered_at IS NULL GROUP BY 1").format(
                        self.store.schema)).fetchall()
        except (psycopg.Error, OSError, SchemaBehind) as err:
            self.metrics.database_up.set(0)
            log.warning("history database unavailable: %s",
                        first_line(err, self._secrets))
            return
        pending.update({channel: (count, age) for channel, count, age in waiting
                        if channel in pending})
        self.metrics.database_up.set(1)
        self.metrics.active.clear()
        for name, severity, count in rows:
            self.metrics.active.labels(name, severity).set(count)
            # every alert the history knows, at zero after a restart, so that increase()
            # counts its next occurrence and resolution
            self.metrics.occurrences.labels(name, severity)
            self.metrics.resolution.labels(name, severity)
        for channel, (count, age) in pending.items():
            self.metrics.outbox_pending.labels(channel).set(count)
            self.metrics.outbox_oldest.labels(channel).set(age)

    # --- lifecycle ---

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="relay-outbox", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        refreshed = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            if self.outbox.channels:
                self.outbox.deliver_due()
            if time.monotonic() - refreshed >= REFRESH_SECONDS:
                self.refresh()
                refreshed = time.monotonic()
            # new deliveries wake it at once; failed ones are due again after their backoff
            self._wake.wait(OUTBOX_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.store.close()
        self.outbox.store.close()
        for channel in self.outbox.channels.values():
            channel.close()


def wsgi(relay: Relay, web: WebConfig | None = None):
    """The relay's WSGI application, behind the web config's basic auth when set."""
    metrics_app = make_wsgi_app(relay.metrics.registry)

    def respond(start_response, code: int, body: str, content_type: str = "text/plain"):
        data = body.encode()
        headers = [("Content-Type", f"{content_type}; charset=utf-8"),
                   ("Content-Length", str(len(data)))]
        if code == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="pipemon-relay"'))
        start_response(f"{code} {_REASONS.get(code, '')}", headers)
        return [data]

    def app(environ, start_response):
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if path == "/webhook":
            if method != "POST":
                return respond(start_response, 405, "POST only\n")
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > MAX_BODY:
                relay.metrics.notifications.labels("invalid").inc()
                return respond(start_response, 413, "payload too large\n")
            body = environ["wsgi.input"].read(length) if length else b""
            code, message = relay.webhook(body, environ.get("HTTP_AUTHORIZATION"))
            return respond(start_response, code, message + "\n")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return respond(start_response, 200, "ok\n")
        if path == "/api/alerts":
            try:
                alerts = relay.active_alerts()
            except (psycopg.Error, OSError, SchemaBehind):
                return respond(start_response, 503, "history database unavailable\n")
            return respond(start_response, 200, json.dumps({"active": alerts}, indent=2) + "\n",
                           "application/json")
        return respond(start_response, 404, "not found\n")

    handler = app
    if web is not None and web.headers:
        handler = with_headers(handler, web.headers)
    if web is not None and web.users:
        handler = BasicAuth(handler, web.users, realm="pipemon-relay")
    return handler


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 503: "Service Unavailable"}
