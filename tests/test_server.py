"""The HTTP endpoints, and the real `pipemon serve` process end to end."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from io import BytesIO
from wsgiref.util import setup_testing_defaults

import psycopg
import pytest

from pipemon.server import make_app as make_wsgi
from pipemon.server import parse_listen_address
from testkit.app import queue_source, write_config
from testkit.net import free_port, wait_until
from testkit.processes import Exporter

PASSWORD = "pl4nted-Pa55word-e2e"


def call_bytes(app, path: str, accept: str | None = None, **environ) -> tuple[str, dict, bytes]:
    environ["PATH_INFO"], _, environ["QUERY_STRING"] = path.partition("?")
    if accept:
        environ["HTTP_ACCEPT"] = accept
    setup_testing_defaults(environ)
    environ["wsgi.input"] = BytesIO(b"")
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(make_wsgi(app)(environ, start_response))
    return captured["status"], captured["headers"], body


def call(app, path: str, accept: str | None = None) -> tuple[str, dict, str]:
    status, headers, body = call_bytes(app, path, accept)
    return status, headers, body.decode()


def with_password(dsn: str) -> str:
    """The same DSN with a password: ignored by trust auth, but it must never be shown."""
    return f"{dsn} password={PASSWORD}"


@pytest.mark.postgres
def test_readiness_health_and_landing_page(make_app, pg_dsn):
    app = make_app([
        queue_source(with_password(pg_dsn)),
        queue_source(pg_dsn, name="broken", table="<script>alert(1)</script>"),
    ])
    assert call(app, "/readyz")[0].startswith("503")
    assert call(app, "/healthz")[0].startswith("200")  # liveness never waits for the database
    status, _, body = call(app, "/health")
    assert status.startswith("503") and json.loads(body)["status"] == "starting"

    app.poll_all_once()
    assert call(app, "/readyz")[0].startswith("200")
    status, headers, body = call(app, "/health")
    health = json.loads(body)
    assert status.startswith("503") and health["status"] == "degraded"
    by_name = {s["name"]: s for s in health["sources"]}
    assert by_name["stems"]["status"] == "up"
    assert by_name["broken"]["last_error"]["reason"] == "schema"
    assert by_name["stems"]["last_success"] is not None

    status, headers, page = call(app, "/")
    assert status.startswith("200") and headers["Content-Type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert PASSWORD not in page and PASSWORD not in body
    assert call(app, "/nope")[0].startswith("404")


@pytest.mark.postgres
def test_metrics_negotiates_openmetrics(make_app, pg_dsn):
    app = make_app([queue_source(pg_dsn)])
    app.poll_all_once()
    _, headers, text = call(app, "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'pipemon_source_up{kind="queue",source="stems"} 1.0' in text
    _, headers, text = call(app, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


@pytest.mark.postgres
def test_metrics_follow_each_poll_gzip_head_and_name_filter(make_app, pg_dsn):
    app = make_app([queue_source(pg_dsn)])
    add_waiting_job = "INSERT INTO jobs (queue, status) VALUES ('stems', 'waiting')"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(add_waiting_job)
        app.poll_all_once()
        waiting = 'pipemon_queue_jobs{queue="stems",source="stems",state="waiting"} '
        assert f"{waiting}1.0" in call(app, "/metrics")[2].splitlines()
        conn.execute(add_waiting_job)
    assert f"{waiting}1.0" in call(app, "/metrics")[2].splitlines(), "no poll yet: same numbers"
    app.poll_all_once()
    after = f"{waiting}2.0"
    assert after in call(app, "/metrics")[2].splitlines(), "the poll's numbers, at once"

    status, headers, body = call_bytes(app, "/metrics", HTTP_ACCEPT_ENCODING="gzip")
    assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) == len(body)
    assert after in gzip.decompress(body).decode().splitlines()
    status, headers, body = call_bytes(app, "/metrics", REQUEST_METHOD="HEAD")
    assert status.startswith("200") and body == b"" and int(headers["Content-Length"]) > 0
    _, _, text = call(app, "/metrics?name[]=pipemon_source_up")
    assert text.splitlines() == [
        "# HELP pipemon_source_up 1 if the last poll of the source succeeded, 0 if it failed.",
        "# TYPE pipemon_source_up gauge", 'pipemon_source_up{kind="queue",source="stems"} 1.0']


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9864", ("127.0.0.1", 9864)), ("[::1]:80", ("::1", 80)),
    (":9864", ("0.0.0.0", 9864)),
])
def test_listen_address(text, expected):
    assert parse_listen_address(text) == expected


def get(url: str, accept: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def promtool():
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus"
    return path


@pytest.mark.postgres
@pytest.mark.e2e
def test_serve_end_to_end(tmp_path, pg_dsn, db, promtool):
    db.execute("INSERT INTO jobs (queue, status) VALUES ('stems', 'waiting'), ('stems', 'running')")
    # Longer than the slow source's timeout: its every poll fails with reason "timeout".
    db.execute("CREATE VIEW slow_jobs AS SELECT j.* FROM jobs j, pg_sleep(5) AS s")
    config = write_config(tmp_path / "pipemon.yaml", [
        queue_source(with_password(pg_dsn), interval="1s", timeout="1s"),
        # A source whose every poll runs into its deadline: SIGTERM arrives mid-poll.
        queue_source(with_password(pg_dsn), name="slow", table="slow_jobs", interval="4s",
                     timeout="4s"),
        {"name": "analysis", "kind": "analysis", "dsn": with_password(pg_dsn),
         "interval": "1s", "timeout": "1s"},
    ])
    port = free_port()
    log_path = tmp_path / "pipemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipemon", "serve", "--config", config,
             "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(f"{base}/readyz")[0] == 200, 30, "/readyz to answer 200")
        wait_until(lambda: 'pipemon_queue_jobs{queue="stems",source="stems",state="running"} 1.0'
                   in get(f"{base}/metrics")[1], 10, "the running job on /metrics")
        db.execute("UPDATE jobs SET status = 'succeeded', started_at = now(),"
                   " finished_at = now() WHERE status = 'running'")
        wait_until(lambda: 'pipemon_queue_jobs_finished_total{outcome="succeeded",'
                   'queue="stems",source="stems"} 1.0' in get(f"{base}/metrics")[1], 10,
                   "the finished job counted on /metrics")
        status, metrics = get(f"{base}/metrics")
        assert status == 200
        check = subprocess.run([promtool, "check", "metrics"], input=metrics,
                               capture_output=True, text=True, timeout=30)
        assert (check.returncode, check.stdout + check.stderr) == (0, "")

        outputs = {path: get(f"{base}{path}")[1] for path in ("/", "/health", "/metrics")}
        wait_until(lambda: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipemon'"
            " AND datname = current_database() AND state = 'active'"
            " AND query LIKE '%slow_jobs%'").fetchone()[0] > 0,
            10, "the slow source's poll in progress")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("pipemon did not exit within 5 s of SIGTERM") from None
    assert code == 0, log_path.read_text()
    wait_until(lambda: db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipemon'"
        " AND datname = current_database()").fetchone()[0] == 0,
        10, "pipemon's connections to close")
    logs = log_path.read_text()
    for where, text in {**outputs, "logs": logs}.items():
        assert PASSWORD not in text, f"password leaked in {where}"
    records = [json.loads(line) for line in logs.splitlines()]
    assert any(r["msg"].startswith("pipemon ") and "serving on" in r["msg"] for r in records)
    assert any(r.get("reason") == "timeout" and r.get("source") == "slow" for r in records)


@pytest.mark.postgres
def test_once_prints_metrics_and_exit_code(tmp_path, pg_dsn, promtool):
    good = write_config(tmp_path / "good.yaml", [queue_source(pg_dsn)])
    result = subprocess.run([sys.executable, "-m", "pipemon", "once", "--config", good],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'pipemon_source_up{kind="queue",source="stems"} 1.0' in result.stdout
    check = subprocess.run([promtool, "check", "metrics"], input=result.stdout,
                           capture_output=True, text=True, timeout=30)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE jobs")
    result = subprocess.run([sys.executable, "-m", "pipemon", "once", "--config", good],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'pipemon_source_up{kind="queue",source="stems"} 0.0' in result.stdout
    assert 'relation "jobs" does not exist' in result.stderr
    assert "Traceback" not in result.stderr


def test_once_fails_on_a_failed_probe_or_tool_though_every_poll_worked(tmp_path):
    """A storage endpoint that is gone and a tool that is missing are measurements (their
    sources stay up), but `once` is a health gate: it exits 1 and says what failed."""
    config = write_config(tmp_path / "probes.yaml", [
        {"name": "r2", "kind": "storage", "bucket": "media", "timeout": "2s",
         "endpoint_url": f"http://127.0.0.1:{free_port()}", "access_key_id": "k",
         "secret_access_key": "s"},
        {"name": "worker", "kind": "host", "tools": [
            {"name": "ffmpeg", "command": ["/nonexistent/ffmpeg", "-version"]}]},
    ])
    result = subprocess.run([sys.executable, "-m", "pipemon", "once", "--config", config],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert 'pipemon_source_up{kind="storage",source="r2"} 1.0' in result.stdout
    assert 'pipemon_storage_probe_success{bucket="media",source="r2"} 0.0' in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("source ")]
    assert [line.split(":")[0] for line in lines] == ["source r2", "source worker"], \
        result.stderr
    assert "storage probe failed: connect" in lines[0]
    assert "tool ffmpeg: not_found" in lines[1]


def test_a_service_that_exits_at_start_fails_its_test_with_the_exit_code(tmp_path):
    # The harness must not wait out its 30 s deadline for a process that is already gone, and
    # must say why: pipemon exits 2 on a config it rejects, naming the key.
    exporter = Exporter(tmp_path, [{"name": "stems", "kind": "no-such-kind"}])
    with pytest.raises(AssertionError) as failure:
        exporter.start()
    message = str(failure.value)
    assert "pipemon exited with 2" in message, message
    assert "pipemon.yaml: sources[0].kind: expected one of" in message, message


def http_workers() -> list:
    import threading
    return [t for t in threading.enumerate() if t.name == "http-worker"]


def test_scrapes_reuse_worker_threads_and_held_connections_never_block_one(make_app, tmp_path):
    """Scrapes one after another are served by a few reused threads; connections held open
    without a request (more than the idle workers kept) do not delay a scrape; stopping the
    server ends every worker."""
    import socket

    from pipemon.server import HttpServer

    app = make_app([{"name": "worker", "kind": "host", "interval": "60s",
                     "tools": [{"name": "true", "command": [sys.executable, "-c", "0"]}]}])
    server = HttpServer.of(app, "127.0.0.1", 0)
    server.start()
    held = []
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        for _ in range(10):
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
        # A worker becomes idle just after the client has its answer, so the next scrape may
        # come first and start a second thread; never one per scrape.
        wait_until(lambda: 1 <= len(http_workers()) <= 3, 10,
                   "1-3 idle workers after 10 scrapes in a row")
        for _ in range(20):  # each occupies a worker until it sends or times out (30 s)
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        wait_until(lambda: len(http_workers()) >= 20, 10, "a worker per held connection")
        with urllib.request.urlopen(url, timeout=10) as response:  # not behind the held ones
            assert response.status == 200
        for sock in held:
            sock.close()
        wait_until(lambda: len(http_workers()) <= 8, 15,
                   "at most max_idle (8) workers kept")
    finally:
        for sock in held:
            sock.close()
        server.stop()
    wait_until(lambda: not http_workers(), 15,
               "no worker left after stop")
