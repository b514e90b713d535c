"""The pgmq preset against pgmq itself: the extension's SQL from the `pgmq` package, installed
without the extension binary (`install_pgmq_from_sql`), and its own client sending, reading,
archiving, deleting and popping messages."""

from __future__ import annotations

import psycopg
import pytest
from pgmq import PGMQueue, install_pgmq_from_sql

from testkit.app import assert_schema_missing, example_queue_source, sample

pytestmark = pytest.mark.postgres


def source(dsn: str, **extra):
    return example_queue_source("pgmq", dsn, **extra)


def value(app, name, **labels):
    return sample(app, name, source="jobs", **labels) or 0.0


@pytest.fixture
def pgmq(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=False) as conn:
        install_pgmq_from_sql(conn=conn)
    client = PGMQueue(conn_string=pg_dsn, init_extension=False, pool_size=1)
    yield client
    client.close()


def read_again(pgmq: PGMQueue, queue: str, msg_id: int, times: int) -> None:
    """Read a message `times` more times, each after its lease ends (set_vt 0: visible now);
    it must be the only visible message of its queue."""
    for _ in range(times):
        pgmq.set_vt(queue, msg_id, 0)
        message = pgmq.read(queue, vt=600)
        assert message is not None and message.msg_id == msg_id, message


def test_pgmq_metrics_match_the_tables(make_app, pg_dsn, db, pgmq):
    pgmq.create_queue("stems")
    exporter = make_app([source(pg_dsn, max_reads=2)])
    assert exporter.poll_all_once(), exporter.health()
    # A queue created after pipemon started is read from the next poll, mixed case included.
    pgmq.create_queue("Mixdown")

    sent = [pgmq.send("stems", {"track": k}) for k in range(6)]
    pgmq.send("stems", {"track": "later"}, delay=3600)          # scheduled
    done = [pgmq.read("stems", vt=600) for _ in range(3)]        # three leases
    pgmq.archive("stems", done[0].msg_id)                        # finished
    pgmq.archive("stems", done[1].msg_id)                        # finished
    pgmq.delete("stems", sent[3])                                # leaves nothing
    assert pgmq.pop("stems").msg_id == sent[4]                   # leaves nothing
    pgmq.set_vt("stems", done[2].msg_id, 0)                      # lease ended: retrying
    poison = pgmq.send("Mixdown", {"mix": 1})
    pgmq.read("Mixdown", vt=600)
    read_again(pgmq, "Mixdown", poison, 2)                       # read 3 times > max_reads
    pgmq.archive("Mixdown", poison)                              # given up on: failed
    stuck = pgmq.send("Mixdown", {"mix": 2})
    pgmq.read("Mixdown", vt=600)
    db.execute("UPDATE pgmq.q_mixdown SET last_read_at = now() - interval '2 hours'"
               " WHERE msg_id = %s", (stuck,))                   # read long ago, still leased
    held = pgmq.send("Mixdown", {"mix": 3})
    pgmq.read("Mixdown", vt=600)
    read_again(pgmq, "Mixdown", held, 2)                         # poison not yet given up on
    assert exporter.poll_all_once(), exporter.health()

    # ground truth, from the tables
    states = dict(db.execute(
        "SELECT CASE WHEN read_ct > 2 THEN 'failed' WHEN vt > now() THEN CASE WHEN read_ct = 0"
        " THEN 'scheduled' ELSE 'running' END WHEN read_ct = 0 THEN 'waiting' ELSE 'retrying'"
        " END, count(*) FROM pgmq.q_stems GROUP BY 1").fetchall())
    assert states == {"waiting": 1, "scheduled": 1, "retrying": 1}
    for state in ("waiting", "scheduled", "retrying", "running"):
        assert value(exporter, "pipemon_queue_jobs", queue="stems", state=state) == \
            states.get(state, 0), state
    assert value(exporter, "pipemon_queue_jobs", queue="Mixdown", state="running") == 1
    assert value(exporter, "pipemon_queue_stuck_jobs", queue="Mixdown") == 1
    assert value(exporter, "pipemon_queue_permanently_failed_jobs", queue="Mixdown") == 1
    assert value(exporter, "pipemon_queue_jobs_finished_total", queue="stems",
                 outcome="succeeded") == 2
    assert value(exporter, "pipemon_queue_jobs_finished_total", queue="Mixdown",
                 outcome="failed") == 1
    runs = db.execute("SELECT sum(greatest(extract(epoch FROM archived_at - last_read_at), 0))"
                      " FROM pgmq.a_stems").fetchone()[0]
    assert value(exporter, "pipemon_queue_job_run_seconds_sum", queue="stems",
                 outcome="succeeded") == pytest.approx(float(runs), abs=1e-3)
    # Each message's last read is a start, with a wait only when it was its first read: the
    # three read once in stems; in Mixdown two were read three times, and the stuck one's
    # read is from before pipemon started.
    waits = db.execute("SELECT sum(extract(epoch FROM last_read_at - enqueued_at)) FROM"
                       " (SELECT read_ct, enqueued_at, last_read_at FROM pgmq.q_stems UNION ALL"
                       " SELECT read_ct, enqueued_at, last_read_at FROM pgmq.a_stems) m"
                       " WHERE read_ct = 1").fetchone()[0]
    assert value(exporter, "pipemon_queue_job_wait_seconds_count", queue="stems") == 3
    assert value(exporter, "pipemon_queue_job_wait_seconds_sum", queue="stems") == \
        pytest.approx(float(waits), abs=1e-3)
    assert value(exporter, "pipemon_queue_job_wait_seconds_count", queue="Mixdown") == 0
    health = exporter.runners[0].health()
    assert health["schema_version"] == "1.8.1+"
    assert "deleted or popped" in health["missing"]


def test_pgmq_without_queues_and_without_schema(make_app, pg_dsn, pgmq):
    exporter = make_app([source(pg_dsn)])
    assert exporter.poll_all_once(), exporter.health()  # installed, no queue yet: nothing
    assert sample(exporter, "pipemon_queue_jobs", source="jobs", queue="stems",
                  state="waiting") is None
    pgmq.create_queue("stems")
    pgmq.send("stems", {"k": 1})
    assert exporter.poll_all_once(), exporter.health()
    assert value(exporter, "pipemon_queue_jobs", queue="stems", state="waiting") == 1


def test_pgmq_schema_missing_is_a_clear_error(make_app, pg_dsn):
    assert_schema_missing(make_app([source(pg_dsn)]), "no pgmq schema")
