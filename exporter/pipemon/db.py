"""One reused, read-only PostgreSQL connection per source, and error classification.

Every poll runs in a READ ONLY transaction that is rolled back at the end and ends by the poll's
deadline; the session has `statement_timeout` set to the source's timeout, so the server cancels
a slow query itself, and TCP keepalives so a dead network is noticed instead of waited on
forever.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg import errors, sql
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict

from pipemon.deadlines import DEADLINES, Alarm
from pipemon.errors import PollError, redact
from pipemon.secret import Secret

log = logging.getLogger(__name__)

APPLICATION_NAME = "pipemon"
UNKNOWN_TYPE_OID = 0  # the loader psycopg uses for types it has no loader for (e.g. enums)
# Past the poll's deadline: the statement still running is cancelled (a statement that started
# with the poll has met its statement_timeout by then), and later the connection is cut.
CANCEL_GRACE = 0.5
WATCHDOG_GRACE = 2.0
_URL_PASSWORD = re.compile(r"://[^:/@]*:([^@]+)@")
DB_ERROR_REASONS = ("connect", "auth", "timeout", "schema", "permission", "sql_error", "internal")


def dsn_secrets(dsn: Secret | None) -> list[str]:
    """The parts of a DSN that must never be shown: the whole DSN and its password."""
    if dsn is None:
        return []
    found = [dsn.reveal()]
    try:
        password = conninfo_to_dict(dsn.reveal()).get("password")
    except psycopg.ProgrammingError:  # unparsable, but a URL's password is still findable
        match = _URL_PASSWORD.search(dsn.reveal())
        password = match.group(1) if match else None
    if password:
        found.append(str(password))
    return found


def describe_dsn(dsn: Secret) -> str:
    """`host:port/dbname` for display: never the user's password."""
    try:
        params = conninfo_to_dict(dsn.reveal())
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def classify(exc: BaseException) -> str:
    """A short reason label for a database error."""
    if isinstance(exc, errors.QueryCanceled | errors.LockNotAvailable):
        return "timeout"
    if isinstance(exc, errors.InvalidAuthorizationSpecification | errors.InvalidPassword):
        return "auth"
    if isinstance(exc, errors.UndefinedTable | errors.UndefinedColumn | errors.UndefinedFunction):
        return "schema"
    if isinstance(exc, errors.InsufficientPrivilege):
        return "permission"
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc)
        if "password authentication failed" in text or "no pg_hba.conf entry" in text:
            return "auth"
        if "timeout expired" in text:
            return "timeout"
        return "connect"
    if isinstance(exc, psycopg.Error):
        return "sql_error"
    return "internal"


class LenientTextLoader(Loader):
    """Text from a SQL_ASCII database, which may hold any bytes: UTF-8 where it is, U+FFFD for
    the rest, instead of bytes objects where the sources expect strings."""

    def load(self, data) -> str:
        return bytes(data).decode("utf-8", "replace")


