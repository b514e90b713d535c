"""`pipemon relay` with a real Alertmanager (and an HA pair) posting to it, its history in a
real PostgreSQL: stored before the answer, once per alert occurrence whatever retries or
duplicates arrive, nothing lost while the database is down."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo

from testkit.net import http_get, wait_until
from testkit.processes import Relay
from testkit.processes import migrate_relay as migrate
from testkit.prometheus import Alertmanager

pytestmark = pytest.mark.postgres

TOKEN = "relay-token-3f9a"


def relay_config(dsn: str, **extra) -> dict:
    return {"database": {"dsn": dsn}, "bearer_token": TOKEN, **extra}


def am_config(tmp_path, relay: Relay, token: str = TOKEN) -> str:
    token_file = tmp_path / "relay-token"
    token_file.write_text(token + "\n")
    config = {
        "route": {"receiver": "relay", "group_by": ["alertname", "source"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "relay", "webhook_configs": [{
            "url": f"{relay.url}/webhook", "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": str(token_file)}}}]}],
    }
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alert(name: str, starts: datetime, ends: datetime, **labels) -> dict:
    """As Prometheus sends it: firing with an end in the future, resolved with an end now."""
    return {"labels": {"alertname": name, "severity": "critical", **labels},
            "annotations": {"summary": f"{name} summary"},
            "startsAt": starts.isoformat(), "endsAt": ends.isoformat(),
            "generatorURL": "http://prometheus.example/graph"}


def history(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT alertname, labels ->> 'source', starts_at, ends_at, resolved_at"
            " FROM pipemon_relay.alerts ORDER BY alertname, labels ->> 'source'").fetchall()


def metric(relay: Relay, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, body = http_get(f"{relay.url}/metrics")
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def post(relay: Relay, body: bytes, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{relay.url}/webhook", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def relay_db(pg_dsn, tmp_path):
    """The test database with the relay's tables, migrated by `pipemon relay migrate`."""
    path = tmp_path / "migrate.yaml"
    path.write_text(yaml.safe_dump(relay_config(pg_dsn)))
    migrate(path)
    return pg_dsn


def test_alertmanager_notifications_become_the_history_and_mttr(tmp_path, relay_db, services):
    relay = services(Relay(tmp_path / "relay", relay_config(relay_db)))
    am = services(Alertmanager(tmp_path / "am", am_config(tmp_path, relay)))
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    firing = [alert("PipemonQueueStalled", starts, datetime.now(UTC) + timedelta(minutes=5),
                    source=source) for source in ("stems", "uploads")]
    am.post(firing)
    wait_until(lambda: len(history(relay_db)) == 2, 30, "the relay to record both alerts")
    _, body = http_get(f"{relay.url}/api/alerts")
    assert sorted(a["labels"]["source"] for a in json.loads(body)["active"]) == \
        ["stems", "uploads"]

    ended = datetime.now(UTC).replace(microsecond=0)
    am.post([{**firing[0], "endsAt": ended.isoformat()}])  # stems resolves
    wait_until(lambda: history(relay_db)[0][4] is not None, 30,
               "the relay to record the resolution")
    stems, uploads = history(relay_db)
    assert stems[:4] == ("PipemonQueueStalled", "stems", starts, ended)
    assert uploads[3] is None and uploads[4] is None
    assert metric(relay, "pipemon_alert_resolution_seconds_count",
                  alertname="PipemonQueueStalled", severity="critical") == 1
    assert metric(relay, "pipemon_alert_resolution_seconds_sum",
                  alertname="PipemonQueueStalled") == (ended - starts).total_seconds()
    _, body = http_get(f"{relay.url}/api/alerts")
    assert [a["labels"]["source"] for a in json.loads(body)["active"]] == ["uploads"]
    wait_until(lambda: metric(relay, "pipemon_relay_active_alerts",
                              alertname="PipemonQueueStalled") == 1, 30,
               "the active-alerts gauge to follow the history")


