"""Audio quality (the AI Mixer stack's "LUFS levels, peak monitoring"): the peak level and
integrated loudness of the analysed tracks (kind: analysis with `peak_dbfs` and `loudness_lufs`),
the share of tracks clipping, against the thresholds of PipemonAudioPeakHigh and
PipemonAudioLoudnessOffTarget (rules/pipemon-recording.yaml, group pipemon-thresholds).

Opened from those alerts (var-source).
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    ORANGE,
    RED,
    UID_AUDIO,
    UID_OVERVIEW,
    Grid,
    above,
    dashboard,
    dashed_thresholds,
    heatmap,
    label_variable,
    query,
    runbook,
    stat,
    steps,
    threshold,
    timeseries,
    to_dashboard,
)

S = 'source=~"$source"'
CLIPPED = threshold("audio_clipped_ratio")
TARGET = threshold("audio_loudness_target_lufs")
TOLERANCE = threshold("audio_loudness_tolerance_lu")
TARGET_SERIES = "pipemon_alert:audio_loudness_target_lufs:threshold"
TOLERANCE_SERIES = "pipemon_alert:audio_loudness_tolerance_lu:threshold"


def loudness_colours():
    """Red outside target +- tolerance (what the loudness alert compares), green inside."""
    return steps(RED, (TARGET - TOLERANCE, GREEN), (TARGET + TOLERANCE, RED))


def build() -> dict:
    g = Grid()
    g.row("Now")
    g.add(stat("Tracks clipping (5m)", "Share of the last 5 minutes' successful results whose "
               "peak is above the source's clipping level (`clipping_dbfs`, default -3 dBFS). "
               f"PipemonAudioPeakHigh fires above {CLIPPED:.0%} for 2 minutes (with enough "
               "tracks).", "percentunit",
               [query(f"source:pipemon_analysis_clipped:ratio_rate5m{{{S}}}", "{{source}}")],
               thresholds=above(CLIPPED), links=[runbook("PipemonAudioPeakHigh")]), 6, 4)
    g.add(stat("Median loudness (1h)", "Median integrated loudness of the last hour's tracks; "
               f"green within {TOLERANCE:g} LU of the {TARGET:g} LUFS target "
               "(PipemonAudioLoudnessOffTarget).", "suffix: LUFS",
               [query(f'source:pipemon_analysis_loudness_lufs:quantile_rate1h{{{S}, '
                      'quantile="0.5"}', "{{source}}")],
               thresholds=loudness_colours(), decimals=1,
               links=[runbook("PipemonAudioLoudnessOffTarget")]), 6, 4)
    g.add(stat("Peak p95 (5m)", "95th percentile of the peak level of the last 5 minutes' "
               "tracks.", "suffix: dBFS",
               [query(f'source:pipemon_analysis_peak_dbfs:quantile_rate5m{{{S}, '
                      'quantile="0.95"}', "{{source}}")],
               thresholds=steps(GREEN, (-3, ORANGE), (-0.1, RED)), decimals=1), 6, 4)
    g.add(stat("Tracks measured (1h)", "Tracks with a loudness measurement in the last hour "
               "(the loudness alert needs enough of them).", "short",
               [query(f"source:pipemon_analysis_loudness_measured:increase1h{{{S}}}",
                      "{{source}}")],
               links=[to_dashboard("Pipeline overview", UID_OVERVIEW,
                                   "${source:queryparam}")]), 6, 4)

    g.row("Peaks")
    g.add(dashed_thresholds(timeseries(
        "Tracks clipping", "Share of results peaking above the clipping level over 5 minutes "
        "and 1 hour, and the alert's threshold.", "percentunit",
        [query(f"source:pipemon_analysis_clipped:ratio_rate5m{{{S}}}", "{{source}} 5m"),
         query(f"source:pipemon_analysis_clipped:ratio_rate1h{{{S}}}", "{{source}} 1h"),
         query("pipemon_alert:audio_clipped_ratio:threshold", "threshold")],
        max_val=1, links=[runbook("PipemonAudioPeakHigh")])), 12, 8)
    g.add(timeseries("Peak level p50 / p95", "Median and 95th percentile of the tracks' peak "
                     "level over 5 minutes (from the histogram: as precise as its buckets, "
                     "which are dense near 0 dBFS).", "suffix: dBFS",
                     [query(f"source:pipemon_analysis_peak_dbfs:quantile_rate5m{{{S}}}",
                            "{{source}} p{{quantile}}")],
                     min_val=None, thresholds=steps(GREEN, (-3, ORANGE), (-0.1, RED))), 12, 8)
    g.add(heatmap("Peak level distribution", "Tracks per second by peak level bucket.",
                  "sum by (le) (max without (instance, pod) (rate(pipemon_analysis_peak_dbfs_bucket"
                  f"{{{S}}}[$__rate_interval])))", unit="suffix: dBFS"), 24, 8)

    g.row("Loudness")
    g.add(dashed_thresholds(timeseries(
        "Integrated loudness p10 / p50 / p90 (1h)", "Spread of the last hour's tracks' "
        "integrated loudness, and the target's band (target +- tolerance) the median must stay "
        "in.", "suffix: LUFS",
        [query(f"source:pipemon_analysis_loudness_lufs:quantile_rate1h{{{S}}}",
               "{{source}} p{{quantile}}"),
         query(f"{TARGET_SERIES} - on () {TOLERANCE_SERIES}", "lower threshold"),
         query(f"{TARGET_SERIES} + on () {TOLERANCE_SERIES}", "upper threshold")],
        min_val=None, links=[runbook("PipemonAudioLoudnessOffTarget")])), 12, 8)
    g.add(heatmap("Loudness distribution", "Tracks per second by integrated loudness bucket.",
                  "sum by (le) (max without (instance, pod) (rate("
                  f"pipemon_analysis_loudness_lufs_bucket{{{S}}}[$__rate_interval])))",
                  unit="suffix: LUFS"), 12, 8)

    return dashboard(
        UID_AUDIO, "pipemon / Audio quality",
        "Peak level, integrated loudness and clipping of the analysed tracks, against the "
        "audio quality alerts' thresholds.", g,
        [label_variable("source", "Source", "pipemon_analysis_peak_dbfs_count")],
        'source=~"$source|"', tags=["analysis"])
