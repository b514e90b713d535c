"""The fake Trigger.dev (testkit.fake_trigger) against the real server's behaviour, read from
triggerdotdev/trigger.dev at b082e44 (2026-08-21): each test pins one behaviour to what that
source does, so a lenient fake cannot hide a client bug. No pipemon code is involved."""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

import pytest

from testkit.fake_trigger import FakeTrigger, iso
from testkit.net import stays, wait_until

KEY = "tr_prod_fakeTriggerTests"
V2 = "2025-07-16"
PROBLEM = "application/problem+json; charset=utf-8"
JSON = "application/json; charset=utf-8"


class Answer:
    def __init__(self, response: http.client.HTTPResponse, body: bytes):
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def ratelimit(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()
                if k.lower().startswith("x-ratelimit-")}


def get(fake: FakeTrigger, path: str, params=None, *, key: str | None = KEY,
        authorization: str | None = None, version: str | None = None) -> Answer:
    """One GET on a new connection; redirects are not followed."""
    query = urlencode(params or {})
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if version is not None:
        headers["x-trigger-api-version"] = version
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        conn.request("GET", path + (f"?{query}" if query else ""), headers=headers)
        response = conn.getresponse()
        return Answer(response, response.read())
    finally:
        conn.close()


def ids(answer: Answer) -> list[str]:
    assert answer.status == 200, answer.body
    return [run["id"] for run in answer.json()["data"]]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture
def fake():
    server = FakeTrigger(KEY).start()
    yield server
    server.stop()


@pytest.fixture
def now():
    return datetime.now(UTC).replace(microsecond=0)


# -- auth -------------------------------------------------------------------------------------

MISSING = {"title": "Unauthorized", "status": 401,
           "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
           "detail": "No authorization header provided",
           "error": "No authorization header provided"}


@pytest.mark.parametrize("authorization", [None, ""])
def test_missing_authorization_is_a_pretty_problem_without_rate_limit_headers(fake, authorization):
    # authorizationRateLimitMiddleware L261-280: `if (!authorizationValue)`, before the limiter
    answer = get(fake, "/api/v1/runs", key=None, authorization=authorization)
    assert answer.status == 401
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.body.decode() == json.dumps(MISSING, indent=2)
    assert answer.ratelimit() == {}


def test_route_level_401s_carry_rate_limit_headers(fake):
    for authorization, error in (("Bearer tr_prod_wrong", "Invalid API key"),
                                 # Fetch Headers trim "Bearer " to "Bearer", a token that fails
                                 ("Bearer ", "Invalid API key"),
                                 # only JavaScript's trim() empties this one
                                 ("Bearer \xa0", "Invalid or Missing API key")):
        answer = get(fake, "/api/v1/runs", authorization=authorization,
                     params={"page[size]": "0"})  # auth comes before the query (400)
        assert (answer.status, answer.json()) == (401, {"error": error}), authorization
        assert answer.headers["Content-Type"] == JSON
        assert set(answer.ratelimit()) == {"x-ratelimit-limit", "x-ratelimit-remaining",
                                           "x-ratelimit-reset"}
    # bearerCredentials L90-93: `.replace(/^Bearer /, "").trim()`: the bare key works too
    assert get(fake, "/api/v1/runs", authorization=f"  {KEY} ").status == 200


# -- rate limiting ----------------------------------------------------------------------------

def test_every_limited_answer_has_the_headers_and_reset_is_epoch_milliseconds(fake):
    before = ms(datetime.now(UTC))
    first, second = get(fake, "/api/v1/runs"), get(fake, "/api/v1/queues")
    assert first.ratelimit()["x-ratelimit-limit"] == "750"
    assert first.ratelimit()["x-ratelimit-remaining"] == "749"
    assert second.ratelimit()["x-ratelimit-remaining"] == "748"
    reset = int(first.ratelimit()["x-ratelimit-reset"])
    assert before < reset <= before + 10_000 + 1000  # the next refill, in ms
    for path, params, status in (("/api/v1/runs", {"page[size]": "0"}, 400),
                                 ("/api/v1/queues/nope", {"type": "task"}, 404),
                                 ("/api/v1/no-such-route", {}, 404)):
        answer = get(fake, path, params)
        assert answer.status == status
        assert "x-ratelimit-reset" in answer.ratelimit(), path
        assert "Retry-After" not in answer.headers


