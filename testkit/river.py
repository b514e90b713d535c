"""River's schema and the statements its Go client runs, for the river preset's test and bench.

River's workers are Go, which does not run here. What does:
- the `riverqueue` package on PyPI (0.7), River's Python client: it inserts jobs, and ships the
  `river_job` DDL (`riverqueue/driver/riversqlalchemy/dbsqlc/river_job.sql`, the statements
  before its first query), which `install()` runs as the package has it;
- what River's own migrations add that the package's DDL leaves out, from
  github.com/riverqueue/river at fdf6cdf, `riverdriver/riverpgxv5/migration/main/`:
  `river_migration` (001, rebuilt by 005), the indexes of 002, and `unique_states` with its
  function (006), which `JobSchedule` reads;
- the statements River's client runs to move a job, from the same commit,
  `riverdriver/riverpgxv5/internal/dbsqlc/river_job.sql`: `JobGetAvailable` (the producer
  takes jobs), `JobSetStateIfRunningMany` (the completer finishes, retries, discards or
  cancels them; one job per call here), `JobSchedule` (the scheduler makes due jobs available)
  and `JobCancel`. sqlc's `@name` and `sqlc.narg('name')` are psycopg's `%(name)s`; nothing
  else is changed.
"""
# ruff: noqa: E501 (River's statements keep River's lines, so they can be diffed with its file)

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files

import psycopg
import sqlalchemy
from riverqueue import Client, InsertOpts
from riverqueue.driver import riversqlalchemy

MIGRATIONS_ADD = """
CREATE TABLE river_migration(
    line TEXT NOT NULL,
    version bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT NOW(),
    CONSTRAINT line_length CHECK (char_length(line) > 0 AND char_length(line) < 128),
    CONSTRAINT version_gte_1 CHECK (version >= 1),
    PRIMARY KEY (line, version)
);
INSERT INTO river_migration (line, version) SELECT 'main', v FROM generate_series(1, 7) v;

CREATE INDEX river_job_kind ON river_job USING btree(kind);
CREATE INDEX river_job_state_and_finalized_at_index ON river_job USING btree(state, finalized_at)
    WHERE finalized_at IS NOT NULL;
CREATE INDEX river_job_prioritized_fetching_index ON river_job
    USING btree(state, queue, priority, scheduled_at, id);
CREATE INDEX river_job_args_index ON river_job USING GIN(args);
CREATE INDEX river_job_metadata_index ON river_job USING GIN(metadata);

CREATE OR REPLACE FUNCTION river_job_state_in_bitmask(bitmask BIT(8), state river_job_state)
RETURNS boolean
LANGUAGE SQL
IMMUTABLE
AS $$
    SELECT CASE state
        WHEN 'available' THEN get_bit(bitmask, 7)
        WHEN 'cancelled' THEN get_bit(bitmask, 6)
        WHEN 'completed' THEN get_bit(bitmask, 5)
        WHEN 'discarded' THEN get_bit(bitmask, 4)
        WHEN 'pending'   THEN get_bit(bitmask, 3)
        WHEN 'retryable' THEN get_bit(bitmask, 2)
        WHEN 'running'   THEN get_bit(bitmask, 1)
        WHEN 'scheduled' THEN get_bit(bitmask, 0)
        ELSE 0
    END = 1;
$$;
ALTER TABLE river_job ADD COLUMN IF NOT EXISTS unique_states BIT(8);
CREATE UNIQUE INDEX IF NOT EXISTS river_job_unique_idx ON river_job (unique_key)
    WHERE unique_key IS NOT NULL
      AND unique_states IS NOT NULL
      AND river_job_state_in_bitmask(unique_states, state);
"""

