"""Read rows that appeared since the last poll, each exactly once (DESIGN.md principle 4).

The watermark is the database's `now()` at the last complete read. Each poll re-reads an overlap
window before it, because a row can commit after a poll with a timestamp from before it (its
transaction started earlier); rows already seen are skipped by (id, timestamp). On the first poll
the watermark is set to `now()` and nothing is read: no backfill, and the floor stops the overlap
from reaching back before pipemon started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from pipemon.db import Cursor

log = logging.getLogger(__name__)

# query(with_after) -> composed SQL taking %(since)s and %(limit)s, and with_after also
# %(after_ts)s and %(after_id)s (keyset paging). Its first two columns are the id and the
# timestamp (as timestamptz); `keyset()` builds the shared part.
QueryBuilder = Callable[[bool], sql.Composable]


class IncrementalReader:
    def __init__(
        self, name: str, query: QueryBuilder, overlap: float, page_size: int, max_rows: int,
        floor_sql: sql.Composable | None = None,
    ):
        self.name = name
        self._query = query
        self._overlap = timedelta(seconds=overlap)
        self._page_size = page_size
        self._max_rows = max_rows
        self._floor: datetime | None = None
        self._watermark: datetime | None = None
        self._resume_after: tuple[datetime, Any] | None = None
        self._seen: dict[tuple[Any, datetime], datetime] = {}
        # Optional id floor (see _id_floor): (db time, largest id visible then), oldest first.
        self._floor_sql = floor_sql
        self._id_marks: list[tuple[datetime, Any]] = []

    @property
    def started(self) -> bool:
        return self._watermark is not None

    def read(self, cur: Cursor, db_now: datetime) -> list[tuple]:
        """The new rows since the previous call, oldest first."""
        if self._floor_sql is not None:
            self._id_marks.append((db_now, cur.rows(self._floor_sql)[0][0]))
        if self._watermark is None:
            # Run the query once, reading nothing, so a wrong column fails the first poll.
            cur.rows(self._query(False), {"since": db_now, "limit": 0, "id_floor": None})
            self._floor = self._watermark = db_now
            return []
        since = max(self._watermark - self._overlap, self._floor)
        after = self._resume_after
        new_rows: list[tuple] = []
        read = 0
        id_floor = self._id_floor(since)
        while True:
            params = {"since": since, "limit": self._page_size, "id_floor": id_floor}
            if after is not None:
                params["after_ts"], params["after_id"] = after
            page = cur.rows(self._query(after is not None), params)
            read += len(page)
            for row in page:
                key = (row[0], row[1])
                if key not in self._seen:
                    self._seen[key] = row[1]
                    new_rows.append(row)
            if page:
                after = (page[-1][1], page[-1][0])
            if len(page) < self._page_size:
                self._resume_after, self._watermark = None, db_now
                break
            if read >= self._max_rows:
                # Catching up on a burst: continue after this row on the next poll.
                self._resume_after = after
                self._watermark = max(self._watermark, after[0])
                log.warning(
                    "%s: read %d rows in one poll, continuing on the next", self.name, read
                )
                break
        self._forget_before(max(self._watermark - self._overlap, self._floor))
        return new_rows

    def _id_floor(self, since: datetime) -> Any:
        """An id below every row whose timestamp is after `since`, or None.

        For tables whose timestamp has no index but whose id comes from a sequence (procrastinate
        events): a row stamped after `since` was inserted after `since`, so its id is above every
        id that was visible at a poll whose now() was at or before `since`. Queries add
        `id > %(id_floor)s` and the primary key does the range scan.
        """
        usable = [mark for mark in self._id_marks if mark[0] <= since]
        if not usable:
            return None
        self._id_marks = self._id_marks[len(usable) - 1:]
        return usable[-1][1]

    def _forget_before(self, since: datetime) -> None:
        """Rows at or before `since` are never read again, so they need no memory."""
        self._seen = {key: ts for key, ts in self._seen.items() if ts > since}

    @property
    def remembered(self) -> int:
        return len(self._seen)


def keyset(
    ts: sql.Composable, id_: sql.Composable, with_after: bool
) -> tuple[sql.Composable, sql.Composable]:
    """The condition and the ORDER/LIMIT tail that every incremental query shares."""
    condition = sql.SQL("{ts} > %(since)s").format(ts=ts)
    if with_after:
        condition += sql.SQL(" AND ({ts}, {id}) > (%(after_ts)s, %(after_id)s)").format(
            ts=ts, id=id_
        )
    return condition, sql.SQL(" ORDER BY {ts}, {id} LIMIT %(limit)s").format(ts=ts, id=id_)
