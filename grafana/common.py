"""Shared pieces of the pipemon dashboards: the datasource variable, panel helpers, links.

Every panel built here queries the datasource of the `datasource` variable (never a uid), has a
unit, and carries its queries. Thresholds are read from the rule bundle
(`rules/pipemon-recording.yaml`, group pipemon-thresholds), so a panel's colours change where the
alerts do. Panel sizes are in grid units (24 columns); `Grid` places panels left to right, row by
row, and never lets two overlap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "pipemon-recording.yaml"
SERVICE_RULES = ROOT / "rules" / "service-alerts.yaml"
INFRA_RULES = ROOT / "rules" / "infra-alerts.yaml"
RUNBOOKS = "https://github.com/pipemon/pipemon/blob/main/docs/runbooks/"
TAG = "pipemon"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Dashboard uids: the alerts' dashboard_url annotations point at these (keep them stable).
UID_OVERVIEW = "pipemon-overview"
UID_QUEUE = "pipemon-queue"
UID_STORAGE = "pipemon-storage"
UID_INTEGRITY = "pipemon-integrity"
UID_SELF = "pipemon-self"
UID_INCIDENTS = "pipemon-incidents"
# The application and its platform (rules/service-alerts.yaml, infra-alerts.yaml,
# kubernetes-alerts.yaml, the analysis source's audio quality).
UID_SERVICE = "pipemon-service"
UID_REGIONS = "pipemon-regions"
UID_AUDIO = "pipemon-audio"
UID_SYSTEM = "pipemon-system-health"
UID_ERRORS = "pipemon-errors"
UID_MIGRATION = "pipemon-migration"

GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"


# --- thresholds, read from the rule bundle ------------------------------------------------------

def _constants(path: Path, group_name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(record, labels) -> value of every constant series (`vector(N)`) of a rule group."""
    groups = yaml.safe_load(path.read_text())["groups"]
    [group] = [g for g in groups if g["name"] == group_name]
    found = {}
    for rule in group["rules"]:
        expr = rule["expr"].strip()
        if not (expr.startswith("vector(") and expr.endswith(")")):
            continue
        labels = tuple(sorted((rule.get("labels") or {}).items()))
        found[(rule["record"], labels)] = float(expr[len("vector("):-1])
    return found


THRESHOLDS = _constants(RULES, "pipemon-thresholds")
SERVICE_THRESHOLDS = _constants(SERVICE_RULES, "pipemon-service-thresholds")
ENDPOINT_THRESHOLDS = _constants(INFRA_RULES, "pipemon-infra-endpoint")


def threshold(name: str, **labels: str) -> float:
    """The value of a constant series of the rule bundle, e.g. threshold("queue_stuck_jobs")."""
    record = name if ":" in name else f"pipemon_alert:{name}:threshold"
    return THRESHOLDS[(record, tuple(sorted(labels.items())))]


def service_threshold(name: str, **labels: str) -> float:
    """A default (no `service` label) of rules/service-alerts.yaml, e.g.
    service_threshold("error_ratio", severity="critical")."""
    record = name if ":" in name else f"service_alert:{name}:threshold"
    return SERVICE_THRESHOLDS[(record, tuple(sorted(labels.items())))]


def endpoint_threshold(name: str, **labels: str) -> float:
    """A threshold of the endpoint rules (rules/infra-alerts.yaml), e.g.
    endpoint_threshold("uptime_ratio", severity="warning")."""
    return ENDPOINT_THRESHOLDS[(f"endpoint_alert:{name}:threshold",
                                tuple(sorted(labels.items())))]


def steps(base: str = GREEN, *levels: tuple[float, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=None, color=base)]
        + [dm.Threshold(value=value, color=color) for value, color in levels])


def above(warning: float | None = None, critical: float | None = None, *,
          count: bool = False, base: str = GREEN) -> db.ThresholdsConfig:
    """Green, orange from `warning`, red from `critical`. The alerts fire when the value is
    ABOVE the threshold: for counts (`count=True`) the colour changes at threshold + 1, so a
    value equal to the threshold stays green, as the alert stays quiet."""
    bump = 1 if count else 0
    levels = []
    if warning is not None:
        levels.append((warning + bump, ORANGE))
    if critical is not None:
        levels.append((critical + bump, RED))
    return steps(base, *levels)


def below(critical: float, base: str = RED) -> db.ThresholdsConfig:
    """Red below `critical`, green from it (success ratios, availability, budget left)."""
    return steps(base, (critical, GREEN))


# --- queries ----------------------------------------------------------------------------------

