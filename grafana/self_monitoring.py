"""pipemon itself: is the exporter scraped, are its sources polled, how long polls take, why
they fail, and what a scrape costs.

Opened from PipemonExporterDown, PipemonExporterAbsent, PipemonSourceDown (var-source).
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    RED,
    UID_OVERVIEW,
    UID_SELF,
    Grid,
    above,
    colored_cell,
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
    up_mapping,
)

S = 'source=~"$source"'
# The exporter's own targets, selected once by the rule bundle (instance:pipemon_up:selected).
TARGETS = "on (job, instance) group_left () (instance:pipemon_up:selected >= 0)"


def build() -> dict:
    g = Grid()
    g.row("Exporter")
    g.add(stat("Exporter targets up", "Replicas of the exporter that answered their last "
               "scrape, out of the targets Prometheus has (rule instance:pipemon_up:selected).",
               "short", [query("sum(instance:pipemon_up:selected)", "up"),
                         query("count(instance:pipemon_up:selected)", "targets")],
               thresholds=steps(RED, (1, GREEN)),
               links=[runbook("PipemonExporterDown"), runbook("PipemonExporterAbsent"),
                      to_dashboard("Pipeline overview", UID_OVERVIEW, "${source:queryparam}")]),
          6, 5)
    g.add(table("Versions", "pipemon version per replica; config reload status.", "none",
                [query("pipemon_build_info", instant=True, table=True),
                 query("pipemon_config_last_reload_successful", instant=True, table=True)],
                columns={"instance": "Instance", "version": "Version",
                         "Value #B": "Last reload OK"},
                hide=("Time", "job", "__name__", "Value #A"),
                overrides=[("Last reload OK", [
                    prop("mappings", [up_mapping("yes", "FAILED").to_json()]),
                    *colored_cell("none", steps(RED, (1, GREEN)))])]), 8, 5)
    g.add(stat("Sources down", "Sources whose last poll failed on every replica "
               "(PipemonSourceDown fires after 1m).", "short",
               [query(f"count(source_kind:pipemon_source_up:max{{{S}}} == 0) or vector(0)")],
               thresholds=above(0, count=True), graph=False,
               links=[runbook("PipemonSourceDown")]), 5, 5)
    g.add(stat("Poll errors (5m)", "Failed polls over the last 5 minutes, all sources "
               "selected.", "short",
               [query("sum(max without (instance, pod) (increase("
                      f"pipemon_source_poll_errors_total{{{S}}}[5m])))")],
               thresholds=above(0), graph=False), 5, 5)

    g.row("Sources")
    g.add(timeseries("Source up", "1 while the source's last poll succeeded on at least one "
                     "replica, 0 while it fails.", "none",
                     [query(f"source_kind:pipemon_source_up:max{{{S}}}", "{{source}} ({{kind}})")],
                     thresholds=steps(RED, (1, GREEN)), max_val=1,
                     links=[runbook("PipemonSourceDown")]), 12, 8)
    g.add(timeseries("Last successful poll, age", "Time since each source's last successful "
                     "poll: about its interval when healthy, growing while polls fail.", "s",
                     [query("time() - max without (instance, pod) "
                            f"(pipemon_source_last_success_timestamp_seconds{{{S}}})",
                            "{{source}}")],
                     links=[runbook("PipemonSourceDown")]), 12, 8)
    g.add(timeseries("Poll duration p50 / p95 / p99", "How long polls take per source "
                     "(failed polls included). A poll has the source's timeout as deadline.",
                     "s",
                     [query(f"histogram_quantile({q}, sum by (source, le) (max without "
                            "(instance, pod) (rate(pipemon_source_poll_duration_seconds_bucket"
                            f"{{{S}}}[$__rate_interval]))))", f"{{{{source}}}} p{q}")
                      for q in ("0.5", "0.95", "0.99")]), 12, 8)
    g.add(timeseries("Poll errors by reason", "Failed polls per minute by source and reason "
                     "(connect, auth, timeout, schema, permission, sql_error, internal).",
                     "suffix: /min",
                     [query("sum by (source, reason) (max without (instance, pod) (rate("
                            f"pipemon_source_poll_errors_total{{{S}}}[$__rate_interval]))) * 60",
                            "{{source}} {{reason}}")],
                     stack=True, links=[runbook("PipemonSourceDown")]), 12, 8)
    g.add(timeseries("Label values folded into other", "Label values over the cap "
                     "(max_queues, max_label_values) reported as `other`.", "short",
                     [query("max without (instance, pod) "
                            f"(pipemon_source_folded_label_values{{{S}}})",
                            "{{source}} {{label}}")]), 12, 6)
    g.add(timeseries("Unmapped raw states", "Jobs in raw states the source's `states` mapping "
                     "does not know (checked every unmapped_check_interval).", "short",
                     [query("max without (instance, pod) "
                            f"(pipemon_queue_unmapped_jobs{{{S}}})",
                            "{{source}} {{raw_state}}")]), 12, 6)

    g.row("Scrape cost")
    g.add(timeseries("Scrape duration", "How long Prometheus takes to scrape each replica "
                     "(pipemon serves the last polls' results: no database time).", "s",
                     [query(f"scrape_duration_seconds * {TARGETS}", "{{instance}}")]), 8, 8)
    g.add(timeseries("Samples per scrape", "Samples each scrape returns (grows with sources, "
                     "queues and check rows).", "short",
                     [query(f"scrape_samples_scraped * {TARGETS}", "{{instance}}")]), 8, 8)
    g.add(timeseries("New series per scrape", "Series that appeared in a scrape: a steady "
                     "non-zero line is a label with unbounded values.", "short",
                     [query(f"scrape_series_added * {TARGETS}", "{{instance}}")]), 8, 8)

    return dashboard(
        UID_SELF, "pipemon / pipemon itself",
        "The exporter: targets, versions, source polls (up, age, duration, errors by reason) "
        "and the cost of a scrape.", g,
        [label_variable("source", "Source", "pipemon_source_up")],
        'source=~"$source|"', tags=["self"])
