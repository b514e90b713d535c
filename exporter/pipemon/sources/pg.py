"""The part every PostgreSQL-backed source shares: its DSN, its session and what it shows."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pipemon.db import DB_ERROR_REASONS, PgSession, describe_dsn, dsn_secrets
from pipemon.errors import redact
from pipemon.schema import duration, positive_int, secret, value
from pipemon.secret import Secret
from pipemon.sources.base import Source, SourceConfig
from pipemon.sources.jobs import ROWS_PER_PAGE, ROWS_PER_POLL


def valid_dsn(dsn: Secret) -> None:
    """Checked for syntax now rather than at the first poll; the error shows no password."""
    try:
        conninfo_to_dict(dsn.reveal())
    except psycopg.ProgrammingError as err:
        raise ValueError(f"invalid DSN: {redact(str(err), dsn_secrets(dsn))}") from None


@dataclass(frozen=True, kw_only=True)
class PgConfig(SourceConfig):
    dsn: Secret = secret(
        "libpq connection string or URL of the database; pipemon only reads it, in"
        " read-only transactions.", validate=valid_dsn)

    def secrets(self) -> list[str]:
        return dsn_secrets(self.dsn)


@dataclass(frozen=True, kw_only=True)
class IncrementalPgConfig(PgConfig):
    """The keys of a source that reads new rows incrementally (pipemon.incremental)."""

    late_commit_window: float = value(
        "How far back each poll looks again for rows committed late.", duration, 120.0)
    page_size: int = value("Rows per page of an incremental read.", positive_int, ROWS_PER_PAGE)
    max_rows_per_poll: int = value(
        "Rows read per poll at most; a burst is caught up over the next polls.", positive_int,
        ROWS_PER_POLL)


class PgSource(Source):
    """A source that reads one database through one read-only session."""

    config_type = PgConfig
    error_reasons = DB_ERROR_REASONS

    def __init__(self, config: PgConfig):
        super().__init__(config)
        self.session = PgSession(config.dsn, config.timeout)

    def describe(self) -> dict:
        facts = {"target": describe_dsn(self.config.dsn)}
        if table := getattr(self.config, "table", None):
            facts["table"] = table
        return facts

    def interrupt(self) -> None:
        self.session.interrupt()

    def close(self) -> None:
        self.session.close()