class PgSession:
    """A lazily opened connection, re-opened after it breaks."""

    def __init__(self, dsn: Secret, timeout: float):
        self._dsn = dsn
        self._timeout = timeout
        self._secrets = dsn_secrets(dsn)
        self._conn: psycopg.Connection | None = None

    def _connect(self, remaining: float) -> psycopg.Connection:
        conn = psycopg.connect(
            self._dsn.reveal(),
            application_name=APPLICATION_NAME,
            # libpq counts whole seconds and takes 1 as 2
            connect_timeout=max(2, math.ceil(min(self._timeout, remaining))),
            keepalives=1,
            keepalives_idle=max(1, int(self._timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            autocommit=False,
        )
        conn.read_only = True
        if conn.info.encoding == "ascii":  # SQL_ASCII: the server stores bytes as they came
            for type_name in ("text", "varchar", "bpchar", "name", UNKNOWN_TYPE_OID):
                conn.adapters.register_loader(type_name, LenientTextLoader)
        with conn.cursor() as cur:
            # Session settings: set once, in a transaction that is then committed.
            timeout_ms = str(max(1, int(self._timeout * 1000)))
            cur.execute("SELECT set_config('statement_timeout', %s, false)", (timeout_ms,))
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (timeout_ms,))
            cur.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (str(max(1000, int(self._timeout * 4000))),),
            )
            # pipemon's queries run in milliseconds, but a large table's row estimates can
            # push their cost past jit_above_cost: compiling then took 170 ms of a 3 ms query
            # (bench/README.md). PostgreSQL < 11 has no JIT, and no such setting.
            if conn.info.server_version >= 110000:
                cur.execute("SELECT set_config('jit', 'off', false)")
        conn.commit()
        return conn

    @contextmanager
    def transaction(self, deadline: float) -> Iterator[Cursor]:
        """A read-only transaction that ends by `deadline`; every psycopg error leaves as a
        PollError with a reason."""
        # Just past the deadline the statement still running is cancelled, as its
        # statement_timeout would have been had it started with the poll; a network that
        # swallows packets leaves the client waiting even for the cancel, so a grace later
        # the watchdog cuts the connection's socket, which ends the wait with an error.
        remaining = max(0.0, deadline - time.monotonic())
        alarms: list[Alarm] = []
        self._cancelled = self._aborted = False
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._close_quietly()
                if remaining <= 0:
                    raise PollError("timeout", "the poll's deadline passed before connecting")
                self._conn = self._connect(remaining)
            conn = self._conn
            alarms = [DEADLINES.call_later(remaining + CANCEL_GRACE, self._cancel),
                      DEADLINES.call_later(remaining + WATCHDOG_GRACE, self._abort)]
            try:
                with conn.cursor() as cur:
                    yield Cursor(cur, deadline)
            finally:
                if not conn.closed and not conn.broken:
                    conn.rollback()  # read-only: nothing to commit, and no transaction left open
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or classify(exc) == "connect"):
                self._close_quietly()
            if self._aborted:
                raise PollError("timeout", "no answer from the database within the timeout; "
                                "connection dropped") from None
            if self._cancelled and classify(exc) == "timeout":
                raise PollError("timeout", "the poll's deadline passed during a query: "
                                "cancelled") from None
            raise PollError(classify(exc), redact(str(exc), self._secrets)) from None
        finally:
            for alarm in alarms:
                alarm.cancel()

    def _cancel(self) -> None:
        """Cancel the statement in progress at the poll's deadline (from a timer)."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        self._cancelled = True
        with suppress(psycopg.Error, AttributeError, TypeError):
            conn.cancel_safe(timeout=WATCHDOG_GRACE)

    def _abort(self) -> None:
        """Shut the socket down under a query that is still waiting (from the watchdog)."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        self._aborted = True
        with suppress(OSError, psycopg.Error):
            dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                dup.shutdown(socket.SHUT_RDWR)
            finally:
                dup.close()

    def interrupt(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            with suppress(psycopg.Error, AttributeError, TypeError):
                conn.cancel_safe(timeout=1)

    def _close_quietly(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._close_quietly()


class Cursor:
    """A cursor that refuses to start a statement after the poll's deadline."""

    def __init__(self, cur: psycopg.Cursor, deadline: float):
        self._cur = cur
        self._deadline = deadline

    @property
    def connection(self) -> psycopg.Connection:
        """The session's connection, to render SQL text (`sql.Composable.as_string`)."""
        return self._cur.connection

    def rows(self, query: sql.Composable | str, params: dict | None = None) -> list[tuple]:
        if time.monotonic() > self._deadline:
            raise PollError("timeout", "poll deadline passed before the next query")
        self._cur.execute(query, params)
        return self._cur.fetchall()


def composed_once(build: Callable[..., sql.Composable]) -> Callable[..., str]:
    """`build`'s SQL as text, composed once per distinct arguments. A source's queries depend
    on its config only; composing them on every poll (and psycopg walking the composition on
    every execute) was a fifth of a poll's CPU (bench/README.md, issue 19). The last few
    shapes are kept: a preset whose queries follow its queues (pgmq) gets new ones."""
    return functools.lru_cache(maxsize=8)(lambda *args: build(*args).as_string())


def relation(table: str) -> sql.Composable:
    """A table or view name (`schema.table` allowed), or a parenthesised subquery."""
    text = table.strip()
    if text.startswith("("):
        return sql.SQL(text) + sql.SQL(" AS pipemon_src")
    return sql.Identifier(*text.split("."))


def column(name: str | None, missing: str = "NULL::timestamptz") -> sql.Composable:
    """A column reference, or a typed NULL when the user's table has no such column."""
    return sql.Identifier(name) if name else sql.SQL(missing)


def literals(values) -> sql.Composable:
    """`'a', 'b'` for an IN list. Untyped literals so that enum columns compare without casts."""
    return sql.SQL(", ").join(sql.Literal(v) for v in sorted(values))
