"""Every query of the platform's dashboards (service overview, regions, error tracking, system
health, migration progress, audio quality), run through a real Prometheus with real data.

What runs, on loopback (tests/test_dashboard_queries.py proves the pipeline's dashboards the
same way and lends this test its query walker):

* an instrumented HTTP service (testkit/service_app.py, prometheus-client) in two regions,
  region eu-west's uploads failing one in five, under load from the test; and a third region
  whose only deployment answers 503 on /health (its endpoint is down, its region too);
* Debian's blackbox_exporter probing each region's /health with examples/blackbox.yml, scraped
  the way examples/prometheus-blackbox.yaml relabels (region label per target);
* Debian's node_exporter (the hosts) and postgres_exporter (the database, the local PostgreSQL);
* pipemon itself (`pipemon serve`) on a moving job queue, analysis results with peak levels and
  loudness (tests/test_dashboard_queries.py's Pipeline), the migration's integrity checks as
  examples/checks.yaml ships them, and a source that cannot connect (its poll errors);
* kube-state-metrics and the kubelet (cAdvisor, volume stats): Debian has neither, so they are
  RECORDED FIXTURES (tests/fixtures/*.prom, in those exporters' names and labels) served as
  static /metrics pages. Nothing else is a fixture.

Prometheus loads every rule file (pipemon's, service-alerts, infra-alerts, kubernetes-alerts)
as shipped. Each query is run with the variables an alert link carries and with All, and must
return a sample that is not NaN. Two kinds of query cannot have data in a fresh Prometheus and
are proven as follows, never skipped: the throughput "same hour yesterday" series
(service:service_requests:rate1h_offset1d reads 23h30m back) from a backfilled day-old block of
the rate it averages; `ALERTS{alertstate="firing"}` after real alerts fire with the rules as
shipped (a queue failing a third of its jobs; the region whose only endpoint answers 503).
"""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from grafana.generate import build_all
from testkit import ROOT
from testkit.background import Ticker
from testkit.net import LoopbackServer, http_request, wait_until
from testkit.processes import (
    BlackboxExporter,
    Exporter,
    NodeExporter,
    PostgresExporter,
    ServiceApp,
)
from testkit.prometheus import Prometheus
from tests.test_dashboard_queries import (
    ALL,
    CONSTANT_LABELS,
    Pipeline,
    needs_firing_alerts,
    prove,
    queries,
    stack_sources,
    substitute,
)

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

RULES = [ROOT / "rules" / name for name in (
    "pipemon-recording.yaml", "pipemon-alerts.yaml", "service-alerts.yaml",
    "infra-alerts.yaml", "kubernetes-alerts.yaml")]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SERVICE = "api"
# Variable values per dashboard: those an alert's dashboard_url carries (then All).
VALUES = {
    "pipemon-service": {"service": SERVICE, "region": "eu-west"},
    "pipemon-regions": {"region": "eu-west", "endpoint": "http://127.0.0.1:.*"},
    "pipemon-errors": {"service": SERVICE},
    "pipemon-system-health": {"namespace": "media", "node": "127.0.0.1:.*",
                              "database": "127.0.0.1:.*"},
    "pipemon-migration": {"source": "integrity"},
    "pipemon-audio": {"source": "analysis"},
}


class StaticMetrics(LoopbackServer):
    """A recorded /metrics page (`path`), served as the exporter would."""

    def __init__(self, fixture: Path, path: str = "/metrics"):
        body = fixture.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                found = self.path == path
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(body)

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class Load(Ticker):
    """Requests to each region's service from a background thread: reads (some slow), uploads
    (the service fails its share), and a missing page now and then (404)."""

    ROUTES = (("GET", "/api/tracks"), ("GET", "/api/tracks"), ("POST", "/api/tracks"),
              ("GET", "/api/tracks"), ("POST", "/api/tracks"), ("GET", "/missing"))

    def __init__(self, urls: list[str]):
        super().__init__("load", 0.02)
        self.urls = urls
        self.sent = 0

    def step(self, session: None, i: int) -> None:
        method, path = self.ROUTES[i % len(self.ROUTES)]
        for url in self.urls:
            http_request(url + path, method=method, body=b"" if method == "POST" else None)
            self.sent += 1


def blackbox_job(exporter: str, targets: dict[str, list[str]]) -> dict:
    """The scrape job of examples/prometheus-blackbox.yaml with these targets (region -> URLs)
    and this exporter address, every second."""
    [job] = yaml.safe_load((ROOT / "examples" / "prometheus-blackbox.yaml").read_text())[
        "scrape_configs"]
    job = {**job, "scrape_interval": "1s", "scrape_timeout": "900ms",
           "static_configs": [{"targets": urls, "labels": {"region": region}}
                              for region, urls in targets.items()]}
    for relabel in job["relabel_configs"]:
        if relabel.get("target_label") == "__address__":
            relabel["replacement"] = exporter
    return job


def yesterday(now: float) -> str:
    """OpenMetrics text: service:service_requests:rate5m of the service, from 25 to 23 hours
    ago, every 15 s (what the throughput comparison averages 23h30m back)."""
    start = int(now) - 25 * 3600
    lines = ["# TYPE service:service_requests:rate5m gauge"]
    lines += [f'service:service_requests:rate5m{{service="{SERVICE}"}} 40 {t}'
              for t in range(start, start + 2 * 3600, 15)]
    return "\n".join([*lines, "# EOF", ""])