def test_an_empty_bucket_answers_429_problem_json():
    fake = FakeTrigger(KEY, max_tokens=2, refill=1, refill_seconds=60).start()
    try:
        remaining = [get(fake, "/api/v1/runs").ratelimit()["x-ratelimit-remaining"]
                     for _ in range(2)]
        assert remaining == ["1", "0"]
        answer = get(fake, "/api/v1/runs")
    finally:
        fake.stop()
    assert answer.status == 429
    assert answer.headers["Content-Type"] == PROBLEM
    assert "Retry-After" not in answer.headers
    body = answer.json()
    assert answer.body.decode() == json.dumps(body, indent=2)  # JSON.stringify(..., null, 2)
    assert list(body) == ["title", "status", "type", "detail", "reset", "limit", "remaining",
                          "secondsUntilReset", "error"]
    assert body["title"] == "Rate Limit Exceeded" and body["status"] == 429
    assert body["type"] == "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/429"
    assert (body["limit"], body["remaining"]) == (2, -1)  # the body's remaining is unclamped
    assert answer.ratelimit() == {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "0",
                                  "x-ratelimit-reset": str(body["reset"])}
    assert 0 < body["secondsUntilReset"] <= 60
    seconds = json.dumps(body["secondsUntilReset"])
    assert body["detail"] == body["error"] == \
        f"Rate limit exceeded 0/2 requests remaining. Retry in {seconds} seconds."


def test_throttle_for_sets_the_reset_and_the_bucket_refills(fake):
    fake.throttle_for(30)
    answer = get(fake, "/api/v1/runs")
    assert answer.status == 429
    reset = int(answer.ratelimit()["x-ratelimit-reset"])
    assert abs(reset - (ms(datetime.now(UTC)) + 30_000)) < 1500
    assert 28.5 < answer.json()["secondsUntilReset"] <= 30
    # another key is another bucket (sha256 of the header): its answer is the 401, not 429
    assert get(fake, "/api/v1/runs", key="tr_prod_other").status == 401
    fake.throttle_for(0.3)
    wait_until(lambda: get(fake, "/api/v1/runs").status == 200, 5, "the bucket to refill")


# -- API version and statuses -----------------------------------------------------------------

V1_NAMES = {"DELAYED": "DELAYED", "PENDING_VERSION": "PENDING_VERSION",
            "WAITING_FOR_DEPLOY": "WAITING_FOR_DEPLOY", "PENDING": "QUEUED",
            "DEQUEUED": "EXECUTING", "EXECUTING": "EXECUTING",
            "RETRYING_AFTER_FAILURE": "REATTEMPTING", "PAUSED": "FROZEN",
            "WAITING_TO_RESUME": "FROZEN", "CANCELED": "CANCELED",
            "COMPLETED_SUCCESSFULLY": "COMPLETED", "COMPLETED_WITH_ERRORS": "FAILED",
            "INTERRUPTED": "INTERRUPTED", "SYSTEM_FAILURE": "SYSTEM_FAILURE",
            "CRASHED": "CRASHED", "EXPIRED": "EXPIRED", "TIMED_OUT": "TIMED_OUT"}
V2_NAMES = {**V1_NAMES, "WAITING_FOR_DEPLOY": "PENDING_VERSION", "DEQUEUED": "DEQUEUED",
            "RETRYING_AFTER_FAILURE": "EXECUTING", "PAUSED": "WAITING",
            "WAITING_TO_RESUME": "WAITING", "INTERRUPTED": "FAILED"}


def booleans(status: str) -> dict[str, bool]:
    completed = status in {"COMPLETED", "CANCELED", "FAILED", "CRASHED", "INTERRUPTED",
                           "SYSTEM_FAILURE"}  # not EXPIRED, not TIMED_OUT
    return {"isQueued": status in {"QUEUED", "WAITING_FOR_DEPLOY", "DELAYED", "PENDING_VERSION"},
            "isExecuting": status in {"EXECUTING", "REATTEMPTING", "FROZEN", "DEQUEUED"},
            "isWaiting": status == "WAITING", "isCompleted": completed,
            "isSuccess": completed and status == "COMPLETED",
            "isFailed": completed and status != "COMPLETED", "isCancelled": status == "CANCELED"}


