"""The storage source against a real S3 HTTP endpoint: moto's server on loopback, and a proxy in
front of it that injects the faults a real R2 or S3 shows (testkit/s3.py)."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import urllib.request

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipemon.config import ConfigError, load
from pipemon.scheduler import OVERRUN_GRACE
from pipemon.server import HttpServer
from testkit import ROOT
from testkit.app import sample, write_config
from testkit.net import wait_until
from testkit.s3 import BUCKET, Corrupt, Respond, Stall, Swallow

PROBE_PREFIX = "pipemon-probe/"
OPERATIONS = ("put", "get", "delete")
REASONS = ("timeout", "connect", "auth", "not_found", "throttled", "checksum", "server_error",
           "client_error")


def storage_source(endpoint: str, **overrides) -> dict:
    source = {
        "name": "r2", "kind": "storage", "endpoint_url": endpoint, "bucket": BUCKET,
        "access_key_id": "test-key", "secret_access_key": "test-secret",
        # 3 s for the probe's three calls together (the poll's deadline) on a busy test machine;
        # the tests of timeouts set their own
        "interval": "30s", "timeout": "3s",
    }
    source.update(overrides)
    return source


def keys(s3, prefix: str = PROBE_PREFIX) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", ())]


def success(app, source="r2"):
    return sample(app, "pipemon_storage_probe_success", source=source, bucket=BUCKET)


def failures(app, operation, reason, source="r2"):
    return sample(app, "pipemon_storage_probe_failures_total", source=source, bucket=BUCKET,
                  operation=operation, reason=reason)


def all_failures(app, source="r2", operations=OPERATIONS) -> dict[tuple[str, str], float]:
    """Every non-zero failure counter (all of them exist, zeros included)."""
    found = {(op, r): failures(app, op, r, source) for op in operations for r in REASONS}
    assert None not in found.values(), found
    return {key: value for key, value in found.items() if value}


def probes(app, operation, source="r2"):
    return sample(app, "pipemon_storage_probe_duration_seconds_count", source=source,
                  bucket=BUCKET, operation=operation)


def source_up(app, source="r2"):
    return sample(app, "pipemon_source_up", source=source, kind="storage")


pytestmark = pytest.mark.s3


# --- the probe ---


def test_probe_puts_gets_and_deletes_with_exact_counts(make_app, s3, moto):
    app = make_app([storage_source(moto.url)])
    assert all_failures(app) == {}  # every operation x reason is exported at 0 from the start
    for _ in range(3):
        assert app.poll_all_once()

    assert success(app) == 1
    assert [probes(app, op) for op in OPERATIONS] == [3, 3, 3]
    assert all_failures(app) == {}
    assert sample(app, "pipemon_storage_probe_duration_seconds_bucket", source="r2",
                  bucket=BUCKET, operation="put", le="10.0") == 3
    assert sample(app, "pipemon_storage_probe_duration_seconds_bucket", source="r2",
                  bucket=BUCKET, operation="put", le="+Inf") == 3
    assert source_up(app) == 1
    assert keys(s3) == []  # every probe object was deleted


def test_endpoint_stopped_mid_run_is_connect_and_recovers(make_app, s3, stoppable):
    app = make_app([storage_source(stoppable.url)])
    assert app.poll_all_once()
    assert success(app) == 1

    stoppable.stop()
    assert app.poll_all_once()  # the probe failed; the poll (pipemon's work) did not
    assert success(app) == 0
    assert all_failures(app) == {("put", "connect"): 1}
    assert source_up(app) == 1
    failure = app.health()["sources"][0]["last_probe_failure"]
    assert (failure["operation"], failure["reason"]) == ("put", "connect")

    stoppable.start()  # same port, same bucket (moto keeps its state per process)
    assert app.poll_all_once()
    assert success(app) == 1
    assert all_failures(app) == {("put", "connect"): 1}
    assert [probes(app, op) for op in OPERATIONS] == [2, 2, 2]
    assert app.health()["sources"][0]["last_probe_failure"] is None


def test_stalled_get_times_out_by_the_deadline_and_the_object_is_deleted_later(
        make_app, s3, proxy):
    """The probe's calls share the poll's deadline: a get that stalls fails the probe in time,
    and the object it could not delete is deleted after the next good probe."""
    app = make_app([storage_source(proxy.url, timeout="1s")])
    proxy.rule = lambda r: Stall() if r.method == "GET" else None
    started = time.monotonic()
    assert app.poll_all_once()
    assert time.monotonic() - started < 1.0 + OVERRUN_GRACE
    assert success(app) == 0
    assert all_failures(app) == {("get", "timeout"): 1}
    assert [probes(app, op) for op in OPERATIONS] == [1, 0, 0]
    [left] = keys(s3)

    proxy.rule = lambda r: None
    assert app.poll_all_once()
    assert success(app) == 1
    assert keys(s3) == [], f"{left} is still in the bucket after a good probe"


def test_put_whose_answer_is_lost_is_deleted_once_the_endpoint_answers(make_app, s3, proxy):
    """The put landed but its answer never came: the object is deleted after the next probe."""
    app = make_app([storage_source(proxy.url, timeout="1s", max_attempts=1)])
    proxy.rule = lambda r: Swallow() if r.method == "PUT" else None
    assert app.poll_all_once()
    assert all_failures(app) == {("put", "timeout"): 1}
    assert len(keys(s3)) == 1  # stored, though the put failed

    proxy.rule = lambda r: None
    assert app.poll_all_once()
    assert success(app) == 1
    assert keys(s3) == []
    assert probes(app, "delete") == 1  # the cleanup is not a probe: not measured


@pytest.mark.parametrize(("operation", "status", "code", "reason"), [
    ("PUT", 503, "SlowDown", "throttled"),
    ("PUT", 500, "InternalError", "server_error"),
    ("PUT", 403, "AccessDenied", "auth"),
    ("GET", 404, "NoSuchKey", "not_found"),
    ("DELETE", 400, "InvalidRequest", "client_error"),
])
def test_error_answers_are_counted_by_operation_and_reason(make_app, s3, proxy, operation,
                                                           status, code, reason):
    # The retry's backoff (up to 1 s) counts against the poll's deadline.
    app = make_app([storage_source(proxy.url, timeout="3s")])
    proxy.rule = lambda r: Respond(status, code) if r.method == operation else None
    assert app.poll_all_once()
    assert success(app) == 0
    assert all_failures(app) == {(operation.lower(), reason): 1}
    # A 5xx is retried once (bounded); a 4xx is not retried.
    sent = [r.method for r in proxy.seen].count(operation)
    assert sent == (2 if status >= 500 else 1)
    # Whatever failed after the put, the probe object was deleted, unless the delete failed.
    assert len(keys(s3)) == (1 if operation == "DELETE" else 0)


def test_one_throttled_answer_is_absorbed_by_the_retry(make_app, s3, proxy):
    # The retry's backoff (up to 1 s) counts against the poll's deadline.
    app = make_app([storage_source(proxy.url, timeout="3s")])
    puts = []

    def throttle_first_put(request):
        if request.method == "PUT":
            puts.append(request)
            if len(puts) == 1:
                return Respond(503, "SlowDown")
        return None

    proxy.rule = throttle_first_put
    assert app.poll_all_once()
    assert success(app) == 1
    assert all_failures(app) == {}
    assert len(puts) == 2


def test_corrupted_read_is_a_checksum_failure(make_app, s3, proxy):
    app = make_app([storage_source(proxy.url)])
    proxy.rule = lambda r: Corrupt() if r.method == "GET" else None
    assert app.poll_all_once()
    assert success(app) == 0
    assert all_failures(app) == {("get", "checksum"): 1}
    assert keys(s3) == []


def test_missing_bucket_is_not_found(make_app, s3, moto):
    app = make_app([storage_source(moto.url, bucket="no-such-bucket")])
    assert app.poll_all_once()
    assert sample(app, "pipemon_storage_probe_failures_total", source="r2",
                  bucket="no-such-bucket", operation="put", reason="not_found") == 1


def test_wrong_credentials_and_denied_access_are_auth(make_app, s3, moto):
    """moto checks SigV4 signatures and IAM policies once auth is switched on (process-wide)."""
    iam = boto3.session.Session().client("iam", endpoint_url=moto.url, region_name="us-east-1",
                                         aws_access_key_id="test-key",
                                         aws_secret_access_key="test-secret")
    try:
        writer = _user_with_policy(iam, "writer", ["s3:*"])
        reader = _user_with_policy(iam, "reader", ["s3:GetObject", "s3:ListBucket"])
    finally:
        iam.close()
    wrong_secret = "Wr0ng-secret-Access-Key-5d1e"
    app = make_app([
        storage_source(moto.url, name="good", access_key_id=writer[0],
                       secret_access_key=writer[1]),
        storage_source(moto.url, name="badsecret", access_key_id=writer[0],
                       secret_access_key=wrong_secret),
        storage_source(moto.url, name="unknownkey", access_key_id="AKIAPIPEMONUNKNOWN00",
                       secret_access_key="x" * 40),
        storage_source(moto.url, name="readonlykey", access_key_id=reader[0],
                       secret_access_key=reader[1]),
    ])
    moto.require_auth(True)
    try:
        assert app.poll_all_once()
    finally:
        moto.require_auth(False)
    assert success(app, "good") == 1
    for name in ("badsecret", "unknownkey", "readonlykey"):
        assert success(app, name) == 0, name
        assert all_failures(app, name) == {("put", "auth"): 1}, name
    shown = json.dumps(app.health())
    assert wrong_secret not in shown and writer[1] not in shown


def _user_with_policy(iam, name: str, actions: list[str]) -> tuple[str, str]:
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_read_only_mode_heads_and_lists_and_never_writes(make_app, s3, proxy):
    app = make_app([storage_source(proxy.url, read_only=True),
                    storage_source(proxy.url, name="gone", read_only=True, bucket="gone")])
    for _ in range(2):
        assert app.poll_all_once()
    assert success(app) == 1
    assert [probes(app, op) for op in ("head", "list")] == [2, 2]
    assert all_failures(app, operations=("head", "list")) == {}
    assert probes(app, "put") is None
    assert {r.method for r in proxy.seen} == {"HEAD", "GET"}
    assert sample(app, "pipemon_storage_probe_failures_total", source="gone", bucket="gone",
                  operation="head", reason="not_found") == 2


# --- the inventory ---


def seed(s3) -> None:
    for i, size in enumerate((10, 20, 30, 40, 50)):
        s3.put_object(Bucket=BUCKET, Key=f"stems/{i}.wav", Body=b"s" * size)
    s3.put_object(Bucket=BUCKET, Key="uploads/a.mp3", Body=b"u" * 100)
    s3.put_object(Bucket=BUCKET, Key="uploads/b.mp3", Body=b"u" * 200)
    s3.put_object(Bucket=BUCKET, Key="other/c.bin", Body=b"o" * 1000)


def inventory(app, metric, prefix):
    return sample(app, f"pipemon_storage_{metric}", source="r2", bucket=BUCKET, prefix=prefix)


def test_inventory_counts_objects_and_bytes_per_prefix_on_its_own_interval(make_app, s3,
                                                                           moto):
    seed(s3)
    app = make_app([storage_source(moto.url, inventory={
        "prefixes": ["stems/", "uploads/", "empty/"], "interval": "10m", "page_size": 2})])
    assert app.poll_all_once()
    assert [inventory(app, "objects", p) for p in ("stems/", "uploads/", "empty/")] == [5, 2, 0]
    assert [inventory(app, "bytes", p) for p in ("stems/", "uploads/", "empty/")] == \
        [150, 300, 0]
    assert [inventory(app, "inventory_truncated", p) for p in ("stems/", "uploads/")] == [0, 0]

    s3.put_object(Bucket=BUCKET, Key="stems/5.wav", Body=b"s" * 60)
    assert app.poll_all_once()  # the probe runs every poll, the inventory every 10m
    assert probes(app, "put") == 2
    assert inventory(app, "objects", "stems/") == 5


def test_inventory_page_cap_shows_as_truncated(make_app, s3, moto):
    seed(s3)
    app = make_app([storage_source(moto.url, inventory={
        "prefixes": ["stems/", "uploads/"], "max_pages": 2, "page_size": 2})])
    assert app.poll_all_once()
    assert inventory(app, "objects", "stems/") == 4  # two pages of two: a lower bound
    assert inventory(app, "bytes", "stems/") == 100
    assert inventory(app, "inventory_truncated", "stems/") == 1
    assert inventory(app, "objects", "uploads/") == 2  # exactly one page: complete
    assert inventory(app, "inventory_truncated", "uploads/") == 0


def test_failed_inventory_drops_its_counts_and_is_retried_next_poll(make_app, s3, proxy):
    seed(s3)
    app = make_app([storage_source(proxy.url, inventory={"prefixes": ["uploads/"]})])
    proxy.rule = lambda r: Respond(403, "AccessDenied") if "list-type" in r.query else None
    assert app.poll_all_once()
    assert success(app) == 1  # the probe does not list: it is fine
    assert inventory(app, "objects", "uploads/") is None
    assert sample(app, "pipemon_storage_inventory_errors_total", source="r2", bucket=BUCKET,
                  reason="auth") == 1

    proxy.rule = lambda r: None
    assert app.poll_all_once()
    assert inventory(app, "objects", "uploads/") == 2


# --- serving through it all ---


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def test_exporter_keeps_serving_while_storage_fails_and_recovers(make_app, s3, stoppable):
    app = make_app([storage_source(stoppable.url, interval="1s", timeout="1s")])
    server = HttpServer.of(app, "127.0.0.1", 0)
    server.start()
    app.start()
    try:
        line = 'pipemon_storage_probe_success{bucket="media",source="r2"}'
        wait_until(lambda: f"{line} 1.0" in scrape(server.port), 10, "a good probe")
        stoppable.stop()
        wait_until(lambda: f"{line} 0.0" in scrape(server.port), 10, "a failed probe")
        assert scrape(server.port, "/healthz") == "ok\n"
        assert failures(app, "put", "connect") >= 1
        stoppable.start()
        wait_until(lambda: f"{line} 1.0" in scrape(server.port), 10, "recovery")
    finally:
        app.stop()
        server.stop()


def counters(text: str) -> dict[tuple, float]:
    """Every counter and histogram sample of an exposition, by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def sockets_to(*ports: int) -> int:
    """Open client connections to the ports (ESTABLISHED or CLOSE_WAIT: a socket leaked by its
    owner stays in CLOSE_WAIT after the server hung up)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                remote_port, state = int(fields[2].rsplit(":", 1)[1], 16), fields[3]
                count += remote_port in ports and state in ("01", "08")
    return count


def threads() -> list[str]:
    """This process's threads by name, without the numbers Python gives unnamed ones (a
    restarted moto server has a new one) and the loopback servers' per-request threads."""
    return sorted(re.sub(r"^Thread-\d+ ", "", t.name) for t in threading.enumerate()
                  if "process_request_thread" not in t.name)