def test_pipemons_alertmanager_config_tells_the_relay_and_still_notifies_people(
        tmp_path, relay_db, sinks, services):
    """alertmanager/values.yaml with relay.url set: every alert but Watchdog reaches the relay
    with the token of the secret file relay-token, and the routes below it still notify
    (`continue`)."""
    from testkit.sinks import notifications, site_config

    http, smtp = sinks
    relay = services(Relay(tmp_path / "relay", relay_config(relay_db)))
    config = site_config(tmp_path, http, smtp, extra_values={
        "relay": {"url": f"{relay.url}/webhook", "group_wait": "1s"},
        "timing": {"critical": {"group_wait": "1s"}, "warning": {"group_wait": "1s"}}},
        relay_token=TOKEN)
    am = services(Alertmanager(tmp_path / "am", config))
    now = datetime.now(UTC)
    am.post([alert("PipemonQueueStalled", now, now + timedelta(minutes=5), source="stems"),
             alert("PipemonQueueJobsStuck", now, now + timedelta(minutes=5), source="stems",
                   severity="warning"),
             alert("Watchdog", now, now + timedelta(minutes=5), severity="none")])
    wait_until(lambda: len(history(relay_db)) == 2, 30, "the relay to record both alerts")
    assert [row[0] for row in history(relay_db)] == ["PipemonQueueJobsStuck",
                                                      "PipemonQueueStalled"]
    wait_until(lambda: len([line for _, line in notifications(http, smtp)
                            if line.startswith("slack/")]) == 2, 30, "both Slack channels")
    people = sorted(line for _, line in notifications(http, smtp) if line.startswith("slack/"))
    assert [line.split(":")[0] for line in people] == ["slack/critical", "slack/warning"]
    assert metric(relay, "pipemon_relay_notifications_total", result="unauthorized") == 0
    assert len(history(relay_db)) == 2  # Watchdog went to the heartbeat only


def test_an_ha_pair_and_retries_record_each_occurrence_once(tmp_path, relay_db, services):
    relay = services(Relay(tmp_path / "relay", relay_config(relay_db)))
    config = am_config(tmp_path, relay)
    am1 = services(Alertmanager(tmp_path / "am1", config, cluster=True))
    am2 = services(Alertmanager(tmp_path / "am2", config, cluster=True,
                                peers=[am1.cluster_address]))
    wait_until(lambda: am1.cluster_ready(2) and am2.cluster_ready(2), 60, "the pair to gossip")
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    firing = alert("PipemonStorageProbeFailing", starts, datetime.now(UTC) + timedelta(minutes=5),
                   source="r2")
    for am in (am1, am2):  # Prometheus sends every alert to every Alertmanager
        am.post([firing])
    wait_until(lambda: len(history(relay_db)) == 1, 30, "the relay to record the alert")
    ended = datetime.now(UTC).replace(microsecond=0)
    for am in (am1, am2):
        am.post([{**firing, "endsAt": ended.isoformat()}])
    wait_until(lambda: history(relay_db)[0][4] is not None, 30, "the resolution")

    # Alertmanager's retry of a call that was stored, and the pair's duplicate: the same body
    payload = webhook_payload([{**firing, "status": "resolved", "endsAt": ended.isoformat(),
                                "fingerprint": "a1b2c3d4e5f60718"}])
    firing_payload = webhook_payload([{**firing, "status": "firing",
                                       "endsAt": "0001-01-01T00:00:00Z",
                                       "fingerprint": "a1b2c3d4e5f60718"}])
    for body in (firing_payload, payload, payload, firing_payload):  # a late firing too
        assert post(relay, body) == (200, "stored\n")
    rows = history(relay_db)
    assert len(rows) == 2  # the pair's occurrence, and the one posted by hand
    assert all(row[4] is not None for row in rows), rows  # the late firing reopened nothing
    assert metric(relay, "pipemon_alert_resolution_seconds_count",
                  alertname="PipemonStorageProbeFailing") == 2
    assert metric(relay, "pipemon_relay_occurrences_total",
                  alertname="PipemonStorageProbeFailing") == 2


