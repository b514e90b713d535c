"""Read rows that appeared since the last poll, each exactly once.

The watermark is the database's `now()` at the last complete read. Each poll re-reads an overlap
window before it, because a row can commit after a poll with a timestamp from before it (its
transaction started earlier); rows already seen are skipped by (id, timestamp), and PostgreSQL
leaves them out of the answer, so that the overlap costs a lookup instead of a re-read (issue 19:
at 4 jobs/s, a 2-minute overlap is 460 rows a poll per reader). On the first poll
the watermark is set to `now()` and nothing is read: no backfill, and the floor stops the overlap
from reaching back before pipemon started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from pipemon.db import Cursor, composed_once

log = logging.getLogger(__name__)

# query(with_after) -> composed SQL taking %(since)s, %(limit)s and %(seen)s,
# and with_after also %(after_ts)s and %(after_id)s (keyset paging). Its first two columns are
# the id and the timestamp (as timestamptz); `keyset()` builds the shared part.
QueryBuilder = Callable[[bool], sql.Composable]


@dataclass(frozen=True)
class ReaderState:
    floor: datetime | None = None  # db now() at the first read: nothing before it is counted
    watermark: datetime | None = None  # db now() at the last complete read
    resume_after: tuple[datetime, Any] | None = None  # keyset position of a capped read
    polled_at: datetime | None = None  # db now() at the last read, complete or capped
    # (id, ts) -> its element of the %(seen)s array literal: the rows read within the overlap
    seen: dict[tuple[Any, datetime], str] = field(default_factory=dict)
    id_marks: tuple[tuple[datetime, Any], ...] = ()  # (db now(), largest id then), oldest first


class IncrementalReader:
    """Reads new rows, and keeps what it read as pending until the poll commits.

    A poll runs several queries; if a later one fails, the rows this reader returned are thrown
    away with the poll, so its position must not move either: `commit()` makes it move, once the
    caller has counted the rows.
    """

    def __init__(
        self, name: str, query: QueryBuilder, overlap: float, page_size: int, max_rows: int,
        floor_sql: sql.Composable | None = None, shape: Callable[[], tuple] = tuple,
    ):
        self.name = name
        self._query = composed_once(query)
        self._overlap = timedelta(seconds=overlap)
        self._page_size = page_size
        self._max_rows = max_rows
        self._floor_sql = floor_sql
        self._shape = shape  # more arguments of `query`, as the source's last detect found them
        self._state = ReaderState()
        self._pending: ReaderState | None = None

    def commit(self) -> None:
        if self._pending is not None:
            self._state, self._pending = self._pending, None

    def read(self, cur: Cursor, db_now: datetime) -> list[tuple]:
        """The new rows since the last committed read, oldest first."""
        state = self._state
        marks = state.id_marks
        if self._floor_sql is not None:
            marks = (*marks, (db_now, cur.rows(self._floor_sql)[0][0]))
        if state.watermark is None:
            # Run the query once, reading nothing, so a wrong column fails the first poll.
            cur.rows(self._query(False, *self._shape()), window_params(db_now, 0, None, {}))
            self._pending = ReaderState(floor=db_now, watermark=db_now, polled_at=db_now,
                                        id_marks=marks)
            return []
        since = max(state.watermark - self._overlap, state.floor)
        # While catching up after a capped read, a row may commit late with a timestamp behind
        # the resume point: it is within the overlap of the last poll, read here first.
        late_since = None
        if state.resume_after is not None:
            late_since = max(state.polled_at - self._overlap, state.floor)
            if late_since >= state.resume_after[0]:
                late_since = None
        marks, id_floor = _id_floor(marks, min(since, late_since or since))
        seen = dict(state.seen)
        new_rows: list[tuple] = []
        if late_since is not None:
            self._read_late(cur, window_params(late_since, self._page_size, id_floor, seen),
                            state.resume_after, seen, new_rows)
        params = window_params(since, self._page_size, id_floor, seen)
        after, watermark, resume_after = state.resume_after, state.watermark, None
        read = 0
        while True:
            page = self._page(cur, params, after)
            read += len(page)
            for row in page:
                key = (row[0], row[1])
                if key not in seen:
                    seen[key] = seen_element(*key)
                    new_rows.append(row)
            if page:
                after = (page[-1][1], page[-1][0])
            if len(page) < self._page_size:
                watermark = db_now
                break
            if read >= self._max_rows:
                # Catching up on a burst: continue after this row on the next poll.
                resume_after, watermark = after, max(watermark, after[0])
                log.warning("%s: read %d rows in one poll, continuing on the next",
                            self.name, read)
                break
        # Rows at or before the next poll's lower bounds are never read again: forget them.
        horizon = max(min(watermark, db_now) - self._overlap, state.floor)
        seen = {key: element for key, element in seen.items() if key[1] > horizon}
        self._pending = ReaderState(state.floor, watermark, resume_after, db_now, seen, marks)
        return new_rows

    def _page(self, cur: Cursor, params: dict, after: tuple[datetime, Any] | None
              ) -> list[tuple]:
        if after is not None:
            params = {**params, "after_ts": after[0], "after_id": after[1]}
        return cur.rows(self._query(after is not None, *self._shape()), params)

    def _read_late(self, cur: Cursor, params: dict, resume_after: tuple[datetime, Any],
                   seen: dict, new_rows: list) -> None:
        """The rows after `since` and before the resume point not seen yet (late commits)."""
        after = None
        while True:
            page = self._page(cur, params, after)
            for row in page:
                if (row[1], row[0]) >= resume_after:
                    return  # the resume read goes on from here
                if (row[0], row[1]) not in seen:
                    seen[(row[0], row[1])] = seen_element(row[0], row[1])
                    new_rows.append(row)
            if len(page) < self._page_size:
                return
            after = (page[-1][1], page[-1][0])


def window_params(since: datetime, limit: int, id_floor: Any,
                  seen: dict[tuple[Any, datetime], str]) -> dict[str, Any]:
    """The parameters of a read: the rows after `since` that are not among `seen`."""
    return {"since": since, "limit": limit, "id_floor": id_floor,
            "seen": "{" + ",".join(seen.values()) + "}"}


def seen_element(id_: Any, ts: datetime) -> str:
    """A row's key as keyset() computes it in SQL, quoted for a text[] literal: the timestamp
    in UTC to the microsecond, then the id as PostgreSQL writes it as text. One string sent
    instead of two arrays, which psycopg dumps element by element (1.8 ms for 460 pairs)."""
    text = f"{ts.astimezone(UTC):%Y%m%d%H%M%S%f} {id_}"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _id_floor(marks: tuple, since: datetime) -> tuple[tuple, Any]:
    """An id below every row whose timestamp is after `since` (or None), and the marks to keep.

    For tables whose timestamp has no index but whose id comes from a sequence (procrastinate
    events): a row stamped after `since` was inserted after `since`, so its id is above every id
    that was visible at a poll whose now() was at or before `since`. Queries add
    `id > %(id_floor)s` and the primary key does the range scan.
    """
    usable = [mark for mark in marks if mark[0] <= since]
    if not usable:
        return marks, None
    return marks[len(usable) - 1:], usable[-1][1]


def keyset(
    ts: sql.Composable, id_: sql.Composable, with_after: bool
) -> tuple[sql.Composable, sql.Composable]:
    """The condition and the ORDER/LIMIT tail that every incremental query shares.

    The rows already seen are left out by their key (`seen_element()`), which works for ids of
    any type. A hashed anti-join over a few hundred keys costs PostgreSQL microseconds, where
    sending those rows again cost pipemon a millisecond a poll (bench/README.md, issue 19).
    """
    condition = sql.SQL(
        "{ts} > %(since)s AND (to_char(({ts})::timestamptz AT TIME ZONE 'UTC',"
        " 'YYYYMMDDHH24MISSUS') || ' ' || {id}::text) NOT IN (SELECT unnest(%(seen)s::text[]))"
    ).format(ts=ts, id=id_)
    if with_after:
        condition += sql.SQL(" AND ({ts}, {id}) > (%(after_ts)s, %(after_id)s)").format(
            ts=ts, id=id_
        )
    return condition, sql.SQL(" ORDER BY {ts}, {id} LIMIT %(limit)s").format(ts=ts, id=id_)


def keyset_over(rows: sql.Composable, columns: str, with_after: bool) -> sql.Composable:
    """keyset() over a subquery whose rows are named (id, ts, queue, *columns): for presets
    that read several tables (pgmq's queues) or convert the timestamp first (Oban's naive UTC),
    where the subquery bounds each table's own index and the keyset applies to its result."""
    condition, tail = keyset(sql.SQL("ts"), sql.SQL("id"), with_after)
    return sql.SQL("SELECT id, ts, queue, {columns} FROM ({rows}) AS r"
                   " WHERE {condition}{tail}").format(
        columns=sql.SQL(columns), rows=rows, condition=condition, tail=tail)
