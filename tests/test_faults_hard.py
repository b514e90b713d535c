"""Faults a production database throws: a network that swallows packets, the database dropped
and re-created, a restart in the middle of a poll, and jobs finishing all through them."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from testkit.app import queue_source, sample
from testkit.net import wait_until
from testkit.tcpproxy import TcpProxy
from tests.conftest import SCHEMA

pytestmark = pytest.mark.postgres


def finished(app, outcome="succeeded", queue="q"):
    return sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue=queue,
                  outcome=outcome) or 0.0


def pipemon_threads() -> int:
    """Threads of this process other than the test's proxy."""
    return sum(not t.name.startswith("tcpproxy") for t in threading.enumerate())


def pipemon_backends(db) -> int:
    return db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                      " 'pipemon' AND datname = current_database()").fetchone()[0]


@pytest.fixture
def proxy(pg_dsn):
    proxy = TcpProxy(int(conninfo_to_dict(pg_dsn).get("port", 5432))).start()
    yield proxy
    proxy.stop()


def test_network_that_swallows_packets_is_a_timeout_and_heals(make_app, pg_dsn, db, proxy):
    through_proxy = make_conninfo(pg_dsn, host="127.0.0.1", port=str(proxy.port))
    app = make_app([queue_source(through_proxy, timeout="1s", interval="2s")])
    db.execute("INSERT INTO jobs (queue, status) VALUES ('q', 'waiting')")
    assert app.poll_all_once()
    threads_before = pipemon_threads()

    proxy.pause()
    assert not app.poll_all_once()  # the query hangs: the watchdog cuts the connection
    assert app.runners[0].last_error.message == \
        "no answer from the database within the timeout; connection dropped"
    for _ in range(2):  # reconnecting hangs too: libpq's connect_timeout ends it
        assert not app.poll_all_once()
    assert sample(app, "pipemon_source_poll_errors_total", source="stems", kind="queue",
                  reason="timeout") == 3
    proxy.resume()
    assert app.poll_all_once()
    assert sample(app, "pipemon_queue_jobs", source="stems", queue="q", state="waiting") == 1
    # no thread left behind by the watchdogs (a cancel sent into the swallowed network gives up
    # within its own 2 s), one connection per source
    wait_until(lambda: pipemon_threads() <= threads_before, 10,
               f"at most the {threads_before} threads of before")
    assert pipemon_backends(db) == 1


def test_database_dropped_and_recreated(make_app, postgres_server):
    name = "pipemon_t_dropped"
    admin = psycopg.connect(postgres_server, autocommit=True)
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        dsn = make_conninfo(postgres_server, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute("INSERT INTO jobs (queue, status) VALUES ('q', 'waiting')")
        app = make_app([queue_source(dsn)])
        assert app.poll_all_once()

        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        assert not app.poll_all_once()
        assert app.runners[0].last_error.reason == "connect"
        assert not app.poll_all_once()  # still gone: "database does not exist"
        assert 'database "pipemon_t_dropped" does not exist' in \
            app.runners[0].last_error.message

        admin.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        assert app.poll_all_once()
        # the queue is still known (forget_idle_queues_after), with no job in it
        assert sample(app, "pipemon_queue_jobs", source="stems", queue="q", state="waiting") == 0
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_restart_mid_poll_and_no_job_lost_or_counted_twice(make_app, cluster):
    """Jobs finish before, during and after faults; the counter must end exactly right and
    never go down."""
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("CREATE VIEW slow_jobs AS SELECT j.* FROM jobs j, pg_sleep(1.5) AS s")
    app = make_app([queue_source(dsn, timeout="3s", late_commit_window="1m"),
                    # four statements of 1.5 s each fit its deadline
                    queue_source(dsn, name="slow", table="slow_jobs", timeout="10s")])
    assert app.poll_all_once()
    seen = []

    def finish(n):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO jobs (queue, status, started_at, finished_at)"
                         " SELECT 'q', 'succeeded', now(), now() FROM generate_series(1, %s)",
                         (n,))

    def poll():
        app.poll_all_once()
        seen.append(finished(app))

    finish(3)
    poll()
    # a restart while the slow source's query runs
    polling = threading.Thread(target=poll)
    polling.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%slow_jobs%'"
                            " AND application_name = 'pipemon' AND state = 'active'"
                            ).fetchone()[0]:
                break
            conn.execute("SELECT pg_sleep(0.05)")
    cluster.stop()
    polling.join()
    assert app.runners[1].last_error.reason == "connect"
    poll()  # the database is down
    cluster.start()
    finish(4)
    poll()
    # connections killed
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'pipemon'")
    finish(2)
    poll()
    poll()
    poll()
    assert seen == sorted(seen), f"a counter went backwards: {seen}"
    with psycopg.connect(dsn) as conn:
        truth = conn.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0]
    assert finished(app) == truth == 9
