"""Incidents: the alerts as `pipemon relay` recorded them (docs/relay.md). What is firing now,
how long alerts take to resolve (MTTR) per alert over 30 days, how often each fires, queue
overflows, and the noisy ones: alerts that resolve within 5 minutes of firing, mostly without
anyone acting (a proxy for alert accuracy).

Opened from the relay's alerts; every series is the relay's.
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    UID_INCIDENTS,
    UID_SELF,
    Grid,
    above,
    dashboard,
    label_variable,
    prop,
    query,
    runbook,
    stat,
    steps,
    table,
    timeseries,
    to_dashboard,
)

SEV = 'severity=~"$severity"'
# The relay's replicas each count what they were sent: folded first, as the exporter's are.
RESOLVED = ("max without (instance, pod) (increase(pipemon_alert_resolution_seconds_bucket"
            f"{{{SEV}}}[30d]))")
OCCURRENCES = ("max without (instance, pod) (increase(pipemon_relay_occurrences_total"
               f"{{{SEV}}}[30d]))")
# The product documents' targets: MTTR under 15 minutes, accuracy over 95%.
MTTR_TARGET = 900


def _quantile(q: str, by: str = "") -> str:
    keep = f"sum by ({by}, le)" if by else "sum by (le)"
    return f"histogram_quantile({q}, {keep} ({RESOLVED}))"


def _quick(by: str = "") -> str:
    """The share of resolutions within 5 minutes of firing."""
    keep = f"sum by ({by})" if by else "sum"
    # prometheus-client writes le="300.0"; Prometheus 3 rewrites it to le="300"
    within = ("max without (instance, pod) (increase(pipemon_alert_resolution_seconds_bucket"
              f'{{le=~"300|300.0", {SEV}}}[30d]))')
    every = ("max without (instance, pod) (increase(pipemon_alert_resolution_seconds_count"
             f"{{{SEV}}}[30d]))")
    return f"{keep} ({within}) / {keep} ({every})"


def build() -> dict:
    g = Grid()
    g.row("Now")
    g.add(stat("Active alerts", "Alert occurrences firing and not yet resolved, in the relay's"
               " history.", "short",
               [query(f"sum(max without (instance, pod) (pipemon_relay_active_alerts{{{SEV}}}))"
                      " or vector(0)")],
               thresholds=above(0, count=True), graph=False), 6, 5)
    g.add(stat("MTTR p50 (30 days)", "Median time from firing to resolved over 30 days; the"
               " target is under 15 minutes.", "s", [query(_quantile("0.5"))],
               thresholds=steps(GREEN, (MTTR_TARGET, RED)), graph=False), 6, 5)
    g.add(stat("Resolved within 5 minutes (30 days)", "Share of the resolutions that came"
               " within 5 minutes of firing: mostly alerts that cleared by themselves. A high"
               " share means noisy alerts.", "percentunit", [query(_quick())],
               thresholds=steps(GREEN, (0.05, ORANGE), (0.2, RED)), graph=False), 6, 5)
    g.add(stat("Queue overflow incidents (30 days)", "Occurrences of the backlog alerts"
               " (PipemonQueueBacklogHigh, PipemonQueueBacklogPredictedFull); the target is"
               " under one a month.", "short",
               [query("sum(max without (instance, pod) (increase(pipemon_relay_occurrences_total"
                      f'{{alertname=~"PipemonQueueBacklog.+", {SEV}}}[30d]))) or vector(0)')],
               thresholds=above(0, count=True), graph=False,
               links=[runbook("PipemonQueueBacklogHigh")]), 6, 5)
    g.add(table("Firing now", "Occurrences not yet resolved, by alert and severity.", "short",
                [query(f"max without (instance, pod) (pipemon_relay_active_alerts{{{SEV}}}) > 0",
                       instant=True, table=True)],
                columns={"alertname": "Alert", "severity": "Severity", "Value": "Firing"},
                sort_by="Firing"), 24, 7)

    g.row("Over 30 days, per alert")
    g.add(table("Per alert", "Incidents (occurrences) per alert, the median and p95 time to"
                " resolve, and the share resolved within 5 minutes.", "short",
                [query(f"sum by (alertname) ({OCCURRENCES})", instant=True, table=True),
                 query(_quantile("0.5", "alertname"), instant=True, table=True),
                 query(_quantile("0.95", "alertname"), instant=True, table=True),
                 query(_quick("alertname"), instant=True, table=True)],
                columns={"alertname": "Alert", "Value #A": "Incidents", "Value #B": "MTTR p50",
                         "Value #C": "MTTR p95", "Value #D": "Resolved within 5 min"},
                overrides=[("MTTR p50", [prop("unit", "s")]),
                           ("MTTR p95", [prop("unit", "s")]),
                           ("Resolved within 5 min", [prop("unit", "percentunit")])],
                sort_by="Incidents"), 24, 9)
    g.add(timeseries("Incidents per day", "Occurrences started per day, by alert.", "short",
                     [query("sum by (alertname) (max without (instance, pod) (increase("
                            f"pipemon_relay_occurrences_total{{{SEV}}}[1d])))",
                            "{{alertname}}")], bars=True), 12, 8)
    g.add(timeseries("MTTR p50 / p95 (30-day window)", "Time from firing to resolved, over the"
                     " 30 days before each point.", "s",
                     [query(_quantile("0.5"), "p50"), query(_quantile("0.95"), "p95")],
                     thresholds=steps(GREEN, (MTTR_TARGET, RED))), 12, 8)

    g.row("The relay")
    g.add(timeseries("Notifications", "Alertmanager's calls per minute by result: stored,"
                     " invalid (400), unauthorized (401), unavailable (503, retried).",
                     "suffix: /min",
                     [query("sum by (result) (rate(pipemon_relay_notifications_total"
                            "[$__rate_interval])) * 60", "{{result}}")], stack=True,
                     links=[runbook("PipemonRelayDatabaseDown"),
                            to_dashboard("pipemon itself", UID_SELF)]), 12, 7)
    g.add(timeseries("Deliveries waiting", "Sentry and PostHog deliveries not yet made, and"
                     " the age of the oldest.", "short",
                     [query("max without (instance, pod) (pipemon_relay_outbox_pending)",
                            "{{channel}} pending"),
                      query("max without (instance, pod) (pipemon_relay_outbox_oldest_seconds)",
                            "{{channel}} oldest (s)")],
                     links=[runbook("PipemonRelayOutboxStuck")]), 12, 7)

    return dashboard(
        UID_INCIDENTS, "pipemon / incidents",
        "Alerts as the relay recorded them: firing now, MTTR per alert over 30 days, incidents"
        " per month, queue overflows and noisy alerts.", g,
        [label_variable("severity", "Severity", "pipemon_relay_occurrences_total")],
        'severity=~"$severity"', time_from="now-30d", tags=["incidents"])
