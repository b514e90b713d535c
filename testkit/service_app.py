"""A small HTTP service instrumented the way rules/service-alerts.yaml expects (prometheus-client):

    http_requests_total{service, code}                 every answer, by status code
    http_request_duration_seconds{service}             latency histogram
    app_operations_total{service, operation, outcome}  track uploads (success / failure)

It is the application the RED rules and the service dashboards watch, run for real on loopback:

    python -m testkit.service_app --service api --port 8080 [--fail-ratio 0.1] [--unhealthy]

Routes: GET /health (200; 503 with --unhealthy), GET /api/tracks (200 after 5-60 ms; every
10th call takes 250 ms), POST /api/tracks (a track upload: `--fail-ratio` of them answer 500 and
count as a failed operation), anything else 404, GET /metrics. The `region` label is the scrape
target's (Prometheus adds it), as a deployment per region would be labelled.
"""

from __future__ import annotations

import argparse
import itertools
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        self.service = service
        self.requests = Counter("http_requests", "HTTP answers by status code.",
                                ("service", "code"), registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds", "Time to answer.",
                                  ("service",), buckets=BUCKETS, registry=self.registry)
        self.operations = Counter("app_operations", "Business operations by outcome.",
                                  ("service", "operation", "outcome"), registry=self.registry)
        for outcome in ("success", "failure"):  # both series exist from the start
            self.operations.labels(service, "track_upload", outcome)


def handler(metrics: Metrics, fail_ratio: float, unhealthy: bool):
    calls = itertools.count()
    fail_every = round(1 / fail_ratio) if fail_ratio else 0

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the test reads metrics, not access logs
            pass

        def _answer(self, code: int, body: bytes = b"", content_type: str = "text/plain"):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _timed(self, route):
            start = time.monotonic()
            code = route()
            metrics.requests.labels(metrics.service, str(code)).inc()
            metrics.duration.labels(metrics.service).observe(time.monotonic() - start)

        def do_GET(self):
            if self.path == "/metrics":
                return self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            self._timed(self._get)

        def do_POST(self):
            self._timed(self._post)

        def _get(self) -> int:
            if self.path == "/health":
                code = 503 if unhealthy else 200
            elif self.path == "/api/tracks":
                n = next(calls)
                time.sleep(0.25 if n % 10 == 9 else 0.005 + 0.055 * (n % 7) / 6)
                code = 200
            else:
                code = 404
            self._answer(code)
            return code

        def _post(self) -> int:
            if self.path != "/api/tracks":
                self._answer(404)
                return 404
            failed = bool(fail_every) and next(calls) % fail_every == 0
            metrics.operations.labels(metrics.service, "track_upload",
                                      "failure" if failed else "success").inc()
            code = 500 if failed else 201
            self._answer(code)
            return code

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-ratio", type=float, default=0.0)
    parser.add_argument("--unhealthy", action="store_true")
    args = parser.parse_args()
    metrics = Metrics(args.service)
    server = ThreadingHTTPServer(("127.0.0.1", args.port),
                                 handler(metrics, args.fail_ratio, args.unhealthy))
    server.serve_forever()


if __name__ == "__main__":
    main()
