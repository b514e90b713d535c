"""Every query of the Incidents dashboard, run through a real Prometheus scraping a real relay
(`pipemon relay serve`) whose history holds alerts that fired and resolved, one still firing,
and a PostHog channel (test_dashboard_queries.py proves the other dashboards the same way)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from testkit import ROOT
from testkit.ingest import PostHogSink
from testkit.net import wait_until
from testkit.processes import Relay
from testkit.prometheus import Prometheus
from tests.test_dashboard_queries import ALL, prove, queries, substitute
from tests.test_relay import alert, metric, migrate, post, relay_config, webhook_payload

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

DASHBOARD = ROOT / "grafana" / "dashboards" / "pipemon-incidents.json"
VALUES = {"severity": "critical"}


def occurrence(name: str, severity: str, fingerprint: str, minutes: float,
               resolved: bool) -> bytes:
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes)
    raw = {**alert(name, starts, starts, source="stems"), "fingerprint": fingerprint}
    raw["labels"]["severity"] = severity
    if resolved:
        return webhook_payload([{**raw, "status": "resolved",
                                 "endsAt": datetime.now(UTC).isoformat()}])
    return webhook_payload([{**raw, "status": "firing", "endsAt": "0001-01-01T00:00:00Z"}])


# An alert on the relay's own series, so that the dashboard's ALERTS annotation has a firing
# alert to show (pipemon's relay rules need minutes of an outage to fire).
RULES = {"groups": [{"name": "incidents-test", "rules": [{
    "alert": "IncidentsTestFiring", "expr": "sum(pipemon_relay_active_alerts) > 0",
    "labels": {"severity": "critical"}}]}]}

# a noisy alert (cleared in 2 minutes), a slow one (40 minutes), a queue overflow, and one that
# goes on firing
ALERTS = [("PipemonQueueFailureRatioHigh", "critical", "f1", 2, True),
          ("PipemonQueueStalled", "critical", "f2", 40, True),
          ("PipemonQueueBacklogHigh", "warning", "f3", 20, True),
          ("PipemonStorageProbeFailing", "critical", "f4", 5, False)]


def test_every_incidents_query_returns_data(pg_dsn, services, tmp_path):
    config_path = tmp_path / "migrate.yaml"
    config_path.write_text(yaml.safe_dump(relay_config(pg_dsn)))
    migrate(config_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    posthog = PostHogSink().start()
    try:
        relay = services(Relay(tmp_path / "relay", relay_config(
            pg_dsn, posthog={"api_key": "phc_test", "host": posthog.url})))
        prometheus = services(Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{relay.port}"],
                                         rule_files=[rules], job="pipemon-relay"))
        wait_until(prometheus.targets_up, 30, "Prometheus to scrape the relay")
        # Each alert fires, as Alertmanager tells it first; the resolutions come after
        # Prometheus has seen the series at zero, as they do when an alert fires for minutes.
        for name, severity, fingerprint, minutes, _ in ALERTS:
            body = occurrence(name, severity, fingerprint, minutes, False)
            assert post(relay, body) == (200, "stored\n")
        wait_until(lambda: len(prometheus.query("pipemon_alert_resolution_seconds_count"))
                   == len(ALERTS), 30, "Prometheus to scrape the MTTR series of each alert")
        for name, severity, fingerprint, minutes, resolved in ALERTS:
            if resolved:
                body = occurrence(name, severity, fingerprint, minutes, True)
                assert post(relay, body) == (200, "stored\n")
        wait_until(lambda: metric(relay, "pipemon_relay_active_alerts",
                                  alertname="PipemonStorageProbeFailing") == 1, 30,
                   "the relay to count the firing alert")

        dashboard = json.loads(DASHBOARD.read_text())
        checks = {}
        for values in (VALUES, dict.fromkeys(VALUES, ALL)):
            for where, expr in queries(dashboard):
                checks[f"{where} {values}"] = substitute(expr, values)
        prove(prometheus, checks, 60)
    finally:
        posthog.stop()