def test_status_names_and_booleans_follow_the_version_header(fake, now):
    runs = {fake.add_run("t", status, now - timedelta(minutes=i)): status
            for i, status in enumerate(V1_NAMES)}
    for version, names in ((None, V1_NAMES), ("2025-07-15", V1_NAMES), ("2026-01-01", V1_NAMES),
                           (V2, V2_NAMES)):
        data = get(fake, "/api/v1/runs", {"page[size]": "100"}, version=version).json()["data"]
        assert len(data) == len(runs)
        for item in data:
            expected = names[runs[item["id"]]]
            assert item["status"] == expected, (version, runs[item["id"]])
            assert {k: item[k] for k in booleans(expected)} == booleans(expected)


FILTERS = {"DELAYED": {"DELAYED"}, "PENDING_VERSION": {"PENDING_VERSION"},
           "WAITING_FOR_DEPLOY": {"WAITING_FOR_DEPLOY"}, "QUEUED": {"PENDING"},
           "EXECUTING": {"EXECUTING"}, "DEQUEUED": {"DEQUEUED"},
           "REATTEMPTING": {"RETRYING_AFTER_FAILURE"}, "FROZEN": {"PAUSED", "WAITING_TO_RESUME"},
           "WAITING": {"WAITING_TO_RESUME"}, "COMPLETED": {"COMPLETED_SUCCESSFULLY"},
           "FAILED": {"COMPLETED_WITH_ERRORS"}, "CANCELED": {"CANCELED"},
           "SYSTEM_FAILURE": {"SYSTEM_FAILURE"}, "INTERRUPTED": {"INTERRUPTED"},
           "CRASHED": {"CRASHED"}, "EXPIRED": {"EXPIRED"}, "TIMED_OUT": {"TIMED_OUT"}}


def test_status_filter_maps_either_vocabulary_to_internal_statuses(fake, now):
    runs = {fake.add_run("t", status, now - timedelta(minutes=i)): status
            for i, status in enumerate(V1_NAMES)}
    for token, internal in FILTERS.items():
        for version in (None, V2):  # the union is accepted whatever the header says
            found = ids(get(fake, "/api/v1/runs", {"filter[status]": token}, version=version))
            assert {runs[i] for i in found} == internal, (token, version)
    both = ids(get(fake, "/api/v1/runs", {"filter[status]": "WAITING,COMPLETED,WAITING"}))
    assert {runs[i] for i in both} == {"WAITING_TO_RESUME", "COMPLETED_SUCCESSFULLY"}
    # WAITING without the header still filters; the item then reads FROZEN
    waiting = get(fake, "/api/v1/runs", {"filter[status]": "WAITING"}).json()["data"]
    assert [run["status"] for run in waiting] == ["FROZEN"]
    assert len(ids(get(fake, "/api/v1/runs", {"filter[status]": ""}))) == len(runs)  # no filter


@pytest.mark.parametrize(("value", "bad"), [("QUEUED, EXECUTING", " EXECUTING"),
                                            ("queued,FOO", "queued, FOO"),
                                            ("COMPLETED,", "")])
def test_status_filter_is_case_sensitive_and_untrimmed(fake, value, bad):
    answer = get(fake, "/api/v1/runs", {"filter[status]": value})
    assert answer.status == 400
    assert answer.headers["Content-Type"] == JSON
    assert answer.json() == {"error": "Query Error", "details": [
        {"code": "custom", "message": f"Invalid status values: {bad}",
         "path": ["filter[status]"]}]}


# -- the runs list ----------------------------------------------------------------------------

