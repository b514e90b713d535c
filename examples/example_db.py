"""Create the example database for `make run`: the schema and a few jobs in every state.

Idempotent: an existing database is reused as it is. Reads PIPEMON_POSTGRES_DSN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCHEMA = Path(__file__).with_name("schema.sql").read_text()
SAMPLE = """
INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at) VALUES
  ('stem-separation', 'waiting',   now() - interval '3 minutes', now() - interval '3 minutes',
   NULL, NULL),
  ('stem-separation', 'running',   now() - interval '5 minutes', now() - interval '5 minutes',
   now() - interval '4 minutes', NULL),
  ('stem-separation', 'scheduled', now(), now() + interval '1 hour', NULL, NULL),
  ('audio-analysis',  'running',   now() - interval '2 hours', now() - interval '2 hours',
   now() - interval '1 hour 50 minutes', NULL),
  ('audio-analysis',  'succeeded', now() - interval '10 minutes', now() - interval '10 minutes',
   now() - interval '9 minutes', now() - interval '8 minutes');
INSERT INTO audio_events_cache (track_id, timeline, processing_ms, peak_dbfs, loudness_lufs)
  VALUES (1, '[]', 1800, -4.2, -14.1), (2, NULL, 900, NULL, NULL);
"""


def main() -> int:
    dsn = os.environ.get("PIPEMON_POSTGRES_DSN",
                         "postgresql://postgres@127.0.0.1:5432/pipemon_demo")
    dbname = conninfo_to_dict(dsn).get("dbname") or "pipemon_demo"
    admin = make_conninfo(dsn, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(SCHEMA)
            if conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0:
                conn.execute(SAMPLE)
    except psycopg.Error as err:
        print(f"example_db: cannot prepare {dbname!r}: {str(err).splitlines()[0]}",
              file=sys.stderr)
        print("Set PIPEMON_POSTGRES_DSN to a PostgreSQL you may create a database on.",
              file=sys.stderr)
        return 1
    print(f"example_db: database {dbname!r} ready with sample jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
