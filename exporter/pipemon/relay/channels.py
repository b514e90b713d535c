"""Where the outbox delivers: Sentry (an event per alert, one issue per alert) and PostHog
(`alert_triggered` / `alert_resolved`).

Each delivery has an id derived from its outbox row (Sentry's `event_id`, PostHog's `uuid`),
the same on every try: both services drop an event whose id they have seen, so a delivery
repeated after a crash between the send and its commit is not counted twice.

Sentry: sentry-sdk builds the event and its envelope (the SDK's own format, with its client
info); the envelope is posted here, synchronously, because the SDK's transport queues it and
drops it on a failure without saying so (sentry-sdk 2.x `transport.py`), where the outbox must
know. PostHog: `posthog.request.batch_post`, the client's own request, which raises on anything
but a 200 (posthog 7.x `request.py`).
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime

from pipemon.app import VERSION
from pipemon.relay.config import PostHogConfig, SentryConfig

# uuid5 namespace of the delivery ids (any fixed uuid: the ids only need to be stable)
IDS = uuid.UUID("5b0c3f8e-2f4e-4e0a-9a51-7d1f0c0b6e21")
SENTRY_LEVELS = {"critical": "fatal", "warning": "warning", "info": "info"}
SENTRY_TAG_KEY, SENTRY_TAG_VALUE = 32, 200  # Sentry's limits; longer tags are dropped by it
USER_AGENT = f"pipemon-relay/{VERSION}"


class DeliveryFailed(Exception):
    def __init__(self, reason: str, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class Delivery:
    """One outbox row with its alert."""
    outbox_id: int
    event: str  # firing | resolved
    alertname: str
    severity: str
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None

    @property
    def id(self) -> uuid.UUID:
        return uuid.uuid5(IDS, f"{self.outbox_id}")

    @property
    def source(self) -> str:
        return self.labels.get("source") or self.labels.get("job") or ""


class SentryChannel:
    name = "sentry"

    def __init__(self, config: SentryConfig, timeout: float):
        import sentry_sdk
        from sentry_sdk.transport import Transport
        from sentry_sdk.utils import Dsn

        class Capture(Transport):
            """Keeps the envelope the client built, instead of queueing it."""

            def __init__(self, options=None):
                super().__init__(options)
                self.envelopes = []

            def capture_envelope(self, envelope) -> None:
                self.envelopes.append(envelope)

        self._sdk = sentry_sdk
        self._capture = Capture()
        self._client = sentry_sdk.Client(
            dsn=config.dsn.reveal(), transport=self._capture, default_integrations=False,
            environment=config.environment, send_client_reports=False,
            release=f"pipemon-relay@{VERSION}", server_name="pipemon-relay")
        auth = Dsn(config.dsn.reveal()).to_auth(USER_AGENT)
        self._url = auth.get_api_url()
        self._auth_header = auth.to_header()
        self._timeout = timeout

    def event(self, delivery: Delivery) -> dict:
        summary = delivery.annotations.get("summary") or delivery.alertname
        resolved = delivery.event == "resolved"
        tags = {k[:SENTRY_TAG_KEY]: v[:SENTRY_TAG_VALUE] for k, v in delivery.labels.items()}
        return {
            "event_id": delivery.id.hex,
            "message": f"{'Resolved: ' if resolved else ''}{delivery.alertname}: {summary}",
            "level": "info" if resolved else SENTRY_LEVELS.get(delivery.severity, "error"),
            # one issue per alert (Alertmanager's fingerprint: its labels), firing or resolved
            "fingerprint": ["pipemon-alert", delivery.fingerprint],
            "tags": {**tags, "alert_event": delivery.event},
            "contexts": {"alert": {
                "description": delivery.annotations.get("description", ""),
                "runbook_url": delivery.annotations.get("runbook_url", ""),
                "dashboard_url": delivery.annotations.get("dashboard_url", ""),
                "starts_at": delivery.starts_at.isoformat(),
                "ends_at": delivery.ends_at.isoformat() if delivery.ends_at else None}},
            "logger": "pipemon-relay",
            "platform": "other",
        }

    def send(self, delivery: Delivery) -> None:
        self._client.capture_event(self.event(delivery))
        if not self._capture.envelopes:
            raise DeliveryFailed("dropped", "sentry-sdk dropped the event before sending")
        envelope = self._capture.envelopes.pop()
        request = urllib.request.Request(
            self._url, data=envelope.serialize(), method="POST",
            headers={"Content-Type": "application/x-sentry-envelope",
                     "X-Sentry-Auth": self._auth_header, "User-Agent": USER_AGENT})
        _post(request, self._timeout)

    def close(self) -> None:
        self._client.close(timeout=0)


class PostHogChannel:
    name = "posthog"

    def __init__(self, config: PostHogConfig, timeout: float):
        from posthog import request

        self._request = request
        self._config = config
        self._timeout = timeout

    def event(self, delivery: Delivery) -> dict:
        resolved = delivery.event == "resolved"
        properties = {"alert_type": delivery.alertname, "severity": delivery.severity,
                      "service": delivery.source, "labels": delivery.labels,
                      "$lib": "pipemon-relay", "$lib_version": VERSION}
        if resolved and delivery.ends_at:
            properties["duration_seconds"] = max(
                (delivery.ends_at - delivery.starts_at).total_seconds(), 0.0)
        moment = delivery.ends_at if resolved and delivery.ends_at else delivery.starts_at
        return {"event": "alert_resolved" if resolved else "alert_triggered",
                "distinct_id": self._config.distinct_id, "properties": properties,
                "timestamp": moment.isoformat(), "uuid": str(delivery.id)}

    def send(self, delivery: Delivery) -> None:
        try:
            self._request.batch_post(self._config.api_key.reveal(), self._config.host,
                                     timeout=self._timeout, batch=[self.event(delivery)])
        except self._request.APIError as err:
            status = err.status if isinstance(err.status, int) else 0
            raise DeliveryFailed(_reason(status), f"PostHog answered {err.status}") from None
        except Exception as err:  # requests' connection errors and timeouts
            raise DeliveryFailed("connect", f"{type(err).__name__}") from None

    def close(self) -> None:
        pass


def _post(request: urllib.request.Request, timeout: float) -> None:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as err:
        retry_after = err.headers.get("Retry-After", "")
        raise DeliveryFailed(_reason(err.code), f"answered {err.code}",
                             float(retry_after) if retry_after.isdigit() else 0.0) from None
    except (urllib.error.URLError, OSError) as err:
        raise DeliveryFailed("connect", str(getattr(err, "reason", err))) from None


def _reason(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if 400 <= status < 500:
        return "rejected"
    return "server_error" if status else "connect"