def test_run_item_shape(fake, now):
    done = fake.add_run("resize", "COMPLETED_SUCCESSFULLY", now - timedelta(minutes=3),
                        started=now - timedelta(minutes=2), finished=now - timedelta(minutes=1))
    crashed = fake.add_run("resize", "CRASHED", now - timedelta(minutes=4))  # finishedAt=updatedAt
    running = fake.add_run("resize", "EXECUTING", now - timedelta(minutes=5),
                           started=now - timedelta(minutes=5))
    delayed = fake.add_run("resize", "DELAYED", now - timedelta(minutes=6),
                           delayed_until=now + timedelta(hours=1))
    data = {run["id"]: run for run in get(fake, "/api/v1/runs", version=V2).json()["data"]}
    assert data[done] == {
        "id": done, "status": "COMPLETED", "taskIdentifier": "resize",
        "createdAt": iso(now - timedelta(minutes=3)), "updatedAt": iso(now - timedelta(minutes=1)),
        "startedAt": iso(now - timedelta(minutes=2)), "finishedAt": iso(now - timedelta(minutes=1)),
        "isTest": False, "env": {"id": data[done]["env"]["id"], "name": "prod"}, "tags": [],
        "costInCents": 0, "baseCostInCents": 0, "durationMs": 0, "depth": 0,
        "taskKind": "STANDARD", "isQueued": False, "isExecuting": False, "isCompleted": True,
        "isFailed": False, "isSuccess": True, "isCancelled": False, "isWaiting": False}
    assert done.startswith("run_")
    assert data[crashed]["finishedAt"] == data[crashed]["updatedAt"]
    assert "finishedAt" not in data[running] and "startedAt" in data[running]
    assert data[delayed]["delayedUntil"] == iso(now + timedelta(hours=1))
    assert "startedAt" not in data[delayed]
    assert all("queue" not in run for run in data.values())


def test_time_window_period_from_to_and_the_7_day_default(fake, now):
    day = timedelta(days=1)
    runs = {fake.add_run("t", "PENDING", now - age): name
            for name, age in (("1d", day), ("8d", 8 * day), ("40d", 40 * day),
                              ("future", -timedelta(hours=1)))}

    def window(**params):
        query = {f"filter[createdAt][{k}]": v for k, v in params.items()}
        return {runs[i] for i in ids(get(fake, "/api/v1/runs", query))}

    assert window() == {"1d", "future"}  # default "7d"
    assert window(period="30d") == {"1d", "8d", "future"}
    assert window(period="2d", **{"from": str(ms(now - 50 * day))}) == {"1d", "future"}
    assert window(**{"from": str(ms(now - 10 * day))}) == {"1d", "8d", "future"}  # epoch ms
    assert window(**{"from": iso(now - 10 * day)}) == {"1d", "8d", "future"}  # ISO
    assert window(to=str(ms(now - 2 * day))) == {"8d", "40d"}  # no lower bound
    assert window(to=iso(now + 2 * timedelta(hours=1))) == {"1d", "8d", "40d"}  # clamped to now
    assert window(period="whenever") == set(runs.values())  # unparsable: no bound at all
    answer = get(fake, "/api/v1/runs", {"filter[createdAt][from]": "yesterday"})
    assert (answer.status, answer.json()) == (400, {"error": "Query Error", "details": [
        {"code": "invalid_date", "path": ["filter[createdAt][from]"], "message": "Invalid date"}]})


def test_queue_and_task_filters_match_exactly(fake, now):
    default = fake.add_run("a", "PENDING", now - timedelta(minutes=1))
    custom = fake.add_run("b", "PENDING", now - timedelta(minutes=2), queue="uploads")
    assert ids(get(fake, "/api/v1/runs", {"filter[queue]": "a"})) == []  # no task/ prefix added
    assert ids(get(fake, "/api/v1/runs", {"filter[queue]": "task/a"})) == [default]
    assert ids(get(fake, "/api/v1/runs", {"filter[queue]": "uploads"})) == [custom]
    assert ids(get(fake, "/api/v1/runs", {"filter[queue]": "task/a,uploads"})) == [default, custom]
    assert ids(get(fake, "/api/v1/runs", {"filter[taskIdentifier]": "b"})) == [custom]
    assert ids(get(fake, "/api/v1/runs", {"filter[taskIdentifier]": "a,b"})) == [default, custom]