JOB_GET_AVAILABLE = """
WITH locked_jobs AS (
    SELECT
        *
    FROM
        river_job
    WHERE
        state = 'available'
        AND queue = %(queue)s::text
        AND scheduled_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY
        priority ASC,
        scheduled_at ASC,
        id ASC
    LIMIT %(max_to_lock)s::integer
    FOR UPDATE
    SKIP LOCKED
)
UPDATE
    river_job
SET
    state = 'running',
    attempt = river_job.attempt + 1,
    attempted_at = coalesce(%(now)s::timestamptz, now()),
    attempted_by = array_append(
        CASE WHEN array_length(river_job.attempted_by, 1) >= %(max_attempted_by)s::int
        THEN river_job.attempted_by[array_length(river_job.attempted_by, 1) + 2 - %(max_attempted_by)s:]
        ELSE river_job.attempted_by
        END,
        %(attempted_by)s::text
    )
FROM
    locked_jobs
WHERE
    river_job.id = locked_jobs.id
RETURNING
    river_job.id;
"""

JOB_SET_STATE_IF_RUNNING_MANY = """
WITH job_input AS (
    SELECT
        unnest(%(ids)s::bigint[])                     AS id,
        unnest(%(attempt_do_update)s::boolean[])      AS attempt_do_update,
        unnest(%(attempt)s::int[])                    AS attempt,
        unnest(%(errors_do_update)s::boolean[])       AS errors_do_update,
        unnest(%(errors)s::jsonb[])                   AS errors,
        unnest(%(finalized_at_do_update)s::boolean[]) AS finalized_at_do_update,
        unnest(%(finalized_at)s::timestamptz[])       AS finalized_at,
        unnest(%(metadata_do_merge)s::boolean[])      AS metadata_do_merge,
        unnest(%(metadata_updates)s::jsonb[])         AS metadata_updates,
        unnest(%(scheduled_at_do_update)s::boolean[]) AS scheduled_at_do_update,
        unnest(%(scheduled_at)s::timestamptz[])       AS scheduled_at,
        unnest(%(state)s::text[])::river_job_state AS state
),
updated AS (
    UPDATE river_job
    SET
        attempt = CASE
            WHEN river_job.state = 'running'
                 AND NOT (job_input.state IN ('retryable','scheduled') AND river_job.metadata ? 'cancel_attempted_at')
                 AND job_input.attempt_do_update
            THEN job_input.attempt
            ELSE river_job.attempt
        END,
        errors = CASE
            WHEN river_job.state = 'running'
                 AND job_input.errors_do_update
            THEN array_append(river_job.errors, job_input.errors)
            ELSE river_job.errors
        END,
        finalized_at = CASE
            WHEN river_job.state = 'running'
                 AND (job_input.state IN ('retryable','scheduled') AND river_job.metadata ? 'cancel_attempted_at')
            THEN coalesce(%(now)s::timestamptz, now())
            WHEN river_job.state = 'running'
                 AND job_input.finalized_at_do_update
            THEN job_input.finalized_at
            ELSE river_job.finalized_at
        END,
        metadata = CASE
            WHEN job_input.metadata_do_merge
            THEN river_job.metadata || job_input.metadata_updates
            ELSE river_job.metadata
        END,
        scheduled_at = CASE
            WHEN river_job.state = 'running'
                 AND NOT (job_input.state IN ('retryable','scheduled') AND river_job.metadata ? 'cancel_attempted_at')
                 AND job_input.scheduled_at_do_update
            THEN job_input.scheduled_at
            ELSE river_job.scheduled_at
        END,
        state = CASE
            WHEN river_job.state = 'running'
                 AND (job_input.state IN ('retryable','scheduled') AND river_job.metadata ? 'cancel_attempted_at')
            THEN 'cancelled'::river_job_state
            WHEN river_job.state = 'running'
            THEN job_input.state
            ELSE river_job.state
        END
    FROM job_input
    WHERE river_job.id = job_input.id
      AND (river_job.state = 'running' OR job_input.metadata_do_merge)
    RETURNING river_job.*
)
SELECT river_job.id, river_job.state::text
FROM river_job
JOIN job_input ON river_job.id = job_input.id
WHERE NOT EXISTS (
    SELECT 1
    FROM updated
    WHERE updated.id = river_job.id
)
UNION ALL
SELECT id, state::text
FROM updated
ORDER BY id;
"""