def query(expr: str, legend: str = "__auto", *, instant: bool = False, table: bool = False,
          heatmap: bool = False) -> prometheus.Dataquery:
    """A Prometheus query of the panel's datasource; whitespace in `expr` is folded."""
    q = prometheus.Dataquery().expr(" ".join(expr.split())).legend_format(legend).datasource(DS)
    q = q.instant() if instant else q.range()
    if table:
        q = q.format(pm.PromQueryFormat.TABLE)
    elif heatmap:
        q = q.format(pm.PromQueryFormat.HEATMAP)
    return q


def with_refs(targets: Sequence[prometheus.Dataquery]) -> list[prometheus.Dataquery]:
    """Give targets refIds A, B, C... (Grafana would, on first save)."""
    return [t.ref_id(chr(ord("A") + i)) for i, t in enumerate(targets)]


# --- links ------------------------------------------------------------------------------------

def runbook(alert: str) -> db.DashboardLink:
    return (db.DashboardLink(f"Runbook: {alert}").type(dm.DashboardLinkType.LINK)
            .url(f"{RUNBOOKS}{alert}.md").target_blank(True))


def to_dashboard(title: str, uid: str, params: str = "") -> db.DashboardLink:
    """A link to another pipemon dashboard, keeping the time range and the datasource.
    `params` adds URL variables (e.g. "var-source=${__field.labels.source}")."""
    query_string = "${__url_time_range}&${datasource:queryparam}"
    if params:
        query_string += "&" + params
    return db.DashboardLink(title).type(dm.DashboardLinkType.LINK).url(
        f"/d/{uid}?{query_string}")


def dashboard_links() -> list[db.DashboardLink]:
    return [db.DashboardLink("pipemon dashboards").type(dm.DashboardLinkType.DASHBOARDS)
            .tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True),
            db.DashboardLink("Runbooks").type(dm.DashboardLinkType.LINK)
            .url(RUNBOOKS).target_blank(True).icon("doc")]


# --- variables --------------------------------------------------------------------------------

def datasource_variable() -> db.DatasourceVariable:
    return (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .current(dm.VariableOption(selected=True, text="default", value="default")))


def label_variable(name: str, label: str, metric: str, *, selector: str = "",
                   description: str = "", of: str | None = None) -> db.QueryVariable:
    """A multi-value variable of the values of the label `of` (default: `name`) on `metric`
    (All by default)."""
    series = f"{metric}{{{selector}}}" if selector else metric
    expr = f"label_values({series}, {of or name})"
    return (db.QueryVariable(name).label(label).description(description)
            .query({"query": expr, "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    "qryType": 1})
            .datasource(DS).refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))


# --- annotations ------------------------------------------------------------------------------

def alert_annotations(selector: str) -> dict:
    """Firing pipemon alerts (ALERTS) as annotations; a plain dict because the SDK's model has
    no field for the Prometheus annotation's title and tag formats."""
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "enable": True,
        "expr": f'ALERTS{{alertstate="firing", alertname!="Watchdog", {selector}}}',
        "iconColor": "red",
        "name": "Firing alerts",
        "step": "1m",
        "tagKeys": "severity,source,queue,bucket,check",
        "textFormat": "{{severity}} {{source}} {{queue}}{{bucket}}{{check}}",
        "titleFormat": "{{alertname}}",
        "useValueForTime": False,
    }


# --- panels -----------------------------------------------------------------------------------

def base_panel(panel, title: str, description: str, unit: str, targets, links=()):
    panel = panel.title(title).description(description).datasource(DS).unit(unit)
    for target in with_refs(list(targets)):
        panel = panel.with_target(target)
    if links:
        panel = panel.links(list(links))
    return panel


def timeseries(title: str, description: str, unit: str, targets: Iterable,
               *, thresholds: db.ThresholdsConfig | None = None, stack: bool = False,
               links: Sequence = (), min_val: float | None = 0, max_val: float | None = None,
               bars: bool = False) -> ts_b.Panel:
    panel = base_panel(ts_b.Panel(), title, description, unit, targets, links)
    panel = (panel.line_width(1).fill_opacity(10 if not stack else 60).show_points(
        cm.VisibilityMode.NEVER).legend(
            cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                 .sort(cm.SortOrder.DESCENDING)))
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if bars:
        panel = panel.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if thresholds is not None:
        panel = panel.thresholds(thresholds).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    else:
        panel = panel.thresholds(steps(GREEN))
    return panel


