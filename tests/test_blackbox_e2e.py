"""The endpoint path end to end: HTTP endpoints -> Debian's real blackbox_exporter with the
shipped modules (examples/blackbox.yml) -> Debian's Prometheus scraping it with the shipped scrape
job (examples/prometheus-blackbox.yaml: its params and relabeling, only the targets, the
exporter's address and the interval replaced) and evaluating the shipped rules/infra-alerts.yaml
unchanged.

Four local HTTP servers on free loopback ports stand for two regions:
  eu  api-eu-1 answers 200 at once (healthy); api-eu-2 answers 200 after 200 ms (slow: above the
      100 ms latency warning, below the probe timeout)
  us  api-us-1 starts answering 500; api-us-2's server stops (connection refused)
The test asserts through the Prometheus API that the failing probes read 0, the uptime recording
rules hold the share of successful probes (1 for eu, in between for us, the region the mean of
its endpoints), the health state is 0 / 1 / 2 / 2, and PipemonEndpointRegionDown (region us, every
endpoint failing) and PipemonEndpointDown (each us endpoint) reach `firing` in ALERTS.

Like the other end-to-end tests, the rules are not rewritten: their `for:` durations are the real
ones (1m for PipemonEndpointDown, 30s for the region), so the test waits about 75 s. Only the scrape
and evaluation interval is 1 s instead of 30 s / 15 s, so the probes of a minute are many more.
PipemonEndpointUptimeLow needs an hour of probes and is proven by its promtool tests instead.
"""

from __future__ import annotations

import http.server
import time

import pytest
import yaml

from testkit import ROOT
from testkit.net import LoopbackServer, wait_until
from testkit.processes import BlackboxExporter
from testkit.prometheus import Prometheus

pytestmark = [pytest.mark.e2e]

SLOW = 0.2  # seconds: above the 100 ms warning, below the probe timeout (1 s scrape - 0.5 s)