def webhook_payload(alerts: list[dict]) -> bytes:
    """A body as Alertmanager 0.25's webhook sends it (notify/webhook/webhook.go)."""
    return json.dumps({
        "receiver": "relay", "status": alerts[0]["status"], "alerts": alerts,
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": alerts[0]["labels"], "commonAnnotations": alerts[0]["annotations"],
        "externalURL": "http://alertmanager.example", "version": "4",
        "groupKey": "{}:{alertname=" + json.dumps(alerts[0]["labels"]["alertname"]) + "}",
        "truncatedAlerts": 0}).encode() + b"\n"


def test_nothing_is_lost_while_the_database_is_down(tmp_path, cluster, services):
    dsn = cluster.dsn()
    path = tmp_path / "migrate.yaml"
    path.write_text(yaml.safe_dump(relay_config(dsn)))
    migrate(path)
    relay = services(Relay(tmp_path / "relay", relay_config(dsn)))
    am = services(Alertmanager(tmp_path / "am", am_config(tmp_path, relay)))
    cluster.stop()
    starts = datetime.now(UTC).replace(microsecond=0)
    am.post([alert("PipemonQueueJobsStuck", starts, starts + timedelta(minutes=5),
                   source="stems")])
    wait_until(lambda: metric(relay, "pipemon_relay_notifications_total",
                              result="unavailable") >= 2, 60,
               "Alertmanager's calls to be answered 503, and retried")
    cluster.start()
    wait_until(lambda: len(history(dsn)) == 1, 60,
               "Alertmanager's retries to be stored once the database is back")
    assert "Traceback" not in relay.log()
    wait_until(lambda: "webhook call not stored, Alertmanager will retry" in relay.log(), 10,
               "the refused call logged")
    assert cluster.password not in relay.log() + http_get(f"{relay.url}/metrics")[1]


@pytest.mark.parametrize(("body", "token", "status", "says"), [
    (b"not json", TOKEN, 400, "bad payload: not JSON"),
    (b'{"version": "3", "alerts": []}', TOKEN, 400, "version: expected '4'"),
    (b'{"version": "4", "alerts": [{"labels": {}}]}', TOKEN, 400, "alerts[0].labels: no alertname"),
    (b'{"version": "4", "alerts": [{"labels": {"alertname": "A"}, "status": "firing",'
     b' "fingerprint": "f", "startsAt": "yesterday"}]}', TOKEN, 400,
     "alerts[0].startsAt: expected an RFC 3339 time"),
    (b'{"version": "4", "alerts": []}', None, 401, "unauthorized"),
    (b'{"version": "4", "alerts": []}', "wrong", 401, "unauthorized"),
], ids=["not-json", "version", "alertname", "time", "no-token", "wrong-token"])
def test_bad_calls_are_refused_with_a_reason_and_no_traceback(tmp_path, relay_db, services,
                                                              body, token, status, says):
    relay = services(Relay(tmp_path / "relay", relay_config(relay_db)))
    code, text = post(relay, body, token)
    assert (code, says in text) == (status, True), (code, text)
    assert "Traceback" not in relay.log()
    assert history(relay_db) == []


def test_an_unmigrated_database_is_a_503_saying_what_to_run(tmp_path, pg_dsn, services):
    relay = services(Relay(tmp_path / "relay", relay_config(pg_dsn)))
    starts = datetime.now(UTC)
    body = webhook_payload([{**alert("A", starts, starts), "status": "firing",
                             "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f00"}])
    assert post(relay, body)[0] == 503
    wait_until(lambda: "run `pipemon relay migrate`" in relay.log(), 10,
               "the missing schema logged")


