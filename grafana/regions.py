"""Regions (the AI Mixer stack's "regional performance" and its health-check service): each
region's endpoints as blackbox_exporter probes them (up now, rolling 24 h uptime, the
healthy/degraded/unhealthy class, probe latency), then the services' traffic, errors and latency
compared across regions.

The probe panels read the recording rules of rules/infra-alerts.yaml (endpoint uptime and
health); the traffic panels those of rules/service-alerts.yaml. Opened from the endpoint alerts
(var-region, var-endpoint).
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    UID_REGIONS,
    UID_SERVICE,
    Grid,
    colored_cell,
    dashboard,
    endpoint_threshold,
    label_variable,
    prop,
    query,
    runbook,
    stat,
    steps,
    table,
    timeseries,
    to_dashboard,
    up_mapping,
)

R = 'region=~"$region"'
RE = 'region=~"$region", instance=~"$endpoint"'
HEALTH = {0: ("Healthy", GREEN), 1: ("Degraded", ORANGE), 2: ("Unhealthy", RED)}
# the uptime alerts' thresholds (rules/infra-alerts.yaml): critical below, warning below
UPTIME_CRITICAL = endpoint_threshold("uptime_ratio", severity="critical")
UPTIME_WARNING = endpoint_threshold("uptime_ratio", severity="warning")


def health_mapping() -> dm.ValueMap:
    return dm.ValueMap(options={str(v): dm.ValueMappingResult(text=text, color=color, index=v)
                                for v, (text, color) in HEALTH.items()})


def uptime_colours():
    return steps(RED, (UPTIME_CRITICAL, ORANGE), (UPTIME_WARNING, GREEN))


def _probes(g: Grid) -> None:
    g.row("Endpoints")
    g.add(stat("Region uptime (24 h)", "Share of successful probes over the last 24 hours, "
               "all endpoints of each region: warning below "
               f"{UPTIME_WARNING:.0%}, critical below {UPTIME_CRITICAL:.0%}.",
               "percentunit", [query(f"region:pipemon_uptime:ratio_24h{{{R}}}", "{{region}}")],
               thresholds=uptime_colours(), decimals=2,
               links=[runbook("PipemonEndpointUptimeLow")]), 24, 4)
    g.add(table("Endpoints now", "Per endpoint: its class (unhealthy: down now or 24 h uptime "
                f"below {UPTIME_CRITICAL:.0%}; degraded: uptime below {UPTIME_WARNING:.0%} or "
                "its median probe slow; healthy), whether the last probe succeeded, the 24 h "
                "uptime, the median probe over 5 minutes and the last HTTP status.", "none",
                [query(f"endpoint:pipemon_health:state{{{RE}}}", instant=True, table=True),
                 query(f"probe_success{{{RE}}}", instant=True, table=True),
                 query(f"endpoint:pipemon_uptime:ratio_24h{{{RE}}}", instant=True, table=True),
                 query(f"endpoint:pipemon_probe_duration_seconds:median_5m{{{RE}}}",
                       instant=True, table=True),
                 query(f"probe_http_status_code{{{RE}}}", instant=True, table=True)],
                columns={"region": "Region", "instance": "Endpoint", "Value #A": "Health",
                         "Value #B": "Up now", "Value #C": "Uptime 24 h",
                         "Value #D": "Median probe (5m)", "Value #E": "HTTP status"},
                overrides=[("Health", [prop("mappings", [health_mapping().to_json()]),
                                       *colored_cell("none", steps(GREEN, (1, ORANGE),
                                                                   (2, RED)))]),
                           ("Up now", [prop("mappings", [up_mapping().to_json()]),
                                       *colored_cell("none", steps(RED, (1, GREEN)))]),
                           ("Uptime 24 h", colored_cell("percentunit", uptime_colours())),
                           ("Median probe (5m)", [prop("unit", "s")])],
                sort_by="Health",
                links=[runbook("PipemonEndpointDown"), runbook("PipemonEndpointUptimeLow")]),
          24, 8)
    g.add(timeseries("Probe success", "1 when the endpoint answered as the module expects "
                     "(2xx in time), 0 when not.", "none",
                     [query(f"probe_success{{{RE}}}", "{{region}} {{instance}}")],
                     thresholds=steps(RED, (1, GREEN)), max_val=1,
                     links=[runbook("PipemonEndpointDown")]), 12, 8)
    g.add(timeseries("Probe duration", "Time of each probe (DNS, connect, TLS, the answer).",
                     "s", [query(f"probe_duration_seconds{{{RE}}}", "{{region}} {{instance}}")],
                     links=[runbook("PipemonEndpointLatencyHigh")]), 12, 8)
    g.add(timeseries("Uptime (24 h) per endpoint", "Rolling 24-hour share of successful "
                     f"probes; dashed: the {UPTIME_WARNING:.0%} warning and "
                     f"{UPTIME_CRITICAL:.0%} critical.", "percentunit",
                     [query(f"endpoint:pipemon_uptime:ratio_24h{{{RE}}}",
                            "{{region}} {{instance}}")],
                     thresholds=uptime_colours(), min_val=None, max_val=1,
                     links=[runbook("PipemonEndpointUptimeLow")]), 24, 8)


def _traffic(g: Grid) -> None:
    to_service = to_dashboard("Service overview", UID_SERVICE, "${region:queryparam}")
    g.row("Services by region")
    g.add(timeseries("Requests by region", "Requests per second of all services per region.",
                     "reqps", [query("sum by (region) (service_region:service_requests:rate1m"
                                     f"{{{R}}})", "{{region}}")], links=[to_service]), 8, 8)
    g.add(timeseries("5xx ratio by region", "Share of 5xx answers of all services per region "
                     "(5 minutes).", "percentunit",
                     [query(f"sum by (region) (service_region:service_request_errors:rate5m{{{R}}})"
                            " / sum by (region) (service_region:service_requests:rate5m"
                            f"{{{R}}})", "{{region}}")], links=[to_service]), 8, 8)
    g.add(timeseries("p95 latency by service and region", "95th percentile of request latency "
                     "over 5 minutes.", "s",
                     [query("service_region:service_request_duration_seconds:quantile_rate5m"
                            f'{{{R}, quantile="0.95"}}', "{{service}} {{region}}")],
                     links=[to_service]), 8, 8)


def build() -> dict:
    g = Grid()
    _probes(g)
    _traffic(g)
    return dashboard(
        UID_REGIONS, "pipemon / Regions",
        "Each region's endpoints as the blackbox exporter probes them (up, 24 h uptime, "
        "health class, latency) and the services' traffic compared across regions.", g,
        [label_variable("region", "Region", "probe_success"),
         label_variable("endpoint", "Endpoint", "probe_success", selector=R, of="instance")],
        'region=~"$region|"', tags=["platform"])
