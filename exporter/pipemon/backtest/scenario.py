"""Scenario files: a simulated pipeline, what happens to it, and what the alerts must do.

```yaml
name: stall-workers-hung
category: fault                 # healthy | noise | fault (the report groups by it)
description: ...
duration: 2h                    # of the history; one sample every 15 s
seed: 11                        # the simulation is deterministic for a seed
replicas: 1                     # pipemon replicas scraped (HA: 2)
sources: [...]                  # kind queue | storage | analysis | checks | service, see
                                # docs/backtest.md;
                                # or the name of a shared pipeline in scenarios/pipelines/
events: [...]                   # faults and noise: kind, at, for/until, target, parameters
expect:
  quiet: [{from: 0s, to: 1h}]   # no warning or critical alert fires in these windows
  never: [{severity: critical}] # ... nor these at any time
  fire:                         # each must fire by its deadline
    - {after: 1h, severity: critical, within: 95s, labels: {queue: separate}}
  same_as_one_replica: true     # two replicas fire exactly what one fires
```
Problems are reported as `file: key.path: problem`, one per line, like the exporter's config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipemon.metrics import constant_label_problem
from pipemon.schema import (
    Node,
    boolean,
    duration,
    join_path,
    label_text,
    name,
    one_of,
    positive_duration,
    positive_int,
    string,
)

CATEGORIES = ("healthy", "noise", "fault")
SEVERITIES = ("critical", "warning", "info")
LIBRARY = Path(__file__).parent / "scenarios"
FOREVER = math.inf


class ScenarioError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Spread:
    """A lognormal distribution given by its median and 95th percentile (seconds)."""

    median: float
    p95: float

    @property
    def sigma(self) -> float:
        return math.log(self.p95 / self.median) / 1.6449


@dataclass(frozen=True)
class Arrivals:
    per_second: float  # the peak rate
    low: float = 1.0  # day/night: the trough as a fraction of the peak (1: flat)
    period: float = 0.0  # seconds of one day/night cycle; the run starts at the trough
    idle: tuple[tuple[float, float], ...] = ()  # windows with no arrivals at all

    def rate(self, t: float) -> float:
        if any(a <= t < b for a, b in self.idle):
            return 0.0
        if self.period <= 0 or self.low >= 1:
            return self.per_second
        night = (1 + math.cos(2 * math.pi * t / self.period)) / 2  # 1 at t=0, 0 at period/2
        return self.per_second * (1 - (1 - self.low) * night)


@dataclass(frozen=True)
class Workers:
    min: int
    max: int
    cold_start: tuple[float, float] = (0.0, 0.0)  # a new worker is ready after U(a, b) seconds
    idle_after: float = 300.0  # an idle worker above `min` leaves after this long


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arrivals: Arrivals
    run: Spread
    workers: Workers
    fail_ratio: float = 0.0
    cancel_ratio: float = 0.0


@dataclass(frozen=True)
class RegionSpec:
    """A region of an instrumented service: its request rate, spread evenly over its pods."""

    name: str
    arrivals: Arrivals  # the region's requests per second (day/night, idle hours)
    pods: int = 1


@dataclass(frozen=True)
class OperationSpec:
    """A business operation of a service (`app_operations_total{operation, outcome}`)."""

    name: str
    per_second: float
    fail_ratio: float = 0.0


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    queues: tuple[QueueSpec, ...] = ()
    stuck_after: float = 1800.0
    bucket: str = ""
    interval: float = 30.0
    latency: Spread | None = None
    per_second: float = 0.0
    success_ratio: float = 1.0
    duration: Spread | None = None
    checks: dict[str, float] = field(default_factory=dict)
    # kind service: an instrumented HTTP service Prometheus scrapes pod by pod (not pipemon)
    service: str = ""  # its `service` and `job` label
    regions: tuple[RegionSpec, ...] = ()
    error_ratio: float = 0.0  # share of requests answered 500
    operations: tuple[OperationSpec, ...] = ()
    # kind endpoint: HTTP endpoints that blackbox_exporter probes (region, URLs), with the
    # probes' `job` label; error_ratio is the share of probes that fail, latency their duration
    endpoints: tuple[tuple[str, tuple[str, ...]], ...] = ()
    job: str = ""
    # the exporter's config for it: its `labels:`, and its `name` when two environments' sources
    # share one (the scenario's `name` must be unique: events target it)
    labels: tuple[tuple[str, str], ...] = ()
    source_label: str = ""

    @property
    def exported(self) -> dict[str, str]:
        """The labels every series of this source carries."""
        return {"source": self.source_label or self.name, **dict(self.labels)}


@dataclass(frozen=True)
class Event:
    kind: str
    at: float
    until: float
    source: str = ""
    queue: str = ""
    params: dict = field(default_factory=dict)
    region: str = ""  # service events: one region of the service ("": every region)
    operation: str = ""  # operation_fail_ratio: the operation of the service

    def active(self, t: float) -> bool:
        return self.at <= t < self.until


@dataclass(frozen=True)
class Match:
    """Which alerts an expectation is about: a severity, optionally a name and labels."""

    severities: tuple[str, ...] = ("critical", "warning")
    alert: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def __call__(self, alert_labels: dict[str, str]) -> bool:
        if alert_labels.get("severity") not in self.severities:
            return False
        if self.alert and alert_labels.get("alertname") != self.alert:
            return False
        return all(alert_labels.get(k) == v for k, v in self.labels)

    def describe(self) -> str:
        parts = [self.alert or "any alert", "/".join(self.severities)]
        parts += [f"{k}={v}" for k, v in self.labels]
        return " ".join(parts)


@dataclass(frozen=True)
class Quiet:
    start: float
    end: float
    match: Match


@dataclass(frozen=True)
class Fire:
    after: float
    within: float
    match: Match
    escalate: tuple[float, float] | None = None  # level2, level3 deadlines after the critical
    healed: float | None = None
    resolved_within: float | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    category: str
    description: str
    duration: float
    seed: int
    replicas: int
    sources: tuple[SourceSpec, ...]
    events: tuple[Event, ...]
    quiet: tuple[Quiet, ...]
    fire: tuple[Fire, ...]
    same_as_one_replica: bool
    path: Path | None = None

    def with_replicas(self, replicas: int) -> Scenario:
        from dataclasses import replace

        return replace(self, replicas=replicas, same_as_one_replica=False)


# Number parsers; above the table of events, which uses them at import time.
def _non_negative(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return float(value)


def _ratio(value) -> float:
    number = _non_negative(value)
    if number > 1:
        raise ValueError(f"expected a ratio between 0 and 1, got {value!r}")
    return number


def _pod(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a pod index >= 0, got {value!r}")
    return value


def _none(target: str):
    kinds = {"source": "queue, storage, analysis or checks", "queue": "queue",
             "service": "service", "operation": "service with operations",
             "endpoint": "endpoint"}[target]

    def parse(value):
        raise ValueError(f"no source of kind {kinds} to target, got {value!r}")

    return parse


EVENT_KINDS = {
    # kind: (target, parameters with their parsers)
    "exporter_restart": ("", {"down": duration, "replica": int}),
    "scrape_gap": ("", {"replica": int}),
    "exporter_down": ("", {}),
    "source_down": ("source", {}),
    "fail_ratio": ("queue", {"value": float}),
    "workers_gone": ("queue", {}),
    "workers_hung": ("queue", {}),
    "redeploy": ("queue", {"pause": duration}),
    "slow": ("queue", {"factor": float}),
    "stuck_job": ("queue", {}),
    "arrivals": ("queue", {"factor": float}),
    "storage_outage": ("source", {}),
    "storage_slow": ("source", {"factor": float}),
    "analysis_degraded": ("source", {"success_ratio": float}),
    "audio_clipping": ("source", {"share": _ratio}),
    "loudness_shift": ("source", {"lu": float}),
    "check_value": ("source", {"check": string, "value": float}),
    # an instrumented service (kind service): `service: name` or `service: name/region`
    "service_errors": ("service", {"value": _ratio}),
    "service_slow": ("service", {"factor": _non_negative}),
    "service_traffic": ("service", {"factor": _non_negative}),
    "pod_restart": ("service", {"down": positive_duration, "pod": _pod}),
    "operation_fail_ratio": ("operation", {"value": _ratio}),
    # probed endpoints (kind endpoint): `endpoint: name` or `endpoint: name/region`
    "endpoint_down": ("endpoint", {"value": _ratio}),
    "endpoint_slow": ("endpoint", {"factor": _non_negative}),
}
OPTIONAL_PARAMS = ("exporter_restart", "scrape_gap", "redeploy", "pod_restart", "endpoint_down")


def first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def library() -> list[Path]:
    return sorted(LIBRARY.glob("*.yaml"))


def load(path: Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ScenarioError([f"{path}: {err}"]) from err
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}: expected a mapping at the top"])
    problems: list[str] = []
    node = Node(data, "", problems, path.parent)
    scenario = _scenario(node, path)
    node.finish()
    if problems:
        raise ScenarioError([f"{path}: {p}" for p in problems])
    return scenario


def _scenario(node: Node, path: Path) -> Scenario | None:
    run = node.get("duration", positive_duration)
    if isinstance(node.data.get("sources"), str):
        node.data["sources"] = _pipeline(node, node.data["sources"])
    sources = tuple(_source(n) for n in node.items("sources", required=True))
    pipemon = [s for s in sources if s.kind not in ("service", "endpoint")]
    services = [s for s in sources if s.kind == "service"]
    exported = [tuple(sorted(s.exported.items())) for s in pipemon]
    for twin in {e for e in exported if exported.count(e) > 1}:
        node.problem("sources", f"two sources export the same labels {dict(twin)}: give one a"
                                " `labels:` of its own")
    all_names = [s.name for s in sources]
    for twin in sorted({s.name for s in services if all_names.count(s.name) > 1}):
        node.problem("sources", f"two sources are named {twin!r}: events target a name")
    labels = [s.service for s in services]
    for twin in sorted({v for v in labels if labels.count(v) > 1}):
        node.problem("sources", f"two services export service={twin!r}: give one a `service:`"
                                " of its own")
    targets = {
        "source": {s.name for s in pipemon},
        "queue": {f"{s.name}/{q.name}" for s in sources for q in s.queues},
        "service": ({s.name for s in services}
                    | {f"{s.name}/{r.name}" for s in services for r in s.regions}),
        "operation": {f"{s.name}/{o.name}" for s in services for o in s.operations},
        "endpoint": ({s.name for s in sources if s.kind == "endpoint"}
                     | {f"{s.name}/{r}" for s in sources if s.kind == "endpoint"
                        for r, _ in s.endpoints}),
    }
    pods = {(s.name, r.name): r.pods for s in services for r in s.regions}
    events = tuple(_event(n, targets, pods) for n in node.items("events", allow_empty=True))
    expect = (node.child("expect", required=False)
              or Node({}, "expect", node.problems, node.base_dir))
    fire = tuple(_fire(n) for n in expect.items("fire", allow_empty=True))
    quiet = tuple(_quiet(n, run or 0) for n in expect.items("quiet", allow_empty=True))
    quiet += tuple(_quiet(n, run or 0, whole=True) for n in expect.items("never", allow_empty=True))
    if not any(q.start == 0 and q.match.alert == "" and "warning" in q.match.severities
               for q in quiet):
        # Before the first expected alert (or all along), nothing may fire.
        first = min((f.after for f in fire), default=run or 0)
        quiet += (Quiet(0.0, first, Match()),)
    same = expect.get("same_as_one_replica", boolean, False)
    expect.finish()
    result = Scenario(
        name=node.get("name", name),
        category=node.get("category", one_of(*CATEGORIES)),
        description=" ".join(str(node.get("description", string, "")).split()),
        duration=run,
        seed=node.get("seed", int, 1),
        replicas=node.get("replicas", positive_int, 1),
        sources=sources, events=events, quiet=quiet, fire=fire,
        same_as_one_replica=same, path=path)
    if result.same_as_one_replica and result.replicas < 2:
        node.problem("expect", "same_as_one_replica needs replicas: 2 or more")
    return result


def _pipeline(node: Node, pipeline: str) -> list:
    """`sources: standard` reads the sources of pipelines/standard.yaml (shared by scenarios)."""
    path = LIBRARY / "pipelines" / f"{pipeline}.yaml"
    try:
        sources = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        node.problem("sources", f"no pipeline {pipeline!r} ({path}): {err}")
        return []
    return sources if isinstance(sources, list) else []


def _source(node: Node) -> SourceSpec:
    kind = node.get("kind", one_of("queue", "storage", "analysis", "checks", "service",
                                   "endpoint"))
    labels = node.mapping("labels", label_text, {})
    for label in labels:
        problem = constant_label_problem(label)
        if problem:
            node.problem(join_path("labels", label), problem)
    common = {"name": node.get("name", name), "kind": kind,
              "labels": tuple(sorted(labels.items())),
              "source_label": node.get("source_label", name, "")}
    if kind == "queue":
        queues = tuple(_queue(n) for n in node.items("queues", required=True))
        spec = SourceSpec(**common, queues=queues,
                          stuck_after=node.get("stuck_after", positive_duration, 1800.0))
    elif kind == "storage":
        spec = SourceSpec(**common, bucket=node.get("bucket", name),
                          interval=node.get("interval", positive_duration, 30.0),
                          latency=_spread(node, "latency"))
    elif kind == "analysis":
        spec = SourceSpec(**common, per_second=_rate(node), duration=_spread(node, "duration"),
                          success_ratio=node.get("success_ratio", _ratio, 1.0))
    elif kind == "service":
        for key in ("labels", "source_label"):
            if node.has(key):
                node.problem(key, "not used with kind service (its series are the service's,"
                                  " not pipemon's)")
        spec = _service(node, common)
    elif kind == "endpoint":
        spec = _endpoints(node, common)
    else:
        spec = SourceSpec(**common, checks=node.mapping("checks", float))
    node.finish()
    return spec


def _service(node: Node, common: dict) -> SourceSpec:
    """An instrumented HTTP service: regions of pods, 500s, lognormal latency, operations."""
    regions = tuple(_region(n) for n in node.items("regions", required=True))
    operations = tuple(_operation(n) for n in node.items("operations", allow_empty=True))
    for key, items in (("regions", regions), ("operations", operations)):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name and item.name in seen:
                node.problems.append(f"{node.where(key)}[{i}].name: {item.name!r} twice")
            seen.add(item.name)
    return SourceSpec(**common, service=node.get("service", label_text, common["name"]) or "",
                      regions=regions, operations=operations,
                      error_ratio=node.get("error_ratio", _ratio, 0.0),
                      latency=_spread(node, "latency"))


def _endpoints(node: Node, common: dict) -> SourceSpec:
    """HTTP endpoints probed by blackbox_exporter: regions of URLs, failed probes, latency."""
    for key in ("labels", "source_label"):
        if node.has(key):
            node.problem(key, "not used with kind endpoint (its series are blackbox_exporter's)")
    regions = []
    for sub in node.items("regions", required=True):
        region = sub.get("name", name) or ""
        urls = sub.get("urls", _urls, ())
        sub.finish()
        if region in [r for r, _ in regions]:
            node.problem("regions", f"region {region!r} twice")
        regions.append((region, urls))
    return SourceSpec(**common, endpoints=tuple(regions),
                      job=node.get("job", label_text, "blackbox") or "blackbox",
                      error_ratio=node.get("fail_ratio", _ratio, 0.0),
                      latency=(_spread(node, "latency") if node.has("latency") else None)
                      or Spread(0.04, 0.06))


def _urls(value) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                       for u in value)):
        raise ValueError(f"expected a list of http(s) URLs, got {value!r}")
    return tuple(value)


def _region(node: Node) -> RegionSpec:
    region = RegionSpec(name=node.get("name", name) or "", arrivals=_arrivals(node, finish=False),
                        pods=node.get("pods", positive_int, 1) or 1)
    node.finish()
    return region


def _operation(node: Node) -> OperationSpec:
    operation = OperationSpec(name=node.get("name", name) or "", per_second=_rate(node),
                              fail_ratio=node.get("fail_ratio", _ratio, 0.0))
    node.finish()
    return operation


def _queue(node: Node) -> QueueSpec:
    arrivals = node.child("arrivals")
    spec = QueueSpec(
        name=node.get("name", name),
        arrivals=_arrivals(arrivals) if arrivals else Arrivals(0.0),
        run=_spread(node, "run"),
        workers=_workers(node),
        fail_ratio=node.get("fail_ratio", _ratio, 0.0),
        cancel_ratio=node.get("cancel_ratio", _ratio, 0.0))
    node.finish()
    return spec


def _arrivals(node: Node, finish: bool = True) -> Arrivals:
    idle = node.get("idle", _windows, ())
    arrivals = Arrivals(per_second=_rate(node), low=node.get("low", _ratio, 1.0),
                        period=node.get("period", positive_duration, 0.0), idle=idle)
    if finish:
        node.finish()
    return arrivals


def _workers(node: Node) -> Workers:
    raw = node.data.get("workers")
    if isinstance(raw, int) and not isinstance(raw, bool):
        node.get("workers", int)
        return Workers(raw, raw)
    sub = node.child("workers")
    if sub is None:
        return Workers(1, 1)
    cold = sub.get("cold_start", _range, (0.0, 0.0))
    workers = Workers(min=sub.get("min", _count, 0), max=sub.get("max", _count),
                      cold_start=cold, idle_after=sub.get("idle_after", positive_duration, 300.0))
    sub.finish()
    return workers


def _spread(node: Node, key: str) -> Spread | None:
    sub = node.child(key)
    if sub is None:
        return None
    median = sub.get("median", positive_duration)
    p95 = sub.get("p95", positive_duration)
    sub.finish()
    if median and p95 and p95 < median:
        node.problem(key, "p95 must not be below the median")
        return None
    return Spread(median, p95) if median and p95 else None


def _rate(node: Node) -> float:
    """`per_minute: 20`, `per_hour: 4` or `per_second: 0.5` -> jobs per second."""
    given = [k for k in ("per_second", "per_minute", "per_hour") if node.has(k)]
    if len(given) != 1:
        node.problem("per_minute", "set exactly one of per_second, per_minute, per_hour")
        for key in given:
            node.skip(key)
        return 0.0
    per = {"per_second": 1, "per_minute": 60, "per_hour": 3600}[given[0]]
    return node.get(given[0], _non_negative) / per


def _event(node: Node, targets: dict[str, set[str]], pods: dict[tuple[str, str], int]) -> Event:
    kind = node.get("kind", one_of(*EVENT_KINDS))
    at = node.get("at", duration)
    until = _until(node, at)
    target, params = EVENT_KINDS.get(kind, ("", {}))
    source = queue = region = operation = ""
    if target:
        choices = targets[target]
        ref = node.get(target, one_of(*sorted(choices)) if choices else _none(target)) or ""
        if target == "source":
            source = ref
        elif target == "queue":
            source, _, queue = ref.partition("/")
        elif target in ("service", "endpoint"):
            source, _, region = ref.partition("/")
        else:
            source, _, operation = ref.partition("/")
    values = {}
    for key, parse in params.items():
        if node.has(key) or kind not in OPTIONAL_PARAMS:
            values[key] = node.get(key, parse)
    if values.get("pod") is not None:
        few = {r: n for (s, r), n in pods.items()
               if s == source and region in ("", r) and values["pod"] >= n}
        if few:
            node.problem("pod", f"pod {values['pod']} of {', '.join(sorted(few))}, which has "
                                f"{min(few.values())} pods (the first is 0)")
    node.finish()
    return Event(kind, at or 0.0, until, source, queue, values, region, operation)


def _until(node: Node, at: float | None) -> float:
    if node.has("for") and node.has("until"):
        node.problem("for", "set either for or until, not both")
    if node.has("for"):
        return (at or 0.0) + (node.get("for", positive_duration) or 0.0)
    if node.has("until"):
        return node.get("until", duration)
    return FOREVER


def _fire(node: Node) -> Fire:
    escalate = None
    if esc := node.child("escalate", required=False):
        escalate = (esc.get("level2", positive_duration), esc.get("level3", positive_duration))
        esc.finish()
    fire = Fire(after=node.get("after", duration), within=node.get("within", positive_duration),
                match=_match(node, default_severities=None), escalate=escalate,
                healed=node.get("healed", duration, None),
                resolved_within=node.get("resolved_within", positive_duration, None))
    if fire.resolved_within is not None and fire.healed is None:
        node.problem("resolved_within", "needs healed: (when the fault ends)")
    node.finish()
    return fire


def _quiet(node: Node, run: float, whole: bool = False) -> Quiet:
    start = 0.0 if whole else node.get("from", duration, 0.0)
    end = run if whole else node.get("to", duration, run)
    quiet = Quiet(start, end, _match(node, default_severities=("critical", "warning")))
    node.finish()
    return quiet


def _match(node: Node, default_severities) -> Match:
    if default_severities is None:
        severities = (node.get("severity", one_of(*SEVERITIES)),)
    else:
        severities = node.get("severity", _severities, default_severities)
    labels = node.mapping("labels", str, {})
    return Match(severities, node.get("alert", string, ""), tuple(sorted(labels.items())))


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _range(value) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected [shortest, longest], got {value!r}")
    low, high = duration(value[0]), duration(value[1])
    if high < low:
        raise ValueError(f"longest is shorter than shortest: {value!r}")
    return low, high


def _windows(value) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of [from, to] pairs, got {value!r}")
    return tuple(_range(pair) for pair in value)


def _severities(value) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item not in SEVERITIES:
            raise ValueError(f"expected {', '.join(SEVERITIES)}, got {item!r}")
    return tuple(items)