def test_pagination_forward_and_backward_with_opaque_cursors(fake, now):
    r1, r2, r3, r4, r5 = (fake.add_run("t", "PENDING", now - timedelta(minutes=i))
                          for i in range(1, 6))

    def page(**params):
        answer = get(fake, "/api/v1/runs", {"page[size]": "2", **params})
        return ids(answer), answer.json()["pagination"]

    first, p1 = page()
    assert first == [r1, r2] and set(p1) == {"next"}  # no previous without a cursor
    cursor = json.loads(base64.urlsafe_b64decode(p1["next"] + "=="))
    assert cursor == {"c": ms(now - timedelta(minutes=2)), "r": r2.removeprefix("run_")}
    second, p2 = page(**{"page[after]": p1["next"]})
    assert second == [r3, r4] and set(p2) == {"next", "previous"}
    third, p3 = page(**{"page[after]": p2["next"]})
    assert third == [r5] and set(p3) == {"previous"}
    # backward: the ASC rows are sliced, not reversed, so the page is oldest-first
    back, pb = page(**{"page[before]": p3["previous"]})
    assert back == [r4, r3] and set(pb) == {"next", "previous"}
    front, pf = page(**{"page[before]": pb["previous"]})
    assert front == [r2, r1] and set(pf) == {"next"}
    assert page(**{"page[after]": p1["next"], "page[before]": p3["previous"]})[0] == [r4, r3]
    # a legacy bare run id cursor: run_id < cursor, whatever the created_at order
    assert page(**{"page[after]": r3.removeprefix("run_")})[0] == [r1, r2]
    assert get(fake, "/api/v1/runs", {"page[after]": "%%not a cursor"}).status == 200


def test_page_size_default_limit_and_errors(fake, now):
    for i in range(30):
        fake.add_run("t", "PENDING", now - timedelta(seconds=i))
    answer = get(fake, "/api/v1/runs")
    assert len(ids(answer)) == 25 and "next" in answer.json()["pagination"]
    assert len(ids(get(fake, "/api/v1/runs?page%5Bsize%5D=1&page%5Bsize%5D=3"))) == 3  # last wins
    assert len(ids(get(fake, "/api/v1/runs", {"page[size]": "2", "bogus": "x",
                                              "filter[nothing]": "y"}))) == 2
    too_big = {"code": "too_big", "maximum": 100, "type": "number", "inclusive": True,
               "exact": False, "message": "Number must be less than or equal to 100",
               "path": ["page[size]"]}
    positive = {"code": "too_small", "minimum": 0, "type": "number", "inclusive": False,
                "exact": False, "message": "Number must be greater than 0", "path": ["page[size]"]}
    at_least_1 = {"code": "too_small", "minimum": 1, "type": "number", "inclusive": True,
                  "exact": False, "message": "Number must be greater than or equal to 1",
                  "path": ["page[size]"]}
    for value, details in (
            ("101", [too_big]), ("0", [positive, at_least_1]),
            ("2.5", [{"code": "invalid_type", "expected": "integer", "received": "float",
                      "message": "Expected integer, received float", "path": ["page[size]"]}]),
            ("ten", [{"code": "invalid_type", "expected": "number", "received": "nan",
                      "path": ["page[size]"], "message": "Expected number, received nan"}])):
        answer = get(fake, "/api/v1/runs", {"page[size]": value})
        assert (answer.status, answer.json()) == \
            (400, {"error": "Query Error", "details": details}), value


# -- the ClickHouse replica -------------------------------------------------------------------

def test_replication_lag_hides_new_runs_until_copied(fake, now):
    fake.replication_lag = 0.3
    run = fake.add_run("t", "PENDING", now)
    assert ids(get(fake, "/api/v1/runs")) == []
    wait_until(lambda: ids(get(fake, "/api/v1/runs")) == [run], 5, "the replica to catch up")
    fake.pause_replication()
    later = fake.add_run("t", "PENDING", now + timedelta(seconds=1))
    stays(lambda: ids(get(fake, "/api/v1/runs")) == [run], 0.6,  # twice the lag: still hidden
          "the paused replica to hide the new run", interval=0.1)
    fake.replicate()
    assert ids(get(fake, "/api/v1/runs")) == [later, run]


