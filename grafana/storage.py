"""Storage: the put/get/delete probe of each bucket (success, latency per operation, failures
by reason), its availability SLO, and the inventory of objects and bytes per prefix.

Opened from the storage alerts (var-source, var-bucket).
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    UID_OVERVIEW,
    UID_STORAGE,
    Grid,
    above,
    dashboard,
    label_variable,
    query,
    runbook,
    stat,
    steps,
    threshold,
    timeseries,
    to_dashboard,
    up_mapping,
)

SB = 'source=~"$source", bucket=~"$bucket"'


def build() -> dict:
    latency = threshold("storage_probe_p95_seconds")
    objective = threshold("pipemon_slo:objective:ratio", slo="storage_availability")
    overview = to_dashboard("Pipeline overview", UID_OVERVIEW, "${source:queryparam}")

    g = Grid()
    g.row("Probe")
    g.add(stat("Probe status", "Last put/get/delete probe of each bucket: OK, or FAILING (any step "
               "failed). PipemonStorageProbeFailing fires after 1m of failures.", "none",
               [query(f"source_bucket:pipemon_storage_probe_success:max{{{SB}}}",
                      "{{bucket}}")],
               thresholds=steps(RED, (1, GREEN)), mappings=[up_mapping("OK", "FAILING")],
               graph=False, links=[runbook("PipemonStorageProbeFailing"), overview]), 6, 5)
    g.add(stat("Availability over the time range", "Share of the time range during which the "
               f"latest probe had succeeded; the SLO objective is {objective:.1%}.",
               "percentunit",
               [query("avg_over_time(source_bucket:pipemon_storage_probe_success:max"
                      f"{{{SB}}}[$__range])", "{{bucket}}", instant=True)],
               thresholds=steps(RED, (objective, GREEN)), decimals=3, graph=False,
               links=[runbook("PipemonStorageAvailabilityBudgetBurn")]), 6, 5)
    g.add(stat("Error budget left", "Share of the storage-availability error budget left over "
               "the time range (below zero: the objective is missed).", "percentunit",
               [query("1 - (1 - avg_over_time(source_bucket:pipemon_storage_probe_success:max"
                      f"{{{SB}}}[$__range])) / on () group_left () "
                      'pipemon_slo:error_budget:ratio{slo="storage_availability"}',
                      "{{bucket}}", instant=True)],
               thresholds=steps(RED, (0, ORANGE), (0.25, GREEN)), graph=False,
               links=[runbook("PipemonStorageAvailabilityBudgetBurn")]), 6, 5)
    g.add(stat("Probe p95 (15m)", "p95 latency of each probe operation over 15m, the slowest "
               f"operation. PipemonStorageLatencyHigh fires above {latency:g}s.", "s",
               [query("max by (bucket) (source_bucket_operation:"
                      "pipemon_storage_probe_duration_seconds:quantile_rate15m"
                      f'{{{SB}, quantile="0.95"}})', "{{bucket}}")],
               thresholds=above(None, latency),
               links=[runbook("PipemonStorageLatencyHigh")]), 6, 5)

    g.add(timeseries("Probe success", "1 while the latest probe succeeded, 0 while it failed.",
                     "none",
                     [query(f"source_bucket:pipemon_storage_probe_success:max{{{SB}}}",
                            "{{bucket}}")],
                     thresholds=steps(RED, (1, GREEN)), max_val=1,
                     links=[runbook("PipemonStorageProbeFailing")]), 12, 8)
    g.add(timeseries("Failures by operation and reason", "Failed probe steps per minute by "
                     "operation (put, get, delete) and reason (timeout, connect, auth, "
                     "not_found, throttled, checksum, server_error, client_error).",
                     "suffix: /min",
                     [query("sum by (operation, reason) (max without (instance, pod) (rate("
                            f"pipemon_storage_probe_failures_total{{{SB}}}[$__rate_interval])))"
                            " * 60", "{{operation}} {{reason}}")],
                     stack=True, links=[runbook("PipemonStorageProbeFailing")]), 12, 8)

    g.row("Latency")
    g.add(timeseries("Latency p50 / p95 / p99 by operation", "Probe latency per operation "
                     "(successful operations only, retries included) over 5m; dashed line: the "
                     "p95 alert threshold.", "s",
                     [query("source_bucket_operation:pipemon_storage_probe_duration_seconds:"
                            f"quantile_rate5m{{{SB}}}", "{{operation}} p{{quantile}}")],
                     thresholds=above(None, latency),
                     links=[runbook("PipemonStorageLatencyHigh")]), 12, 8)
    g.add(timeseries("Latency p95 over 15m (alert)", "What PipemonStorageLatencyHigh "
                     "compares with its threshold.", "s",
                     [query("source_bucket_operation:pipemon_storage_probe_duration_seconds:"
                            f'quantile_rate15m{{{SB}, quantile="0.95"}}', "{{operation}}")],
                     thresholds=above(None, latency),
                     links=[runbook("PipemonStorageLatencyHigh")]), 12, 8)

    g.row("Inventory")
    g.add(timeseries("Objects per prefix", "Objects under each inventoried prefix (a lower "
                     "bound when the listing was truncated).", "short",
                     [query("max without (instance, pod) "
                            f"(pipemon_storage_objects{{{SB}}})", "{{bucket}} {{prefix}}")]),
          8, 8)
    g.add(timeseries("Bytes per prefix", "Bytes under each inventoried prefix.", "bytes",
                     [query("max without (instance, pod) "
                            f"(pipemon_storage_bytes{{{SB}}})", "{{bucket}} {{prefix}}")]), 8, 8)
    g.add(timeseries("Growth per hour", "Bytes added per hour under each prefix (derivative "
                     "over the last hour).", "bytes",
                     [query("deriv(max without (instance, pod) "
                            f"(pipemon_storage_bytes{{{SB}}})[1h:]) * 3600",
                            "{{bucket}} {{prefix}}")], min_val=None), 8, 8)
    g.add(timeseries("Inventory truncated and errors", "1 when a prefix's listing stopped at "
                     "max_pages or the timeout (its counts are lower bounds); failed inventory "
                     "runs per minute.", "short",
                     [query("max without (instance, pod) "
                            f"(pipemon_storage_inventory_truncated{{{SB}}})",
                            "truncated {{prefix}}"),
                      query("sum by (bucket, reason) (max without (instance, pod) (rate("
                            f"pipemon_storage_inventory_errors_total{{{SB}}}[$__rate_interval]"
                            "))) * 60", "errors/min {{reason}}")]), 24, 6)

    return dashboard(
        UID_STORAGE, "pipemon / Storage",
        "Object storage (R2 / S3): probe success and latency per operation, failures by "
        "reason, availability SLO and inventory growth.", g,
        [label_variable("source", "Source", "pipemon_storage_probe_success"),
         label_variable("bucket", "Bucket", "pipemon_storage_probe_success",
                        selector='source=~"$source"')],
        'source=~"$source", bucket=~"$bucket|"', tags=["storage"])
