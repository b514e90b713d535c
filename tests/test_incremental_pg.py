"""keyset()'s exclusion of rows already seen, on PostgreSQL: the key pipemon writes for a row
(`seen_element`) is the key PostgreSQL computes for it, for ids of every type a queue uses and
for timestamps with and without a time zone, whatever the session's TimeZone."""

from __future__ import annotations

import decimal
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from pipemon.incremental import keyset, seen_element, window_params

STAMP = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC)  # a DST change in Europe

IDS = {
    "bigint": [1, 2, 9_007_199_254_740_993],
    "uuid": [uuid.UUID(int=1), uuid.uuid4(), uuid.uuid4()],
    "numeric": [decimal.Decimal("10"), decimal.Decimal("11"), decimal.Decimal("12")],
    "text": ['a,b', 'quote " and \\ backslash', "{brace} space"],
}


@pytest.mark.parametrize("ts_type", ["timestamptz", "timestamp"])
@pytest.mark.parametrize("id_type", list(IDS))
def test_seen_rows_are_left_out_and_only_they(db, id_type, ts_type):
    db.execute("SET TimeZone = 'Europe/Berlin'")
    db.execute(f"CREATE TABLE t (id {id_type} PRIMARY KEY, ts {ts_type} NOT NULL)")
    ids = IDS[id_type]
    for k, id_ in enumerate(ids):
        stamp = STAMP + timedelta(microseconds=k)
        # into a `timestamp` column PostgreSQL writes it in the session's zone, as an app would
        db.execute("INSERT INTO t VALUES (%s, %s)", (id_, stamp))
    condition, tail = keyset(sql.Identifier("ts"), sql.Identifier("id"), False)
    query = sql.SQL("SELECT id, ts::timestamptz FROM t WHERE {} {}").format(condition, tail)
    since = STAMP - timedelta(hours=1)
    everything = db.execute(query, window_params(since, 100, None, {})).fetchall()
    assert [row[0] for row in everything] == ids
    # The reader's keys come from the rows as psycopg returns them.
    seen = {(row[0], row[1]): seen_element(row[0], row[1]) for row in everything[:2]}
    left = db.execute(query, window_params(since, 100, None, seen)).fetchall()
    assert [row[0] for row in left] == ids[2:], f"seen: {seen}"


def test_the_key_is_written_in_utc_whatever_the_client_zone():
    berlin = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    assert seen_element(7, berlin) == '"20260101120000000000 7"'


def test_a_hundred_thousand_keys_fit_in_one_parameter(db):
    """A busy queue's overlap (830 jobs/s for 2 minutes) is still one statement."""
    seen = {(k, STAMP): seen_element(k, STAMP) for k in range(100_000)}
    params = window_params(STAMP, 1, None, seen)
    count = db.execute("SELECT cardinality(%(seen)s::text[])", params).fetchone()[0]
    assert count == 100_000


def test_a_literal_postgresql_cannot_parse_would_fail_loudly(db):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        db.execute("SELECT %s::text[]", ('{"unterminated',))