def test_rows_are_hydrated_from_the_truth_and_filtered_again(fake, now):
    r1, r2, r3 = (fake.add_run("t", "EXECUTING", now - timedelta(minutes=i)) for i in (1, 2, 3))
    fake.pause_replication()
    fake.update_run(r2, status="COMPLETED_SUCCESSFULLY", finished=now)
    every = {run["id"]: run for run in get(fake, "/api/v1/runs").json()["data"]}
    assert every[r2]["status"] == "COMPLETED" and every[r2]["finishedAt"] == iso(now)
    assert ids(get(fake, "/api/v1/runs", {"filter[status]": "COMPLETED"})) == []  # stale copy
    answer = get(fake, "/api/v1/runs", {"filter[status]": "EXECUTING", "page[size]": "2"})
    assert ids(answer) == [r1] and "next" in answer.json()["pagination"]  # short page, next
    fake.replicate()
    assert ids(get(fake, "/api/v1/runs", {"filter[status]": "COMPLETED"})) == [r2]
    fake.delete_run(r1)
    answer = get(fake, "/api/v1/runs", {"page[size]": "1"})
    assert ids(answer) == [] and "next" in answer.json()["pagination"]  # gone from Postgres
    assert ids(get(fake, "/api/v1/runs")) == [r2, r3]


# -- queues -----------------------------------------------------------------------------------

def test_queue_list_items_sorted_by_orderable_name(fake):
    fake.add_queue("zeta")
    fake.add_queue("alpha-custom", type="custom", running=2, queued=5, paused=True,
                   concurrency_limit=10)
    assert fake.add_queue("beta") == "task/beta"
    answer = get(fake, "/api/v1/queues")
    body = answer.json()
    assert [q["name"] for q in body["data"]] == ["alpha-custom", "beta", "zeta"]
    assert body["pagination"] == {"currentPage": 1, "totalPages": 1, "count": 3}
    item = body["data"][0]
    assert item["id"].startswith("queue_")
    assert item == {"id": item["id"], "name": "alpha-custom", "type": "custom", "running": 2,
                    "queued": 5, "paused": True, "concurrencyLimit": 10,
                    "concurrency": {"current": 10, "base": None, "override": None,
                                    "overriddenBy": None, "overriddenAt": None},
                    "releaseConcurrencyOnWaitpoint": True, "concurrencyLimitOverridePercent": None}
    assert body["data"][1]["type"] == "task"


def test_queue_list_pagination_clamp_and_errors(fake):
    assert get(fake, "/api/v1/queues").json() == \
        {"data": [], "pagination": {"currentPage": 1, "totalPages": 0, "count": 0}}
    for i in range(105):
        fake.add_queue(f"q{i:03d}")
    clamped = get(fake, "/api/v1/queues", {"perPage": "500"}).json()
    assert len(clamped["data"]) == 100  # clamped, not a 400
    assert clamped["pagination"] == {"currentPage": 1, "totalPages": 2, "count": 105}
    default = get(fake, "/api/v1/queues", {"page": "2"}).json()
    assert [q["name"] for q in default["data"]][:1] == ["q025"] and len(default["data"]) == 25
    assert default["pagination"]["totalPages"] == 5
    assert get(fake, "/api/v1/queues", {"page": "6"}).json()["data"] == []
    for key, value, code in (("page", "0", "too_small"), ("perPage", "0", "too_small"),
                             ("page", "x", "invalid_type"), ("perPage", "2.5", "invalid_type")):
        answer = get(fake, "/api/v1/queues", {key: value})
        assert answer.status == 400 and answer.json()["error"] == "Query Error"
        assert [(d["code"], d["path"]) for d in answer.json()["details"]] == [(code, [key])]