JOB_SCHEDULE = """
WITH jobs_to_schedule AS (
    SELECT
        id,
        unique_key,
        unique_states,
        priority,
        scheduled_at
    FROM river_job
    WHERE
        state IN ('retryable', 'scheduled')
        AND priority >= 0
        AND queue IS NOT NULL
        AND scheduled_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY
        priority,
        scheduled_at,
        id
    LIMIT %(max)s::bigint
    FOR UPDATE
),
jobs_with_rownum AS (
    SELECT
        *,
        CASE
            WHEN unique_key IS NOT NULL AND unique_states IS NOT NULL THEN
                ROW_NUMBER() OVER (
                    PARTITION BY unique_key
                    ORDER BY priority, scheduled_at, id
                )
            ELSE NULL
        END AS row_num
    FROM jobs_to_schedule
),
unique_conflicts AS (
    SELECT river_job.unique_key
    FROM river_job
    JOIN jobs_with_rownum
        ON river_job.unique_key = jobs_with_rownum.unique_key
        AND river_job.id != jobs_with_rownum.id
    WHERE
        river_job.unique_key IS NOT NULL
        AND river_job.unique_states IS NOT NULL
        AND river_job_state_in_bitmask(river_job.unique_states, river_job.state)
),
job_updates AS (
    SELECT
        job.id,
        job.unique_key,
        job.unique_states,
        CASE
            WHEN job.row_num IS NULL THEN 'available'::river_job_state
            WHEN uc.unique_key IS NOT NULL THEN 'discarded'::river_job_state
            WHEN job.row_num = 1 THEN 'available'::river_job_state
            ELSE 'discarded'::river_job_state
        END AS new_state,
        (job.row_num IS NOT NULL AND (uc.unique_key IS NOT NULL OR job.row_num > 1)) AS finalized_at_do_update,
        (job.row_num IS NOT NULL AND (uc.unique_key IS NOT NULL OR job.row_num > 1)) AS metadata_do_update
    FROM jobs_with_rownum job
    LEFT JOIN unique_conflicts uc ON job.unique_key = uc.unique_key
),
updated_jobs AS (
    UPDATE river_job
    SET
        state        = job_updates.new_state,
        finalized_at = CASE WHEN job_updates.finalized_at_do_update THEN coalesce(%(now)s::timestamptz, now())
                            ELSE river_job.finalized_at END,
        metadata     = CASE WHEN job_updates.metadata_do_update THEN river_job.metadata || '{"unique_key_conflict": "scheduler_discarded"}'::jsonb
                            ELSE river_job.metadata END
    FROM job_updates
    WHERE river_job.id = job_updates.id
    RETURNING
        river_job.id,
        job_updates.new_state = 'discarded'::river_job_state AS conflict_discarded
)
SELECT
    river_job.id,
    updated_jobs.conflict_discarded
FROM river_job
JOIN updated_jobs ON river_job.id = updated_jobs.id;
"""

JOB_CANCEL = """
WITH locked_job AS (
    SELECT
        id, queue, state, finalized_at
    FROM river_job
    WHERE river_job.id = %(id)s
    FOR UPDATE
),
notification AS (
    SELECT
        id,
        pg_notify(
            concat(coalesce(%(schema)s::text, current_schema()), '.', %(control_topic)s::text),
            json_build_object('action', 'cancel', 'job_id', id, 'queue', queue)::text
        )
    FROM
        locked_job
    WHERE
        state NOT IN ('cancelled', 'completed', 'discarded')
        AND finalized_at IS NULL
),
updated_job AS (
    UPDATE river_job
    SET
        state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
        finalized_at = CASE WHEN state = 'running' THEN finalized_at ELSE coalesce(%(now)s::timestamptz, now()) END,
        metadata = jsonb_set(metadata, '{cancel_attempted_at}'::text[], %(cancel_attempted_at)s::jsonb, true)
    FROM notification
    WHERE river_job.id = notification.id
    RETURNING river_job.*
)
SELECT id, state::text
FROM river_job
WHERE id = %(id)s::bigint
    AND id NOT IN (SELECT id FROM updated_job)
UNION
SELECT id, state::text
FROM updated_job;
"""


