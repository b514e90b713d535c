"""Database faults: the source reports them with a reason and recovers, nothing else stops."""

from __future__ import annotations

import threading

import psycopg
import pytest

from testkit.app import queue_source, sample
from testkit.net import free_port
from tests.conftest import SCHEMA

pytestmark = pytest.mark.postgres


def up(app, name="stems", kind="queue"):
    return sample(app, "pipemon_source_up", source=name, kind=kind)


def errors(app, reason, name="stems", kind="queue"):
    return sample(app, "pipemon_source_poll_errors_total", source=name, kind=kind, reason=reason)


def test_database_stop_and_start_recovers_without_restart(make_app, cluster):
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO jobs (queue, status) VALUES ('stems', 'waiting')")
    app = make_app([queue_source(cluster.dsn(), timeout="3s")])
    assert app.poll_all_once()
    assert up(app) == 1
    before = sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue="stems",
                    outcome="succeeded")

    cluster.stop()
    assert not app.poll_all_once()
    assert up(app) == 0
    assert errors(app, "connect") == 1
    # gauges of a failed source are not exported as if current; counters keep their values
    assert sample(app, "pipemon_queue_jobs", source="stems", queue="stems",
                  state="waiting") is None
    assert sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue="stems",
                  outcome="succeeded") == before
    health = app.health()
    assert health["status"] == "degraded"
    assert health["sources"][0]["last_error"]["reason"] == "connect"

    cluster.start()
    assert app.poll_all_once()
    assert up(app) == 1
    assert sample(app, "pipemon_queue_jobs", source="stems", queue="stems", state="waiting") == 1
    assert errors(app, "connect") == 1


def test_unreachable_at_start_and_wrong_password_are_reported_without_secrets(make_app,
                                                                              cluster):
    wrong = "Wr0ng-pa55word-77"
    nowhere = f"postgresql://postgres:{cluster.password}@127.0.0.1:{free_port()}/postgres"
    app = make_app([
        queue_source(nowhere, name="nowhere", timeout="2s"),
        queue_source(cluster.dsn(password=wrong), name="badauth", timeout="2s"),
        {"name": "analysis", "kind": "analysis", "dsn": cluster.dsn(), "table": "pg_class",
         "columns": {"id": "oid", "created_at": "oid"}},  # wrong type: an SQL error
    ])
    assert not app.poll_all_once()
    assert errors(app, "connect", name="nowhere") == 1
    assert errors(app, "auth", name="badauth") == 1
    assert up(app, "analysis", "analysis") == 0
    assert errors(app, "sql_error", name="analysis", kind="analysis") == 1
    shown = str(app.health())
    for secret in (wrong, cluster.password):
        assert secret not in shown


def test_slow_query_is_cancelled_by_the_server(make_app, pg_dsn, db):
    db.execute("CREATE VIEW slow_jobs AS SELECT j.* FROM jobs j, pg_sleep(30) AS s")
    app = make_app([queue_source(pg_dsn, table="slow_jobs", timeout="1s")])
    assert not app.poll_all_once()
    assert errors(app, "timeout") == 1
    assert "statement timeout" in app.runners[0].last_error.message
    running = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipemon'"
        " AND datname = current_database()"
        " AND state = 'active'").fetchone()[0]
    assert running == 0  # cancelled server-side, not left running


def test_lock_wait_past_the_timeout_is_a_timeout(make_app, pg_dsn, db):
    app = make_app([queue_source(pg_dsn, timeout="1s")])
    with psycopg.connect(pg_dsn) as locker:
        locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        assert not app.poll_all_once()
    assert errors(app, "timeout") == 1
    assert app.poll_all_once()  # the lock is gone: the same connection works again


def test_killed_connection_recovers_on_the_next_poll(make_app, pg_dsn, db):
    app = make_app([queue_source(pg_dsn)])
    assert app.poll_all_once()
    killed = db.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = 'pipemon'"
                        " AND datname = current_database()").fetchone()[0]
    assert killed == 1
    results = [app.poll_all_once(), app.poll_all_once()]
    assert results == [False, True]
    assert errors(app, "connect") == 1
    # one connection per source, reused: exactly one pipemon backend remains
    assert db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                      " 'pipemon' AND datname = current_database()").fetchone()[0] == 1


def test_one_failing_source_does_not_stop_the_others(make_app, pg_dsn, db):
    app = make_app([
        queue_source(pg_dsn, name="broken", table="no_such_table"),
        queue_source(pg_dsn, name="fine"),
    ])
    db.execute("INSERT INTO jobs (queue, status) VALUES ('q', 'waiting')")
    assert not app.poll_all_once()
    assert errors(app, "schema", name="broken") == 1
    assert up(app, "fine") == 1
    assert sample(app, "pipemon_queue_jobs", source="fine", queue="q", state="waiting") == 1


def test_scrapes_during_polls_see_consistent_families(make_app, pg_dsn, db):
    """Scrapes never block on, or break, a poll in progress."""
    from prometheus_client import generate_latest

    app = make_app([queue_source(pg_dsn)])
    db.execute("INSERT INTO jobs (queue, status) SELECT 'q' || (i % 20), 'waiting'"
               " FROM generate_series(1, 2000) i")
    assert app.poll_all_once()
    stop = threading.Event()
    problems: list[str] = []

    def scrape():
        while not stop.is_set():
            text = generate_latest(app.registry).decode()
            if text.count("# TYPE pipemon_queue_jobs gauge") != 1:
                problems.append(text)

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for _ in range(20):
            assert app.poll_all_once()
    finally:
        stop.set()
        thread.join()
    assert problems == []


def test_poll_all_once_polls_every_source_even_after_a_failure(make_app, pg_dsn):
    """Regression: a failing first source must not cancel the polls of the others."""
    sources = [queue_source(pg_dsn, name="broken", table="missing")]
    sources += [queue_source(pg_dsn, name=f"s{i}") for i in range(12)]
    app = make_app(sources)
    for _ in range(3):
        assert not app.poll_all_once()
    assert [runner.polls for runner in app.runners] == [3] * 13


def test_a_poll_failing_after_the_finished_read_loses_no_job(make_app, pg_dsn, db):
    """Regression: the finished-jobs reader moved on although its poll failed later."""
    from pipemon.errors import PollError

    app = make_app([queue_source(pg_dsn)])
    db.execute("INSERT INTO jobs (queue, status) SELECT 'q', 'waiting'"
               " FROM generate_series(1, 5)")
    assert app.poll_all_once()
    db.execute("UPDATE jobs SET status = 'succeeded', started_at = now(), finished_at = now()")
    source = app.runners[0].source
    real_read = source.started_reader.read

    def failing_read(cur, db_now):
        raise PollError("timeout", "injected: the started-jobs query timed out")

    source.started_reader.read = failing_read
    assert not app.poll_all_once()
    source.started_reader.read = real_read
    assert app.poll_all_once()
    assert sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue="q",
                  outcome="succeeded") == 5
