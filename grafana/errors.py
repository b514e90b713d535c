"""Error tracking (the AI Mixer stack's "error rates, failed requests, downtime", the migration
guide's "error rate per minute" and "recent errors"): every kind of failure in one place.

Failed requests (5xx by service and code, 4xx for context), failed business operations, failed
pipeline jobs by reason and failed analyses (pipemon's sources), endpoint downtime (blackbox
probes), and the firing alerts by severity. Each panel links to the dashboard that explains it.
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    UID_ERRORS,
    UID_QUEUE,
    UID_REGIONS,
    UID_SELF,
    UID_SERVICE,
    Grid,
    above,
    dashboard,
    label_variable,
    query,
    runbook,
    stat,
    steps,
    table,
    timeseries,
    to_dashboard,
)
from grafana.service import REQUESTS

S = 'service=~"$service"'


def build() -> dict:
    to_service = to_dashboard("Service overview", UID_SERVICE, "${service:queryparam}")
    g = Grid()
    g.row("Now")
    g.add(stat("5xx answers per minute", "Failed requests per minute over the last 5 minutes, "
               "all selected services and regions.", "short",
               [query(f"sum(service_region:service_request_errors:rate5m{{{S}}}) * 60",
                      "5xx/min")],
               thresholds=above(0, base=GREEN), links=[to_service]), 6, 4)
    g.add(stat("Failed operations (5m)", "Business operations (uploads, post creations) that "
               "failed in the last 5 minutes.", "short",
               [query(f"sum(service_operation:service_operations_failed:increase5m{{{S}}})",
                      "failed")],
               thresholds=above(0), links=[runbook("PipemonServiceOperationSuccessLow")]), 6, 4)
    g.add(stat("Failed jobs (1h)", "Pipeline jobs that failed in the last hour, all queues of "
               "all pipemon sources.", "short",
               [query("sum(max without (instance, pod) (increase("
                      'pipemon_queue_jobs_finished_total{outcome="failed"}[1h])))',
                      "failed")],
               thresholds=above(0),
               links=[to_dashboard("Queue", UID_QUEUE)]), 6, 4)
    g.add(stat("Endpoints down", "Probed endpoints whose last probe failed.", "short",
               [query("count(probe_success == 0) or vector(0)", "down")],
               thresholds=steps(GREEN, (1, RED)), links=[runbook("PipemonEndpointDown"),
                                                         to_dashboard("Regions", UID_REGIONS)]),
          6, 4)

    g.row("Failed requests")
    g.add(timeseries("5xx per minute by service and code", "Server errors per minute.",
                     "short",
                     [query("sum by (service, code) (service_region_code:service_requests:rate1m"
                            f'{{{S}, code=~"5.."}}) * 60', "{{service}} {{code}}")],
                     bars=True, stack=True, links=[to_service]), 12, 8)
    g.add(timeseries("4xx per minute by service and code", "Client errors per minute (not "
                     "counted as errors by the alerts; a jump can still mean a broken client "
                     "or a removed route).", "short",
                     [query("sum by (service, code) (service_region_code:service_requests:rate1m"
                            f'{{{S}, code=~"4.."}}) * 60', "{{service}} {{code}}")],
                     bars=True, stack=True), 12, 8)
    g.add(timeseries("5xx ratio by service", "Share of 5xx answers per service over 5 minutes.",
                     "percentunit",
                     [query(f"service:service_request_errors:ratio_rate5m{{{S}}}",
                            "{{service}}")],
                     links=[runbook("PipemonServiceErrorRatioHigh")]), 12, 8)
    g.add(timeseries("Failed operations by operation", "Failed business operations per "
                     "service and operation in the last 5 minutes.", "short",
                     [query(f"service_operation:service_operations_failed:increase5m{{{S}}}",
                            "{{service}} {{operation}}")],
                     links=[runbook("PipemonServiceOperationSuccessLow")]), 12, 8)

    g.row("Failed pipeline work")
    g.add(table("Job failures by reason", "Failed jobs in the dashboard's time range per source, "
                "queue and reason (the source's failure_reason, normalised).", "short",
                [query("sum by (source, queue, reason) (max without (instance, pod) (increase("
                       "pipemon_queue_job_failures_total[$__range]))) > 0",
                       instant=True, table=True)],
                columns={"source": "Source", "queue": "Queue", "reason": "Reason",
                         "Value": "Failed"}, sort_by="Failed",
                links=[to_dashboard("Queue", UID_QUEUE)]), 12, 8)
    g.add(timeseries("Failed jobs per minute by queue", "Jobs that ended failed, per minute.",
                     "short",
                     [query("sum by (source, queue) (max without (instance, pod) (rate("
                            'pipemon_queue_jobs_finished_total{outcome="failed"}'
                            "[$__rate_interval]))) * 60", "{{source}} {{queue}}")],
                     bars=True, stack=True), 12, 8)
    g.add(timeseries("Failed analyses per minute", "Analysis results that did not succeed "
                     "(kind: analysis sources), per minute.", "short",
                     [query("sum by (source) (max without (instance, pod) (rate("
                            'pipemon_analysis_results_total{outcome="failed"}'
                            "[$__rate_interval]))) * 60", "{{source}}")],
                     bars=True, links=[runbook("PipemonAnalysisSuccessLow")]), 12, 8)
    g.add(timeseries("Source poll errors per minute", "Polls of pipemon's sources that failed, "
                     "by reason: the monitoring itself is partly blind.", "short",
                     [query("sum by (source, reason) (max without (instance, pod) (rate("
                            "pipemon_source_poll_errors_total[$__rate_interval]))) * 60",
                            "{{source}} {{reason}}")],
                     bars=True, links=[to_dashboard("Self-monitoring", UID_SELF)]), 12, 8)

    g.row("Downtime")
    g.add(table("Endpoint downtime", "Share of failed probes per endpoint over the dashboard's "
                "time range, and whether the last probe failed.", "percentunit",
                [query("1 - avg_over_time(probe_success[$__range])", instant=True, table=True),
                 query("probe_success", instant=True, table=True)],
                columns={"region": "Region", "instance": "Endpoint", "Value #A": "Downtime",
                         "Value #B": "Up now"},
                sort_by="Downtime",
                links=[runbook("PipemonEndpointDown"), to_dashboard("Regions", UID_REGIONS)]),
          12, 8)
    g.add(timeseries("Firing alerts by severity", "How many alerts fire, by severity.",
                     "short",
                     [query('count by (severity) (ALERTS{alertstate="firing", '
                            'alertname!="Watchdog"})', "{{severity}}")],
                     stack=True, thresholds=steps(GREEN, (1, ORANGE))), 12, 8)

    return dashboard(
        UID_ERRORS, "pipemon / Error tracking",
        "Failed requests, failed operations, failed jobs and analyses, endpoint downtime and "
        "the firing alerts, in one place.", g,
        [label_variable("service", "Service", REQUESTS)], 'service=~"$service|"',
        tags=["service"])
