"""`pipemon relay`: Alertmanager's webhook receiver that keeps every alert in PostgreSQL and
passes them on to Sentry and PostHog through an outbox (docs/relay.md)."""
