"""The pgqueuer preset against pgqueuer itself: its schema (`Queries.install()`), its worker
(`QueueManager`), real jobs that succeed, raise, are held, retried, cancelled and deleted."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from pgqueuer import PsycopgDriver, Queries, QueueManager, RetryRequested
from pgqueuer.models import Job

from testkit.app import (
    assert_finished_match,
    assert_schema_missing,
    example_queue_source,
    sample,
)

pytestmark = pytest.mark.postgres

FINAL = {"successful": "succeeded", "exception": "failed", "failed": "failed",
         "canceled": "cancelled", "deleted": "cancelled"}
HANDLED = ("separate", "broken", "held", "flaky")


def source(dsn: str, **extra):
    return example_queue_source("pgqueuer", dsn, **extra)


def value(app, name, **labels):
    return sample(app, name, source="jobs", **labels) or 0.0


async def install(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await Queries(PsycopgDriver(conn)).install()


async def run_jobs(dsn: str) -> None:
    """Enqueue jobs, run a real worker until every handled one has its final log row, then
    cancel and delete jobs no worker handles."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as producer:
        queries = Queries(PsycopgDriver(producer))
        handled = [
            *await queries.enqueue(["separate"] * 4, [b"0", b"0.1", b"0.2", b"1.1"], [0] * 4),
            *await queries.enqueue(["broken"] * 2, [None, None], [0, 0]),
            *await queries.enqueue("held", None),
            *await queries.enqueue("flaky", None),
        ]
        await queries.enqueue(["later"] * 2, [None, None], [0, 0],
                              execute_after=[timedelta(hours=1)] * 2)
        cancel = await queries.enqueue("later", None, execute_after=timedelta(hours=2))
        await queries.enqueue(["trash"] * 2, [None, None], [0, 0])

        worker_conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        manager = QueueManager(Queries(PsycopgDriver(worker_conn)))

        @manager.entrypoint("separate")
        async def separate(job: Job) -> None:
            await asyncio.sleep(float(job.payload))

        @manager.entrypoint("broken")
        async def broken(job: Job) -> None:
            raise ValueError("corrupt upload")

        @manager.entrypoint("held", on_failure="hold")
        async def held(job: Job) -> None:
            raise RuntimeError("held for a person")

        @manager.entrypoint("flaky")
        async def flaky(job: Job) -> None:
            if job.attempts == 0:
                raise RetryRequested(delay=timedelta(seconds=0.2), reason="transient")

        async def stop_when_done() -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watch:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                done = -1
                while loop.time() < deadline:
                    cur = await watch.execute(
                        "SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE job_id = ANY(%s)"
                        " AND status IN ('successful', 'exception', 'failed')", (handled,))
                    done = (await cur.fetchone())[0]
                    if done == len(handled):
                        break
                    await asyncio.sleep(0.1)
                manager.shutdown.set()
                assert done == len(handled), f"{done} of {len(handled)} jobs finished in 60 s"

        watcher = asyncio.create_task(stop_when_done())
        await manager.run(dequeue_timeout=timedelta(seconds=1), batch_size=4,
                          log_aggregation_interval=timedelta(0))
        await watcher
        await worker_conn.close()
        await queries.mark_job_as_cancelled(cancel)
        await queries.clear_queue("trash")


def truth(db) -> dict:
    """Ground truth from the raw log rows, in Python."""
    finished, run_sum, picks, last_pick = {}, {}, 0, {}
    for job, queue, status, created in db.execute(
            "SELECT job_id, entrypoint, status::text, created FROM pgqueuer_log"
            " ORDER BY created, id").fetchall():
        if status == "picked":
            last_pick[job] = created
            picks += 1
        elif status in FINAL:
            outcome = FINAL[status]
            finished[(queue, outcome)] = finished.get((queue, outcome), 0) + 1
            if job in last_pick:
                run_sum[(queue, outcome)] = run_sum.get((queue, outcome), 0.0) + (
                    created - last_pick[job]).total_seconds()
    return {"finished": finished, "run_sum": run_sum, "picks": picks}


