"""The error a failed poll raises, and redaction of secrets from text shown anywhere."""

from __future__ import annotations

REDACTED = "***"
MAX_ERROR_LENGTH = 300


class PollError(Exception):
    """A poll failed for a known `reason` (a short label value such as `connect` or `timeout`)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced, cut to one short line: safe for logs and pages."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_LENGTH else line[: MAX_ERROR_LENGTH - 3] + "..."


def first_line(err: BaseException, secrets: list[str]) -> str:
    """An exception as one line for a log, its secrets replaced (a driver's message may quote
    the DSN)."""
    text = str(err).strip()
    return redact(text.splitlines()[0] if text else type(err).__name__, secrets)

