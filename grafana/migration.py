"""Migration progress (the migration guide's dashboard 1: progress bar, posts migrated, tracks
created, duration, current phase, errors encountered; refreshed every 30 seconds).

It reads the integrity checks of examples/checks.yaml (kind: checks): migration_progress_percent,
audio_posts_migrated, tracks_created{period}, and the two reference checks whose violations are
the migration's errors. The guide's dashboards 2-4 are pipemon's Data integrity, System health
and Service overview dashboards (docs/dashboards.md).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from grafana.common import (
    BLUE,
    GREEN,
    ORANGE,
    RED,
    UID_INTEGRITY,
    UID_MIGRATION,
    Grid,
    above,
    base_panel,
    dashboard,
    label_variable,
    query,
    runbook,
    stat,
    steps,
    timeseries,
    to_dashboard,
)

S = 'source=~"$source"'
PROGRESS = f'source_check:pipemon_check_value:max{{{S}, check="migration_progress_percent"}}'
# the checks whose values are the migration's errors (references that point nowhere)
ERROR_CHECKS = "audio_posts_without_track|posts_with_missing_track"
# Current phase, from the progress and PipemonMigrationStalled (the stalled state wins).
PHASES = {0: ("Not started", BLUE), 1: ("Migrating", ORANGE), 2: ("Stalled", RED),
          3: ("Complete", GREEN)}
PHASE = (
    'max by (source) (ALERTS{alertstate="firing", alertname="PipemonMigrationStalled", '
    f"{S}}}) * 2"
    f" or max by (source) ({PROGRESS} == 100) * 0 + 3"
    f" or max by (source) ({PROGRESS} > 0) * 0 + 1"
    f" or max by (source) ({PROGRESS}) * 0"
)


def progress_bar():
    panel = base_panel(bargauge.Panel(), "Migration progress",
                       "Share of audio posts that have their track (check "
                       "migration_progress_percent).", "percent",
                       [query(PROGRESS, "{{source}}", instant=True)],
                       [runbook("PipemonMigrationStalled")])
    return (panel.min(0).max(100).thresholds(steps(RED, (50, ORANGE), (100, GREEN)))
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT).show_unfilled(True)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def build() -> dict:
    g = Grid()
    g.row("Progress")
    g.add(progress_bar(), 12, 5)
    g.add(stat("Current phase", "Not started (no audio post has its track yet), Migrating, "
               "Stalled (PipemonMigrationStalled fires: the progress has not moved for 10 "
               "minutes) or Complete (every audio post has its track).", "none",
               [query(PHASE, "{{source}}")], graph=False,
               thresholds=steps(BLUE, *((value, color) for value, (_, color) in PHASES.items()
                                        if value)),
               mappings=[dm.ValueMap(options={
                   str(value): dm.ValueMappingResult(text=text, color=color, index=value)
                   for value, (text, color) in PHASES.items()})],
               links=[runbook("PipemonMigrationStalled")]), 6, 5)
    g.add(stat("Migration duration", "Time the migration has been in progress (above 0% and "
               "below 100%) within the dashboard's time range.", "s",
               [query(f"count_over_time(({PROGRESS} > 0 < 100)[$__range:1m]) * 60",
                      "{{source}}", instant=True)], graph=False), 6, 5)
    g.add(stat("Posts migrated", "Audio posts that have their track (check "
               "audio_posts_migrated).", "short",
               [query(f'source_check:pipemon_check_value:max{{{S}, check="audio_posts_migrated"}}',
                      "{{source}}")]), 6, 5)
    g.add(stat("Tracks created (5 minutes)", "Tracks created in the last 5 minutes (check "
               "tracks_created, period 5m).", "short",
               [query(f'source_check:pipemon_check_value:max{{{S}, check="tracks_created", '
                      'period="5m"}', "{{source}}")]), 6, 5)
    g.add(stat("Tracks created (1 hour)", "Tracks created in the last hour (check "
               "tracks_created, period 1h).", "short",
               [query(f'source_check:pipemon_check_value:max{{{S}, check="tracks_created", '
                      'period="1h"}', "{{source}}")]), 6, 5)
    g.add(stat("Errors encountered", "Posts whose track reference points nowhere: audio posts "
               "without a track id and posts whose track does not exist (checks "
               "audio_posts_without_track and posts_with_missing_track). Should be 0.",
               "short",
               [query("sum by (source) (source_check:pipemon_check_value:max"
                      f'{{{S}, check=~"{ERROR_CHECKS}"}})', "{{source}}")],
               thresholds=above(0, count=True, base=GREEN),
               links=[runbook("PipemonCheckAboveThreshold"),
                      to_dashboard("Data integrity", UID_INTEGRITY, "${source:queryparam}")]),
          6, 5)

    g.row("Over time")
    g.add(timeseries("Progress over time", "Share of audio posts that have their track.", "percent",
                     [query(PROGRESS, "{{source}}")], max_val=100,
                     thresholds=steps(RED, (100, GREEN))), 12, 8)
    g.add(timeseries("Tracks created", "Tracks created in the last 5 minutes and the last "
                     "hour, as the check last counted them.", "short",
                     [query(f'source_check:pipemon_check_value:max{{{S}, check="tracks_created"}}',
                            "{{source}} last {{period}}")]), 12, 8)
    g.add(timeseries("Errors by check", "Each reference check's violations, and failed runs "
                     "of the source's checks per minute (a check that cannot run hides "
                     "errors).", "short",
                     [query("source_check:pipemon_check_value:max"
                            f'{{{S}, check=~"{ERROR_CHECKS}"}}', "{{check}}"),
                      query("sum by (check) (max without (instance, pod) (rate("
                            f"pipemon_check_errors_total{{{S}}}[$__rate_interval]))) * 60",
                            "{{check}} failed runs/min")],
                     thresholds=above(0, count=True),
                     links=[runbook("PipemonCheckAboveThreshold")]), 24, 8)

    return dashboard(
        UID_MIGRATION, "pipemon / Migration progress",
        "The tracks/posts migration: progress, posts migrated, tracks created, duration, phase "
        "and errors, from the integrity checks; refreshed every 30 seconds.", g,
        [label_variable("source", "Source", "pipemon_check_value",
                        selector='check="migration_progress_percent"')],
        'source=~"$source|"', tags=["integrity"], time_from="now-3h", refresh="30s")
