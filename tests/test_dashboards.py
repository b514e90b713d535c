"""The Grafana dashboards and provisioning, statically: generated JSON up to date, structure,
conventions (datasource variable, units, grid), links, thresholds and the alerts' dashboard_url.
tests/test_dashboard_queries.py runs every query against a real Prometheus."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from grafana import generate
from grafana.common import RUNBOOKS
from tests.test_dashboard_queries import panels, queries

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
RULE_FILES = [ROOT / "rules" / "pipemon-alerts.yaml", ROOT / "rules" / "pipemon-recording.yaml"]
# every rule file with alerts: their dashboard_url annotations must open these dashboards
ALERT_FILES = sorted((ROOT / "rules").glob("*.yaml"))
UIDS = {"pipemon-overview", "pipemon-queue", "pipemon-storage", "pipemon-integrity",
        "pipemon-self", "pipemon-incidents", "pipemon-service", "pipemon-regions",
        "pipemon-errors", "pipemon-system-health", "pipemon-migration", "pipemon-audio"}
# dashboards no alert opens (they gather what several alerts' dashboards show)
NOT_LINKED = {"pipemon-errors"}
# dashboards of series that are not pipemon sources' (the relay's alerts; the services,
# probes, Kubernetes and hosts of the platform): the sources' constant labels do not apply
WITHOUT_SOURCES = {"pipemon-incidents", "pipemon-service", "pipemon-regions", "pipemon-errors",
                   "pipemon-system-health"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def load_all() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


DASHBOARD_FILES = load_all()
BY_UID = {d["uid"]: d for d in DASHBOARD_FILES.values()}


# the committed dashboards, and those generated for sources with constant labels
LABELLED = {d["uid"]: d for d in generate.build_all(["env", "team"]).values()}
every_dashboard = pytest.mark.parametrize(
    "dashboard", [*BY_UID.values(), *LABELLED.values()],
    ids=[*BY_UID, *(f"{uid}+labels" for uid in LABELLED)])


def test_committed_json_is_what_the_code_generates():
    built = generate.build_all()
    assert sorted(built) == sorted(DASHBOARD_FILES), "run: python -m grafana.generate"
    for name, model in built.items():
        assert (DASHBOARDS / name).read_text() == generate.render(model), (
            f"{name} differs from the code: run python -m grafana.generate")
    assert generate.main(["--check"]) == 0


def test_generation_is_deterministic():
    assert generate.build_all() == generate.build_all()


def test_uids_and_titles_are_unique_and_stable():
    assert set(BY_UID) == UIDS
    assert len(DASHBOARD_FILES) == len(UIDS)
    titles = [d["title"] for d in BY_UID.values()]
    assert len(set(titles)) == len(titles)
    for name, dashboard in DASHBOARD_FILES.items():
        assert name == f"{dashboard['uid']}.json"
        assert dashboard["id"] is None  # provisioning assigns ids
        assert "pipemon" in dashboard["tags"]


@every_dashboard
def test_datasource_variable_is_the_only_datasource(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    # no datasource uid anywhere but the variable (and the built-in annotation)
    text = json.dumps(dashboard)
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {dashboard["uid"]}
    assert uids <= {"${datasource}", "-- Grafana --"}, uids


@every_dashboard
def test_every_panel_has_the_datasource_a_unit_and_targets(dashboard):
    found = panels(dashboard)
    assert found
    for panel in found:
        where = f"{dashboard['uid']} / {panel['title']}"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert panel.get("description"), f"{where}: no description"
        assert panel["targets"], f"{where}: no target"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["expr"].strip(), where
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(set(titles)) == len(titles), "panel and row titles are unique in a dashboard"


@every_dashboard
def test_every_variable_used_is_defined(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    macros = {"__rate_interval", "__interval", "__range"}
    for where, expr in queries(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", expr)) - macros
        assert used <= defined, f"{where}: {used - defined} not defined"
    for panel in panels(dashboard):
        if panel.get("repeat"):
            assert panel["repeat"] in defined


@every_dashboard
def test_panels_stay_on_the_grid_and_never_overlap(dashboard):
    boxes = []
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        boxes.append((panel["title"], pos))
        assert not panel.get("panels"), "rows are open: their panels are on the dashboard"
    for (a, p), (b, q) in combinations(boxes, 2):
        apart = (p["x"] + p["w"] <= q["x"] or q["x"] + q["w"] <= p["x"]
                 or p["y"] + p["h"] <= q["y"] or q["y"] + q["h"] <= p["y"])
        assert apart, f"{dashboard['uid']}: {a!r} {p} overlaps {b!r} {q}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@every_dashboard
def test_alerts_are_annotations(dashboard):
    [alerts] = [a for a in dashboard["annotations"]["list"] if a.get("expr")]
    assert alerts["datasource"] == DATASOURCE
    assert alerts["expr"].startswith('ALERTS{alertstate="firing"')
    assert alerts["enable"] and alerts["titleFormat"] == "{{alertname}}"


def urls(dashboard: dict) -> list[str]:
    found = [link["url"] for link in dashboard["links"] if link.get("url")]
    for panel in panels(dashboard):
        found += [link["url"] for link in panel.get("links", [])]
        for override in panel["fieldConfig"].get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    found += [link["url"] for link in prop["value"]]
    return found


@every_dashboard
def test_links_point_at_runbooks_and_dashboards_that_exist(dashboard):
    runbooks = dashboards = 0
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for url in urls(dashboard):
        if url.startswith(RUNBOOKS) and url != RUNBOOKS:
            name = url[len(RUNBOOKS):]
            if name != "${__data.fields.Alert}.md":
                assert (ROOT / "docs" / "runbooks" / name).is_file(), url
            runbooks += 1
        elif url.startswith("/d/"):
            uid = url[3:].split("?")[0]
            assert uid in UIDS, url
            family = LABELLED if "env" in variables else BY_UID  # links stay in the set
            target = {v["name"] for v in family[uid]["templating"]["list"]}
            for var in re.findall(r"var-(\w+)=|\$\{(\w+):queryparam\}", url):
                name = var[0] or var[1]
                assert name in target, f"{url}: {uid} has no variable {name}"
                if var[1]:
                    assert name in variables, f"{url}: no variable {name} here"
            dashboards += 1
        else:
            assert url == RUNBOOKS, f"unexpected link {url}"
    assert runbooks, "links to runbooks"
    assert dashboards, "links to other dashboards"
    [tagged] = [link for link in dashboard["links"] if link["type"] == "dashboards"]
    assert tagged["tags"] == ["pipemon"] and tagged["includeVars"] and tagged["keepTime"]


def test_alert_dashboard_urls_point_at_these_dashboards_and_variables():
    seen = set()
    for path in ALERT_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                url = rule.get("annotations", {}).get("dashboard_url")
                if not url:
                    continue
                match = re.match(r"http://grafana\.example/d/([\w-]+)(?:\?(.*))?$", url)
                assert match, url
                uid, params = match.groups()
                assert uid in BY_UID, f"{rule['alert']}: no dashboard {uid}"
                variables = {v["name"] for v in BY_UID[uid]["templating"]["list"]}
                for name in re.findall(r"var-(\w+)=", params or ""):
                    assert name in variables, f"{rule['alert']}: {uid} has no {name}"
                seen.add(uid)
    assert seen == UIDS - NOT_LINKED


def rule_thresholds() -> dict[str, list[float]]:
    """record name -> its values, read independently of grafana/common.py."""
    values: dict[str, list[float]] = {}
    groups = yaml.safe_load(RULE_FILES[1].read_text())["groups"]
    for rule in next(g for g in groups if g["name"] == "pipemon-thresholds")["rules"]:
        match = re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"].strip())
        if match:
            values.setdefault(rule["record"], []).append(float(match[1]))
    return values


def steps_of(dashboard: dict, title: str) -> list[float]:
    [panel] = [p for p in panels(dashboard) if p["title"] == title]
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


@pytest.mark.parametrize(("uid", "title", "record", "bump"), [
    ("pipemon-queue", "Oldest waiting job", "queue_oldest_waiting_seconds", 0),
    ("pipemon-queue", "Failure ratio (5m)", "queue_failure_ratio", 0),
    ("pipemon-queue", "Waiting jobs", "queue_waiting_jobs", 1),
    ("pipemon-queue", "Stuck jobs", "queue_stuck_jobs", 1),
    ("pipemon-queue", "p95 run time (10m)", "queue_run_p95_seconds", 0),
    ("pipemon-queue", "p95 run time regression", "queue_run_p95_regression_ratio", 0),
    ("pipemon-overview", "Failure ratio per queue (5m)", "queue_failure_ratio", 0),
    ("pipemon-overview", "Storage probe p95", "storage_probe_p95_seconds", 0),
    ("pipemon-overview", "Analysis success (1h)", "analysis_success_ratio", 0),
    ("pipemon-storage", "Probe p95 (15m)", "storage_probe_p95_seconds", 0),
])
def test_thresholds_are_the_alert_thresholds(uid, title, record, bump):
    """Colours change where the alert fires (counts: one above the threshold, as `>` fires)."""
    expected = sorted(v + bump for v in rule_thresholds()[f"pipemon_alert:{record}:threshold"])
    assert steps_of(BY_UID[uid], title) == expected


def test_integrity_panel_draws_the_rule_thresholds():
    [panel] = [p for p in panels(BY_UID["pipemon-integrity"]) if p.get("repeat") == "check"]
    assert any("pipemon_alert:check_value:threshold" in t["expr"] for t in panel["targets"])


def test_overview_shows_component_dependencies():
    [canvas] = [p for p in panels(BY_UID["pipemon-overview"]) if p["type"] == "canvas"]
    elements = canvas["options"]["root"]["elements"]
    names = {e["name"] for e in elements}
    assert {"Queue", "Workers", "Storage"} <= names
    arrows = {(e["name"], c["targetName"]) for e in elements for c in e.get("connections", [])}
    assert {("Queue", "Workers"), ("Workers", "Storage")} <= arrows
    fields = {t["legendFormat"] for t in canvas["targets"]}
    for element in elements:
        if element["type"] == "metric-value":  # every box shows a query of the panel
            assert element["config"]["text"]["field"] in fields
            assert element["background"]["color"]["field"] in fields


def test_the_sdk_reads_every_dashboard_back():
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    for dashboard in BY_UID.values():
        model = Dashboard.from_json(dashboard)
        assert model.uid == dashboard["uid"]
        assert len(model.panels) == len(dashboard["panels"])


def test_provisioning_files_match_the_documented_mounts():
    [datasource] = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    [provider] = yaml.safe_load(
        (PROVISIONING / "dashboards" / "pipemon.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    doc = (ROOT / "docs" / "dashboards.md").read_text()
    assert provider["options"]["path"] in doc
    assert "/etc/grafana/provisioning" in doc


@pytest.mark.parametrize("uid", sorted(UIDS - WITHOUT_SOURCES))
def test_constant_labels_are_variables_that_every_place_selector_uses(uid):
    plain, labelled = BY_UID[uid], LABELLED[uid]
    names = [v["name"] for v in labelled["templating"]["list"]]
    assert names == ["datasource", "env", "team", *[v["name"] for v in
                                                      plain["templating"]["list"][1:]]]
    team = labelled["templating"]["list"][2]["query"]["query"]
    assert team == 'label_values(pipemon_source_up{env=~"$env"}, team)'
    place = re.compile(r'(source|instance)=~"\$(source|instance)\|?"')
    selecting = 0
    added = [q for q in queries(labelled) if q[0] not in ("variable env", "variable team")]
    for (where, before), (_, after) in zip(queries(plain), added, strict=True):
        if place.search(before) or where in ("variable source", "variable instance"):
            selecting += 1
            assert 'env=~"$env' in after and 'team=~"$team' in after, (where, after)
        else:  # the exporter's own series, rule thresholds, node_exporter's: no source
            assert after == before, where
    assert selecting >= 3
    links = json.dumps(labelled["links"]) + json.dumps(panels(labelled))
    assert links.count("${datasource:queryparam}") == \
        links.count("${datasource:queryparam}&${env:queryparam}&${team:queryparam}")


def test_labelled_dashboards_need_their_own_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        generate.main(["--labels", "env"])
    assert "give --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.main(["--labels", "env,instance", "--out", str(tmp_path)])
    assert "instance: Prometheus sets 'instance'" in capsys.readouterr().err
    assert generate.main(["--labels", "env", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DASHBOARD_FILES)


@pytest.mark.parametrize("uid", sorted(WITHOUT_SOURCES))
def test_dashboards_without_sources_take_no_labels(uid):
    """The relay's series are per alert, the platform's per service, endpoint, pod or host:
    not per source. Their dashboards take no labels and select no source."""
    assert LABELLED[uid] == BY_UID[uid]
    assert not re.search(r'(source|instance)=~"\$', json.dumps(BY_UID[uid]))
