"""Service overview (the AI Mixer stack's "global overview", the migration guide's performance
and application-health dashboards): rate, errors and duration of the instrumented HTTP services
of rules/service-alerts.yaml, per service and region, against the thresholds of that file.

Every query reads the recorded series of service-alerts.yaml (never the services' raw metrics):
a team whose metrics are named differently edits the file's selector group and this dashboard
follows. Opened from the PipemonService* alerts (var-service, var-region).
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    UID_ERRORS,
    UID_REGIONS,
    UID_SERVICE,
    Grid,
    dashboard,
    dashed_thresholds,
    heatmap,
    label_variable,
    query,
    runbook,
    service_threshold,
    stat,
    steps,
    timeseries,
    to_dashboard,
)

S = 'service=~"$service"'
SR = 'service=~"$service", region=~"$region"'
# the recorded series every variable reads (one per service and region)
REQUESTS = "service_region:service_requests:rate5m"
# the defaults of the stats' colours (a service with overrides has its own lines in the graphs)
ERRORS_WARNING = service_threshold("error_ratio", severity="warning")
ERRORS_CRITICAL = service_threshold("error_ratio", severity="critical")
P95_CRITICAL = service_threshold("latency_seconds", quantile="0.95", severity="critical")


def service_variables() -> list:
    return [label_variable("service", "Service", REQUESTS),
            label_variable("region", "Region", REQUESTS, selector=S)]


def build() -> dict:
    links = [to_dashboard("Regions", UID_REGIONS, "${region:queryparam}"),
             to_dashboard("Error tracking", UID_ERRORS, "${service:queryparam}")]
    g = Grid()
    g.row("Now")
    g.add(stat("Requests", "Requests per second over the last 5 minutes, all selected "
               "services and regions.", "reqps",
               [query(f"sum(service_region:service_requests:rate5m{{{SR}}})", "requests")],
               links=links), 6, 4)
    g.add(stat("Error ratio", "Share of 5xx answers over the last 5 minutes (a 404 is the client's "
               "business). PipemonServiceErrorRatioHigh compares each service and region with "
               "its threshold.", "percentunit",
               [query(f"sum(service_region:service_request_errors:rate5m{{{SR}}}) / "
                      f"sum(service_region:service_requests:rate5m{{{SR}}})", "errors")],
               thresholds=steps(GREEN, (ERRORS_WARNING, ORANGE), (ERRORS_CRITICAL, RED)),
               decimals=2,
               links=[runbook("PipemonServiceErrorRatioHigh"), *links]), 6, 4)
    g.add(stat("p95 latency (slowest region)", "The highest p95 of the selected services and "
               "regions over the last 5 minutes.", "s",
               [query(f'max(service_region:service_request_duration_seconds:quantile_rate5m'
                      f'{{{SR}, quantile="0.95"}})', "p95")],
               thresholds=steps(GREEN, (P95_CRITICAL, RED)),
               links=[runbook("PipemonServiceLatencyHigh")]), 6, 4)
    g.add(stat("Error budget left (30d objective)", "Availability SLO: the share of the error "
               "budget the last day's 5xx answers leave, per service (1 - ratio / budget). "
               "Below 0 the day burnt more than its share.", "percentunit",
               [query(f"1 - service:service_request_errors:ratio_rate1d{{{S}}}"
                      f" / on (service) service:service_slo_error_budget:ratio{{{S}}}",
                      "{{service}}")],
               thresholds=steps(RED, (0, ORANGE), (0.5, GREEN)),
               links=[runbook("PipemonServiceErrorBudgetBurn")]), 6, 4)

    g.row("Traffic")
    g.add(timeseries("Requests by region", "Requests per second per service and region.",
                     "reqps", [query(f"service_region:service_requests:rate1m{{{SR}}}",
                                     "{{service}} {{region}}")], stack=True), 12, 8)
    g.add(timeseries("Requests by status code", "Requests per second by HTTP status code.",
                     "reqps", [query("sum by (code) (service_region_code:service_requests:rate1m"
                                     f"{{{SR}}})", "{{code}}")], stack=True), 12, 8)
    g.add(dashed_thresholds(timeseries(
        "Throughput against yesterday", "Requests per second per service, the same hour "
        "yesterday, and the floor under which PipemonServiceThroughputLow fires (when traffic "
        "also dropped against yesterday).", "reqps",
        [query(f"service:service_requests:rate5m{{{S}}}", "{{service}}"),
         query(f"service:service_requests:rate1h_offset1d{{{S}}}", "{{service}} yesterday"),
         query(f"service:service_alert_requests_per_second:threshold{{{S}}}",
               "{{service}} threshold")],
        links=[runbook("PipemonServiceThroughputLow")])), 24, 8)

    g.row("Errors")
    g.add(dashed_thresholds(timeseries(
        "5xx ratio by region", "Share of 5xx answers per service and region over 5 minutes, "
        "and each service's warning and critical thresholds.", "percentunit",
        [query(f"service_region:service_request_errors:ratio_rate5m{{{SR}}}",
               "{{service}} {{region}}"),
         query(f"service:service_alert_error_ratio:threshold{{{S}}}",
               "{{service}} {{severity}} threshold")],
        links=[runbook("PipemonServiceErrorRatioHigh")])), 12, 8)
    g.add(timeseries("5xx answers per minute", "5xx answers per minute per service and "
                     "region.", "short",
                     [query(f"service_region:service_request_errors:rate1m{{{SR}}} * 60",
                            "{{service}} {{region}}")], bars=True,
                     links=[to_dashboard("Error tracking", UID_ERRORS,
                                         "${service:queryparam}")]), 12, 8)

    g.row("Latency")
    g.add(dashed_thresholds(timeseries(
        "p50 / p95 / p99 by region", "Latency quantiles over 5 minutes per service and region "
        "(from the latency histogram: a quantile is as precise as its buckets), and each "
        "service's p95 and p99 thresholds.", "s",
        [query(f"service_region:service_request_duration_seconds:quantile_rate5m{{{SR}}}",
               "{{service}} {{region}} p{{quantile}}"),
         query(f"service:service_alert_latency_seconds:threshold{{{S}}} < +Inf",
               "{{service}} p{{quantile}} {{severity}} threshold")],
        links=[runbook("PipemonServiceLatencyHigh")])), 12, 8)
    g.add(heatmap("Latency distribution", "Requests per second by latency bucket (all selected "
                  "services and regions).",
                  "sum by (le) (service_region_le:service_request_duration_seconds_bucket:rate1m"
                  f"{{{SR}}})"), 12, 8)

    g.row("Business operations")
    g.add(dashed_thresholds(timeseries(
        "Operation success", "Share of successful business operations (a track upload, an "
        "audio post created) over 5 minutes, and the thresholds under which "
        "PipemonServiceOperationSuccessLow fires.", "percentunit",
        [query(f"service_operation:service_operations_success:ratio_rate5m{{{S}}}",
               "{{service}} {{operation}}"),
         query(f"service:service_alert_operation_success_ratio:threshold{{{S}}}",
               "{{service}} {{severity}} threshold")],
        max_val=1, links=[runbook("PipemonServiceOperationSuccessLow")])), 12, 8)
    g.add(timeseries("Failed operations in 5 minutes", "Failed business operations per "
                     "service and operation over the last 5 minutes.", "short",
                     [query(f"service_operation:service_operations_failed:increase5m{{{S}}}",
                            "{{service}} {{operation}}")]), 12, 8)

    g.row("Availability SLO")
    g.add(timeseries("Burn rate", "How fast each service spends its error budget (5xx ratio / "
                     "budget) over 1 hour and 6 hours: 1 spends exactly the budget in 30 days; "
                     "PipemonServiceErrorBudgetBurn pages at 14.4 (1h) and 6 (6h).", "x",
                     [query(f"service:service_request_errors:ratio_rate{w}{{{S}}}"
                            f" / on (service) service:service_slo_error_budget:ratio{{{S}}}",
                            f"{{{{service}}}} {w}") for w in ("1h", "6h")],
                     thresholds=steps(GREEN, (6, ORANGE), (14.4, RED)),
                     links=[runbook("PipemonServiceErrorBudgetBurn")]), 24, 8)

    return dashboard(
        UID_SERVICE, "pipemon / Service overview",
        "Rate, errors and duration of the instrumented HTTP services, per service and region, "
        "against the thresholds of rules/service-alerts.yaml.", g, service_variables(),
        'service=~"$service|"', tags=["service"])
