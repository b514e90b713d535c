"""Pipeline overview: is the pipeline healthy, and if not, where.

Top: how the components depend on each other (queue -> workers -> storage, with analysis and
the data checks), each red while one of its alerts fires; the sources and their health; the
firing alerts. Then one row per queue (depth, oldest wait, throughput, failure ratio,
p50/p95/p99, time to drain, SLO budget left) and the trends behind it, and the worker hosts
(their tools and scratch directories, and node_exporter's CPU, memory and disks when present).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    RUNBOOKS,
    UID_INTEGRITY,
    UID_OVERVIEW,
    UID_QUEUE,
    UID_SELF,
    UID_STORAGE,
    Grid,
    above,
    base_panel,
    below,
    colored_cell,
    dashboard,
    label_variable,
    prop,
    query,
    runbook,
    stat,
    steps,
    table,
    threshold,
    timeseries,
    to_dashboard,
    up_mapping,
)

S = 'source=~"$source"'
SQ = 'source=~"$source", queue=~"$queue"'
H = 'instance=~"$instance"'
# node_exporter targets of worker hosts carry role="worker" (docs/alerts.md, "Host roles").
NODE = 'role="worker"'


def firing(names: str) -> str:
    return f'ALERTS{{alertstate="firing", alertname=~"{names}", {S}}}'

# The components of the pipeline and the alerts that make each one red.
COMPONENTS = {
    "Exporter": "PipemonExporterDown|PipemonExporterAbsent|PipemonSourceDown",
    "Queue": "PipemonQueueBacklogHigh|PipemonQueueBacklogPredictedFull|PipemonQueueOldestJobTooOld"
             "|PipemonQueueFailureRatioHigh|PipemonJobSuccessBudgetBurn"
             "|PipemonPipelineAvailabilityBudgetBurn",
    "Workers": "PipemonQueueStalled|PipemonQueueJobsStuck|PipemonQueueRunTimeHigh"
               "|PipemonQueueRunTimeRegression|PipemonHost.+",
    "Storage": "PipemonStorage.+",
    "Analysis": "PipemonAnalysisSuccessLow",
    "Data checks": "PipemonCheckAboveThreshold|PipemonMigrationStalled",
}
# Boxes on the canvas (left, top in px) and the arrows between them (what depends on what).
PLACES = {"Exporter": (20, 20), "Queue": (20, 120), "Workers": (220, 120),
          "Storage": (420, 120), "Analysis": (220, 230), "Data checks": (420, 230)}
ARROWS = [("Queue", "Workers"), ("Workers", "Storage"), ("Workers", "Analysis"),
          ("Exporter", "Queue")]
BOX_W, BOX_H = 150, 70


def component_expr(name: str) -> str:
    expr = f"count({firing(COMPONENTS[name])}) or vector(0)"
    if name == "Workers":
        # worker hosts (kind: host) whose tools or scratch directories are broken
        expr = (f"({expr}) + (count(max without (instance, pod) (pipemon_host_tool_up{{{S}}}) == 0)"
                " or vector(0)) + (count(max without (instance, pod) "
                f"(pipemon_host_scratch_writable{{{S}}}) == 0) or vector(0))")
    return expr


def dependency_canvas():
    """A canvas: one box per component, red while it has firing alerts, arrows for the flow."""
    elements = []
    for name, (left, top) in PLACES.items():
        connections = []
        for src, dst in ARROWS:
            if src != name:
                continue
            dx, dy = PLACES[dst][0] - left, PLACES[dst][1] - top
            horizontal = abs(dx) >= abs(dy)
            connections.append({
                "source": {"x": 1, "y": 0} if horizontal else {"x": 0, "y": -1},
                "target": {"x": -1, "y": 0} if horizontal else {"x": 0, "y": 1},
                "targetName": dst, "path": "straight",
                "color": {"fixed": "text"}, "size": {"fixed": 2, "min": 1, "max": 10},
            })
        elements.append({
            "type": "metric-value", "name": name,
            "config": {"text": {"mode": "field", "field": name, "fixed": ""},
                       "color": {"fixed": "#000000"}, "size": 16,
                       "align": "center", "valign": "middle"},
            "background": {"color": {"field": name, "fixed": "#D9D9D9"}},
            "border": {"color": {"fixed": "dark-green"}, "width": 0},
            "constraint": {"horizontal": "left", "vertical": "top"},
            "placement": {"left": left, "top": top, "width": BOX_W, "height": BOX_H},
            "connections": connections,
        })
        elements.append({
            "type": "text", "name": f"{name} label",
            "config": {"text": {"mode": "fixed", "fixed": name}, "color": {"fixed": "text"},
                       "size": 14, "align": "center", "valign": "middle"},
            "background": {"color": {"fixed": "transparent"}},
            "border": {"color": {"fixed": "dark-green"}},
            "constraint": {"horizontal": "left", "vertical": "top"},
            "placement": {"left": left, "top": top - 24, "width": BOX_W, "height": 22},
        })
    options = {"inlineEditing": False, "showAdvancedTypes": True, "panZoom": False,
               "infinitePan": False,
               "root": {"type": "frame", "name": "Element root", "elements": elements,
                        "background": {"color": {"fixed": "transparent"}},
                        "border": {"color": {"fixed": "dark-green"}},
                        "constraint": {"horizontal": "left", "vertical": "top"}}}
    targets = [query(component_expr(name), name, instant=True) for name in COMPONENTS]
    panel = base_panel(
        db.Panel().type("canvas"), "Pipeline components",
        "How the pipeline's parts depend on each other: the queue feeds the workers, which "
        "write to storage and the analysis results. Each box counts the firing alerts of that "
        "part (workers: also broken worker-host tools and scratch directories): green OK, "
        "red the place to look first.", "suffix: firing", targets,
        [to_dashboard("Alerts and runbooks", UID_SELF, "${source:queryparam}")])
    return (panel.options(options)
            .thresholds(steps(GREEN, (1, RED)))
            .mappings([dm.ValueMap(options={"0": dm.ValueMappingResult(text="OK", index=0)})]))


def build() -> dict:
    backlog = threshold("queue_waiting_jobs")
    oldest = (threshold("queue_oldest_waiting_seconds", severity="warning"),
              threshold("queue_oldest_waiting_seconds", severity="critical"))
    failure = (threshold("queue_failure_ratio", severity="warning"),
               threshold("queue_failure_ratio", severity="critical"))
    run_p95 = threshold("queue_run_p95_seconds")
    # data links name fields by their displayed (renamed) names
    queue_link = ("/d/" + UID_QUEUE + "?${__url_time_range}&${datasource:queryparam}"
                  "&var-source=${__data.fields.Source}&var-queue=${__data.fields.Queue}")

    g = Grid()
    g.row("Health")
    g.add(dependency_canvas(), 10, 9)
    g.add(table("Sources", "Every source pipemon polls: whether its last poll succeeded, how "
                "long ago a poll last succeeded, and poll errors per minute (5m rate).", "none",
                [query(f"source_kind:pipemon_source_up:max{{{S}}}", instant=True, table=True),
                 query("time() - max without (instance, pod) "
                       f"(pipemon_source_last_success_timestamp_seconds{{{S}}})",
                       instant=True, table=True),
                 query("sum without (reason) (max without (instance, pod) "
                       f"(rate(pipemon_source_poll_errors_total{{{S}}}[5m]))) * 60",
                       instant=True, table=True)],
                columns={"source": "Source", "kind": "Kind", "Value #A": "Up",
                         "Value #B": "Last success", "Value #C": "Poll errors/min"},
                overrides=[("Up", [prop("mappings", [up_mapping().to_json()]),
                                   *colored_cell("none", steps(RED, (1, GREEN)))]),
                           ("Last success", [prop("unit", "s")]),
                           ("Poll errors/min", colored_cell("short", above(0)))],
                links=[runbook("PipemonSourceDown"), to_dashboard("pipemon itself", UID_SELF,
                                                                  "${source:queryparam}")]),
          14, 9)
    g.add(stat("Alerts firing", "pipemon alerts firing now (Watchdog excepted); the table "
               "below lists them.", "short",
               [query(f'count(ALERTS{{alertstate="firing", alertname!="Watchdog", {S}}})'
                      " or vector(0)")],
               thresholds=above(0, count=True), graph=False), 4, 5)
    g.add(stat("Storage probes", "Last put/get/delete probe of each bucket.", "none",
               [query(f"source_bucket:pipemon_storage_probe_success:max{{{S}}}",
                      "{{bucket}}")],
               thresholds=steps(RED, (1, GREEN)), mappings=[up_mapping("OK", "FAILING")],
               graph=False, links=[runbook("PipemonStorageProbeFailing"),
                                   to_dashboard("Storage", UID_STORAGE, "${source:queryparam}")]),
          5, 5)
    g.add(stat("Storage probe p95", "p95 latency of the probe operations over 15m (what "
               "PipemonStorageLatencyHigh reads), the slowest operation.", "s",
               [query("max by (bucket) (source_bucket_operation:"
                      "pipemon_storage_probe_duration_seconds:quantile_rate15m"
                      f'{{{S}, quantile="0.95"}})', "{{bucket}}")],
               thresholds=above(None, threshold("storage_probe_p95_seconds")),
               links=[runbook("PipemonStorageLatencyHigh")]), 5, 5)
    g.add(stat("Checks over threshold", "Data checks whose value is above their alert "
               "threshold (pipemon_alert:check_value:threshold).", "short",
               [query(f"count(source_check:pipemon_check_value:max{{{S}}} > on (check) "
                      "group_left () min by (check) (pipemon_alert:check_value:threshold))"
                      " or vector(0)")],
               thresholds=above(0, count=True), graph=False,
               links=[runbook("PipemonCheckAboveThreshold"),
                      to_dashboard("Data integrity", UID_INTEGRITY, "${source:queryparam}")]),
          5, 5)
    g.add(stat("Analysis success (1h)", "Share of audio analyses that succeeded over the last "
               "hour. PipemonAnalysisSuccessLow fires below "
               f"{threshold('analysis_success_ratio'):.0%}.", "percentunit",
               [query(f"source:pipemon_analysis_success:ratio_rate1h{{{S}}}", "{{source}}")],
               thresholds=below(threshold("analysis_success_ratio")),
               links=[runbook("PipemonAnalysisSuccessLow")]), 5, 5)

    g.add(table("Queues", "One row per queue: backlog, throughput, failures, run-time "
                "percentiles (5m), time to drain and the job-success error budget left over the "
                "dashboard's time range. Click a queue for its detail.", "none",
                [query(f"source_queue:pipemon_queue_jobs_waiting:max{{{SQ}}}",
                       instant=True, table=True),
                 query(f"source_queue:pipemon_queue_oldest_waiting_seconds:max{{{SQ}}}",
                       instant=True, table=True),
                 query(f"source_queue:pipemon_queue_jobs_finished:rate5m{{{SQ}}} * 60",
                       instant=True, table=True),
                 query(f"source_queue:pipemon_queue_jobs_failed:ratio_rate5m{{{SQ}}}",
                       instant=True, table=True),
                 *[query("max without (quantile) ("
                         "source_queue:pipemon_queue_job_run_seconds:quantile_rate5m"
                         f'{{{SQ}, quantile="{q}"}})', instant=True, table=True)
                   for q in ("0.5", "0.95", "0.99")],
                 query(f"source_queue:pipemon_queue_drain_time_seconds:rate5m{{{SQ}}}",
                       instant=True, table=True),
                 query(_job_budget_left(), instant=True, table=True)],
                columns={"source": "Source", "queue": "Queue", "Value #A": "Waiting",
                         "Value #B": "Oldest wait", "Value #C": "Jobs/min",
                         "Value #D": "Failure ratio", "Value #E": "p50 run",
                         "Value #F": "p95 run", "Value #G": "p99 run",
                         "Value #H": "Time to drain", "Value #I": "Error budget left"},
                overrides=[
                    ("Queue", [prop("links", [{"title": "Queue detail", "url": queue_link}])]),
                    ("Waiting", colored_cell("short", above(None, backlog, count=True))),
                    ("Oldest wait", colored_cell("s", above(*oldest))),
                    ("Jobs/min", [prop("unit", "short")]),
                    ("Failure ratio", colored_cell("percentunit", above(*failure))),
                    ("p50 run", [prop("unit", "s")]),
                    ("p95 run", colored_cell("s", above(None, run_p95))),
                    ("p99 run", [prop("unit", "s")]),
                    ("Time to drain", [prop("unit", "s")]),
                    ("Error budget left", colored_cell("percentunit",
                                                       steps(RED, (0, ORANGE), (0.25, GREEN)))),
                ],
                links=[to_dashboard("Queue detail", UID_QUEUE,
                                    "${source:queryparam}&${queue:queryparam}"),
                       runbook("PipemonJobSuccessBudgetBurn")]), 24, 8)

    g.row("Throughput and latency")
    g.add(timeseries("Throughput", "Jobs finished per minute per queue (all outcomes, 5m "
                     "rate).", "suffix: jobs/min",
                     [query(f"source_queue:pipemon_queue_jobs_finished:rate5m{{{SQ}}} * 60",
                            "{{source}}/{{queue}}")]), 8, 8)
    g.add(timeseries("Failure ratio per queue (5m)", "failed / (succeeded + failed) per "
                     "queue; dashed lines: warning and critical thresholds.", "percentunit",
                     [query(f"source_queue:pipemon_queue_jobs_failed:ratio_rate5m{{{SQ}}}",
                            "{{source}}/{{queue}}")],
                     thresholds=above(*failure),
                     links=[runbook("PipemonQueueFailureRatioHigh")]), 8, 8)
    g.add(timeseries("Run time p50 / p95 / p99", "Run-time percentiles per queue over 5m; "
                     "dashed line: the p95 alert threshold.", "s",
                     [query(f"source_queue:pipemon_queue_job_run_seconds:quantile_rate5m{{{SQ}}}",
                            "{{queue}} p{{quantile}}")],
                     thresholds=above(None, run_p95),
                     links=[runbook("PipemonQueueRunTimeHigh")]), 8, 8)
    g.add(timeseries("Waiting jobs", "Jobs waiting per queue; dashed line: the backlog limit.",
                     "short",
                     [query(f"source_queue:pipemon_queue_jobs_waiting:max{{{SQ}}}",
                            "{{source}}/{{queue}}")],
                     thresholds=above(None, backlog, count=True),
                     links=[runbook("PipemonQueueBacklogHigh")]), 8, 8)
    g.add(timeseries("Oldest waiting job", "Age of the oldest waiting job per queue.", "s",
                     [query(f"source_queue:pipemon_queue_oldest_waiting_seconds:max{{{SQ}}}",
                            "{{source}}/{{queue}}")],
                     thresholds=above(*oldest),
                     links=[runbook("PipemonQueueOldestJobTooOld")]), 8, 8)
    g.add(stat("SLO error budget left", "Share of the error budget left over the dashboard's "
               "time range: job success per queue (objective "
               f"{threshold('pipemon_slo:objective:ratio', slo='job_success'):.1%}), pipeline "
               "availability per source ("
               f"{threshold('pipemon_slo:objective:ratio', slo='pipeline_availability'):.1%}), "
               "storage availability per bucket ("
               f"{threshold('pipemon_slo:objective:ratio', slo='storage_availability'):.1%}). "
               "Below zero: the objective is missed over this range.", "percentunit",
               [query(_job_budget_left(), "jobs {{queue}}", instant=True),
                query("1 - (1 - avg_over_time(source:pipemon_pipeline_available:bool"
                      f"{{{S}}}[$__range])) / on () group_left () "
                      'pipemon_slo:error_budget:ratio{slo="pipeline_availability"}',
                      "pipeline {{source}}", instant=True),
                query("1 - (1 - avg_over_time(source_bucket:pipemon_storage_probe_success:max"
                      f"{{{S}}}[$__range])) / on () group_left () "
                      'pipemon_slo:error_budget:ratio{slo="storage_availability"}',
                      "storage {{bucket}}", instant=True)],
               thresholds=steps(RED, (0, ORANGE), (0.25, GREEN)), graph=False,
               links=[runbook("PipemonJobSuccessBudgetBurn"),
                      runbook("PipemonPipelineAvailabilityBudgetBurn"),
                      runbook("PipemonStorageAvailabilityBudgetBurn")]), 8, 8)

    _workers(g)

    g.row("Alerts")
    g.add(table("Firing alerts", "pipemon alerts firing now. Click an alert name for its "
                "runbook.", "none",
                [query(f'ALERTS{{alertstate="firing", alertname!="Watchdog", {S}}}',
                       instant=True, table=True)],
                columns={"alertname": "Alert", "severity": "Severity", "source": "Source",
                         "queue": "Queue", "bucket": "Bucket", "check": "Check"},
                hide=("Time", "job", "__name__", "alertstate", "Value", "instance",
                      "quantile", "slo", "kind", "operation", "escalation",
                      "original_alertname"),
                overrides=[("Alert", [prop("links", [{
                    "title": "Runbook", "targetBlank": True,
                    "url": RUNBOOKS + "${__data.fields.Alert}.md"}])])]), 24, 7)

    return dashboard(
        UID_OVERVIEW, "pipemon / Pipeline overview",
        "Is the pipeline healthy, and if not, where: components, sources, queues, storage, "
        "data checks and the alerts firing.", g,
        [label_variable("source", "Source", "pipemon_source_up"),
         label_variable("queue", "Queue", "pipemon_queue_jobs", selector='source=~"$source"'),
         label_variable("instance", "Worker host", "pipemon_host_tools",
                        description="Worker hosts, by the instance of their pipemon")],
        f"{S}", tags=["overview"])


def _job_budget_left() -> str:
    return ("1 - (avg_over_time(source_queue:pipemon_queue_jobs_failed:rate5m"
            f"{{{SQ}}}[$__range]) / avg_over_time(source_queue:pipemon_queue_jobs_completed:rate5m"
            f"{{{SQ}}}[$__range])) / on () group_left () "
            'pipemon_slo:error_budget:ratio{slo="job_success"}')



def _workers(g: Grid) -> None:
    """Per worker host: its tools and scratch directories (pipemon's host source), then the
    machine itself from node_exporter, with the video guide's thresholds."""
    used = (threshold("host_scratch_used_ratio", severity="warning"),
            threshold("host_scratch_used_ratio", severity="critical"))
    g.row("Workers")
    g.add(table("Worker hosts", "Per host: transcoders up of those configured (none up pages), "
                "other tools down, and the tools' versions.", "none",
                [query(f'pipemon_host_tools_up{{role="transcoder", {H}}}', instant=True,
                       table=True),
                 query(f'pipemon_host_tools{{role="transcoder", {H}}}', instant=True,
                       table=True),
                 query(f"sum without (tool) (1 - pipemon_host_tool_up{{{H}}})", instant=True,
                       table=True)],
                columns={"instance": "Host", "source": "Source", "Value #A": "Transcoders up",
                         "Value #B": "Transcoders", "Value #C": "Tools down"},
                hide=("Time", "job", "__name__", "role"),
                overrides=[("Transcoders up", colored_cell("none", steps(RED, (1, GREEN)))),
                           ("Tools down", colored_cell("none", steps(GREEN, (1, ORANGE))))],
                links=[runbook("PipemonHostTranscoderDown"), runbook("PipemonHostToolDown")]),
          12, 7)
    g.add(table("Scratch directories", "Per host and directory: writable (a file created and "
                "deleted), the filesystem's used share, and files older than the source's "
                "old_after.", "none",
                [query(f"pipemon_host_scratch_writable{{{H}}}", instant=True, table=True),
                 query(f"1 - pipemon_host_scratch_free_bytes{{{H}}} / "
                       f"pipemon_host_scratch_filesystem_size_bytes{{{H}}}", instant=True,
                       table=True),
                 query(f"pipemon_host_scratch_old_files{{{H}}}", instant=True, table=True)],
                columns={"instance": "Host", "path": "Directory", "Value #A": "Writable",
                         "Value #B": "Filesystem used", "Value #C": "Old files"},
                hide=("Time", "job", "__name__", "source"),
                overrides=[("Writable", [prop("mappings", [up_mapping("YES", "NO").to_json()]),
                                         *colored_cell("none", steps(RED, (1, GREEN)))]),
                           ("Filesystem used", colored_cell("percentunit", above(*used))),
                           ("Old files", colored_cell("none", steps(GREEN, (1, ORANGE))))],
                links=[runbook("PipemonHostScratchNotWritable"),
                       runbook("PipemonHostScratchSpaceLow"),
                       runbook("PipemonHostScratchOldFiles")]), 12, 7)
    g.add(timeseries("Scratch filesystem used", "Used share of each scratch directory's "
                     "filesystem; dashed lines: warning and critical.", "percentunit",
                     [query(f"1 - pipemon_host_scratch_free_bytes{{{H}}} / "
                            f"pipemon_host_scratch_filesystem_size_bytes{{{H}}}",
                            "{{instance}} {{path}}")],
                     thresholds=above(*used),
                     links=[runbook("PipemonHostScratchSpaceLow")]), 8, 8)
    g.add(timeseries("CPU used (node_exporter)", "Busy share of all CPUs of each worker host "
                     "(5m); dashed lines: the guide's 80% warning and 95% critical.",
                     "percentunit",
                     [query("1 - avg without (cpu, mode) (rate(node_cpu_seconds_total"
                            f'{{mode="idle", {NODE}}}[5m]))', "{{instance}}")],
                     thresholds=above(0.80, 0.95),
                     links=[runbook("PipemonHostCpuHigh")]), 8, 8)
    g.add(timeseries("Memory used (node_exporter)", "Memory not available to new processes, "
                     "per worker host; dashed lines: 80% and 95%.", "percentunit",
                     [query(f"1 - node_memory_MemAvailable_bytes{{{NODE}}} / "
                            f"node_memory_MemTotal_bytes{{{NODE}}}", "{{instance}}")],
                     thresholds=above(0.80, 0.95),
                     links=[runbook("PipemonHostMemoryHigh")]), 8, 8)
