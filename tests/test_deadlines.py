"""Every poll ends by its deadline (`timeout` after it starts), whatever the source waits on: a
host whose tools together take far longer, an S3 endpoint that answers slowly, a query that
runs long. The runner owns the deadline; each source cuts its work there. /healthz stays 200:
a poll that honours its deadline is not a stuck loop.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from pipemon.db import CANCEL_GRACE
from pipemon.scheduler import OVERRUN_GRACE
from pipemon.server import HttpServer
from testkit.app import queue_source, sample
from testkit.net import wait_until
from testkit.s3 import BUCKET

SLEEP_1S = [sys.executable, "-c", "import time; time.sleep(1)"]


def poll_seconds(app) -> float:
    runner = app.runners[0]
    started = time.monotonic()
    runner.poll_once()
    return time.monotonic() - started


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_tools_that_together_outlast_the_timeout_are_cut_at_the_deadline(make_app):
    """70 tools of a second each, a 2 s timeout: the poll ends at 2 s, the tools it had no
    time for fail as `deadline` and run first at the next poll, so every tool gets its turn."""
    tools = [{"name": f"t{i:02}", "command": SLEEP_1S, "timeout": "2s"} for i in range(70)]
    app = make_app([{"name": "worker", "kind": "host", "interval": "3s", "timeout": "2s",
                     "tools": tools}])
    ran: set[str] = set()
    for _ in range(3):
        assert poll_seconds(app) < 2 + OVERRUN_GRACE
        assert app.runners[0].up, app.runners[0].last_error
        snapshot = app.runners[0].snapshot
        ran |= {name for name, result in snapshot.tools.items() if result.up}
        deadline = [name for name, result in snapshot.tools.items()
                    if result.reason == "deadline"]
        assert len(deadline) >= 60, deadline
    assert len(ran) >= 3, ran  # a different tool each time: least recently run first
    assert sample(app, "pipemon_host_tool_failures_total", source="worker", tool="t00",
                  reason="deadline") == 2


def test_slow_s3_endpoint_is_a_probe_timeout_by_the_deadline(make_app, s3, proxy):
    """Each call answers in 0.9 s, within its own timeout, but put, get and delete together do
    not fit the poll's 1.5 s: the probe fails as a get timeout at the deadline, and the source
    stays up (a failed probe is a measurement)."""
    proxy.rule = lambda request: time.sleep(0.9)
    app = make_app([{"name": "r2", "kind": "storage", "endpoint_url": proxy.url,
                     "bucket": BUCKET, "access_key_id": "test-key",
                     "secret_access_key": "test-secret", "timeout": "1.5s", "max_attempts": 1,
                     "inventory": {"prefixes": ["uploads/"]}}])
    assert poll_seconds(app) < 1.5 + 0.5
    assert app.runners[0].up
    assert sample(app, "pipemon_storage_probe_success", source="r2", bucket=BUCKET) == 0
    assert sample(app, "pipemon_storage_probe_failures_total", source="r2", bucket=BUCKET,
                  operation="get", reason="timeout") == 1
    # no time was left for the inventory: it runs at a later poll, not past this one's end
    assert sample(app, "pipemon_storage_objects", source="r2", bucket=BUCKET,
                  prefix="uploads/") is None


@pytest.mark.postgres
def test_slow_query_is_cancelled_at_the_deadline(make_app, pg_dsn, db):
    """Each query of the poll takes 1.9 s, within the statement timeout (2 s), but the poll
    runs several: the one running at the deadline is cancelled, and the poll fails as
    `timeout` instead of running on for seconds."""
    db.execute("CREATE VIEW slow_jobs AS SELECT j.* FROM jobs j, pg_sleep(1.9) AS s")
    app = make_app([queue_source(pg_dsn, table="slow_jobs", timeout="2s")])
    assert poll_seconds(app) < 2 + CANCEL_GRACE + 0.5
    assert app.runners[0].up is False
    assert app.runners[0].last_error.reason == "timeout"
    assert "deadline" in app.runners[0].last_error.message
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # nothing left running
        wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipemon'"
            " AND state = 'active'").fetchone()[0] == 0, 5, "pipemon's query to end")


def test_healthz_stays_ok_while_polls_run_into_their_deadline(make_app):
    """The scheduler running the 70-tool host: every poll ends by its deadline, so the loop is
    never taken for stuck (it was after about a minute: a restart loop under a liveness probe).
    """
    tools = [{"name": f"t{i:02}", "command": SLEEP_1S} for i in range(70)]
    app = make_app([{"name": "worker", "kind": "host", "interval": "2s", "timeout": "1s",
                     "tools": tools}])
    server = HttpServer.of(app, "127.0.0.1", 0)
    server.start()
    app.start()
    try:
        wait_until(lambda: app.runners[0].polls >= 3, 15, "three polls")
        codes = []
        wait_until(lambda: codes.append(healthz(server.port)) or app.runners[0].polls >= 5, 15,
                   "two more polls")
        assert set(codes) == {200}, codes
        assert app.runners[0].last_duration < 1 + OVERRUN_GRACE
    finally:
        app.stop()
        server.stop()