class Endpoint:
    """A health endpoint on a free loopback port: `mode` ok (200), slow (200 after SLOW s) or
    fail (500); `stop()` closes the port (connection refused)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if endpoint.mode == "slow":
                    time.sleep(SLOW)
                status = 500 if endpoint.mode == "fail" else 200
                body = b"ok\n" if status == 200 else b"failing\n"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.server = LoopbackServer(server).start()
        self.url = f"http://127.0.0.1:{self.server.port}/health"
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop()


def blackbox_job(exporter: str, targets: dict[str, list[str]]) -> dict:
    """The job of examples/prometheus-blackbox.yaml with these targets (region -> URLs), probed
    through `exporter` every second."""
    [job] = yaml.safe_load((ROOT / "examples" / "prometheus-blackbox.yaml").read_text())[
        "scrape_configs"]
    job = {**job, "scrape_interval": "1s", "scrape_timeout": "1s",
           "static_configs": [{"targets": urls, "labels": {"region": region}}
                              for region, urls in targets.items()]}
    relabels = [r for r in job["relabel_configs"] if r.get("target_label") == "__address__"]
    assert len(relabels) == 1, job["relabel_configs"]
    relabels[0]["replacement"] = exporter
    return job


@pytest.fixture
def endpoints():
    made = {"eu-1": Endpoint(), "eu-2": Endpoint("slow"), "us-1": Endpoint(),
            "us-2": Endpoint()}
    yield made
    for endpoint in made.values():
        endpoint.stop()


@pytest.fixture
def stack(tmp_path, endpoints):
    blackbox = BlackboxExporter(tmp_path / "blackbox")
    prometheus = None
    try:
        blackbox.start()
        targets = {"eu": [endpoints["eu-1"].url, endpoints["eu-2"].url],
                   "us": [endpoints["us-1"].url, endpoints["us-2"].url]}
        prometheus = Prometheus(tmp_path / "prometheus", targets=[], job="unused",
                                rule_files=[ROOT / "rules" / "infra-alerts.yaml"],
                                interval="1s",
                                scrape_configs=[blackbox_job(blackbox.target, targets)])
        prometheus.start()
        yield prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        blackbox.stop()


def wait_equal(read, expected, timeout: float, what: str):
    """Poll `read()` until it returns `expected`; fail with the last value it returned."""
    seen: list = []

    def check() -> bool:
        seen[:] = [read()]
        return seen[0] == expected

    try:
        wait_until(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; expected {expected!r}, last read "
                             f"{seen[0] if seen else None!r}") from None


def by_instance(prometheus: Prometheus, expr: str) -> dict[str, float]:
    return {r["metric"].get("instance"): float(r["value"][1]) for r in prometheus.query(expr)}


def firing(prometheus: Prometheus, alertname: str) -> list[dict]:
    return [r["metric"] for r in prometheus.query(
        f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')]


def test_blackbox_probes_to_uptime_health_and_alerts(endpoints, stack):
    prometheus = stack
    url = {name: endpoint.url for name, endpoint in endpoints.items()}
    names = {u: n for n, u in url.items()}

    def states() -> dict[str, float]:
        return {names.get(k, k): v
                for k, v in by_instance(prometheus, "endpoint:pipemon_health:state").items()}

    # Healthy start: every probe succeeds; the slow endpoint is degraded, the rest healthy.
    wait_equal(lambda: by_instance(prometheus, "probe_success"), {u: 1.0 for u in url.values()},
               30, "every probe to succeed")
    wait_equal(states, {"eu-1": 0.0, "eu-2": 1.0, "us-1": 0.0, "us-2": 0.0}, 30,
               "the health states of the healthy start")
    assert not firing(prometheus, "PipemonEndpointDown")

    # The fault: us-1 answers 500, us-2 refuses connections.
    endpoints["us-1"].mode = "fail"
    endpoints["us-2"].stop()
    failed_at = time.monotonic()
    wait_equal(lambda: by_instance(prometheus, "probe_success"),
               {url["eu-1"]: 1.0, url["eu-2"]: 1.0, url["us-1"]: 0.0, url["us-2"]: 0.0},
               30, "the us probes to fail and the eu probes to succeed")
    expected = {"eu-1": 0.0, "eu-2": 1.0, "us-1": 2.0, "us-2": 2.0}
    wait_equal(states, expected, 30, "the health states of the fault")

    # The region alert after its 30 s, then the endpoint alerts after their minute.
    region = wait_until(lambda: firing(prometheus, "PipemonEndpointRegionDown"), 60,
                        "PipemonEndpointRegionDown to fire")
    assert [(a["region"], a["severity"]) for a in region] == [("us", "critical")]
    assert time.monotonic() - failed_at >= 30
    down = wait_until(lambda: len(firing(prometheus, "PipemonEndpointDown")) == 2
                      and firing(prometheus, "PipemonEndpointDown"), 90,
                      "PipemonEndpointDown to fire for both us endpoints")
    assert sorted(names[a["instance"]] for a in down) == ["us-1", "us-2"]
    assert {(a["region"], a["severity"]) for a in down} == {("us", "critical")}
    assert time.monotonic() - failed_at >= 60

    # Uptime: the share of the probes that succeeded (a probe or two apart from the raw count,
    # which is read a moment after the rule was evaluated).
    uptime = by_instance(prometheus, "endpoint:pipemon_uptime:ratio_24h")
    raw = by_instance(prometheus, "avg_over_time(probe_success[24h])")
    probes = by_instance(prometheus, "count_over_time(probe_success[24h])")
    assert uptime[url["eu-1"]] == 1.0 and uptime[url["eu-2"]] == 1.0
    for name in ("us-1", "us-2"):
        u = url[name]
        assert 0.0 < uptime[u] < 0.5, (name, uptime[u])  # healthy ~10 s, failing over 60 s
        assert abs(uptime[u] - raw[u]) <= 3 / probes[u], (name, uptime[u], raw[u], probes[u])
    regions = {r["metric"]["region"]: float(r["value"][1])
               for r in prometheus.query("region:pipemon_uptime:ratio_24h")}
    assert regions["eu"] == 1.0
    assert regions["us"] == pytest.approx((uptime[url["us-1"]] + uptime[url["us-2"]]) / 2,
                                          abs=0.02)
    assert states() == expected
    # Nothing about eu: it never failed (its latency alert needs 2 minutes of slowness).
    assert not [a for a in firing(prometheus, "PipemonEndpointDown") if a["region"] == "eu"]
