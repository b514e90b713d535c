"""Data integrity: each SQL check's value over time, with its alert thresholds drawn from the
rule bundle's constant series (pipemon_alert:check_value:threshold), and the checks' own health.

Opened from PipemonCheckAboveThreshold and PipemonMigrationStalled (var-source, var-check).
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    RED,
    UID_INTEGRITY,
    UID_OVERVIEW,
    Grid,
    above,
    colored_cell,
    dashboard,
    dashed_thresholds,
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

SC = 'source=~"$source", check=~"$check"'


def build() -> dict:
    g = Grid()
    g.row("Checks")
    g.add(table("Checks now", "Every check: its value (one row per row of its result), its "
                "warning and critical thresholds where the rule bundle has them, and whether "
                "the value is above one of them (what PipemonCheckAboveThreshold compares).",
                "short",
                [query(f"source_check:pipemon_check_value:max{{{SC}}}", instant=True,
                       table=True),
                 query("source_check:pipemon_check_value:max"
                       f"{{{SC}}} > bool on (check) group_left () "
                       "min by (check) (pipemon_alert:check_value:threshold)",
                       instant=True, table=True)],
                columns={"source": "Source", "check": "Check", "Value #A": "Value",
                         "Value #B": "Above threshold"},
                overrides=[("Above threshold", [
                    prop("mappings", [up_mapping("YES", "no").to_json()]),
                    *colored_cell("none", steps(GREEN, (1, RED)))])],
                links=[runbook("PipemonCheckAboveThreshold"),
                       to_dashboard("Pipeline overview", UID_OVERVIEW, "${source:queryparam}")]),
          16, 8)
    g.add(stat("Migration progress", "Share of audio posts that have their track "
               "(check migration_progress_percent). PipemonMigrationStalled fires when it "
               "stays between 0 and 100 for 10 minutes.", "percent",
               [query("source_check:pipemon_check_value:max"
                      '{source=~"$source", check="migration_progress_percent"}', "{{source}}")],
               thresholds=steps(RED, (100, GREEN)),
               links=[runbook("PipemonMigrationStalled")]), 8, 8)

    check_panel = timeseries(
        "$check", "The check's value (one line per row of its result) and its alert "
        "thresholds (dashed: warning, solid: critical); it alerts when the value is above.",
        "short",
        [query(f"source_check:pipemon_check_value:max{{{SC}}}",
               "{{source}} {{check}}"),
         query('pipemon_alert:check_value:threshold{check=~"$check"}',
               "{{severity}} threshold")],
        links=[runbook("PipemonCheckAboveThreshold")])
    check_panel = dashed_thresholds(
        check_panel.repeat("check").repeat_direction("h").max_per_row(2))
    g.row("Values over time (one panel per check)")
    g.add(check_panel, 12, 8)

    g.row("Check health")
    g.add(timeseries("Check up", "1 when the check's last run succeeded, 0 when it failed "
                     "(its values are then absent).", "none",
                     [query(f"max without (instance, pod) (pipemon_check_up{{{SC}}})",
                            "{{check}}")],
                     thresholds=steps(RED, (1, GREEN)), max_val=1,
                     links=[runbook("PipemonCheckFailing")]), 8, 8)
    g.add(timeseries("Check errors by reason", "Failed check runs per minute by reason "
                     "(timeout, schema, permission, sql_error, no_value, ...).", "suffix: /min",
                     [query("sum by (check, reason) (max without (instance, pod) (rate("
                            f"pipemon_check_errors_total{{{SC}}}[$__rate_interval]))) * 60",
                            "{{check}} {{reason}}")],
                     thresholds=above(0)), 8, 8)
    g.add(timeseries("Check duration", "Time of each check's last run.", "s",
                     [query(f"max without (instance, pod) (pipemon_check_duration_seconds{{{SC}}})",
                            "{{check}}")]), 8, 8)

    return dashboard(
        UID_INTEGRITY, "pipemon / Data integrity",
        "SQL data checks: each value over time against its alert thresholds, and the health "
        "of the checks themselves.", g,
        [label_variable("source", "Source", "pipemon_check_value"),
         label_variable("check", "Check", "pipemon_check_value", selector='source=~"$source"')],
        'source=~"$source", check=~"$check|"', tags=["integrity"])
