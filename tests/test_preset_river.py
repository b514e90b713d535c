"""The river preset against River's schema, jobs inserted by River's Python client, and moved
through River's states by the statements River's Go client runs (testkit/river.py cites them:
River's workers are Go, which does not run here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from riverqueue import InsertOpts

from testkit import river
from testkit.app import (
    assert_finished_match,
    assert_schema_missing,
    example_queue_source,
    sample,
)
from testkit.net import wait_until

pytestmark = pytest.mark.postgres

OUTCOME = {"completed": "succeeded", "discarded": "failed", "cancelled": "cancelled"}


def source(dsn: str, **extra):
    return example_queue_source("river", dsn, **extra)


def value(app, name, **labels):
    return sample(app, name, source="jobs", **labels) or 0.0


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def river_db(pg_dsn, db):
    river.install(db)
    return pg_dsn


def truth(db) -> dict:
    """Finished counts and run-time sums by (queue, outcome), and the waits, from the rows."""
    finished, run_sum, waits = {}, {}, []
    for queue, state, attempted, scheduled, finalized in db.execute(
            "SELECT queue, state::text, attempted_at, scheduled_at, finalized_at"
            " FROM river_job").fetchall():
        ran = attempted is not None and scheduled <= attempted
        if ran:
            waits.append((attempted - scheduled).total_seconds())
        if state not in OUTCOME:
            continue
        key = (queue, OUTCOME[state])
        finished[key] = finished.get(key, 0) + 1
        if ran:
            run_sum[key] = run_sum.get(key, 0.0) + (finalized - attempted).total_seconds()
    return {"finished": finished, "run_sum": run_sum, "waits": waits}


def retry_until_available(worker: river.Worker, ids: list[int]) -> None:
    """River's scheduler, run until the retries are due and made available again (with any
    other job that is due)."""
    made_available: list[int] = []

    def scheduled_all() -> bool:
        made_available.extend(worker.schedule())
        return set(ids) <= set(made_available)

    wait_until(scheduled_all, timeout=10, what=f"River's JobSchedule to make jobs {ids}"
               " available")


def test_river_metrics_match_ground_truth(make_app, river_db, db):
    river.insert(river_db, [("transcode", InsertOpts(queue="media"))] * 11
                 + [("upload", InsertOpts(queue="parked"))] * 2
                 + [("upload", InsertOpts(queue="parked",
                                          scheduled_at=now() - timedelta(seconds=90)))]
                 + [("report", InsertOpts(queue="reports",
                                          scheduled_at=now() + timedelta(hours=1)))])
    exporter = make_app([source(river_db)])
    assert exporter.poll_all_once(), exporter.health()

    worker = river.Worker(db)
    ids = worker.fetch("media", 11)
    assert len(ids) == 11
    for job_id in ids[:6]:
        assert worker.complete(job_id, now()) == "completed"
    assert worker.discard(ids[6], now(), "ffmpeg: exit status 1") == "discarded"
    # two fail once and are due again at once; River's scheduler makes them available
    for job_id in ids[7:9]:
        assert worker.retry(job_id, now() + timedelta(milliseconds=200),
                            "s3: timeout after 30s") == "retryable"
    retry_until_available(worker, ids[7:9])
    assert worker.fetch("media", 10) == ids[7:9]
    assert worker.complete(ids[7], now()) == "completed"
    assert worker.discard(ids[8], now(), "ffmpeg: exit status 137") == "discarded"
    # cancelled while it ran: River's JobCancel marks it, the worker then finishes it cancelled
    assert worker.cancel(ids[9]) == "running"
    assert worker.cancelled(ids[9], now(), "context canceled") == "cancelled"
    # failed once, then cancelled before its retry: its last attempt's start is not a run
    assert worker.retry(ids[10], now() + timedelta(hours=1), "s3: timeout") == "retryable"
    assert worker.cancel(ids[10]) == "cancelled"
    # cancelled before it ever ran
    parked = [r[0] for r in db.execute(
        "SELECT id FROM river_job WHERE queue = 'parked' ORDER BY id")]
    assert worker.cancel(parked[0]) == "cancelled"
    assert exporter.poll_all_once(), exporter.health()

    expected = truth(db)
    assert expected["finished"] == {("media", "succeeded"): 7, ("media", "failed"): 2,
                                    ("media", "cancelled"): 2, ("parked", "cancelled"): 1}
    assert set(expected["run_sum"]) == {("media", "succeeded"), ("media", "failed"),
                                        ("media", "cancelled")}
    assert_finished_match(exporter, expected["finished"], expected["run_sum"])
    assert value(exporter, "pipemon_queue_job_failures_total", queue="media",
                 reason="ffmpeg: exit status N") == 2
    # the last attempt of each job that ran, with its wait (the retries: from their due time)
    assert value(exporter, "pipemon_queue_job_wait_seconds_count", queue="media") == \
        len(expected["waits"]) == 10
    assert value(exporter, "pipemon_queue_job_wait_seconds_sum", queue="media") == \
        pytest.approx(sum(expected["waits"]), abs=1e-3)
    # left: one job an hour ahead, two parked ones waiting (one due since 90 s ago)
    assert value(exporter, "pipemon_queue_jobs", queue="reports", state="scheduled") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="parked", state="waiting") == 2
    assert 90 <= value(exporter, "pipemon_queue_oldest_waiting_seconds", queue="parked") < 150
    for state in ("waiting", "running", "retrying", "scheduled"):
        assert sample(exporter, "pipemon_queue_jobs", source="jobs", queue="media",
                      state=state) == 0, state
    assert "migration 7" in str(exporter.health())


def test_river_stuck_retrying_pending_and_unknown_states(make_app, river_db, db):
    two_hours_ago = now() - timedelta(hours=2)
    river.insert(river_db, [("upload", InsertOpts(queue="parked", scheduled_at=two_hours_ago))]
                 * 2 + [("report", InsertOpts(queue="reports"))] * 2)
    worker = river.Worker(db)
    worker.schedule()
    # taken an hour ago by a worker that never finished it, and one failed, due in a minute
    assert len(worker.fetch("parked", 1, now=now() - timedelta(hours=1))) == 1
    [failed] = worker.fetch("parked", 1)
    assert worker.retry(failed, now() + timedelta(minutes=1), "s3: timeout") == "retryable"
    # one waiting on a River Pro workflow, one in a state a newer River might add
    reports = [r[0] for r in db.execute("SELECT id FROM river_job WHERE queue = 'reports'")]
    db.execute("UPDATE river_job SET state = 'pending' WHERE id = %s", (reports[0],))
    db.execute("ALTER TYPE river_job_state ADD VALUE 'paused'")
    db.execute("UPDATE river_job SET state = 'paused' WHERE id = %s", (reports[1],))

    exporter = make_app([source(river_db, stuck_after="30m")])
    assert exporter.poll_all_once(), exporter.health()
    assert value(exporter, "pipemon_queue_jobs", queue="parked", state="running") == 1
    assert value(exporter, "pipemon_queue_stuck_jobs", queue="parked") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="parked", state="retrying") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="reports", state="scheduled") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="reports", state="waiting") == 0
    assert value(exporter, "pipemon_queue_unmapped_jobs", raw_state="paused") == 1


def test_river_schema_missing_is_a_clear_error(make_app, pg_dsn):
    assert_schema_missing(make_app([source(pg_dsn)]), "no river_job table")


def test_river_schema_before_migration_004_is_a_clear_error(make_app, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE river_job_state AS ENUM ('available', 'cancelled',"
                     " 'completed', 'discarded', 'retryable', 'running', 'scheduled')")
        conn.execute("CREATE TABLE river_job (id bigserial PRIMARY KEY,"
                     " state river_job_state NOT NULL)")
    assert_schema_missing(make_app([source(pg_dsn)]), "older than its migration 004")
