"""The relay's YAML config file (docs/relay.md): its database, the token Alertmanager sends,
and the channels alerts are passed on to.

    database:
      dsn_file: /etc/pipemon-relay/dsn           # or dsn: ${PIPEMON_RELAY_DSN}
    bearer_token_file: /etc/pipemon-relay/token  # what Alertmanager's http_config sends
    sentry:
      dsn_file: /etc/pipemon-relay/sentry-dsn
      severities: [critical]
    posthog:
      api_key_file: /etc/pipemon-relay/posthog-key
      host: https://eu.i.posthog.com
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipemon.config import interpolate_tree
from pipemon.db import dsn_secrets
from pipemon.schema import (
    Checked,
    ConfigError,
    Node,
    described,
    name,
    positive_duration,
    read,
    secret,
    section,
    string,
    string_list,
    value,
)
from pipemon.secret import Secret
from pipemon.sources.pg import valid_dsn

SEVERITIES = ("critical", "warning", "info")


@described("list of critical, warning, info")
def _severities(raw: Any) -> tuple[str, ...]:
    found = string_list(raw)
    for severity in found:
        if severity not in SEVERITIES:
            raise ValueError(f"expected severities among {', '.join(SEVERITIES)}, got"
                             f" {severity!r}")
    return found


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig(Checked):
    dsn: Secret = secret("libpq DSN or URL of the relay's PostgreSQL database.", validate=valid_dsn)
    db_schema: str = value("Schema of the relay's tables (created by `pipemon relay migrate`).",
                           name, "pipemon_relay", key="schema")
    timeout: float = value("Statement timeout of each transaction; a webhook call that cannot"
                           " be stored by then answers 503, and Alertmanager retries.",
                           positive_duration, 5.0, shown_default="5s")


@dataclass(frozen=True, kw_only=True)
class SentryConfig(Checked):
    dsn: Secret = secret("Sentry DSN of the project alerts go to.")
    severities: tuple[str, ...] = value("Severities sent to Sentry.", _severities,
                                        ("critical",), shown_default="[critical]")
    environment: str = value("Sentry `environment` of the events.", string, "production")


@dataclass(frozen=True, kw_only=True)
class PostHogConfig(Checked):
    api_key: Secret = secret("PostHog project API key.")
    host: str = value("PostHog host.", string, "https://us.i.posthog.com")
    distinct_id: str = value("`distinct_id` of the events: who raised them.", string,
                             "pipemon-relay")


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig(Checked):
    retry_min: float = value("First wait before a failed delivery is tried again; doubled at"
                             " each failure.", positive_duration, 5.0, shown_default="5s")
    retry_max: float = value("Longest wait between two tries.", positive_duration, 600.0,
                             shown_default="10m")
    timeout: float = value("Deadline of one delivery.", positive_duration, 10.0,
                           shown_default="10s")


@dataclass(frozen=True, kw_only=True)
class RelayConfig(Checked):
    database: DatabaseConfig = section(DatabaseConfig, "Where the alert history is kept.",
                                       required=True)
    bearer_token: Secret | None = secret(
        "Token Alertmanager must send (its `http_config.authorization.credentials_file`);"
        " none: any caller may post (then restrict who can connect).", required=False)
    sentry: SentryConfig | None = section(SentryConfig, "Send alerts to Sentry.")
    posthog: PostHogConfig | None = section(PostHogConfig, "Send alert events to PostHog.")
    delivery: DeliveryConfig = section(DeliveryConfig, "How the outbox retries.")

    def secrets(self) -> list[str]:
        """Strings never to show: the database DSN and its password, the token and keys."""
        found = [self.bearer_token, self.sentry and self.sentry.dsn,
                 self.posthog and self.posthog.api_key]
        return dsn_secrets(self.database.dsn) + [s.reveal() for s in found if s]


def load(path: str | Path, env: dict[str, str] | None = None) -> RelayConfig:
    """Read and validate the relay's config; ConfigError lists every problem."""
    import os

    file = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(file, [f"cannot read file: {err.strerror}"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(file, [f"invalid YAML: {str(err).splitlines()[0]}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(file, ["expected a mapping with a `database` section"])
    problems: list[str] = []
    data = interpolate_tree(data, "", dict(os.environ if env is None else env), problems)
    config = read(RelayConfig, Node(data, "", problems, Path(path).resolve().parent))
    if problems:
        raise ConfigError(file, problems)
    return config
