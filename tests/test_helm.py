"""The Helm chart (helm/pipemon) and the exporter image's Dockerfile.

The chart is linted and rendered by real Helm: helm-python-sdk embeds Helm 4's Go SDK and works
offline (no cluster, no helm binary). Every rendered manifest is validated against the Kubernetes
1.30 OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) and the Prometheus
Operator's resources against models generated from its CRDs (cloudcoil-models-prometheus-operator:
field types, enums and patterns, plus a check that no field was dropped as unknown). The rules
that reach the cluster pass `promtool check rules`, and are exactly the files of rules/ and the
dashboards exactly grafana/dashboards/, with the links that tools/render_rules.py puts in; the
Alertmanager configuration is exactly what tools/render_alertmanager.py renders.

No Docker daemon is needed: the Dockerfile is parsed (BuildKit's parser, from the dockerfile
package) and checked against the chart (user, port, entrypoint, config path, version); it is not
built.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import dockerfile as dockerfile_parser
import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1
from pydantic import ValidationError

from pipemon.config import load as load_pipemon_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "pipemon"
KUBE_VERSION = "1.30.0"
RELEASE = "pipemon"
NAMESPACE = "media"
CONFIGMAP_LIMIT = 1024 * 1024  # bytes of data in one ConfigMap (and one Secret)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the dashboards make big manifests

# The one value the chart requires: the Secret the config's *_file keys read.
BASE: dict[str, Any] = {"secrets": {"existingSecret": "pipemon-secrets"}}

# Every optional part on.
FULL: dict[str, Any] = {
    "secrets": {"existingSecret": "pipemon-secrets"},
    "replicas": 3,
    "image": {"digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "registry"}],
    "extraEnv": [
        {"name": "PIPEMON_POSTGRES_DSN",
         "valueFrom": {"secretKeyRef": {"name": "pipemon-secrets", "key": "dsn"}}},
    ],
    "webConfig": {"enabled": True, "existingSecret": "pipemon-web", "tls": True,
                  "authRequired": True},
    "serviceAccount": {"annotations": {"example.com/owner": "media"}},
    "podAnnotations": {"example.com/team": "media"},
    "podLabels": {"team": "media"},
    "priorityClassName": "monitoring",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "monitoring",
                     "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "pipemon"}}}}]}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "podDisruptionBudget": {"minAvailable": 2},
    "serviceMonitor": {
        "labels": {"prometheus": "main"},
        "tlsConfig": {"ca": {"secret": {"name": "pipemon-web", "key": "ca.crt"}},
                      "serverName": "pipemon"},
        "basicAuth": {"username": {"name": "pipemon-scrape", "key": "username"},
                      "password": {"name": "pipemon-scrape", "key": "password"}},
        "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}],
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"],
                               "regex": "python_gc_.*"}],
    },
    "prometheusRule": {"labels": {"role": "alert-rules"}},
    "probes": {"enabled": True, "prober": {"url": "blackbox.monitoring.svc:9115"},
               "labels": {"team": "media"},
               "targets": [{"region": "us-west", "urls": ["https://us-west.aimixer.com/health"]},
                           {"region": "eu-west", "urls": ["https://eu-west.aimixer.com/health",
                                                          "https://eu-west-2.aimixer.com/health"]},
                           {"region": "global", "urls": ["https://api.aimixer.com/health"],
                            "module": "https_2xx"}]},
    "dashboards": {"namespace": "monitoring", "labels": {"team": "media"}},
    "alertmanager": {"enabled": True, "namespace": "monitoring",
                     "settings": {"email": {"smarthost": "smtp.corp.example:587"},
                                  "constant_labels": ["env", "team"],
                                  "relay": {"url": "http://pipemon-relay:9866/webhook"}}},
    "networkPolicy": {"enabled": True, "egress": {
        "postgresql": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
        "extra": [{"ports": [{"port": 4317, "protocol": "TCP"}]}],
    }},
}


# The relay beside the exporter, its migrations run as a schema owner, and the Alertmanager
# configuration pointed at it by default.
RELAY_SECRET = "pipemon-relay"


def merged(*layers: dict) -> dict:
    """Values layers deep-merged, later ones winning (as Helm merges -f files)."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def load_tool(name: str):
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RELAY = merged(BASE, {"relay": {"enabled": True, "existingSecret": RELAY_SECRET, "replicas": 2,
                                "migrate": {"dsnKey": "owner-dsn"}},
                      "alertmanager": {"enabled": True}})

render_alertmanager = load_tool("render_alertmanager")
render_rules = load_tool("render_rules")


def with_links(source: str, links: dict[str, str] | None = None) -> str:
    """A file of the repository (rules/..., grafana/dashboards/...) with the links of
    tools/render_rules.py: the defaults of rules/settings/links.yml unless `links` is given."""
    return render_rules.rewrite((ROOT / source).read_text(), links or render_rules.load_links())