def test_queue_retrieve_by_id_task_and_custom(fake):
    fake.add_queue("my-task", queued=3)
    fake.add_queue("uploads", type="custom")
    queue_id = get(fake, "/api/v1/queues").json()["data"][0]["id"]
    assert get(fake, f"/api/v1/queues/{queue_id}").json()["name"] == "my-task"  # type=id default
    for param in ("my-task", quote("task%2Fmy-task")):  # the SDK's encoding of "task/my-task"
        answer = get(fake, f"/api/v1/queues/{param}", {"type": "task"})
        assert answer.json()["queued"] == 3 and answer.json()["id"] == queue_id
    assert get(fake, "/api/v1/queues/uploads", {"type": "custom"}).json()["type"] == "custom"
    for path, params in (("/api/v1/queues/my-task", {}), ("/api/v1/queues/uploads",
                                                         {"type": "task"})):
        answer = get(fake, path, params)
        assert (answer.status, answer.json()) == (404, {"error": "queue-not-found"})
    answer = get(fake, "/api/v1/queues/uploads", {"type": "name"})
    assert (answer.status, answer.json()) == (400, {"error": "Query Error", "details": [
        {"received": "name", "code": "invalid_enum_value", "options": ["id", "task", "custom"],
         "path": ["type"],
         "message": "Invalid enum value. Expected 'id' | 'task' | 'custom', received 'name'"}]})


def test_engine_v1_refuses_the_queue_routes_only(now):
    fake = FakeTrigger(KEY, engine="V1").start()
    try:
        fake.add_queue("a")
        fake.add_run("a", "PENDING", now)
        for path, params in (("/api/v1/queues", {}), ("/api/v1/queues/a", {"type": "task"})):
            answer = get(fake, path, params)
            assert (answer.status, answer.json()) == (400, {"error": "engine-version"})
        assert get(fake, "/api/v1/queues", {"page": "0"}).json()["error"] == "Query Error"
        assert len(ids(get(fake, "/api/v1/runs"))) == 1
        assert get(fake, "/api/v1/queues/a/metrics").status == 200  # no engine check there
    finally:
        fake.stop()


# -- queue metrics ----------------------------------------------------------------------------

def test_queue_metrics_shape_and_figures(fake):
    key = fake.add_queue("resize")
    now = datetime.now(UTC)
    fake.set_queue_metrics(key, wait_p50_ms=1200.5, wait_p95_ms=8000, peak_queued=42,
                           started=90, throttled=3, depth=[(now - timedelta(minutes=40), 5),
                                                           (now - timedelta(seconds=1), 9)])
    body = get(fake, "/api/v1/queues/resize/metrics").json()  # type=task, period=1h defaults
    start, end = (datetime.fromisoformat(body[k].replace("Z", "+00:00")) for k in ("from", "to"))
    assert end - start == timedelta(hours=1) and ms(end) % 300_000 == 0 and end >= now
    trend = body.pop("depthTrend")
    assert len(trend) == 12 and trend[0] == 0 and trend[-1] == 9 and set(trend) == {0, 5, 9}
    assert trend == sorted(trend)  # carried forward between samples
    assert body == {"queue": "task/resize", "period": "1h", "from": body["from"],
                    "to": body["to"], "waitMs": {"p50": 1200.5, "p95": 8000}, "peakQueued": 42,
                    "startedCount": 90, "startedPerMin": 1.5, "throttledCount": 3,
                    "bucketIntervalMs": 300_000}
    ghost = get(fake, "/api/v1/queues/ghost/metrics", {"type": "custom", "period": "24h"}).json()
    assert ghost["queue"] == "ghost" and ghost["bucketIntervalMs"] == 7_200_000
    assert ghost["waitMs"] == {"p50": None, "p95": None}  # unknown queue: zeros, not a 404
    assert (ghost["peakQueued"], ghost["startedCount"], ghost["startedPerMin"]) == (0, 0, 0)
    assert ghost["depthTrend"] == [0] * 12