def stat(title: str, description: str, unit: str, targets: Iterable,
         *, thresholds: db.ThresholdsConfig | None = None, mappings: Sequence = (),
         links: Sequence = (), graph: bool = True, decimals: float | None = None) -> stat_b.Panel:
    panel = base_panel(stat_b.Panel(), title, description, unit, targets, links)
    panel = (panel.color_mode(cm.BigValueColorMode.BACKGROUND)
             .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
             .text_mode(cm.BigValueTextMode.AUTO)
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .thresholds(thresholds if thresholds is not None else steps(BLUE)))
    if mappings:
        panel = panel.mappings(list(mappings))
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def table(title: str, description: str, unit: str, targets: Iterable, *,
          columns: dict[str, str], overrides: Sequence[tuple[str, list]] = (),
          links: Sequence = (), sort_by: str | None = None,
          hide: Sequence[str] = ("Time", "job", "__name__")) -> table_b.Panel:
    """A table of instant queries (format table) merged on their labels: one row per label
    set. `columns` orders and renames fields ("Value #A" -> "Waiting"); `hide` drops fields."""
    panel = base_panel(table_b.Panel(), title, description, unit, targets, links)
    names = dict(columns)
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {name: True for name in hide},
        "indexByName": {name: i for i, name in enumerate(names)},
        "renameByName": names,
    }))
    panel = panel.cell_height(cm.TableCellHeight.SM).thresholds(steps(GREEN))
    for name, properties in overrides:
        panel = panel.override_by_name(name, properties)
    if sort_by:
        panel = panel.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel


def prop(name: str, value) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=name, value=value)


def dashed_thresholds(panel):
    """A time series panel whose threshold series (legend "... threshold") are dashed red
    lines, not data."""
    return panel.override_by_regexp(".*threshold", [
        prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
        prop("custom.fillOpacity", 0),
        prop("color", {"mode": "fixed", "fixedColor": RED})])


def colored_cell(unit: str, thresholds: db.ThresholdsConfig) -> list[dm.DynamicConfigValue]:
    return [prop("unit", unit), prop("thresholds", thresholds.build()),
            prop("custom.cellOptions", {"type": "color-background", "mode": "basic"})]


def up_mapping(up: str = "UP", down: str = "DOWN") -> dm.ValueMap:
    return dm.ValueMap(options={
        "0": dm.ValueMappingResult(text=down, color=RED, index=0),
        "1": dm.ValueMappingResult(text=up, color=GREEN, index=1)})


# --- layout -----------------------------------------------------------------------------------

class Grid:
    """Places panels on Grafana's 24-column grid, left to right, wrapping to a new line."""

    def __init__(self) -> None:
        self.x = self.y = 0
        self.line_height = 0
        self.items: list[Builder] = []

    def row(self, title: str) -> Grid:
        self.newline()
        self.items.append(db.Row(title).grid_pos(dm.GridPos(h=1, w=24, x=0, y=self.y)))
        self.y += 1
        return self

    def add(self, panel: Builder, w: int, h: int) -> Grid:
        if self.x + w > 24:
            self.newline()
        self.items.append(panel.grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y)))
        self.x += w
        self.line_height = max(self.line_height, h)
        return self

    def newline(self) -> None:
        if self.x:
            self.y += self.line_height
        self.x = self.line_height = 0


def dashboard(uid: str, title: str, description: str, grid: Grid, variables: Sequence,
              annotation_selector: str, *, time_from: str = "now-6h",
              tags: Sequence[str] = (), refresh: str = "1m") -> dict:
    """The dashboard as the dict Grafana's provisioning reads."""
    builder = (db.Dashboard(title).uid(uid).description(description).tags([TAG, *tags])
               .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR).time(time_from, "now")
               .timezone("browser").refresh(refresh).links(dashboard_links())
               .variables([datasource_variable(), *variables]))
    for item in grid.items:
        # Grid has set every position: add them as they are (the SDK's own placement is skipped
        # for panels whose position is not 0,0; the first panel is at 0,0 anyway).
        add = builder.with_row if isinstance(item, db.Row) else builder.with_panel
        builder = add(item)
    model = json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))
    model["annotations"] = {"list": [_builtin_annotation(),
                                     alert_annotations(annotation_selector)]}
    model["id"] = None
    for i, panel in enumerate(model["panels"], start=1):
        panel["id"] = i
    return model


def _builtin_annotation() -> dict:
    return {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}


def heatmap(title: str, description: str, expr: str, *, unit: str = "s",
            links: Sequence = ()) -> Builder:
    """A heatmap of histogram bucket rates (`sum by (le) (...)`), buckets as Prometheus has
    them (no re-bucketing by Grafana)."""
    from grafana_foundation_sdk.builders import heatmap as hb
    from grafana_foundation_sdk.models import heatmap as hm

    panel = base_panel(hb.Panel(), title, description, unit,
                    [query(expr, "{{le}}", heatmap=True)], links)
    return (panel.calculate(False).cell_gap(1).hide_y_histogram()
            .y_axis(hb.YAxisConfig().unit(unit))
            .cell_values(hb.CellValues().unit("ops"))
            .color(hb.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
                   .scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5).fill("dark-orange")
                   .reverse(False).steps(64))
            .max_data_points(120))