def test_the_relay_needs_only_the_documented_grants(tmp_path, relay_db, db, services):
    role = f"relay_{uuid.uuid4().hex[:8]}"
    dbname = db.execute("SELECT current_database()").fetchone()[0]
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
    for statement in documented_grants():
        db.execute(statement.replace("pipemon_relay_writer", role))
    try:
        dsn = make_conninfo(relay_db, user=role)
        relay = services(Relay(tmp_path / "relay", relay_config(dsn)))
        starts = datetime.now(UTC)
        body = webhook_payload([{**alert("A", starts, starts), "status": "resolved",
                                 "endsAt": (starts + timedelta(seconds=90)).isoformat(),
                                 "fingerprint": "f01"}])
        assert post(relay, body) == (200, "stored\n")
        assert len(history(relay_db)) == 1
        with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error):
            conn.execute("DELETE FROM pipemon_relay.alerts")
    finally:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")


def documented_grants() -> list[str]:
    """The relay's GRANT statements, as docs/security.md lists them."""
    from testkit import ROOT

    text = (ROOT / "docs" / "security.md").read_text()
    block = text.split("-- pipemon relay", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("GRANT")]


SENTRY_KEY = "0123456789abcdef0123456789abcdef"


def delivered(dsn: str) -> dict[str, set]:
    """The ids the outbox delivered, by channel: what the sinks must hold, once each."""
    from pipemon.relay.channels import IDS

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT channel, id, delivered_at IS NOT NULL"
                            " FROM pipemon_relay.outbox").fetchall()
    found: dict[str, set] = {"sentry": set(), "posthog": set(), "pending": set()}
    for channel, outbox_id, done in rows:
        key = uuid.uuid5(IDS, str(outbox_id))
        found[channel if done else "pending"].add(key.hex if channel == "sentry" else str(key))
    return found


def firing_and_resolved(fingerprint: str, name: str, severity: str, source: str,
                        minutes: int) -> tuple[bytes, bytes]:
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes)
    base = {**alert(name, starts, starts, source=source), "fingerprint": fingerprint}
    base["labels"]["severity"] = severity
    return (webhook_payload([{**base, "status": "firing", "endsAt": "0001-01-01T00:00:00Z"}]),
            webhook_payload([{**base, "status": "resolved",
                              "endsAt": datetime.now(UTC).isoformat()}]))


def test_sentry_and_posthog_get_each_alert_once_through_outages_and_a_kill(tmp_path, relay_db,
                                                                           services):
    from testkit.ingest import PostHogSink, SentrySink

    sentry, posthog = SentrySink(SENTRY_KEY, 42).start(), PostHogSink().start()
    try:
        config = relay_config(relay_db, sentry={"dsn": sentry.dsn},
                              posthog={"api_key": "phc_test", "host": posthog.url},
                              delivery={"retry_min": "100ms", "retry_max": "500ms"})
        relay = services(Relay(tmp_path / "relay", config))
        sentry.fail(3, 503)
        posthog.fail(2, 429)
        stalled = firing_and_resolved("00000000000000a1", "PipemonQueueStalled", "critical",
                                      "stems", 12)
        storage = firing_and_resolved("00000000000000b2", "PipemonStorageProbeFailing",
                                      "critical", "r2", 3)
        backlog = firing_and_resolved("00000000000000c3", "PipemonQueueBacklogHigh",
                                      "warning", "stems", 30)
        for body in (stalled[0], storage[0], backlog[0], stalled[1], stalled[1]):
            assert post(relay, body) == (200, "stored\n")
        # 3 firing + 1 resolved to PostHog; only the critical ones (2 + 1) to Sentry
        wait_until(lambda: len(sentry.events) == 3 and len(posthog.events) == 4, 30,
                   "every delivery, after the sinks' failures")
        assert metric(relay, "pipemon_relay_delivery_failures_total", channel="sentry",
                      reason="server_error") == 3
        assert metric(relay, "pipemon_relay_delivery_failures_total", channel="posthog",
                      reason="rate_limited") == 2

        # Sentry goes away and the relay is killed with deliveries pending
        port, first = sentry.port, sentry
        sentry.stop()
        assert post(relay, storage[1]) == (200, "stored\n")
        wait_until(lambda: metric(relay, "pipemon_relay_delivery_failures_total",
                                  channel="sentry", reason="connect") >= 1, 30,
                   "a delivery to the stopped Sentry to fail")
        # The kill leaves only the stopped Sentry's delivery pending: every delivery a sink
        # received is recorded as delivered first. (Killed between a sink storing one and the
        # relay recording that, it is sent again with its id, by design, and the service drops
        # the duplicate (docs/relay.md); the next test proves that case on purpose.)
        wait_until(lambda: {k: len(v) for k, v in delivered(relay_db).items()}
                   == {"sentry": 3, "posthog": 5, "pending": 1}, 30,
                   "every received delivery to be recorded before the kill")
        relay.proc.kill()
        relay.proc.wait(timeout=10)
        sentry = SentrySink(SENTRY_KEY, 42, port=port).start()
        relay = services(Relay(tmp_path / "relay2", config))
        wait_until(lambda: not delivered(relay_db)["pending"], 30,
                   "the new relay to deliver what the killed one left")
        done = delivered(relay_db)
        # each delivery arrived, and once: none twice, none in both of Sentry's lives
        assert set(first.events) | set(sentry.events) == done["sentry"]
        assert not set(first.events) & set(sentry.events)
        assert set(posthog.events) == done["posthog"]
        assert (len(done["sentry"]), len(done["posthog"])) == (4, 5)
        assert first.duplicates == sentry.duplicates == posthog.duplicates == 0

        resolved = [e for e in posthog.events.values() if e["event"] == "alert_resolved"]
        assert sorted(e["properties"]["alert_type"] for e in resolved) == \
            ["PipemonQueueStalled", "PipemonStorageProbeFailing"]
        stalled_resolved = next(e for e in resolved
                                if e["properties"]["alert_type"] == "PipemonQueueStalled")
        assert 12 * 60 <= stalled_resolved["properties"]["duration_seconds"] < 13 * 60
        assert stalled_resolved["properties"]["service"] == "stems"
        [issue] = {tuple(e["fingerprint"]) for e in sentry.events.values()
                   if e["tags"]["alertname"] == "PipemonStorageProbeFailing"}
        assert issue == ("pipemon-alert", "00000000000000b2")
        assert "Traceback" not in relay.log()
    finally:
        sentry.stop()
        posthog.stop()



