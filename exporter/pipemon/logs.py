"""Logging setup: logfmt-like text for people, one JSON object per line for log pipelines.

Every field a caller passes with `extra=` (source, reason, operation, check, web_config, ...)
is written, in both formats: the fields are whatever a record carries beyond the attributes
every LogRecord has, so a new field needs no change here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

# What every LogRecord carries (or logging.Formatter adds); anything else came from `extra=`.
STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict:
    """The fields the caller passed with `extra=`, in the order given."""
    return {key: value for key, value in vars(record).items()
            if key not in STANDARD_ATTRIBUTES and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # never overwrite the four above
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_BARE = re.compile(r"[^\s\"=\\]+")


def _logfmt_value(value) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted, with " \ and newlines escaped


class TextFormatter(logging.Formatter):
    """`... level=INFO logger=x key=value ... msg=the message`: the extras come before the
    message, which runs to the end of the line unquoted, so a logfmt parser reads them."""

    def __init__(self):
        super().__init__("%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = "".join(f"{key}={_logfmt_value(value)} "
                         for key, value in extra_fields(record).items())
        return (f"{record.asctime} level={record.levelname} logger={record.name} "
                f"{fields}msg={record.message}")


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their debug output can include connection parameters.
    for noisy in ("botocore", "boto3", "urllib3", "psycopg"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
