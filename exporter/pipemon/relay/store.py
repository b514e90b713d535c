"""The alert history in PostgreSQL: the relay's migrations, and one transaction per webhook call
that records its alerts and queues their deliveries (the outbox), or fails whole.

An alert occurrence is Alertmanager's (fingerprint, startsAt): the same alert firing again later
is a new occurrence. Recording is idempotent: Alertmanager's retries, its repeat notifications and
the same notification from both members of an HA pair update the occurrence's last notification
time and nothing else, and a delivery is queued once per (occurrence, channel, event). An
occurrence only ever moves from firing to resolved: a late `firing` from the other member of a
pair does not reopen it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from pipemon.relay.config import DatabaseConfig
from pipemon.relay.webhook import Alert

log = logging.getLogger(__name__)

APPLICATION_NAME = "pipemon-relay"
CONNECT_TIMEOUT = 5

# Each migration once, in order; the version is the list's length.
MIGRATIONS = (
    """
    CREATE TABLE {schema}.alerts (
        id bigserial PRIMARY KEY,
        fingerprint text NOT NULL,
        starts_at timestamptz NOT NULL,
        alertname text NOT NULL,
        severity text NOT NULL,
        labels jsonb NOT NULL,
        annotations jsonb NOT NULL,
        generator_url text NOT NULL,
        first_notified_at timestamptz NOT NULL,
        last_notified_at timestamptz NOT NULL,
        ends_at timestamptz,         -- Alertmanager's, once resolved
        resolved_at timestamptz,     -- when the relay was first told
        UNIQUE (fingerprint, starts_at)
    );
    CREATE INDEX alerts_active ON {schema}.alerts (alertname) WHERE resolved_at IS NULL;
    CREATE INDEX alerts_starts_at ON {schema}.alerts (starts_at);
    CREATE TABLE {schema}.outbox (
        id bigserial PRIMARY KEY,
        alert_id bigint NOT NULL REFERENCES {schema}.alerts (id),
        channel text NOT NULL,
        event text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_error text,
        delivered_at timestamptz,
        UNIQUE (alert_id, channel, event)
    );
    CREATE INDEX outbox_due ON {schema}.outbox (next_attempt_at) WHERE delivered_at IS NULL;
    """,
)
VERSION = len(MIGRATIONS)


class SchemaBehind(Exception):
    """The database's relay schema is older than this relay: run `pipemon relay migrate`."""


@dataclass(frozen=True)
class Recorded:
    """What one webhook call changed: the occurrences it recorded first, and those it resolved
    (for the MTTR histogram)."""
    started: tuple[tuple[str, str], ...]  # (alertname, severity)
    resolved: tuple[tuple[str, str, float], ...]  # (alertname, severity, seconds firing)