# ------------------------------------------------------------------------------------------------
# Rendering

@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    """The manifests of one `helm template`, parsed."""

    def __init__(self, manifests: dict[str, str]):
        self.text = manifests
        self.docs: list[dict] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            self.docs += [d for d in yaml.load_all(text, Loader=LOADER) if d]

    def of(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> dict:
        (found,) = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        return found

    def one(self, kind: str) -> dict:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def container(self) -> dict:
        (container,) = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        return container


def render(chart, values: dict) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def render_error(chart, values: dict) -> str:
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


@pytest.fixture(scope="module")
def default(chart) -> Rendered:
    return render(chart, BASE)


@pytest.fixture(scope="module")
def full(chart) -> Rendered:
    return render(chart, FULL)


@pytest.fixture(scope="module")
def with_relay(chart) -> Rendered:
    return render(chart, RELAY)


@pytest.fixture(scope="module", params=["default", "full", "relay"])
def rendered(request, default, full, with_relay) -> Rendered:
    return {"default": default, "full": full, "relay": with_relay}[request.param]


# ------------------------------------------------------------------------------------------------
# The chart itself

def test_app_version_is_the_repository_version(chart):
    version = (ROOT / "VERSION").read_text().strip()
    assert chart.metadata["appVersion"] == version, (
        f"helm/pipemon/Chart.yaml appVersion {chart.metadata['appVersion']!r} != VERSION "
        f"{version!r}: bump them together")
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart.metadata["version"])


def test_files_are_links_to_the_repository():
    """No second copy: the chart's files/ are symbolic links that Helm follows."""
    for name, target in (("rules", "rules"), ("dashboards", "grafana/dashboards"),
                         ("alertmanager", "alertmanager")):
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a symbolic link to {target}/, not a copy"
        assert link.resolve() == (ROOT / target).resolve()


def test_chart_carries_the_files_it_reads(chart):
    names = {f["name"] for f in chart.files}
    expected = {f"files/rules/{p.name}" for p in (ROOT / "rules").glob("*.yaml")}
    expected |= {f"files/dashboards/{p.name}" for p in (ROOT / "grafana/dashboards").glob("*.json")}
    expected |= {"files/rules/settings/links.yml", "files/alertmanager/alertmanager.yml.in",
                 "files/alertmanager/values.yaml"}
    expected |= {f"files/alertmanager/templates/{p.name}"
                 for p in (ROOT / "alertmanager/templates").glob("*.tmpl")}
    assert expected <= names, f"missing from the chart: {sorted(expected - names)}"
    # .helmignore keeps the promtool tests and the pre-rendered alertmanager.yml out.
    assert not [n for n in names if n.startswith("files/rules/tests/")]
    assert "files/alertmanager/alertmanager.yml" not in names


def test_packaged_chart_holds_the_files_themselves(chart, tmp_path):
    """`helm package` follows the links: the archive is self-contained."""
    with tarfile.open(chart.save(tmp_path)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        for path in sorted((ROOT / "rules").glob("*.yaml")):
            member = members[f"pipemon/files/rules/{path.name}"]
            assert member.isfile(), f"{member.name} is not a regular file in the archive"
            assert archive.extractfile(member).read() == path.read_bytes()
        assert len([n for n in members if n.startswith("pipemon/files/dashboards/")]) == len(
            list((ROOT / "grafana" / "dashboards").glob("*.json")))


# `helm lint` renders `required` values leniently, so the chart's bare defaults lint too.
@pytest.mark.parametrize("values", [{}, BASE, FULL, RELAY],
                         ids=["bare", "default", "full", "relay"])
def test_helm_lint_strict(values):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not problems and not report["errors"], json.dumps(report, indent=2)


def test_release_fits_in_helm_storage(chart, full):
    """Helm keeps a release (chart, values, manifest) gzipped and base64-encoded in one Secret
    of at most 1 MiB; the dashboards and rules are most of it."""
    parts = [json.dumps({"metadata": chart.metadata, "values": chart.values,
                         "schema": chart.schema})]
    for entry in chart.templates + chart.files:
        parts.append(base64.b64encode(entry["data"].encode()).decode())
    parts += list(full.text.values())
    stored = base64.b64encode(gzip.compress("".join(parts).encode()))
    assert len(stored) < CONFIGMAP_LIMIT // 2, f"release would take {len(stored)} bytes"


# ------------------------------------------------------------------------------------------------
# Schemas of what reaches the cluster

def test_kubernetes_schemas(rendered):
    kinds = set()
    for doc in rendered.docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kinds.add(doc["kind"])
        where = f"{doc['kind']} {doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where}: {err.message} at {'.'.join(map(str, err.path))}")
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount",
            "PodDisruptionBudget"} <= kinds


