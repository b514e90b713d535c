"""Alertmanager's webhook payload (version 4), read strictly: a payload that is not one is refused
with a 400 naming what is wrong, never half recorded.

The shape is Alertmanager's `notify/webhook/webhook.go` `Message` around `template.Data`
(prometheus/alertmanager v0.25.0): receiver, status, alerts[] (status, labels, annotations,
startsAt, endsAt, generatorURL, fingerprint), groupLabels, commonLabels, commonAnnotations,
externalURL, version "4", groupKey, truncatedAlerts. A firing alert's endsAt is Go's zero time,
"0001-01-01T00:00:00Z". The fingerprint is a hash of the labels, the same from both members of
an HA pair; startsAt is the same too when Prometheus set it (it does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

MAX_BODY = 4 * 1024 * 1024  # Alertmanager sends every alert of a group: thousands fit
VERSION = "4"


class BadPayload(ValueError):
    """Why a request body is not an Alertmanager webhook payload."""


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None  # None while firing
    generator_url: str

    @property
    def name(self) -> str:
        return self.labels["alertname"]

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"


@dataclass(frozen=True)
class Notification:
    receiver: str
    status: str
    group_key: str
    alerts: tuple[Alert, ...]
    truncated: int


def parse(body: bytes) -> Notification:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadPayload(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadPayload("expected a JSON object")
    if data.get("version") != VERSION:
        raise BadPayload(f"version: expected {VERSION!r} (Alertmanager's webhook), got"
                         f" {data.get('version')!r}")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload("alerts: expected a list")
    return Notification(
        receiver=_text(data, "receiver", ""), status=_text(data, "status", ""),
        group_key=_text(data, "groupKey", ""),
        alerts=tuple(_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)),
        truncated=_count(data.get("truncatedAlerts", 0)))


def _alert(raw, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise BadPayload(f"{where}: expected an object")
    labels = _strings(raw.get("labels"), f"{where}.labels")
    if not labels.get("alertname"):
        raise BadPayload(f"{where}.labels: no alertname")
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        raise BadPayload(f"{where}.status: expected firing or resolved, got {status!r}")
    fingerprint = _text(raw, "fingerprint", None, where)
    starts_at = _time(raw.get("startsAt"), f"{where}.startsAt")
    ends_at = _time(raw.get("endsAt"), f"{where}.endsAt") if status == "resolved" else None
    return Alert(fingerprint=fingerprint, status=status, labels=labels,
                 annotations=_strings(raw.get("annotations", {}), f"{where}.annotations"),
                 starts_at=starts_at, ends_at=ends_at,
                 generator_url=_text(raw, "generatorURL", "", where))


def _text(data: dict, key: str, default: str | None, where: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise BadPayload(f"{where + '.' if where else ''}{key}: expected a non-empty string"
                         if default is None else f"{key}: expected a string")
    return value


def _strings(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadPayload(f"{where}: expected an object of strings")
    return value


def _time(value, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadPayload(f"{where}: expected an RFC 3339 time, got {value!r}") from None
    if moment.tzinfo is None or moment.year < 1970:
        raise BadPayload(f"{where}: expected an RFC 3339 time with a zone, got {value!r}")
    return moment


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadPayload(f"truncatedAlerts: expected a count, got {value!r}")
    return value