def test_every_platform_dashboard_query_returns_data(pg_dsn, services, tmp_path):
    dashboards = {m["uid"]: m for m in build_all().values() if m["uid"] in VALUES}
    assert sorted(dashboards) == sorted(VALUES)
    checks = []
    for uid, dashboard in dashboards.items():
        for values in (VALUES[uid], dict.fromkeys(VALUES[uid], ALL)):
            for where, expr in queries(dashboard):
                if values is not VALUES[uid] or where.startswith("panel"):
                    checks.append((f"{uid} {where} {values}", substitute(expr, values)))
    # those of pipemon's sources also as generated for constant labels, at the exporter's
    for uid, dashboard in ((m["uid"], m) for m in build_all(list(CONSTANT_LABELS)).values()
                           if m["uid"] in VALUES and m != dashboards[m["uid"]]):
        values = {**VALUES[uid], **CONSTANT_LABELS}
        checks += [(f"{uid} with labels {where}", substitute(expr, values))
                   for where, expr in queries(dashboard) if where.startswith("panel")]

    # the service in two healthy regions (eu-west fails uploads), one region down
    apps = {"us-west": services(ServiceApp(tmp_path / "us-west", SERVICE)),
            "eu-west": services(ServiceApp(tmp_path / "eu-west", SERVICE,
                                           "--fail-ratio", "0.2")),
            "ap": services(ServiceApp(tmp_path / "ap", SERVICE, "--unhealthy"))}
    blackbox = services(BlackboxExporter(tmp_path / "blackbox"))
    node = services(NodeExporter(tmp_path / "node"))
    postgres = services(PostgresExporter(tmp_path / "postgres_exporter", pg_dsn))
    kubernetes = {name: services(StaticMetrics(FIXTURES / f"{name}.prom", path))
                  for name, path in (("kube-state-metrics", "/metrics"),
                                     ("kubelet-cadvisor", "/metrics/cadvisor"),
                                     ("kubelet", "/metrics"))}

    pipeline = Pipeline(pg_dsn)
    pipeline.seed()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sources = [s for s in stack_sources(pg_dsn, "http://unused", scratch)
               if s["kind"] in ("queue", "analysis", "checks")]
    # the migration's checks as shipped (examples/checks.yaml), every second; a source that
    # cannot connect (poll errors)
    [integrity] = [s for s in sources if s["kind"] == "checks"]
    [shipped] = yaml.safe_load((ROOT / "examples" / "checks.yaml").read_text())["sources"]
    integrity["checks"] = [{**check, "interval": "1s"} for check in shipped["checks"]]
    sources.append({"name": "unreachable", "kind": "checks", "interval": "1s",
                    "timeout": "900ms", "dsn": "postgresql://postgres@127.0.0.1:1/none",
                    "checks": [{"name": "one", "sql": "SELECT 1 AS value"}]})
    exporter = services(Exporter(tmp_path / "exporter", sources,
                                 defaults={"labels": CONSTANT_LABELS}))

    jobs = [blackbox_job(blackbox.target, {region: [f"{app.url}/health"]
                                           for region, app in apps.items()}),
            {"job_name": SERVICE, "static_configs": [
                {"targets": [app.target], "labels": {"region": region}}
                for region, app in apps.items()]},
            {"job_name": "kube-state-metrics",
             "static_configs": [{"targets": [kubernetes["kube-state-metrics"].target]}]},
            {"job_name": "kubelet", "metrics_path": "/metrics/cadvisor",
             "static_configs": [{"targets": [kubernetes["kubelet-cadvisor"].target]}]},
            {"job_name": "kubelet-volumes",
             "static_configs": [{"targets": [kubernetes["kubelet"].target]}]}]
    prometheus = Prometheus(tmp_path / "prometheus", [exporter.target], RULES,
                            other_jobs={"node": {"targets": [node.target]},
                                        "postgres": {"targets": [postgres.target]}},
                            scrape_configs=jobs)
    prometheus.backfill(yesterday(time.time()))
    services(prometheus)
    load = Load([app.url for region, app in apps.items() if region != "ap"]).start()
    pipeline.start()
    try:
        wait_until(lambda: http_request(f"{prometheus.url}/-/ready")[0] == 200, 30,
                   "Prometheus to be ready")
        wait_until(lambda: prometheus.query('up{job="kubelet"} == 1'), 30,
                   "Prometheus to scrape the fixtures")
        pending = {where: expr for where, expr in checks if not needs_firing_alerts(expr)}
        firing = {where: expr for where, expr in checks if needs_firing_alerts(expr)}
        assert firing, "the annotations show firing alerts"
        for group, deadline in ((pending, 90), (firing, 120)):
            prove(prometheus, group, deadline)
        fired = set(prometheus.firing())
    finally:
        load.stop()
        pipeline.stop()
    assert load.error is None, f"the load failed: {load.error!r}"
    assert pipeline.error is None, f"the workload failed: {pipeline.error!r}"
    assert load.sent > 100, f"only {load.sent} requests were sent"
    assert fired, "the firing-alert queries were proven on real alerts"
