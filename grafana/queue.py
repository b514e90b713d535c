"""Queue detail: one queue (or several) of one source, from backlog to week-over-week trends.

Opened from the queue alerts (var-source, var-queue) and from the overview's queue table.
"""

from __future__ import annotations

from grafana.common import (
    RED,
    UID_OVERVIEW,
    UID_QUEUE,
    Grid,
    above,
    dashboard,
    heatmap,
    label_variable,
    query,
    runbook,
    stat,
    steps,
    table,
    threshold,
    timeseries,
    to_dashboard,
)

SQ = 'source=~"$source", queue=~"$queue"'


def build() -> dict:
    backlog = threshold("queue_waiting_jobs")
    oldest = (threshold("queue_oldest_waiting_seconds", severity="warning"),
              threshold("queue_oldest_waiting_seconds", severity="critical"))
    failure = (threshold("queue_failure_ratio", severity="warning"),
               threshold("queue_failure_ratio", severity="critical"))
    run_p95 = threshold("queue_run_p95_seconds")
    regression = threshold("queue_run_p95_regression_ratio")
    overview = to_dashboard("Pipeline overview", UID_OVERVIEW, "${source:queryparam}")

    g = Grid()
    g.row("Now")
    g.add(stat("Waiting jobs", "Jobs ready to run and not started, summed over the selected "
               f"queues. PipemonQueueBacklogHigh fires above {backlog:g} for 5m (per queue).",
               "short", [query(f"sum(source_queue:pipemon_queue_jobs_waiting:max{{{SQ}}})")],
               thresholds=above(backlog, count=True),
               links=[runbook("PipemonQueueBacklogHigh"), overview]), 3, 4)
    g.add(stat("Running jobs", "Jobs marked running now. Hung workers keep their jobs marked "
               "running: PipemonQueueStalled watches completions, not this.", "short",
               [query(f'sum(source_queue_state:pipemon_queue_jobs:max{{{SQ}, state="running"}})')],
               links=[runbook("PipemonQueueStalled")]), 3, 4)
    g.add(stat("Oldest waiting job", "Age of the oldest job ready to run (database clock). "
               f"PipemonQueueOldestJobTooOld: warning above {oldest[0]:g}s, critical above "
               f"{oldest[1]:g}s.", "s",
               [query(f"max(source_queue:pipemon_queue_oldest_waiting_seconds:max{{{SQ}}})")],
               thresholds=above(*oldest), links=[runbook("PipemonQueueOldestJobTooOld")]), 3, 4)
    g.add(stat("Stuck jobs", "Jobs running longer than the source's stuck_after. "
               "PipemonQueueJobsStuck fires above "
               f"{threshold('queue_stuck_jobs'):g}.", "short",
               [query(f"sum(source_queue:pipemon_queue_stuck_jobs:max{{{SQ}}})")],
               thresholds=above(threshold("queue_stuck_jobs"), count=True),
               links=[runbook("PipemonQueueJobsStuck")]), 3, 4)
    g.add(stat("Throughput", "Jobs finished per minute (all outcomes), 5m rate.",
               "suffix: jobs/min",
               [query(f"sum(source_queue:pipemon_queue_jobs_finished:rate5m{{{SQ}}}) * 60")]),
          3, 4)
    g.add(stat("Failure ratio (5m)", "failed / (succeeded + failed) over 5m. "
               f"PipemonQueueFailureRatioHigh: critical above {failure[1]:.0%} over 3m, warning "
               f"above {failure[0]:.0%} over 15m, each with at least "
               f"{threshold('queue_failure_ratio_min_failed'):g} failed jobs in its window.",
               "percentunit",
               [query(f"sum(source_queue:pipemon_queue_jobs_failed:rate5m{{{SQ}}})"
                      f" / sum(source_queue:pipemon_queue_jobs_completed:rate5m{{{SQ}}})")],
               thresholds=above(*failure), links=[runbook("PipemonQueueFailureRatioHigh")]),
          3, 4)
    g.add(stat("p95 run time (10m)", "95th percentile of the run time over 10m, the worst of "
               f"the selected queues. PipemonQueueRunTimeHigh fires above {run_p95:g}s when "
               f"that is also {regression:g} times the queue's usual p95.", "s",
               [query("max(source_queue:pipemon_queue_job_run_seconds:quantile_rate10m"
                      f'{{{SQ}, quantile="0.95"}})')],
               thresholds=above(run_p95), links=[runbook("PipemonQueueRunTimeHigh")]), 3, 4)
    g.add(stat("Time to drain", "Waiting jobs / finish rate: how long the backlog takes at the "
               "current pace, if nothing new arrives. Infinite when nothing finishes.", "s",
               [query(f"sum(source_queue:pipemon_queue_jobs_waiting:max{{{SQ}}})"
                      f" / sum(source_queue:pipemon_queue_jobs_finished:rate5m{{{SQ}}})")],
               thresholds=steps("green", (3600, "orange"), (4 * 3600, RED)),
               links=[runbook("PipemonQueueBacklogPredictedFull")]), 3, 4)

    g.row("Jobs")
    g.add(timeseries("Jobs by state", "Active jobs by state (scheduled, waiting, running, "
                     "retrying), stacked.", "short",
                     [query(f"sum by (state) (source_queue_state:pipemon_queue_jobs:max{{{SQ}}})",
                            "{{state}}")], stack=True), 12, 8)
    g.add(timeseries("Finish rate by outcome", "Jobs finished per minute by outcome, 5m rate.",
                     "suffix: jobs/min",
                     [query("sum by (outcome) (source_queue_outcome:pipemon_queue_jobs_finished"
                            f":rate5m{{{SQ}}}) * 60", "{{outcome}}")], stack=True), 12, 8)
    g.add(timeseries("Failure ratio per queue (5m)", "failed / (succeeded + failed) per "
                     "queue over 5m; dashed lines: the alert thresholds.", "percentunit",
                     [query(f"source_queue:pipemon_queue_jobs_failed:ratio_rate5m{{{SQ}}}",
                            "{{source}}/{{queue}}")],
                     thresholds=above(*failure),
                     links=[runbook("PipemonQueueFailureRatioHigh"),
                            runbook("PipemonJobSuccessBudgetBurn")]), 8, 8)
    g.add(timeseries("Oldest waiting job per queue", "Age of the oldest waiting job per "
                     "queue; dashed lines: warning and critical thresholds.", "s",
                     [query(f"source_queue:pipemon_queue_oldest_waiting_seconds:max{{{SQ}}}",
                            "{{source}}/{{queue}}")],
                     thresholds=above(*oldest),
                     links=[runbook("PipemonQueueOldestJobTooOld"),
                            runbook("PipemonQueueStalled")]), 8, 8)
    g.add(timeseries("Stuck jobs per queue", "Jobs running longer than the source's "
                     "stuck_after, per queue.", "short",
                     [query(f"source_queue:pipemon_queue_stuck_jobs:max{{{SQ}}}",
                            "{{source}}/{{queue}}")],
                     thresholds=above(threshold("queue_stuck_jobs"), count=True),
                     links=[runbook("PipemonQueueJobsStuck")]), 8, 8)
    g.add(timeseries("Time per stage (p50 / p95)", "Where a job's time goes, stage by stage "
                     "(the source's `stage`): run-time percentiles per stage over 5m.", "s",
                     [query("histogram_quantile(0.5, sum by (stage, le) (max without (instance, "
                            "pod) (rate(pipemon_queue_stage_job_run_seconds_bucket"
                            f"{{{SQ}}}[5m]))))", "{{stage}} p50"),
                      query("histogram_quantile(0.95, sum by (stage, le) (max without (instance,"
                            " pod) (rate(pipemon_queue_stage_job_run_seconds_bucket"
                            f"{{{SQ}}}[5m]))))", "{{stage}} p95")]), 24, 8)
    g.add(table("Top failure reasons", "Failed jobs over the dashboard's time range by the "
                "reason the source's failure_reason gives (normalised; past max_reasons: "
                "other), the ten most frequent.", "none",
                [query("topk(10, sum by (source, queue, reason) (max without (instance, pod) "
                       f"(increase(pipemon_queue_job_failures_total{{{SQ}}}[$__range]))))",
                       instant=True, table=True)],
                columns={"source": "Source", "queue": "Queue", "reason": "Reason",
                         "Value": "Failed jobs"},
                sort_by="Failed jobs",
                links=[runbook("PipemonQueueFailureRatioHigh")]), 24, 7)
    g.add(timeseries("Time without a completion", "Seconds since a job of the queue last "
                     "completed (succeeded or failed), and the stall threshold: the queue's "
                     "normal gap between completions times "
                     f"{threshold('queue_stall_gaps'):g}, at least "
                     f"{threshold('queue_stall_min_seconds'):g}s. PipemonQueueStalled fires when "
                     "the first passes the second while jobs wait.", "s",
                     [query(f"source_queue:pipemon_queue_without_completion:seconds{{{SQ}}}",
                            "{{queue}} without a completion"),
                      query(f"source_queue:pipemon_queue_stall_after_seconds:gaps{{{SQ}}}",
                            "{{queue}} stall threshold")],
                     links=[runbook("PipemonQueueStalled")]), 24, 7)

    g.row("Wait and run times")
    g.add(heatmap("Wait time distribution", "How long jobs waited between ready and started "
                  "(histogram buckets, 5m rates).",
                  "sum by (le) (source_queue_le:pipemon_queue_job_wait_seconds_bucket:rate5m"
                  f"{{{SQ}}})"), 12, 9)
    g.add(heatmap("Run time distribution", "How long jobs ran, all outcomes (histogram "
                  "buckets, 5m rates).",
                  "sum by (le) (source_queue_le:pipemon_queue_job_run_seconds_bucket:rate5m"
                  f"{{{SQ}}})"), 12, 9)
    g.add(timeseries("Run time p50 / p95 / p99", "Run-time percentiles per queue over 5m; "
                     f"dashed line: PipemonQueueRunTimeHigh's p95 threshold ({run_p95:g}s).",
                     "s",
                     [query(f"source_queue:pipemon_queue_job_run_seconds:quantile_rate5m{{{SQ}}}",
                            "{{queue}} p{{quantile}}")],
                     thresholds=above(None, run_p95),
                     links=[runbook("PipemonQueueRunTimeHigh")]), 12, 8)
    g.add(timeseries("Wait time p50 / p95 / p99", "Wait-time percentiles per queue over 5m.",
                     "s",
                     [query("source_queue:pipemon_queue_job_wait_seconds:quantile_rate5m"
                            f"{{{SQ}}}", "{{queue}} p{{quantile}}")]), 12, 8)
    g.add(timeseries("Run time, exact, over the window", "percentile_cont of the run times "
                     "of the jobs finished in the source's exact_quantiles window (1h by "
                     "default), per queue: exact where the histograms interpolate. Empty for a "
                     "source without exact_quantiles (docs/exporter.md).", "s",
                     [query(f"pipemon_queue_job_run_window_seconds{{{SQ}}}",
                            "{{queue}} p{{quantile}}")]), 12, 8)
    g.add(timeseries("Wait time, exact, over the window", "percentile_cont of the wait times "
                     "of the jobs started in the exact_quantiles window, per queue.", "s",
                     [query(f"pipemon_queue_job_wait_window_seconds{{{SQ}}}",
                            "{{queue}} p{{quantile}}")]), 12, 8)

    g.row("Capacity and week over week")
    g.add(timeseries("Time to drain per queue", "Waiting jobs / finish rate per queue: the "
                     "time to empty the backlog at the current pace.", "s",
                     [query(f"source_queue:pipemon_queue_drain_time_seconds:rate5m{{{SQ}}}",
                            "{{source}}/{{queue}}")]), 8, 8)
    g.add(timeseries("Capacity forecast", "Waiting jobs now and in one hour at the trend of the "
                     "last 30m (what PipemonQueueBacklogPredictedFull reads); dashed line: "
                     "the backlog limit.", "short",
                     [query(f"source_queue:pipemon_queue_jobs_waiting:max{{{SQ}}}",
                            "{{queue}} waiting"),
                      query("predict_linear(source_queue:pipemon_queue_jobs_waiting:max"
                            f"{{{SQ}}}[30m], 3600)", "{{queue}} in 1h (forecast)")],
                     thresholds=above(None, backlog, count=True),
                     links=[runbook("PipemonQueueBacklogPredictedFull"),
                            runbook("PipemonQueueBacklogHigh")]), 8, 8)
    g.add(timeseries("Throughput, this week vs last week", "Jobs finished per hour (1h "
                     "average), now and at the same time a week earlier.", "suffix: jobs/h",
                     [query(f"source_queue:pipemon_queue_jobs_finished:increase1h{{{SQ}}}",
                            "{{queue}} now"),
                      query(f"source_queue:pipemon_queue_jobs_finished:increase1h{{{SQ}}}"
                            " offset 1w", "{{queue}} last week")]), 8, 8)
    g.add(timeseries("p95 run time, this week vs last week", "p95 run time over 30m, now and a "
                     "week earlier (what PipemonQueueRunTimeRegression compares).", "s",
                     [query("source_queue:pipemon_queue_job_run_seconds:quantile_rate30m"
                            f'{{{SQ}, quantile="0.95"}}', "{{queue}} now"),
                      query("source_queue:pipemon_queue_job_run_seconds:quantile_rate30m"
                            f'{{{SQ}, quantile="0.95"}} offset 1w', "{{queue}} last week")],
                     links=[runbook("PipemonQueueRunTimeRegression")]), 12, 8)
    g.add(timeseries("p95 run time regression", "p95 now / p95 a week earlier. "
                     f"PipemonQueueRunTimeRegression fires above {regression:g} (for 30m, with "
                     "enough jobs in both periods).", "percentunit",
                     [query("max without (quantile) ("
                            "source_queue:pipemon_queue_job_run_seconds:quantile_rate30m"
                            f'{{{SQ}, quantile="0.95"}} / '
                            "source_queue:pipemon_queue_job_run_seconds:quantile_rate30m"
                            f'{{{SQ}, quantile="0.95"}} offset 1w)', "{{queue}}")],
                     thresholds=above(None, regression),
                     links=[runbook("PipemonQueueRunTimeRegression")]), 12, 8)

    return dashboard(
        UID_QUEUE, "pipemon / Queue detail",
        "One queue in detail: backlog, states, outcomes, wait and run times, capacity and "
        "week-over-week regressions.", g,
        [label_variable("source", "Source", "pipemon_queue_jobs"),
         label_variable("queue", "Queue", "pipemon_queue_jobs", selector='source=~"$source"')],
        'source=~"$source", queue=~"$queue|"', tags=["queue"])