def test_a_delivery_repeated_after_a_crash_is_dropped_by_its_id(tmp_path, relay_db, services):
    """The relay dies after PostHog stored an event and before it heard so: the next relay
    sends it again, with the same uuid, which PostHog keeps once."""
    from testkit.ingest import PostHogSink

    posthog = PostHogSink().start()
    try:
        config = relay_config(relay_db, posthog={"api_key": "phc_test", "host": posthog.url})
        relay = services(Relay(tmp_path / "relay", config))
        posthog.hold()
        firing, _ = firing_and_resolved("00000000000000d4", "PipemonSourceDown", "warning",
                                        "jobs-db", 1)
        assert post(relay, firing) == (200, "stored\n")
        assert posthog.held.wait(30), "the relay never sent the event"
        relay.proc.kill()
        relay.proc.wait(timeout=10)
        posthog.release()
        assert delivered(relay_db)["pending"], "the killed relay must not have marked it sent"
        services(Relay(tmp_path / "relay2", config))
        wait_until(lambda: not delivered(relay_db)["pending"], 30, "the redelivery")
        assert (len(posthog.events), posthog.duplicates) == (1, 1)
        assert set(posthog.events) == delivered(relay_db)["posthog"]
    finally:
        posthog.release()
        posthog.stop()


def test_a_bad_config_is_one_line_per_problem_and_exit_2(tmp_path):
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({"database": {"dsn": "host=db port"},
                                    "sentry": {"severities": ["page"]}, "extra": 1}))
    result = subprocess.run([sys.executable, "-m", "pipemon", "relay", "serve", "--config",
                             str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert any("database.dsn: invalid DSN" in line for line in lines), lines
    assert f"{path}: sentry.dsn: required (or dsn_file)" in lines
    assert any("sentry.severities: expected severities among critical, warning, info, got"
               " 'page'" in line for line in lines), lines
    assert f"{path}: extra: unknown key" in lines
    assert "Traceback" not in result.stderr