def test_storage_faults_in_a_row_leak_nothing_and_keep_counters_monotonic(make_app, s3, proxy,
                                                                          stoppable):
    """Endpoint gone, slow past the timeout, throttled, 500s, one after the other, with the
    scheduler running: each fault is reported with its reason on the faulty source only, the
    probe recovers once it heals, /metrics answers all along, counters never go backwards, and
    no thread, connection or probe object is left behind."""
    app = make_app([storage_source(proxy.url, interval="1s", timeout="1s"),
                    storage_source(stoppable.url, name="direct", interval="1s", timeout="1s")])
    server = HttpServer.of(app, "127.0.0.1", 0)
    server.start()
    app.start()
    history: list[dict] = []

    def observe() -> dict:
        history.append(counters(scrape(server.port)))
        return history[-1]

    def probe_ok(source: str) -> bool:
        observe()
        return success(app, source) == 1

    def failing(source: str, operation: str, reason: str):
        start = failures(app, operation, reason, source) or 0
        return lambda: observe() and (failures(app, operation, reason, source) or 0) > start

    slow = lambda request: time.sleep(2.5)  # noqa: E731 - then forwarded, too late
    phases = [
        ("direct", "endpoint gone", stoppable.stop, stoppable.start, "put", "connect"),
        ("r2", "slow", lambda: setattr(proxy, "rule", slow), None, "put", "timeout"),
        ("r2", "throttled", lambda: setattr(proxy, "rule", lambda r: Respond(503, "SlowDown")),
         None, "put", "throttled"),
        ("r2", "500s", lambda: setattr(proxy, "rule", lambda r: Respond(500, "InternalError")),
         None, "put", "server_error"),
    ]
    try:
        for source in ("r2", "direct"):
            wait_until(lambda source=source: probe_ok(source), 15, f"a good probe of {source}")
        before, connections = threads(), sockets_to(proxy.port, stoppable.port)
        for source, fault, inject, heal, operation, reason in phases:
            other = "direct" if source == "r2" else "r2"
            inject()
            wait_until(failing(source, operation, reason), 20, f"{fault}: {operation} {reason}")
            assert success(app, source) == 0, fault
            assert source_up(app, source) == 1, fault  # a failed probe is a measurement
            assert success(app, other) == 1, f"{fault} on {source} hurt {other}"
            (heal or (lambda: setattr(proxy, "rule", lambda r: None)))()
            wait_until(lambda source=source: probe_ok(source), 20, f"{source} after {fault}")
        assert scrape(server.port, "/healthz") == "ok\n"
        try:
            wait_until(lambda: threads() == before, 10, "the threads of before")
        except AssertionError:
            raise AssertionError(f"threads before: {before}; after: {threads()}") from None
        wait_until(lambda: sockets_to(proxy.port, stoppable.port) <= connections, 10,
                   f"at most {connections} connections to the endpoints")
    finally:
        app.stop()
        server.stop()
    # A put the slow endpoint held lands late, after its key was cleaned up: the next good
    # probes delete it again.
    wait_until(lambda: app.poll_all_once() and keys(s3) == [], 10,
               "no probe object left in the bucket")
    for before, after in itertools.pairwise(history):
        went_back = {key: (before[key], value) for key, value in after.items()
                     if key in before and value < before[key]}
        assert not went_back, went_back
    assert len(history) > 10


# --- config ---


def test_example_storage_config_is_valid():
    config = load(ROOT / "examples" / "storage.yaml", env={})
    [source] = config.sources
    assert (source.kind, source.region, source.addressing_style, source.probe_prefix) == \
        ("storage", "auto", "path", PROBE_PREFIX)
    assert source.inventory.prefixes == ("stems/", "uploads/")


def test_config_problems_are_reported(tmp_path):
    path = write_config(tmp_path / "bad.yaml", [
        {"name": "a", "kind": "storage", "bucket": "b", "endpoint_url": "r2.example.com",
         "access_key_id": "k", "inventory": {"prefixes": [], "page_size": 5000}},
    ])
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert sorted(err.value.problems) == sorted([
        "sources[0].secret_access_key: required when the other key is set (or set neither:"
        " boto3's default credential chain is then used)",
        "sources[0].endpoint_url: expected an http:// or https:// URL, got 'r2.example.com'",
        "sources[0].inventory.prefixes: expected a non-empty list of strings, got a list",
        "sources[0].inventory.page_size: S3 returns at most 1000 keys per page, got 5000",
    ])
