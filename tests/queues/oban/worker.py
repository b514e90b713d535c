"""Real Oban (oban-py, Python >= 3.12) for pipemon's oban preset test, run from the venv that
`make install` builds (.venv-oban): `install DSN` installs Oban's schema; `run DSN` enqueues
jobs that succeed, fail for good, fail once then succeed, cancel themselves, wait in a queue no
node runs, or are scheduled an hour ahead, then runs an embedded Oban until every job of the
queues it runs is done, and stops it. The worker's sessions use America/New_York: Oban stores
UTC in `timestamp without time zone` whatever the zone (oban/queries/install.sql)."""

import asyncio
import datetime as dt
import sys

import psycopg
from oban import Cancel, Oban, worker
from oban.schema import install
from psycopg_pool import AsyncConnectionPool


@worker(queue="mail")
class Separate:
    async def process(self, job):
        await asyncio.sleep(job.args.get("seconds", 0))


@worker(queue="mail", max_attempts=1)
class Broken:
    async def process(self, job):
        raise RuntimeError("corrupt upload")


@worker(queue="mail", max_attempts=3)
class Flaky:
    async def process(self, job):
        if job.attempt == 1:
            raise ValueError("transient")

    def backoff(self, job):
        return 1  # seconds (Oban's default is 15 + 2^attempt)


@worker(queue="mail")
class Unwanted:
    async def process(self, job):
        return Cancel("no longer needed")


@worker(queue="parked")  # no node runs this queue: its jobs wait
class Parked:
    async def process(self, job):
        pass


async def pool_for(dsn: str) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(dsn, open=False, min_size=1, max_size=6,
                               kwargs={"options": "-c TimeZone=America/New_York"})
    await pool.open()
    return pool


async def run(dsn: str) -> None:
    pool = await pool_for(dsn)
    oban = Oban(pool=pool, queues={"mail": 5, "reports": 2}, stager={"interval": 0.2})
    for seconds in (0.0, 0.2, 0.4, 1.1):
        await oban.enqueue(Separate.new({"seconds": seconds}))
    for _ in range(2):
        await oban.enqueue(Broken.new({}))
    for _ in range(3):
        await oban.enqueue(Flaky.new({}))
    await oban.enqueue(Unwanted.new({}))
    await oban.enqueue(Separate.new({}, queue="reports", scheduled_in=3600))
    await oban.enqueue(Parked.new({}))
    due = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90)
    await oban.enqueue(Parked.new({}, scheduled_at=due))  # `scheduled`, due, never staged
    await oban.cancel_job(await oban.enqueue(Parked.new({})))  # cancelled before it ran
    await oban.start()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM oban_jobs WHERE queue = 'mail'"
                " AND state IN ('available', 'scheduled', 'executing', 'retryable')")
            (left,) = await cur.fetchone()
            if left == 0:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"{left} mail jobs still pending after 60 s")
            await asyncio.sleep(0.1)
    await oban.stop()
    await pool.close()


async def main(command: str, dsn: str) -> None:
    if command == "install":
        pool = await pool_for(dsn)
        await install(pool)
        await pool.close()
    else:
        await run(dsn)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
