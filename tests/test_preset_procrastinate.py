"""The procrastinate preset against procrastinate itself: its schema, its worker, real jobs."""

from __future__ import annotations

import asyncio

import procrastinate
import psycopg
import pytest

from testkit.app import sample

pytestmark = pytest.mark.postgres

FINAL = ("succeeded", "failed", "cancelled", "aborted")


def make_procrastinate(dsn: str, attempts: dict[str, int]):
    """A procrastinate app with tasks that succeed, fail, fail once then succeed, or take long."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(queue="stems", name="separate")
    async def separate(seconds: float = 0.0):
        await asyncio.sleep(seconds)

    @app.task(queue="stems", name="broken")
    async def broken():
        raise RuntimeError("corrupt upload")

    @app.task(queue="mixdown", name="flaky", retry=1)
    async def flaky(key: str):
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            raise RuntimeError("transient")

    return app, {"separate": separate, "broken": broken, "flaky": flaky}


def truth(db) -> dict:
    """Ground truth computed from the raw event rows, in Python."""
    rows = db.execute(
        "SELECT e.job_id, j.queue_name, e.type::text, e.at FROM procrastinate_events e"
        " JOIN procrastinate_jobs j ON j.id = e.job_id ORDER BY e.id").fetchall()
    finished, run_sum, wait_sum, starts = {}, {}, 0.0, 0
    last_start, ready = {}, {}
    for job, queue, kind, at in rows:
        if kind in ("deferred", "deferred_for_retry", "retried", "scheduled"):
            ready[job] = max(ready.get(job, at), at)
        elif kind == "started":
            last_start[job] = at
            wait_sum += (at - ready[job]).total_seconds()
            starts += 1
        elif kind in FINAL:
            outcome = {"aborted": "cancelled"}.get(kind, kind)
            finished[(queue, outcome)] = finished.get((queue, outcome), 0) + 1
            if job in last_start:
                run_sum[outcome] = run_sum.get(outcome, 0.0) + (
                    at - last_start[job]).total_seconds()
    return {"finished": finished, "run_sum": run_sum, "wait_sum": wait_sum, "starts": starts}


def source(dsn: str, **extra):
    return {"name": "jobs", "kind": "queue", "preset": "procrastinate", "dsn": dsn, **extra}


def value(app, name, **labels):
    return sample(app, name, source="jobs", **labels) or 0.0


def test_procrastinate_metrics_match_ground_truth(make_app, pg_dsn, db):
    attempts: dict[str, int] = {}
    papp, tasks = make_procrastinate(pg_dsn, attempts)

    async def scenario():
        async with papp.open_async():
            await papp.schema_manager.apply_schema_async()
            exporter = make_app([source(pg_dsn)])
            assert await asyncio.to_thread(exporter.poll_all_once), exporter.health()
            for seconds in (0.0, 0.2, 0.4, 1.1):
                await tasks["separate"].defer_async(seconds=seconds)
            await tasks["broken"].defer_async()
            await tasks["broken"].defer_async()
            for key in ("a", "b", "c"):
                await tasks["flaky"].defer_async(key=key)
            later = tasks["separate"].configure(schedule_in={"hours": 1})
            await later.defer_async()
            await later.defer_async()
            await papp.run_worker_async(wait=False, install_signal_handlers=False,
                                        queues=["stems", "mixdown"])
            return exporter

    exporter = asyncio.run(scenario())
    assert exporter.poll_all_once(), exporter.health()
    expected = truth(db)
    assert expected["finished"] == {("stems", "succeeded"): 4, ("stems", "failed"): 2,
                                    ("mixdown", "succeeded"): 3}
    for (queue, outcome), count in expected["finished"].items():
        assert value(exporter, "pipemon_queue_jobs_finished_total", queue=queue,
                     outcome=outcome) == count
        assert value(exporter, "pipemon_queue_job_run_seconds_count", queue=queue,
                     outcome=outcome) == count
    for outcome, seconds in expected["run_sum"].items():
        measured = sum(value(exporter, "pipemon_queue_job_run_seconds_sum", queue=q,
                             outcome=outcome) for q in ("stems", "mixdown"))
        assert measured == pytest.approx(seconds, abs=1.0)
    starts = sum(value(exporter, "pipemon_queue_job_wait_seconds_count", queue=q)
                 for q in ("stems", "mixdown"))
    assert starts == expected["starts"] == 12  # 9 jobs, 3 of them twice (retried)
    waited = sum(value(exporter, "pipemon_queue_job_wait_seconds_sum", queue=q)
                 for q in ("stems", "mixdown"))
    assert waited == pytest.approx(expected["wait_sum"], abs=1.0)
    # the two jobs scheduled an hour ahead are all that is left
    direct = db.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'"
                        " AND scheduled_at > now()").fetchone()[0]
    assert value(exporter, "pipemon_queue_jobs", queue="stems", state="scheduled") == direct == 2
    for state in ("waiting", "running", "retrying"):
        assert value(exporter, "pipemon_queue_jobs", queue="stems", state=state) == 0
    assert exporter.runners[0].health()["schema_version"] == "v3+ (worker heartbeats)"


def test_procrastinate_stuck_jobs_and_late_commit(make_app, pg_dsn, db):
    papp, tasks = make_procrastinate(pg_dsn, {})

    async def setup():
        async with papp.open_async():
            await papp.schema_manager.apply_schema_async()
            return [await tasks["separate"].defer_async() for _ in range(3)]

    ids = asyncio.run(setup())
    exporter = make_app([source(pg_dsn, stuck_after="1s")])
    assert exporter.poll_all_once()
    assert value(exporter, "pipemon_queue_jobs", queue="stems", state="waiting") == 3

    # Two jobs taken by a worker whose heartbeat then stops, one by a live worker.
    dead = db.execute("INSERT INTO procrastinate_workers (last_heartbeat)"
                      " VALUES (now() - interval '10 minutes') RETURNING id").fetchone()[0]
    live = db.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id"
                      ).fetchone()[0]
    db.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s"
               " WHERE id = ANY(%s)", (dead, ids[:2]))
    db.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
               (live, ids[2]))
    assert exporter.poll_all_once()
    assert value(exporter, "pipemon_queue_jobs", queue="stems", state="running") == 3
    assert value(exporter, "pipemon_queue_stuck_jobs", queue="stems") == 2

    # A job finished in a transaction that commits after the next poll: counted once.
    with psycopg.connect(pg_dsn) as slow:
        slow.execute("SELECT now()")
        slow.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = %s",
                     (ids[2],))
        assert exporter.poll_all_once()
        slow.commit()
    counts = []
    for _ in range(2):
        assert exporter.poll_all_once()
        counts.append(value(exporter, "pipemon_queue_jobs_finished_total", queue="stems",
                            outcome="succeeded"))
    assert counts == [1, 1]


def test_procrastinate_schema_missing_is_a_clear_error(make_app, pg_dsn):
    exporter = make_app([source(pg_dsn)])
    assert not exporter.poll_all_once()
    error = exporter.runners[0].last_error
    assert error.reason == "schema"
    assert "procrastinate_jobs not found" in error.message
