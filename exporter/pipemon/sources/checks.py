"""`kind: checks`: named SQL queries whose numeric `value` column becomes `pipemon_check_value`.

Every other column of a check's result is a label. Each check has its own interval and timeout;
the source polls at its `interval` and runs the checks that are due (a check's interval is
rounded to the nearest poll), oldest first, each in its own read-only transaction with its own
`statement_timeout`. One broken check (bad SQL, no or non-numeric `value`, too many rows) is
reported with a reason and does not stop the others; the poll fails only when the database
cannot be reached (then every check's series go, as for any failed source).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass

from psycopg import sql

from pipemon import metrics as m
from pipemon.db import describe_dsn
from pipemon.errors import PollError
from pipemon.schema import (
    Checked,
    Node,
    name,
    number,
    positive_duration,
    positive_int,
    section_list,
    string,
    value,
)
from pipemon.sources.pg import PgConfig, PgSource
from pipemon.verdict import CRITICAL, WARNING, Finding

log = logging.getLogger(__name__)

# Reasons of a failed check. The first four come from the database (pipemon.db.classify).
REASONS = ("timeout", "schema", "permission", "sql_error", "no_value", "non_numeric",
           "null_value", "too_many_rows", "bad_label", "duplicate_labels", "deadline")
# Errors that mean the database itself is gone: the poll fails, not the check.
SOURCE_REASONS = ("connect", "auth")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = {"source", "check", "job", "instance"}


@dataclass(frozen=True, kw_only=True)
class Check(Checked):
    name: str = value("The check's name: the `check` label.", name)
    sql: str = value("One `SELECT` with a numeric column `value`; every other column is a"
                     " label.", string)
    interval: float = value("How often the check runs, at least the source's interval"
                            " (default: the source's).", positive_duration, shown_default="the"
                            " source's")
    timeout: float = value("The check's statement timeout, at most the source's (default:"
                           " the source's).", positive_duration, shown_default="the source's")
    max_rows: int = value("Rows the check may return (default: the source's `max_rows`).",
                          positive_int, shown_default="the source's")
    warning_above: float | None = value(
        "The verdict on /health warns when a value is above this (the alerts' thresholds are"
        " the rules' `pipemon_alert:check_value:threshold`).", number, None)
    critical_above: float | None = value("... and is critical above this.", number, None)

    def check(self, node: Node, parent: dict) -> None:
        interval, timeout = parent.get("interval"), parent.get("timeout")
        if self.interval and interval and self.interval < interval:
            node.problem("interval", f"must not be shorter than the source's interval "
                                     f"({interval:g}s): checks run at most once a poll")
        if self.timeout and timeout and self.timeout > timeout:
            node.problem("timeout", f"must not exceed the source's timeout ({timeout:g}s),"
                                    " the deadline of a poll")


@dataclass(frozen=True, kw_only=True)
class ChecksConfig(PgConfig):
    max_rows: int = value("Rows a check may return, for every check that sets none.",
                          positive_int, 100)
    max_label_values: int = value(
        "Distinct values per label column and check; the rest are folded into `other`.",
        positive_int, 100)
    checks: tuple[Check, ...] = section_list(
        Check, "The checks.", required=True, inherit=("interval", "timeout", "max_rows"),
        unique="name", noun="check", hint=" with name and sql")


class CheckError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CheckResult:
    up: bool
    duration: float
    values: tuple[tuple[tuple[tuple[str, str], ...], float], ...] = ()  # (labels, value)


@dataclass(frozen=True)
class ChecksSnapshot:
    results: dict[str, CheckResult]


class ChecksSource(PgSource):
    config_type = ChecksConfig
    specs = (m.CHECK_VALUE, m.CHECK_UP, m.CHECK_ERRORS, m.CHECK_DURATION)

    def __init__(self, config: ChecksConfig):
        super().__init__(config)
        self.config: ChecksConfig = config
        self._lock = threading.Lock()
        self._errors = m.CounterSet()
        for check in config.checks:
            for reason in REASONS:
                self._errors.ensure((check.name, reason))
        self._results: dict[str, CheckResult] = {}
        self._last_run: dict[str, float] = {}  # monotonic start of each check's last run
        self._caps: dict[tuple[str, str], m.LabelCap] = {}

    # --- polling ---

    def _due(self, check: Check, now: float) -> bool:
        last = self._last_run.get(check.name)
        # Half a poll of slack: a check every 2m on a 1m source runs every other poll even
        # when the scheduler's ticks come a little early.
        return last is None or now - last >= check.interval - self.config.interval / 2

    def poll(self, deadline: float) -> ChecksSnapshot:
        started = time.monotonic()
        due = [c for c in self.config.checks if self._due(c, started)]
        if due:
            with self.session.transaction(deadline) as cur:  # unreachable: the poll fails
                cur.rows("SELECT 1")
        # Least recently run first, so a check the deadline cut off last time goes first now.
        for check in sorted(due, key=lambda c: self._last_run.get(c.name, float("-inf"))):
            if time.monotonic() >= deadline:
                self._record(check, 0.0, CheckError(
                    "deadline", "the poll's deadline passed before the check could start"))
                continue
            self._last_run[check.name] = time.monotonic()
            self._run(check, deadline)
        with self._lock:
            return ChecksSnapshot(dict(self._results))

    def _run(self, check: Check, deadline: float) -> None:
        started = time.monotonic()
        try:
            with self.session.transaction(deadline) as cur:
                timeout_ms = str(max(1, int(check.timeout * 1000)))
                cur.rows("SELECT set_config('statement_timeout', %(ms)s, true),"
                         " set_config('lock_timeout', %(ms)s, true)", {"ms": timeout_ms})
                rows = cur.rows(self._sql(check))
            outcome = self._values(check, [row[0] for row in rows])
        except PollError as err:
            if err.reason in SOURCE_REASONS:
                raise
            outcome = CheckError(err.reason, err.message)
        except CheckError as err:
            outcome = err
        self._record(check, time.monotonic() - started, outcome)

    @staticmethod
    def _sql(check: Check) -> sql.Composable:
        # Each row as one JSON object: column names and types without reaching into the cursor,
        # and LIMIT bounds what is fetched. The user's SQL is the operator's own, run read-only.
        return sql.SQL(
            "SELECT to_jsonb(pipemon_check_row_) FROM ({query}) AS pipemon_check_row_ LIMIT {n}"
        ).format(query=sql.SQL(check.sql.strip().rstrip(";")), n=sql.Literal(check.max_rows + 1))

    def _values(self, check: Check, rows: list[dict]) -> tuple:
        """Validate every row first, then cap the labels: a broken result admits no label."""
        if len(rows) > check.max_rows:
            raise CheckError("too_many_rows", f"more than max_rows ({check.max_rows}) rows")
        parsed: dict[tuple[tuple[str, str], ...], float] = {}
        for row in rows:
            labels, value = _parse_row(row, self.config.labels)
            if labels in parsed:
                raise CheckError("duplicate_labels", f"two rows with the labels {dict(labels)}")
            parsed[labels] = value
        values: dict[tuple[tuple[str, str], ...], float] = {}
        for labels, value in parsed.items():
            capped = tuple((col, self._cap(check, col)(text)) for col, text in labels)
            values[capped] = values.get(capped, 0.0) + value  # folded into `other`: summed
        return tuple(sorted(values.items()))

    def _cap(self, check: Check, column: str) -> m.LabelCap:
        with self._lock:
            return self._caps.setdefault(
                (check.name, column), m.LabelCap(self.config.max_label_values))

    def _record(self, check: Check, duration: float, outcome: tuple | CheckError) -> None:
        if isinstance(outcome, CheckError):
            log.warning("source %s: check %s failed (%s): %s", self.name, check.name,
                        outcome.reason, outcome.message,
                        extra={"source": self.name, "check": check.name,
                               "reason": outcome.reason})
            result = CheckResult(False, duration)
        else:
            result = CheckResult(True, duration, outcome)
        with self._lock:
            if isinstance(outcome, CheckError):
                self._errors.inc((check.name, outcome.reason))
            self._results[check.name] = result

    # --- exposition ---

    def collect(self, families: m.Families, snapshot: ChecksSnapshot | None) -> None:
        if snapshot is not None:
            for check_name, result in sorted(snapshot.results.items()):
                labels = [self.name, check_name]
                families(m.CHECK_UP).add_metric(labels, 1 if result.up else 0)
                families(m.CHECK_DURATION).add_metric(labels, result.duration)
                for extra, value in result.values:
                    m.add_sample(families(m.CHECK_VALUE),
                                 {"source": self.name, "check": check_name, **dict(extra)},
                                 value)
        with self._lock:
            self._errors.emit(families(m.CHECK_ERRORS), (self.name,))
            caps = sorted(self._caps.items())
        for (check_name, column), cap in caps:
            families(m.FOLDED_LABEL_VALUES).add_metric(
                [self.name, f"{check_name}.{column}"], len(cap.folded))

    def findings(self, snapshot: ChecksSnapshot) -> list[Finding]:
        found = []
        checks = {check.name: check for check in self.config.checks}
        for check_name, result in sorted(snapshot.results.items()):
            if not result.up:
                found.append(Finding(WARNING, f"check {check_name} failed"))
                continue
            check = checks[check_name]
            for labels, measured in result.values:
                where = check_name + ("{" + ", ".join(f"{k}={v}" for k, v in labels) + "}"
                                      if labels else "")
                for status, limit in ((CRITICAL, check.critical_above),
                                      (WARNING, check.warning_above)):
                    if limit is not None and measured > limit:
                        found.append(Finding(status, f"check {where} is {measured:g} ({status}"
                                                     f" above {limit:g})"))
                        break
        return found

    def failed_measurements(self, snapshot: ChecksSnapshot) -> list[str]:
        return [f"check {check} failed" for check, result in sorted(snapshot.results.items())
                if not result.up]

    def describe(self) -> dict:
        return {"target": describe_dsn(self.config.dsn),
                "checks": [c.name for c in self.config.checks]}


def _parse_row(row: dict, constant: dict[str, str]) -> tuple[tuple[tuple[str, str], ...], float]:
    if "value" not in row:
        raise CheckError("no_value", f"no column named value (columns: {', '.join(sorted(row))})")
    value = row["value"]
    if value is None:
        raise CheckError("null_value", "value is NULL (use coalesce() for an empty result)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckError("non_numeric", f"value is not a number: {_short(value)}")
    labels = []
    for column in sorted(row):
        if column == "value":
            continue
        if (not _LABEL_NAME.fullmatch(column) or column.startswith("__")
                or column in RESERVED_LABELS):
            raise CheckError("bad_label", f"column {column!r} cannot be a label name")
        if column in constant:
            raise CheckError("bad_label", f"column {column!r} is one of the source's `labels`")
        labels.append((column, _label_text(row[column])))
    return tuple(labels), float(value)


def _label_text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