def unknown_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of `given` that a model dropped (pydantic ignores unknown fields)."""
    if isinstance(given, dict):
        found = []
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(value, kept[key], f"{path}.{key}")
        return found
    if isinstance(given, list):
        return [p for i, v in enumerate(given) for p in unknown_fields(v, kept[i], f"{path}[{i}]")]
    return []


def test_prometheus_operator_shapes(rendered):
    kinds = set()
    for doc in rendered.docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
        kinds.add(doc["kind"])
        model = getattr(monitoring_v1, doc["kind"])
        where = f"{doc['kind']} {doc['metadata']['name']}"
        try:
            parsed = model.model_validate(doc)
        except ValidationError as err:
            pytest.fail(f"{where}: {err}")
        dropped = unknown_fields(doc, parsed.model_dump(mode="json", by_alias=True,
                                                        exclude_unset=True))
        assert not dropped, f"{where}: fields the CRD does not have: {dropped}"
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds <= {"ServiceMonitor", "PrometheusRule",
                                                             "Probe"}


def test_the_crd_check_is_not_a_rubber_stamp(default):
    monitor = copy.deepcopy(default.one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # the field is `interval`
    parsed = monitoring_v1.ServiceMonitor.model_validate(monitor)
    kept = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert unknown_fields(monitor, kept) == [".spec.endpoints[0].scrapeInterval"]
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValidationError, match="interval"):
        monitoring_v1.ServiceMonitor.model_validate(monitor)


# ------------------------------------------------------------------------------------------------
# No drift: rules, dashboards and Alertmanager configuration are the repository's files

def rule_sources(rendered: Rendered) -> dict[str, dict]:
    return {d["metadata"]["annotations"]["pipemon/source"]: d["spec"]
            for d in rendered.of("PrometheusRule")}


def alert_rules(rendered: Rendered) -> list[dict]:
    return [rule for spec in rule_sources(rendered).values() for group in spec["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_prometheus_rules_are_the_repository_rules(chart, default):
    specs = rule_sources(default)
    files = [f"rules/{p.name}" for p in sorted((ROOT / "rules").glob("*.yaml"))]
    assert sorted(specs) == files
    for source in files:
        assert specs[source] == yaml.safe_load(with_links(source)), f"{source} differs"
    # By default the alerts link to the runbooks of the release the chart deploys.
    version = chart.metadata["appVersion"]
    for rule in alert_rules(default):
        annotations = rule["annotations"]
        assert annotations["runbook_url"] == (
            f"https://github.com/pipemon/pipemon/blob/v{version}/docs/runbooks/{rule['alert']}.md")
        assert annotations["dashboard_url"].startswith("http://grafana.example/d/")


@pytest.mark.rules  # needs promtool, like tests/test_rules.py (make test-fast leaves it out)
def test_promtool_checks_the_rendered_rules(default, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: apt-get install prometheus", pytrace=False)
    paths = []
    for source, spec in rule_sources(default).items():
        path = tmp_path / Path(source).name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        paths.append(str(path))
    result = subprocess.run([promtool, "check", "rules", *paths], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(paths), result.stdout


def test_rules_can_be_left_out(chart):
    rendered = render(chart, merged(BASE, {"prometheusRule": {"exclude": [
        "infra-alerts.yaml", "kubernetes-alerts.yaml", "service-alerts.yaml"]}}))
    assert sorted(rule_sources(rendered)) == ["rules/pipemon-alerts.yaml",
                                              "rules/pipemon-recording.yaml"]
    assert not render(chart, merged(BASE, {"prometheusRule": {"enabled": False}})).of(
        "PrometheusRule")


def test_dashboards_are_the_repository_dashboards(default, full):
    files = {f"grafana/dashboards/{p.name}": p
             for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))}
    maps = {d["metadata"]["annotations"]["pipemon/source"]: d
            for d in default.docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in
            d["metadata"]["labels"]}
    assert sorted(maps) == sorted(files)
    for source, path in files.items():
        cm = maps[source]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "pipemon"
        assert cm["metadata"]["namespace"] == NAMESPACE
        (key,) = cm["data"]
        assert key == path.name
        assert json.loads(cm["data"][key]) == json.loads(with_links(source)), f"{source} differs"
        size = len(cm["data"][key].encode())
        assert size < CONFIGMAP_LIMIT // 4, f"{source}: {size} bytes, near the 1 MiB limit"
    moved = [d for d in full.of("ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    assert len(moved) == len(files)
    assert {d["metadata"]["namespace"] for d in moved} == {"monitoring"}


RUNBOOKS = "https://git.corp.example/ops/pipemon/-/blob/v{version}/docs/runbooks/"
GRAFANA = "https://grafana.corp.example/d/"


@pytest.fixture(scope="module")
def linked(chart) -> Rendered:
    return render(chart, merged(BASE, {"links": {"runbookUrl": RUNBOOKS, "grafanaUrl": GRAFANA}}))


def test_links_are_rendered_as_render_rules_does(linked):
    links = render_rules.load_links(sets=[f"runbookUrl={RUNBOOKS}", f"grafanaUrl={GRAFANA}"])
    specs = rule_sources(linked)
    for source, spec in specs.items():
        assert spec == yaml.safe_load(with_links(source, links)), source
    dashboards = 0
    for cm in linked.of("ConfigMap"):
        source = cm["metadata"].get("annotations", {}).get("pipemon/source", "")
        if source.startswith("grafana/"):
            (body,) = cm["data"].values()
            assert json.loads(body) == json.loads(with_links(source, links)), source
            assert render_rules.PREFIXES["runbookUrl"] not in body, source
            dashboards += 1
    assert dashboards


def test_link_values_reach_every_alert(chart, linked):
    runbooks = RUNBOOKS.replace("{version}", chart.metadata["appVersion"])
    alerts = alert_rules(linked)
    assert alerts
    for rule in alerts:
        annotations = rule["annotations"]
        assert annotations["runbook_url"] == f"{runbooks}{rule['alert']}.md", rule["alert"]
        assert annotations["dashboard_url"].startswith(GRAFANA), rule["alert"]
    text = json.dumps(rule_sources(linked))
    assert not [prefix for prefix in render_rules.PREFIXES.values() if prefix in text]


def alertmanager_secret(rendered: Rendered) -> dict[str, str]:
    secret = rendered.one("Secret")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_alertmanager_config_is_what_render_alertmanager_renders(chart, full):
    secret = full.one("Secret")
    assert secret["metadata"]["namespace"] == "monitoring"
    data = alertmanager_secret(full)
    settings = merged(chart.values["alertmanager"]["settings"],
                      FULL["alertmanager"]["settings"])
    sets = [f"{key}={value}" for key, value in (
        ("secrets_dir", settings["secrets_dir"]), ("templates_dir", settings["templates_dir"]),
        ("email.smarthost", settings["email"]["smarthost"]),
        ("constant_labels", json.dumps(settings["constant_labels"])),
        ("relay.url", settings["relay"]["url"]))]
    expected = render_alertmanager.render(sets=sets)
    assert yaml.safe_load(data["alertmanager.yaml"]) == yaml.safe_load(expected)
    assert "relay" in {r["name"] for r in yaml.safe_load(expected)["receivers"]}
    templates = sorted((ROOT / "alertmanager" / "templates").glob("*.tmpl"))
    assert sorted(k for k in data if k != "alertmanager.yaml") == [p.name for p in templates]
    for path in templates:
        assert data[path.name] == path.read_text()
    # Where the Prometheus Operator puts them.
    config = yaml.safe_load(data["alertmanager.yaml"])
    assert config["templates"] == ["/etc/alertmanager/config/*.tmpl"]
    assert config["global"]["smtp_auth_password_file"] == (
        "/etc/alertmanager/secrets/pipemon-alertmanager-secrets/smtp-password")


def test_alertmanager_values_are_quoted_like_render_alertmanager(chart):
    odd = {"email": {"critical_to": 'on-call <oncall@example.com>, "ops" & co: $x',
                     "require_tls": False},
           "slack": {"critical_channel": "#alerts: critical"}}
    rendered = render(chart, merged(BASE, {"alertmanager": {"enabled": True, "settings": odd}}))
    got = yaml.safe_load(alertmanager_secret(rendered)["alertmanager.yaml"])
    defaults = chart.values["alertmanager"]["settings"]
    expected = render_alertmanager.render(sets=[
        f"secrets_dir={defaults['secrets_dir']}", f"templates_dir={defaults['templates_dir']}",
        f"email.critical_to={json.dumps(odd['email']['critical_to'])}",
        "email.require_tls=false", f"slack.critical_channel={json.dumps('#alerts: critical')}"])
    assert got == yaml.safe_load(expected)


@pytest.mark.parametrize(("settings", "message"), [
    ({"emial": {"smarthost": "x:25"}},
     "alertmanager.settings.emial: unknown key (alertmanager/values.yaml has no \"emial\")"),
    ({"slack": "#alerts"}, "alertmanager.settings.slack: must be a mapping"),
    ({"email": {"smarthost": ["a", "b"]}}, "alertmanager.settings.email.smarthost: must be a "
                                            "single value"),
    ({"constant_labels": "env"}, "alertmanager.settings.constant_labels: must be a list"),
    ({"constant_labels": ["env", "a-b"]},
     "alertmanager.settings.constant_labels: \"a-b\" is not a label name"),
    ({"secrets_dir": "/etc/alertmanager/my secrets"},
     "alertmanager.settings.secrets_dir = \"/etc/alertmanager/my secrets\" is used inside a "
     "longer value and must be a plain path or URL"),
], ids=["unknown-key", "mapping", "single-value", "list", "label-name", "plain-path"])
def test_alertmanager_settings_are_checked(chart, settings, message):
    values = merged(BASE, {"alertmanager": {"enabled": True, "settings": settings}})
    assert message in render_error(chart, values)


# ------------------------------------------------------------------------------------------------
# Values that must fail, with a message that says what to fix

@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": "2"}, "at '/replicas': got string, want integer"),
    ({"replica": 2}, "additional properties 'replica' not allowed"),
    ({"secrets": {"existingSecret": ""}},
     "secrets.existingSecret is required while secrets.enabled is true"),
    ({"secrets": {"enabled": False}},
     "config reads files under /etc/pipemon/secrets, but secrets.enabled is false"),
    ({"webConfig": {"enabled": True}},
     "webConfig.existingSecret is required while webConfig.enabled is true"),
    ({"serviceMonitor": {"interval": "15 seconds"}}, "at '/serviceMonitor/interval'"),
    ({"links": {"grafanaUrl": "https://grafana.corp.example/d"}}, "at '/links/grafanaUrl'"),
    ({"links": {"runbookUrl": "git.corp.example/runbooks/"}}, "at '/links/runbookUrl'"),
    ({"log": {"format": "xml"}}, "at '/log/format'"),
    ({"config": {"sources": []}}, "at '/config/sources': minItems"),
], ids=["replicas-string", "unknown-key", "no-secret", "secrets-off", "no-web-secret", "interval",
        "link-slash", "link-scheme", "log-format", "no-sources"])
def test_wrong_values_fail_clearly(chart, values, message):
    layers = [values] if "secrets" in values else [BASE, values]
    assert message in render_error(chart, merged(*layers))


# ------------------------------------------------------------------------------------------------
# The Deployment

def test_pod_security(default):
    pod = default.one("Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert default.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = default.container()["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = default.container()["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]


def test_probes_and_ports(default):
    container = default.container()
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 9864)
    assert "--web.listen-address=:9864" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http",
                                                     "scheme": "HTTP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http",
                                                      "scheme": "HTTP"}
    (service_port,) = default.one("Service")["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (9864, "http")
    (endpoint,) = default.one("ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("http", "/metrics", "http")


def test_config_and_secrets_are_mounted_files(default, tmp_path):
    deployment = default.one("Deployment")
    container = default.container()
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "--config=/etc/pipemon/config/pipemon.yaml" in container["args"]
    assert mounts["config"]["mountPath"] == "/etc/pipemon/config"
    config_map = next(d for d in default.of("ConfigMap") if "pipemon.yaml" in d.get("data", {}))
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["secrets"]["secret"] == {"secretName": "pipemon-secrets", "defaultMode": 0o440}
    assert mounts["secrets"]["mountPath"] == "/etc/pipemon/secrets"
    assert all(m.get("readOnly") for n, m in mounts.items() if n != "tmp")
    assert volumes["tmp"]["emptyDir"]  # the only writable path, on a read-only root

    # The chart's example config is one pipemon accepts, with the Secret's files in place.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "dsn").write_text("postgresql://pipemon@db.example:5432/app\n")
    text = config_map["data"]["pipemon.yaml"].replace("/etc/pipemon/secrets/", f"{secrets}/")
    (tmp_path / "pipemon.yaml").write_text(text)
    config = load_pipemon_config(tmp_path / "pipemon.yaml", env={})
    assert [s.name for s in config.sources] == ["jobs"]


def test_credentials_can_come_from_the_environment_instead(chart):
    source = copy.deepcopy(chart.values["config"]["sources"][0])
    del source["dsn_file"]
    source["dsn"] = "${PIPEMON_POSTGRES_DSN}"
    env = [{"name": "PIPEMON_POSTGRES_DSN",
            "valueFrom": {"secretKeyRef": {"name": "pipemon-secrets", "key": "dsn"}}}]
    rendered = render(chart, {"secrets": {"enabled": False}, "config": {"sources": [source]},
                              "extraEnv": env})
    container = rendered.container()
    assert container["env"] == env
    assert "secrets" not in {m["name"] for m in container["volumeMounts"]}


def test_config_checksum_rolls_pods_on_config_changes_only(chart, default):
    def checksum(rendered: Rendered) -> str:
        return rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]

    before = checksum(default)
    data = next(d for d in default.of("ConfigMap") if "pipemon.yaml" in d.get("data", {}))
    assert before == hashlib.sha256(data["data"]["pipemon.yaml"].rstrip("\n").encode()).hexdigest()
    others = render(chart, merged(BASE, {"replicas": 4, "podAnnotations": {"a": "b"},
                                         "image": {"tag": "0.2.0"}, "log": {"level": "debug"},
                                         "serviceMonitor": {"interval": "30s"}}))
    assert checksum(others) == before
    changed = copy.deepcopy(chart.values["config"])
    changed["sources"][0]["interval"] = "30s"
    assert checksum(render(chart, merged(BASE, {"config": changed}))) != before


def test_image_defaults_to_the_app_version(chart, default, full):
    assert default.container()["image"] == f"ghcr.io/pipemon/pipemon:{chart.metadata['appVersion']}"
    assert full.container()["image"] == "ghcr.io/pipemon/pipemon@sha256:" + "ab" * 32
    assert "command" not in default.container(), "the image's ENTRYPOINT must run"


def test_optional_parts(full):
    deployment = full.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = full.container()
    assert deployment["spec"]["replicas"] == 3
    # TLS and basic auth: the web config is mounted and passed; the kubelet cannot
    # authenticate, so the probes check the port.
    assert "--web.config.file=/etc/pipemon/web/web.yml" in container["args"]
    assert {v["name"]: v for v in pod["volumes"]}["web-config"]["secret"]["secretName"] == (
        "pipemon-web")
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in container["readinessProbe"]
    (endpoint,) = full.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["basicAuth"] and endpoint["tlsConfig"]
    # A spread constraint without a selector gets the pods' own labels.
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert full.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 2, "selector": deployment["spec"]["selector"]}
    assert pod["nodeSelector"] and pod["tolerations"] and pod["affinity"]
    assert pod["priorityClassName"] == "monitoring"
    assert container["env"][0]["name"] == "PIPEMON_POSTGRES_DSN"

    policy = full.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    dns, postgres, https, extra = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert postgres == {"ports": [{"port": 5432, "protocol": "TCP"}],
                        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}
    assert https == {"ports": [{"port": 443, "protocol": "TCP"}]}  # any destination
    assert extra == {"ports": [{"port": 4317, "protocol": "TCP"}]}


def test_default_leaves_the_optional_parts_out(default):
    kinds = sorted(d["kind"] for d in default.docs)
    assert "NetworkPolicy" not in kinds and "Secret" not in kinds and "Probe" not in kinds
    assert not any("--web.config.file" in a for a in default.container()["args"])


# ------------------------------------------------------------------------------------------------
# Endpoint probes (blackbox_exporter, through the Operator's Probe)

def test_probes_put_the_region_on_the_series(full):
    """One Probe per region: its static targets carry `region` (what the region alert and the
    regions dashboard group by), probed as examples/prometheus-blackbox.yaml probes them."""
    [example] = yaml.safe_load((ROOT / "examples" / "prometheus-blackbox.yaml").read_text())[
        "scrape_configs"]
    modules = yaml.safe_load((ROOT / "examples" / "blackbox.yml").read_text())["modules"]
    probes = {p["metadata"]["name"]: p for p in full.of("Probe")}
    assert sorted(probes) == ["pipemon-probe-eu-west", "pipemon-probe-global",
                              "pipemon-probe-us-west"]
    for target in FULL["probes"]["targets"]:
        probe = probes[f"pipemon-probe-{target['region']}"]
        assert probe["metadata"]["namespace"] == NAMESPACE
        assert probe["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert probe["metadata"]["labels"]["team"] == "media"
        spec = probe["spec"]
        assert spec["targets"] == {"staticConfig": {"static": target["urls"],
                                                    "labels": {"region": target["region"]}}}
        assert spec["jobName"] == "blackbox"
        assert spec["prober"] == {"url": "blackbox.monitoring.svc:9115", "scheme": "http",
                                  "path": example["metrics_path"]}
        assert spec["module"] == target.get("module", example["params"]["module"][0])
        assert spec["module"] in modules, f"{spec['module']} is not in examples/blackbox.yml"
        assert (spec["interval"], spec["scrapeTimeout"]) == (
            example["scrape_interval"], example["scrape_timeout"])


def test_probes_need_targets(chart):
    assert "probes.targets: list at least one {region, urls}" in render_error(
        chart, merged(BASE, {"probes": {"enabled": True}}))
    for wrong, where in (({"prober": {"url": "http://blackbox:9115"}}, "/probes/prober/url"),
                         ({"targets": [{"region": "us-west", "urls": ["us-west.example"]}]},
                          "/probes/targets/0/urls/0"),
                         ({"targets": [{"region": "US West", "urls": ["https://x.example"]}]},
                          "/probes/targets/0/region")):
        values = merged(BASE, {"probes": {"enabled": True,
                                          "targets": FULL["probes"]["targets"], **wrong}})
        assert f"at '{where}'" in render_error(chart, values)


# ------------------------------------------------------------------------------------------------
# HA and the job label the rules select

def job_selector_of_the_rules() -> str:
    recording = yaml.safe_load((ROOT / "rules" / "pipemon-recording.yaml").read_text())
    (expr,) = [r["expr"] for g in recording["groups"] for r in g["rules"]
               if r.get("record") == "instance:pipemon_up:selected"]
    match = re.fullmatch(r'up\{job="([^"]+)"\}', expr.strip())
    assert match, f"instance:pipemon_up:selected reads {expr!r}"
    return match.group(1)


def test_service_monitor_job_is_the_rules_job(default):
    (endpoint,) = default.one("ServiceMonitor")["spec"]["endpoints"]
    jobs = [r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert jobs == [job_selector_of_the_rules()]
    monitor = default.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == (
        default.one("Service")["spec"]["selector"])


def test_job_name_is_written_into_the_rules(chart):
    rendered = render(chart, merged(BASE, {"serviceMonitor": {"jobName": "media-pipemon"}}))
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["relabelings"][0]["replacement"] == "media-pipemon"
    specs = rule_sources(rendered)
    for source, spec in specs.items():
        expected = yaml.safe_load(with_links(source))
        for group in expected["groups"]:
            for rule in group["rules"]:
                if rule.get("record") == "instance:pipemon_up:selected":
                    rule["expr"] = 'up{job="media-pipemon"}'
        assert spec == expected, source


def test_replicas_are_safe_to_scale(chart):
    """Each replica is one target of the same job: the rules fold replicas with
    `max without (instance, pod)`, and the Operator labels each target with its pod."""
    rendered = render(chart, merged(BASE, {"replicas": 3}))
    assert rendered.one("Deployment")["spec"]["replicas"] == 3
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    recording = (ROOT / "rules" / "pipemon-recording.yaml").read_text()
    assert "max without (instance, pod)" in recording


# ------------------------------------------------------------------------------------------------
# The Dockerfile (not built here: no Docker daemon; checked against the chart)

def dockerfile() -> dict[str, list[Any]]:
    """Instruction -> its parsed commands, in order (BuildKit's own parser)."""
    found: dict[str, list[Any]] = {}
    for command in dockerfile_parser.parse_file(str(ROOT / "Dockerfile")):
        found.setdefault(command.cmd.upper(), []).append(command)
    return found


def test_dockerfile_matches_the_chart(chart, default):
    docker = dockerfile()
    pod = default.one("Deployment")["spec"]["template"]["spec"]
    container = default.container()

    (user,) = (c.value[0] for c in docker["USER"])
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user} must be numeric (runAsNonRoot)"
    uid, gid = map(int, user.split(":"))
    assert (uid, gid) == (pod["securityContext"]["runAsUser"],
                          pod["securityContext"]["runAsGroup"])
    assert uid == container["securityContext"]["runAsUser"]

    # Exec form, so that pipemon is PID 1 and gets the kubelet's SIGTERM.
    (entrypoint,) = docker["ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("pipemon",)
    (cmd,) = docker["CMD"]
    assert cmd.json
    cmd = list(cmd.value)
    assert cmd[0] == container["args"][0] == "serve"
    assert cmd[cmd.index("--config") + 1] == "/etc/pipemon/config/pipemon.yaml"
    assert "--config=/etc/pipemon/config/pipemon.yaml" in container["args"]
    assert cmd[cmd.index("--web.listen-address") + 1] == ":9864"
    (expose,) = docker["EXPOSE"]
    assert expose.value == (str(container["ports"][0]["containerPort"]),)

    args = dict(c.value[0].split("=", 1) for c in docker["ARG"])
    assert args["VERSION"] == (ROOT / "VERSION").read_text().strip() == (
        chart.metadata["appVersion"])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}",
                        args["BASE_IMAGE"]), args["BASE_IMAGE"]
    assert [c.value[0] for c in docker["FROM"]] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    labels = dict(zip(*[iter(docker["LABEL"][-1].value)] * 2, strict=True))
    assert labels["org.opencontainers.image.version"] == '"${VERSION}"'

    installs = [c.value[0] for c in docker["RUN"] if "pip install" in c.value[0]]
    assert installs and not any("[test]" in r for r in installs)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repository) out of the context."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies():
    sources = [s for c in dockerfile()["COPY"] if not c.flags for s in c.value[:-1]]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source.rstrip("/")), f".dockerignore drops {source}"
        for sub in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
            rel = sub.relative_to(ROOT).as_posix()
            assert "__pycache__" in rel or not dockerignored(rel), rel
    # What pyproject.toml needs to build: its readme and the version file.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'readme = "README.md"' in pyproject and "README.md" in sources
    assert 'file = "VERSION"' in pyproject and "VERSION" in sources
    # and nothing else of the repository.
    for other in ("tests/test_helm.py", ".venv/bin/python", "helm/pipemon/Chart.yaml",
                  "exporter/pipemon/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(other), other


# ------------------------------------------------------------------------------------------------
# pipemon relay

def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_relay_pods_are_apart_from_the_exporters(with_relay):
    exporter = with_relay.named("Deployment", RELEASE)
    relay = with_relay.named("Deployment", f"{RELEASE}-relay")
    assert relay["spec"]["replicas"] == 2
    exporter_service = with_relay.named("Service", RELEASE)["spec"]["selector"]
    relay_service = with_relay.named("Service", f"{RELEASE}-relay")["spec"]["selector"]
    assert selects(relay_service, pod_labels(relay))
    assert not selects(relay_service, pod_labels(exporter))
    # The exporter's Service, PodDisruptionBudget and ServiceMonitor must not pick the relay.
    assert not selects(exporter_service, pod_labels(relay))
    assert not selects(with_relay.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                       pod_labels(relay))


def test_relay_migrates_then_serves_with_the_secrets_files(with_relay, tmp_path):
    from pipemon.relay.config import load as load_relay_config

    pod = with_relay.named("Deployment", f"{RELEASE}-relay")["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    (serve,) = pod["containers"]
    assert migrate["args"] == ["relay", "migrate",
                               "--config=/etc/pipemon-relay/config/migrate.yaml"]
    assert serve["args"][:3] == ["relay", "serve", "--config=/etc/pipemon-relay/config/relay.yaml"]
    assert "--web.listen-address=:9866" in serve["args"]
    assert serve["readinessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == RELAY_SECRET
    assert all(m.get("readOnly") for c in (migrate, serve) for m in c["volumeMounts"]
               if m["name"] != "tmp")

    # Both files are configs the relay accepts; migrations run as the schema owner.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, dsn in (("dsn", "postgresql://relay@db:5432/alerts"),
                     ("owner-dsn", "postgresql://owner@db:5432/alerts")):
        (secrets / key).write_text(dsn + "\n")
    (secrets / "token").write_text("t0ken\n")
    data = with_relay.named("ConfigMap", f"{RELEASE}-relay")["data"]
    users = {}
    for name in ("relay.yaml", "migrate.yaml"):
        path = tmp_path / name
        path.write_text(data[name].replace("/etc/pipemon-relay/secrets/", f"{secrets}/"))
        config = load_relay_config(path, env={})
        users[name] = config.database.dsn.reveal().split("//")[1].split("@")[0]
        assert config.bearer_token.reveal() == "t0ken"
    assert users == {"relay.yaml": "relay", "migrate.yaml": "owner"}


def test_relay_is_scraped_as_the_job_its_alert_reads(with_relay):
    monitor = with_relay.named("ServiceMonitor", f"{RELEASE}-relay")
    (endpoint,) = monitor["spec"]["endpoints"]
    (job,) = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    alerts = yaml.safe_load((ROOT / "rules" / "pipemon-alerts.yaml").read_text())
    (down,) = [r for g in alerts["groups"] for r in g["rules"]
               if r.get("alert") == "PipemonRelayDown"]
    assert f'up{{job="{job}"}}' in down["expr"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_alertmanager_sends_to_the_charts_relay_unless_told_otherwise(chart, with_relay):
    config = yaml.safe_load(alertmanager_secret(with_relay)["alertmanager.yaml"])
    (relay,) = [r for r in config["receivers"] if r["name"] == "relay"]
    assert relay["webhook_configs"][0]["url"] == (
        f"http://{RELEASE}-relay.{NAMESPACE}.svc:9866/webhook")
    elsewhere = render(chart, merged(RELAY, {"alertmanager": {"settings": {
        "relay": {"url": "https://relay.example/webhook"}}}}))
    config = yaml.safe_load(alertmanager_secret(elsewhere)["alertmanager.yaml"])
    (relay,) = [r for r in config["receivers"] if r["name"] == "relay"]
    assert relay["webhook_configs"][0]["url"] == "https://relay.example/webhook"
    without = yaml.safe_load(alertmanager_secret(render(chart, merged(
        BASE, {"alertmanager": {"enabled": True}})))["alertmanager.yaml"])
    assert "relay" not in [r["name"] for r in without["receivers"]]


def test_relay_needs_its_secret(chart):
    message = render_error(chart, merged(BASE, {"relay": {"enabled": True}}))
    assert "relay.existingSecret is required while relay.enabled is true" in message