class Store:
    """One connection, reused and re-made after a failure, one transaction at a time."""

    def __init__(self, config: DatabaseConfig):
        self.config = config
        self.schema = sql.Identifier(config.db_schema)
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._checked = False

    def _connect(self) -> psycopg.Connection:
        timeout_ms = int(self.config.timeout * 1000)
        # autocommit: each transaction() is a BEGIN/COMMIT of its own, not a savepoint
        conn = psycopg.connect(
            self.config.dsn.reveal(), autocommit=True, connect_timeout=CONNECT_TIMEOUT,
            application_name=APPLICATION_NAME, keepalives=1, keepalives_idle=30,
            options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
                    " -c idle_in_transaction_session_timeout=60000")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A transaction on the shared connection; any error drops the connection (the next
        call makes a new one) and propagates."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                    self._checked = False
                if not self._checked:
                    self._check_version(self._conn)
                with self._conn.transaction():
                    yield self._conn
            except Exception:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise

    def _check_version(self, conn: psycopg.Connection) -> None:
        version = current_version(conn, self.config.db_schema)
        if version < VERSION:
            raise SchemaBehind(f"the relay's tables are at version {version} of {VERSION}:"
                               " run `pipemon relay migrate`")
        self._checked = True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def record(self, alerts: Iterable[Alert], channels: Callable[[Alert], list[str]],
               now: datetime) -> Recorded:
        """Record a notification's alerts, queue the deliveries `channels(alert)` names for
        their events; all or nothing."""
        resolved, started = [], []
        with self.transaction() as conn:
            for alert in alerts:
                alert_id, inserted, newly_resolved, seconds = self._upsert(conn, alert, now)
                if inserted:
                    started.append((alert.name, alert.severity))
                if newly_resolved:
                    resolved.append((alert.name, alert.severity, seconds))
                event = "resolved" if newly_resolved else "firing"
                if alert.resolved and not newly_resolved:
                    continue  # resolved before: its deliveries are queued already
                for channel in channels(alert):
                    conn.execute(sql.SQL(
                        "INSERT INTO {schema}.outbox (alert_id, channel, event) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING").format(schema=self.schema),
                        (alert_id, channel, event))
        return Recorded(tuple(started), tuple(resolved))

    def _upsert(self, conn: psycopg.Connection, alert: Alert, now: datetime
                ) -> tuple[int, bool, bool, float]:
        """(occurrence id, new, resolved by this call, seconds it fired). New: this call
        inserted it (`xmax = 0`: the row version has no updater)."""
        row = conn.execute(sql.SQL(
            "INSERT INTO {schema}.alerts (fingerprint, starts_at, alertname, severity, labels,"
            " annotations, generator_url, first_notified_at, last_notified_at, ends_at,"
            " resolved_at)"
            " VALUES (%(fingerprint)s, %(starts_at)s, %(name)s, %(severity)s, %(labels)s,"
            "  %(annotations)s, %(generator_url)s, %(now)s, %(now)s, %(ends_at)s,"
            "  %(resolved_at)s)"
            " ON CONFLICT (fingerprint, starts_at) DO UPDATE SET"
            "  last_notified_at = greatest(alerts.last_notified_at, EXCLUDED.last_notified_at),"
            "  annotations = CASE WHEN alerts.resolved_at IS NULL THEN EXCLUDED.annotations"
            "   ELSE alerts.annotations END,"
            "  ends_at = coalesce(alerts.ends_at, EXCLUDED.ends_at),"
            "  resolved_at = coalesce(alerts.resolved_at, EXCLUDED.resolved_at)"
            " RETURNING id, resolved_at, (xmax = 0) AS inserted"
        ).format(schema=self.schema), {
            "fingerprint": alert.fingerprint, "starts_at": alert.starts_at,
            "name": alert.name, "severity": alert.severity,
            "labels": json.dumps(alert.labels), "annotations": json.dumps(alert.annotations),
            "generator_url": alert.generator_url, "now": now,
            "ends_at": alert.ends_at if alert.resolved else None,
            "resolved_at": now if alert.resolved else None,
        }).fetchone()
        # Resolved by this call when the row holds this call's time: the conflict arm reads the
        # latest committed row, so of two relays told at once only one finds its own time.
        alert_id, resolved_at, inserted = row
        newly_resolved = alert.resolved and resolved_at == now
        seconds = (alert.ends_at - alert.starts_at).total_seconds() if newly_resolved else 0.0
        return alert_id, inserted, newly_resolved, max(seconds, 0.0)


def current_version(conn: psycopg.Connection, schema: str) -> int:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                          (f'"{schema}".migrations',)).fetchone()[0]
    if not exists:
        return 0
    return conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}.migrations").format(
        sql.Identifier(schema))).fetchone()[0]


def migrate(config: DatabaseConfig) -> tuple[int, int]:
    """Bring the relay's schema to VERSION: (version before, version after). Run by a role
    that may create the schema and its tables (docs/security.md)."""
    schema = sql.Identifier(config.db_schema)
    with psycopg.connect(config.dsn.reveal(), autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                         application_name=APPLICATION_NAME) as conn, conn.transaction():
        # one migrating relay at a time
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                     (f"pipemon-relay:{config.db_schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())").format(schema))
        before = current_version(conn, config.db_schema)
        for version, statement in enumerate(MIGRATIONS[before:], start=before + 1):
            conn.execute(sql.SQL(statement).format(
                schema=schema))
            conn.execute(sql.SQL("INSERT INTO {}.migrations (version) VALUES (%s)").format(
                schema), (version,))
            log.info("relay schema migrated to version %d", version)
    return before, VERSION