def test_pgqueuer_metrics_match_ground_truth(make_app, pg_dsn, db):
    asyncio.run(install(pg_dsn))
    exporter = make_app([source(pg_dsn)])
    assert exporter.poll_all_once(), exporter.health()
    asyncio.run(run_jobs(pg_dsn))
    assert exporter.poll_all_once(), exporter.health()

    expected = truth(db)
    assert expected["finished"] == {
        ("separate", "succeeded"): 4, ("broken", "failed"): 2, ("held", "failed"): 1,
        ("flaky", "succeeded"): 1, ("later", "cancelled"): 1, ("trash", "cancelled"): 2}
    assert_finished_match(exporter, expected["finished"], expected["run_sum"])
    # the cancelled and deleted jobs never ran: counted, without a run time
    assert value(exporter, "pipemon_queue_job_run_seconds_count", queue="trash",
                 outcome="cancelled") == 0
    starts = sum(value(exporter, "pipemon_queue_job_wait_seconds_count", queue=q)
                 for q in HANDLED)
    assert starts == expected["picks"] == 9  # 8 jobs, the flaky one twice
    assert value(exporter, "pipemon_queue_job_failures_total", queue="broken",
                 reason="ValueError") == 2
    # what is left: the held failure, two jobs an hour ahead, none waiting or running
    assert value(exporter, "pipemon_queue_permanently_failed_jobs", queue="held") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="later", state="scheduled") == 2
    for queue in HANDLED:  # zero-filled for every queue seen
        for state in ("waiting", "running", "retrying", "scheduled"):
            assert sample(exporter, "pipemon_queue_jobs", source="jobs", queue=queue,
                          state=state) == 0, (queue, state)
    assert exporter.runners[0].health()["schema_version"] == "1.0+"


def test_pgqueuer_waiting_retrying_stuck_and_unknown_states(make_app, pg_dsn, db):
    asyncio.run(install(pg_dsn))

    async def enqueue():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            return await Queries(PsycopgDriver(conn)).enqueue(["mixdown"] * 4, [None] * 4,
                                                              [0] * 4)

    ids = asyncio.run(enqueue())
    exporter = make_app([source(pg_dsn, stuck_after="1s")])
    assert exporter.poll_all_once()
    assert value(exporter, "pipemon_queue_jobs", queue="mixdown", state="waiting") == 4
    # As pgqueuer's dequeue and retry write them: one picked long ago, one picked by a worker
    # whose heartbeat stopped, one queued again for a retry; and a status a newer pgqueuer
    # might leave in the table.
    db.execute("UPDATE pgqueuer SET status = 'picked', updated = now() - interval '1 minute'"
               " WHERE id = %s", (ids[0],))
    db.execute("UPDATE pgqueuer SET status = 'picked', heartbeat = now() - interval '5 minutes'"
               " WHERE id = %s", (ids[1],))
    db.execute("UPDATE pgqueuer SET attempts = 1 WHERE id = %s", (ids[2],))
    db.execute("UPDATE pgqueuer SET status = 'successful' WHERE id = %s", (ids[3],))
    assert exporter.poll_all_once()
    assert value(exporter, "pipemon_queue_jobs", queue="mixdown", state="running") == 2
    assert value(exporter, "pipemon_queue_stuck_jobs", queue="mixdown") == 2
    assert value(exporter, "pipemon_queue_jobs", queue="mixdown", state="retrying") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="mixdown", state="waiting") == 0
    # the unknown status is looked for at the first poll, then every unmapped_check_interval
    fresh = make_app([source(pg_dsn)])
    assert fresh.poll_all_once()
    assert value(fresh, "pipemon_queue_unmapped_jobs", raw_state="successful") == 1


def test_pgqueuer_schema_missing_is_a_clear_error(make_app, pg_dsn):
    assert_schema_missing(make_app([source(pg_dsn)]), "no pgqueuer table")
