"""One verdict on the pipeline, as the product's health endpoint gives it: per source a status
(healthy, warning, critical) from what the source itself measured, a summary, and the HTTP
status `/health` answers with, so a load balancer or an uptime check can use it.

Each source says what it found (`Source.findings`): a failed probe, a stalled queue, a check
above its threshold, a tool down. A source whose poll fails is critical; one that has not
polled yet is pending. The thresholds are the sources' own config keys, with the product
documents' values as defaults; the `health:` block sets the HTTP statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipemon.schema import Checked, Node, described, positive_int, value

HEALTHY, WARNING, CRITICAL, PENDING = "healthy", "warning", "critical", "pending"
RANK = {HEALTHY: 0, PENDING: 1, WARNING: 2, CRITICAL: 3}


@dataclass(frozen=True)
class Finding:
    """Something a source measured as wrong: `status` is warning or critical."""

    status: str
    text: str


@described("HTTP status 200-599")
def http_status(raw: Any) -> int:
    number = positive_int(raw)
    if not 200 <= number <= 599:
        raise ValueError(f"expected an HTTP status from 200 to 599, got {number}")
    return number


@dataclass(frozen=True, kw_only=True)
class HealthConfig(Checked):
    """The `health:` block: what `/health` answers for each verdict."""

    warning_status: int = value("HTTP status of `/health` while the verdict is warning.",
                                http_status, 200)
    critical_status: int = value("HTTP status of `/health` while the verdict is critical (and"
                                 " while sources have not polled yet).", http_status, 503)

    def check(self, node: Node, parent: dict) -> None:
        if self.warning_status and self.critical_status and \
                self.critical_status < self.warning_status:
            node.problem("critical_status", "must not be below warning_status")


def component(name: str, kind: str, findings: list[Finding], pending: bool = False) -> dict:
    """One source's part of the verdict."""
    if pending:
        return {"source": name, "kind": kind, "status": PENDING, "findings": []}
    status = max((f.status for f in findings), key=RANK.__getitem__, default=HEALTHY)
    return {"source": name, "kind": kind, "status": status,
            "findings": [{"status": f.status, "text": f.text} for f in findings]}


def overall(components: list[dict]) -> dict:
    """The verdict over every source: the worst of their statuses, and how many have each."""
    summary = {status: 0 for status in (HEALTHY, WARNING, CRITICAL, PENDING)}
    for part in components:
        summary[part["status"]] += 1
    worst = max((c["status"] for c in components), key=RANK.__getitem__, default=HEALTHY)
    return {"status": worst, "summary": summary, "components": components}


def http_status_of(status: str, config: HealthConfig) -> int:
    """What /health answers for a verdict: a pending one (sources not polled yet) like a
    critical one, as /readyz does."""
    return {CRITICAL: config.critical_status, PENDING: config.critical_status,
            WARNING: config.warning_status, HEALTHY: 200}[status]