def package_ddl() -> str:
    """The riverqueue package's DDL: its river_job.sql up to the first sqlc query."""
    text = (files(riversqlalchemy) / "dbsqlc" / "river_job.sql").read_text()
    return text.split("-- name:", 1)[0]


def install(conn: psycopg.Connection) -> None:
    conn.execute(package_ddl())
    conn.execute(MIGRATIONS_ADD)


@dataclass
class Args:
    """River job args: a kind and a JSON body, as riverqueue's JobArgs protocol wants."""
    kind: str
    body: dict

    def to_json(self) -> str:
        return json.dumps(self.body)


def insert(dsn: str, jobs: list[tuple[str, InsertOpts]]) -> None:
    """Insert (kind, options) jobs with River's Python client, in one transaction."""
    engine = sqlalchemy.create_engine("postgresql+psycopg://",
                                      creator=lambda: psycopg.connect(dsn))
    try:
        with engine.begin() as conn:
            client = Client(riversqlalchemy.Driver(conn))
            for kind, opts in jobs:
                client.insert(Args(kind, {}), insert_opts=opts)
    finally:
        engine.dispose()


class Worker:
    """What River's client does to jobs, one statement each, as its producer, completer,
    scheduler and cancel call them (riverdriver's JobSetState* constructors name the columns
    each outcome updates)."""

    def __init__(self, conn: psycopg.Connection, name: str = "pipemon-test"):
        self.conn = conn
        self.name = name

    def fetch(self, queue: str, limit: int, now: datetime | None = None) -> list[int]:
        rows = self.conn.execute(JOB_GET_AVAILABLE, {
            "queue": queue, "now": now, "max_to_lock": limit, "max_attempted_by": 100,
            "attempted_by": self.name}).fetchall()
        return sorted(r[0] for r in rows)

    def _set_state(self, job_id: int, state: str, *, finalized_at: datetime | None = None,
                   scheduled_at: datetime | None = None, error: str | None = None,
                   attempt: int | None = None) -> str:
        errors = None
        if error is not None:
            errors = json.dumps({"at": datetime.now().astimezone().isoformat(), "attempt": 1,
                                 "error": error, "trace": ""})
        [(_, new_state)] = self.conn.execute(JOB_SET_STATE_IF_RUNNING_MANY, {
            "ids": [job_id], "attempt_do_update": [attempt is not None],
            "attempt": [attempt or 0], "errors_do_update": [error is not None],
            "errors": [errors], "finalized_at_do_update": [finalized_at is not None],
            "finalized_at": [finalized_at], "metadata_do_merge": [False],
            "metadata_updates": ["{}"], "scheduled_at_do_update": [scheduled_at is not None],
            "scheduled_at": [scheduled_at], "state": [state], "now": None}).fetchall()
        return new_state

    def complete(self, job_id: int, at: datetime) -> str:
        return self._set_state(job_id, "completed", finalized_at=at)

    def discard(self, job_id: int, at: datetime, error: str) -> str:
        return self._set_state(job_id, "discarded", finalized_at=at, error=error)

    def cancelled(self, job_id: int, at: datetime, error: str) -> str:
        """The job's work returned river.JobCancel (or its cancel arrived)."""
        return self._set_state(job_id, "cancelled", finalized_at=at, error=error)

    def retry(self, job_id: int, due: datetime, error: str) -> str:
        """A failed attempt, due again at `due` (River: `retryable`, or `available` when the
        retry is due within 5 s)."""
        return self._set_state(job_id, "retryable", scheduled_at=due, error=error)

    def schedule(self, now: datetime | None = None) -> list[int]:
        rows = self.conn.execute(JOB_SCHEDULE, {"now": now, "max": 10_000}).fetchall()
        return sorted(r[0] for r in rows)

    def cancel(self, job_id: int) -> str:
        """A cancel from outside the worker (Client.JobCancel)."""
        [(_, state)] = self.conn.execute(JOB_CANCEL, {
            "id": job_id, "now": None, "schema": None, "control_topic": "river_control",
            "cancel_attempted_at": json.dumps(datetime.now().astimezone().isoformat()),
        }).fetchall()
        return state