def test_queue_metrics_parameter_errors(fake):
    regex = {"validation": "regex", "code": "invalid_string",
             "message": "period must be a shorthand like '15m', '1h', or '24h'", "path": ["period"]}
    too_large = {"code": "custom", "message": "period is too large (max 7d)", "path": ["period"]}
    for params, details in (({"period": "8d"}, [too_large]), ({"period": "0h"}, [regex]),
                            ({"period": "1y"}, [regex, too_large]),
                            ({"type": "id"}, [{"received": "id", "code": "invalid_enum_value",
                                               "options": ["task", "custom"], "path": ["type"],
                                               "message": "Invalid enum value. Expected 'task' |"
                                                          " 'custom', received 'id'"}])):
        answer = get(fake, "/api/v1/queues/x/metrics", params)
        assert (answer.status, answer.json()) == \
            (400, {"error": "Query Error", "details": details}), params
    assert get(fake, "/api/v1/queues/x/metrics", {"period": "7d"}).status == 200


def test_an_older_server_has_no_metrics_route():
    fake = FakeTrigger(KEY, queue_metrics=False).start()
    try:
        answer = get(fake, "/api/v1/queues/x/metrics")
        assert answer.status == 404
        assert answer.headers["Content-Type"].startswith("text/html")
        assert answer.body.lstrip().lower().startswith(b"<!doctype html")
        assert "x-ratelimit-limit" in answer.ratelimit()  # the limiter ran first
        assert get(fake, "/api/v1/queues/x/metrics", key=None).status == 401
    finally:
        fake.stop()


# -- transport and test hooks -----------------------------------------------------------------

def test_trailing_slash_redirects_before_auth(fake):
    answer = get(fake, "/api/v1/runs/", {"page[size]": "1"}, key=None)
    assert answer.status == 301
    assert answer.headers["Location"] == "/api/v1/runs?page%5Bsize%5D=1"
    assert answer.ratelimit() == {}


def test_every_answer_has_a_date_and_json_has_the_charset(fake):
    answers = [get(fake, "/api/v1/runs"), get(fake, "/api/v1/queues"),
               get(fake, "/api/v1/runs", key="tr_prod_nope"), get(fake, "/api/v1/runs", key=None),
               get(fake, "/api/v1/runs/"), get(fake, "/nowhere")]
    fake.throttle_for(5)
    answers.append(get(fake, "/api/v1/runs"))
    for answer in answers:
        moment = email.utils.parsedate_to_datetime(answer.headers["Date"])
        assert abs(moment - datetime.now(UTC)) < timedelta(seconds=5)
    assert [a.headers["Content-Type"] for a in answers[:3]] == [JSON] * 3


def test_hooks_record_fail_override_and_delay(fake):
    get(fake, "/api/v1/runs", {"page[size]": "5"}, version=V2)
    at, path, params, headers = fake.requests[-1]
    assert isinstance(at, float) and path == "/api/v1/runs" and params == {"page[size]": "5"}
    assert headers["authorization"] == f"Bearer {KEY}" and headers["x-trigger-api-version"] == V2
    fake.fail_with = (503, {"x-should-retry": "false"})
    answer = get(fake, "/api/v1/runs")
    assert (answer.status, answer.json()) == (503, {"error": "Service Unavailable"})
    assert answer.headers["x-should-retry"] == "false" and answer.ratelimit()
    assert get(fake, "/api/v1/runs", key="tr_prod_nope").status == 401  # auth still first
    fake.fail_with = (500, {}, b"<html>boom</html>")
    assert get(fake, "/api/v1/queues").body == b"<html>boom</html>"
    fake.fail_with = None
    fake.body_override = b'{"data": "not a list"}'
    answer = get(fake, "/api/v1/queues")
    assert (answer.status, answer.body) == (200, b'{"data": "not a list"}')
    fake.body_override = None
    fake.delay = 0.2
    started = time.monotonic()
    assert get(fake, "/api/v1/runs").status == 200
    assert time.monotonic() - started >= 0.2


def test_the_python_api_refuses_api_status_names_and_naive_times(fake, now):
    with pytest.raises(ValueError):
        fake.add_run("t", "COMPLETED", now)  # an API name, not a TaskRunStatus
    with pytest.raises(ValueError):
        fake.add_run("t", "PENDING", datetime.now())  # naive on purpose
    run = fake.add_run("t", "PENDING", now, run_id="run_fixed1")
    assert run == "run_fixed1"
    with pytest.raises(TypeError):
        fake.update_run(run, colour="blue")
