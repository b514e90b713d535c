"""The part every PostgreSQL-backed source shares: its session and what it shows of it."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pipemon.config import Node, Secret
from pipemon.db import DB_ERROR_REASONS, PgSession, describe_dsn, dsn_secrets
from pipemon.errors import redact
from pipemon.sources.base import Source


def read_dsn(node: Node) -> Secret | None:
    """`dsn` or `dsn_file`, checked for syntax now rather than at the first poll."""
    dsn = node.secret("dsn")
    if dsn is not None:
        try:
            conninfo_to_dict(dsn.reveal())
        except psycopg.ProgrammingError as err:
            node.problem("dsn", f"invalid DSN: {redact(str(err), dsn_secrets(dsn))}")
    return dsn


class PgSource(Source):
    """A source that reads one table (or view, or subquery) through one read-only session."""

    error_reasons = DB_ERROR_REASONS

    def __init__(self, config):
        super().__init__(config)
        self.session = PgSession(config.dsn, config.timeout)

    def describe(self) -> dict:
        return {"target": describe_dsn(self.config.dsn), "table": self.config.table}

    def interrupt(self) -> None:
        self.session.interrupt()

    def close(self) -> None:
        self.session.close()
