"""The pipeline verdict on /health: per source a status from what it measured, a summary, and
the HTTP status a load balancer reads (200 healthy or warning, 503 critical, configurable)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import pytest

from pipemon.config import ConfigError, load
from pipemon.server import HttpServer, landing_page
from pipemon.verdict import (
    CRITICAL,
    HEALTHY,
    WARNING,
    Finding,
    HealthConfig,
    component,
    http_status_of,
    overall,
)
from testkit.app import queue_source, write_config
from testkit.net import free_port, wait_until

PY = sys.executable
FAKE_FFMPEG = [PY, "-c", "print('ffmpeg version 6.1.1')"]


def get_health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def serve():
    servers = []

    def start(app):
        server = HttpServer.of(app, "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        server.stop()


def test_the_worst_source_decides_and_the_statuses_are_configurable():
    parts = [component("a", "queue", []), component("b", "host", [Finding(WARNING, "x")]),
             component("c", "storage", [Finding(CRITICAL, "y"), Finding(WARNING, "z")])]
    verdict = overall(parts)
    assert (verdict["status"], http_status_of(verdict["status"], HealthConfig())) == \
        (CRITICAL, 503)
    assert verdict["summary"] == {"healthy": 1, "warning": 1, "critical": 1, "pending": 0}
    assert parts[2]["findings"][0] == {"status": "critical", "text": "y"}
    assert overall(parts[:2])["status"] == WARNING
    assert http_status_of(WARNING, HealthConfig()) == 200  # warning: still serving
    assert http_status_of(WARNING, HealthConfig(warning_status=429)) == 429
    assert overall(parts[:1])["status"] == HEALTHY
    assert http_status_of("pending", HealthConfig()) == 503  # not polled yet, as /readyz


def test_a_failed_probe_makes_health_critical_and_a_missing_tool_a_warning(make_app, tmp_path,
                                                                             serve):
    gone = f"http://127.0.0.1:{free_port()}"
    app = make_app([
        {"name": "worker", "kind": "host", "timeout": "2s", "tools": [
            {"name": "ffmpeg", "command": FAKE_FFMPEG, "role": "transcoder"},
            {"name": "ffprobe", "command": ["/nonexistent/ffprobe"]}],
         # the thresholds out of reach: this machine's disk may be full or not
         "scratch": [{"path": str(tmp_path), "used_warning": 1, "used_critical": 1}]},
    ])
    port = serve(app)
    app.poll_all_once()
    code, body = get_health(port)
    assert (code, body["verdict"]["status"]) == (200, WARNING), body
    [worker] = body["verdict"]["components"]
    assert worker["findings"] == [{"status": "warning", "text": "tool ffprobe down: not_found"}]

    broken = make_app([{"name": "r2", "kind": "storage", "bucket": "media", "timeout": "2s",
                        "endpoint_url": gone, "access_key_id": "k", "secret_access_key": "s"}])
    port = serve(broken)
    broken.poll_all_once()
    code, body = get_health(port)
    assert (code, body["verdict"]["status"]) == (503, CRITICAL), body
    assert body["sources"][0]["status"] == "up"  # the poll worked: the probe failed
    assert body["verdict"]["components"][0]["findings"][0]["text"].startswith(
        "storage probe failing: connect")
    assert "Verdict: <b>critical</b>" in landing_page(broken)


def test_no_transcoder_and_a_read_only_scratch_are_critical(make_app, tmp_path):
    missing = tmp_path / "gone"
    app = make_app([{"name": "worker", "kind": "host", "timeout": "2s",
                     "tools": [{"name": "ffmpeg", "command": ["/nonexistent/ffmpeg"],
                                "role": "transcoder"}],
                     "scratch": [{"path": str(missing)}]}])
    app.poll_all_once()
    [part] = app.health()["verdict"]["components"]
    assert part["status"] == CRITICAL
    assert [f["text"] for f in part["findings"]] == [
        "no transcoder runs (ffmpeg: not_found)",
        f"scratch directory {missing} not writable: missing"]


@pytest.mark.postgres
def test_checks_above_their_thresholds(make_app, pg_dsn):
    app = make_app([{"name": "integrity", "kind": "checks", "dsn": pg_dsn, "interval": "30s",
                     "checks": [
                         {"name": "orphans", "sql": "SELECT 3 AS value", "critical_above": 0},
                         {"name": "usage", "sql": "SELECT 0.85 AS value", "warning_above": 0.8,
                          "critical_above": 0.95},
                         {"name": "fine", "sql": "SELECT 1 AS value", "warning_above": 5},
                         {"name": "broken", "sql": "SELECT 1 AS nothing"}]}])
    app.poll_all_once()
    [part] = app.health()["verdict"]["components"]
    assert part["findings"] == [
        {"status": "warning", "text": "check broken failed"},
        {"status": "critical", "text": "check orphans is 3 (critical above 0)"},
        {"status": "warning", "text": "check usage is 0.85 (warning above 0.8)"}]


@pytest.mark.postgres
def test_a_stalled_queue_is_critical_as_the_rules_define_a_stall(make_app, pg_dsn, db):
    """Jobs wait and none has completed for longer than stall_gaps normal gaps (and stall_min):
    critical. The normal gap is learnt from the completions pipemon has counted."""
    app = make_app([queue_source(pg_dsn, stall_min="1s", stall_gaps=3)])
    app.poll_all_once()
    db.execute("INSERT INTO jobs (queue, status, started_at, finished_at) SELECT 'q',"
               " 'succeeded', now(), now() FROM generate_series(1, 3)")
    app.poll_all_once()
    db.execute("INSERT INTO jobs (queue, status) VALUES ('q', 'waiting')")

    def stalled():
        app.poll_all_once()
        return app.health()["verdict"]["status"] == CRITICAL

    wait_until(stalled, 15, "the queue to count as stalled")
    [part] = app.health()["verdict"]["components"]
    assert part["findings"][0]["text"].startswith("queue q stalled: no job completed for")


def test_health_config_is_checked(tmp_path):
    path = write_config(tmp_path / "bad.yaml", [
        {"name": "w", "kind": "host", "tools": [{"name": "t", "command": ["true"]}]}],
        health={"critical_status": 200, "warning_status": 700})
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert err.value.problems == [
        "health.warning_status: expected an HTTP status from 200 to 599, got 700"]
    path = write_config(tmp_path / "bad2.yaml", [
        {"name": "w", "kind": "host", "tools": [{"name": "t", "command": ["true"]}]}],
        health={"critical_status": 200, "warning_status": 429})
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert err.value.problems == ["health.critical_status: must not be below warning_status"]
