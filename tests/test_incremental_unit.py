"""IncrementalReader against an in-memory table: watermark, overlap, dedupe, keyset paging, cap.

No database: `FakeCursor` models the keyset semantics of the SQL the readers run
(`ts > since`, optional `(ts, id) > (after_ts, after_id)`, optional `id > id_floor`,
ORDER BY ts, id LIMIT limit), and the query builder returns a marker that records `with_after`
instead of SQL. A row is stamped at `ts` and becomes visible at `visible_at` >= ts (a late
commit when visible_at is after a poll that could have read its timestamp).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipemon.errors import PollError
from pipemon.incremental import IncrementalReader, _id_floor, seen_element

BASE = datetime(2024, 1, 1, tzinfo=UTC)
OVERLAP = 10  # seconds: the late-commit window


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Query:
    """What the builder returns instead of SQL."""

    with_after: bool

    def as_string(self) -> Query:
        """The reader renders each query once (db.composed_once): the marker stays itself."""
        return self


def build_query(with_after: bool) -> Query:
    return Query(with_after)


class FloorQuery:
    """Marker for the `SELECT coalesce(max(id), 0)` query."""


FLOOR_SQL = FloorQuery()


@dataclass
class Row:
    id: int
    ts: datetime
    visible_at: datetime


class FakeDb:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self._next_id = 1

    def insert(self, ts: datetime, visible_at: datetime | None = None) -> int:
        """A row whose id comes from a sequence (ids rise with insertion order)."""
        row = Row(self._next_id, ts, ts if visible_at is None else visible_at)
        assert row.visible_at >= row.ts
        self._next_id += 1
        self.rows.append(row)
        return row.id

    def cursor(self, now: datetime) -> FakeCursor:
        return FakeCursor(self, now)


class FakeCursor:
    """The `Cursor.rows(query, params)` interface over the rows visible at `now`."""

    def __init__(self, db: FakeDb, now: datetime) -> None:
        self.db = db
        self.now = now
        self.calls: list[tuple[object, dict]] = []
        self.returned = 0  # rows returned by all queries

    def rows(self, query, params=None) -> list[tuple]:
        params = dict(params or {})
        self.calls.append((query, params))
        visible = [row for row in self.db.rows if row.visible_at <= self.now]
        if query is FLOOR_SQL:
            return [(max((row.id for row in visible), default=0),)]
        assert isinstance(query, Query), query
        assert ("after_ts" in params) == query.with_after
        assert ("after_id" in params) == query.with_after
        selected = [row for row in visible if row.ts > params["since"]]
        if query.with_after:
            after = (params["after_ts"], params["after_id"])
            selected = [row for row in selected if (row.ts, row.id) > after]
        if params.get("id_floor") is not None:
            selected = [row for row in selected if row.id > params["id_floor"]]
        # PostgreSQL leaves out the rows the reader has seen (keyset()'s NOT IN); that it
        # parses the literal to the same keys is tested on PostgreSQL (test_incremental_pg.py).
        seen = set(params["seen"].removeprefix("{").removesuffix("}").split(","))
        selected = [row for row in selected if seen_element(row.id, row.ts) not in seen]
        selected.sort(key=lambda row: (row.ts, row.id))
        page = [(row.id, row.ts) for row in selected[: params["limit"]]]
        self.returned += len(page)
        return page


def reader(page_size: int = 100, max_rows: int = 10_000, floor: bool = False,
           overlap: float = OVERLAP) -> IncrementalReader:
    return IncrementalReader("t", build_query, overlap, page_size, max_rows,
                             floor_sql=FLOOR_SQL if floor else None)


def poll(r: IncrementalReader, db: FakeDb, now: float, commit: bool = True) -> list[int]:
    rows = r.read(db.cursor(at(now)), at(now))
    if commit:
        r.commit()
    return [row[0] for row in rows]


# --- first poll: the floor ---


def test_first_poll_reads_nothing_and_sets_the_floor():
    db = FakeDb()
    db.insert(at(-5))
    db.insert(at(-1))
    r = reader()
    cur = db.cursor(at(0))
    assert r.read(cur, at(0)) == []
    # The query runs once (a wrong column fails the first poll) but reads nothing.
    assert len(cur.calls) == 1
    query, params = cur.calls[0]
    assert query == Query(False)
    assert params["limit"] == 0 and params["since"] == at(0)
    r.commit()
    # Rows stamped before the floor are never counted, even with the overlap reaching back.
    db.insert(at(0.5))
    assert poll(r, db, 1) == [3]
    assert poll(r, db, 2) == []


def test_overlap_never_reaches_back_before_the_floor():
    db = FakeDb()
    r = reader()
    poll(r, db, 100)
    db.insert(at(95), visible_at=at(101))  # stamped before pipemon started: not counted
    db.insert(at(100.5), visible_at=at(101))
    cur = db.cursor(at(102))
    assert [row[0] for row in r.read(cur, at(102))] == [2]
    assert cur.calls[0][1]["since"] == at(100)  # max(watermark - overlap, floor)


def test_first_poll_not_committed_moves_the_floor_to_the_next_poll():
    db = FakeDb()
    r = reader()
    poll(r, db, 0, commit=False)
    db.insert(at(1))
    assert poll(r, db, 2) == []  # this is the first committed poll: the floor is now 2
    db.insert(at(3))
    assert poll(r, db, 4) == [2]


# --- watermark, overlap, late commits, dedupe ---


def test_new_rows_once_oldest_first():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    db.insert(at(3))
    db.insert(at(1))
    db.insert(at(2))
    assert poll(r, db, 5) == [2, 3, 1]
    assert poll(r, db, 6) == []  # still in the overlap, but already seen
    db.insert(at(5.5))
    assert poll(r, db, 7) == [4]


def test_since_is_watermark_minus_overlap():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    poll(r, db, 50)
    cur = db.cursor(at(60))
    r.read(cur, at(60))
    assert cur.calls[0][1]["since"] == at(50 - OVERLAP)


def test_late_commit_within_the_window_is_read():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    assert poll(r, db, 5) == []
    # Its transaction started at 3 (the stamp), it committed at 7: after the poll at 5.
    late = db.insert(at(3), visible_at=at(7))
    assert poll(r, db, 10) == [late]
    assert poll(r, db, 12) == []


def test_late_commit_read_after_long_gap_between_polls():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    poll(r, db, 20)
    late = db.insert(at(19), visible_at=at(29))  # lag 10 == overlap
    assert poll(r, db, 100) == [late]


def test_rows_already_seen_are_left_out_by_the_database():
    """The overlap is not sent again: the reader hands PostgreSQL the pairs it has counted."""
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    ids = [db.insert(at(s)) for s in (1, 2, 3)]
    assert poll(r, db, 4) == ids
    late = db.insert(at(3.5), visible_at=at(5))
    cur = db.cursor(at(6))
    assert [row[0] for row in r.read(cur, at(6))] == [late]
    (_query, params), = cur.calls
    assert params["seen"] == '{"20240101000001000000 1","20240101000002000000 2",' \
                             '"20240101000003000000 3"}'
    assert cur.returned == 1  # only the late commit crossed the wire


def test_seen_rows_forgotten_once_outside_the_overlap():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    db.insert(at(1))
    db.insert(at(8))
    poll(r, db, 9)
    poll(r, db, 15)  # next since is 5: row 1 can never come back, row 2 can
    assert {key[0] for key in r._state.seen} == {2}


def test_same_id_with_a_new_timestamp_counts_again():
    """Dedupe is by (id, ts): a row updated to a new timestamp is a new event."""
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    db.rows.append(Row(7, at(1), at(1)))
    assert poll(r, db, 2) == [7]
    db.rows[0] = Row(7, at(3), at(3))
    assert poll(r, db, 4) == [7]


# --- commit semantics ---


def test_no_commit_when_a_later_query_of_the_poll_fails():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    ids = [db.insert(at(s)) for s in (1, 2, 3)]

    def failing_poll(now):
        rows = r.read(db.cursor(at(now)), at(now))
        assert rows
        raise PollError("query", "a later query of the poll failed")

    with pytest.raises(PollError):
        failing_poll(4)
    before = r._state
    with pytest.raises(PollError):
        failing_poll(5)
    assert r._state is before  # the position did not move
    assert poll(r, db, 6) == ids  # the rows come again, once
    assert poll(r, db, 7) == []


def test_commit_without_read_and_double_commit_are_noops():
    db = FakeDb()
    r = reader()
    r.commit()
    assert r._state.watermark is None
    poll(r, db, 0)
    state = r._state
    r.commit()
    assert r._state is state


def test_uncommitted_read_is_replaced_by_the_next_read():
    db = FakeDb()
    r = reader()
    poll(r, db, 0)
    db.insert(at(1))
    poll(r, db, 2, commit=False)
    db.insert(at(3))
    assert poll(r, db, 4) == [1, 2]


# --- keyset paging, cap, resume ---


def test_paging_reads_every_page_in_one_poll():
    db = FakeDb()
    r = reader(page_size=2)
    poll(r, db, 0)
    ids = [db.insert(at(1)) for _ in range(5)]  # same timestamp: the id breaks ties
    cur = db.cursor(at(2))
    assert [row[0] for row in r.read(cur, at(2))] == ids
    r.commit()
    queries = [(q.with_after, p.get("after_id")) for q, p in cur.calls]
    assert queries == [(False, None), (True, 2), (True, 4)]
    assert all(p["limit"] == 2 for _, p in cur.calls)


def test_full_last_page_needs_one_more_empty_page():
    db = FakeDb()
    r = reader(page_size=2)
    poll(r, db, 0)
    for s in (1, 2, 3, 4):
        db.insert(at(s))
    cur = db.cursor(at(5))
    assert len(r.read(cur, at(5))) == 4
    assert len(cur.calls) == 3


def test_cap_stops_the_poll_and_the_next_poll_resumes_after_it():
    db = FakeDb()
    r = reader(page_size=2, max_rows=4)
    poll(r, db, 0)
    ids = [db.insert(at(1 + i / 10)) for i in range(9)]
    cur = db.cursor(at(2))
    first = [row[0] for row in r.read(cur, at(2))]
    r.commit()
    assert first == ids[:4]
    assert len(cur.calls) == 2  # stopped at the cap, not at the end of the data
    assert r._state.resume_after == (at(1.3), ids[3])
    assert r._state.watermark == at(1.3)  # not db now(): the read was incomplete
    cur = db.cursor(at(3))
    second = [row[0] for row in r.read(cur, at(3))]
    r.commit()
    # first the late commits behind the resume point (none), then on from it
    assert (Query(True), at(1.3), ids[3]) in [
        (query, params.get("after_ts"), params.get("after_id")) for query, params in cur.calls]
    assert second == ids[4:8]
    assert poll(r, db, 4) == ids[8:]
    assert r._state.resume_after is None
    assert r._state.watermark == at(4)
    assert poll(r, db, 5) == []


def test_capped_poll_not_committed_resumes_from_the_old_position():
    db = FakeDb()
    r = reader(page_size=2, max_rows=2)
    poll(r, db, 0)
    ids = [db.insert(at(1 + i / 10)) for i in range(5)]
    assert poll(r, db, 2) == ids[:2]
    assert poll(r, db, 3, commit=False) == ids[2:4]
    assert poll(r, db, 4) == ids[2:4]
    assert poll(r, db, 5) == ids[4:]


def test_overlap_full_of_seen_rows_still_makes_progress_under_the_cap():
    db = FakeDb()
    r = reader(page_size=2, max_rows=2)
    poll(r, db, 0)
    ids = [db.insert(at(1)) for _ in range(6)]
    got = []
    for now in range(2, 8):
        got += poll(r, db, now)
    assert got == ids


def test_late_commit_behind_the_resume_point_is_not_lost():
    db = FakeDb()
    r = reader(page_size=2, max_rows=2)
    got = []
    for now in (0, 5, 10):  # polls every 5 s
        got += poll(r, db, now)
    ids = [db.insert(at(s)) for s in (11, 12, 13, 14)]  # a burst
    got += poll(r, db, 15)  # capped after the row at 12
    assert got == ids[:2]
    late = db.insert(at(11.5), visible_at=at(16))  # lag 4.5 s, well inside the 10 s window
    for now in (20, 25, 30, 35):
        got += poll(r, db, now)
    assert sorted(got) == sorted([*ids, late])


# --- id floor ---


def test_id_floor_marks():
    marks = ((at(0), 10), (at(5), 20), (at(10), 30))
    assert _id_floor((), at(100)) == ((), None)
    assert _id_floor(marks, at(-1)) == (marks, None)
    assert _id_floor(marks, at(0)) == (marks, 10)  # a mark at exactly `since` is usable
    assert _id_floor(marks, at(7)) == (marks[1:], 20)
    assert _id_floor(marks, at(10)) == (marks[2:], 30)
    assert _id_floor(marks, at(99)) == (marks[2:], 30)


def test_id_floor_is_passed_to_the_query_and_marks_are_trimmed():
    db = FakeDb()
    r = reader(floor=True)
    for s in (-3, -2, -1):
        db.insert(at(s))
    cur = db.cursor(at(0))
    r.read(cur, at(0))
    r.commit()
    assert cur.calls[0][0] is FLOOR_SQL
    assert cur.calls[1][1]["id_floor"] is None
    assert r._state.id_marks == ((at(0), 3),)
    new = db.insert(at(1))
    cur = db.cursor(at(2))
    assert [row[0] for row in r.read(cur, at(2))] == [new]
    r.commit()
    assert cur.calls[1][1]["id_floor"] == 3  # since == floor == the first mark
    assert r._state.id_marks == ((at(0), 3), (at(2), 4))
    for now in (20, 30):
        poll(r, db, now)
    cur = db.cursor(at(31))
    r.read(cur, at(31))
    r.commit()
    # since is 30 - 10 = 20: the mark taken at 20 is the newest usable, older ones dropped
    assert cur.calls[1][1]["id_floor"] == 4
    assert [mark[0] for mark in r._state.id_marks] == [at(20), at(30), at(31)]


# --- the property: every row once, whatever the timeline ---

# Rounds of (seconds since the last poll, commit lags of the rows inserted before this poll):
# a row is stamped `lag` seconds before it commits, within the late-commit window.
rounds = st.lists(st.tuples(st.integers(1, 6), st.lists(st.integers(0, OVERLAP - 1),
                                                         max_size=5)),
                  min_size=1, max_size=12)


def run_timeline(steps, page_size: int, max_rows: int, floor: bool) -> None:
    db = FakeDb()
    r = reader(page_size=page_size, max_rows=max_rows, floor=floor)
    now = 0
    poll(r, db, now)  # the floor: rows stamped at or before it are not counted
    expected, got = [], []
    for gap, lags in steps:
        now += gap
        for lag in lags:
            row = db.insert(at(now - lag), visible_at=at(now))
            if now - lag > 0:
                expected.append(row)
        got += poll(r, db, now)
    for _ in range(len(expected) + 3):  # catch up, one second apart
        now += 1
        got += poll(r, db, now)
    twice = [row for row, n in Counter(got).items() if n > 1]
    assert not twice, f"counted twice: {twice}"
    assert sorted(got) == sorted(expected), f"missed: {sorted(set(expected) - set(got))}"


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=rounds, page_size=st.integers(1, 3), floor=st.booleans())
def test_property_exactly_once_with_paging(steps, page_size, floor):
    run_timeline(steps, page_size, 10_000, floor)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=rounds, page_size=st.integers(1, 3), extra=st.integers(0, 3),
       floor=st.booleans())
def test_property_exactly_once_with_cap_and_late_commits(steps, page_size, extra, floor):
    run_timeline(steps, page_size, page_size + extra, floor)
