"""The rule files a backtest evaluates: their groups in evaluation order, the raw series they
read, and the longest window they look back over.

Only alerts are judged, so recording rules that no alert reads (directly, through other
recording rules, or in its annotations' queries) are left out of the evaluation: dashboards'
quantiles cost promtool time and change no alert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# Series that rules write themselves (alerting state), never pulled or simulated.
RULE_OUTPUTS = {"ALERTS", "ALERTS_FOR_STATE"}


class RulesError(Exception):
    pass


@dataclass(frozen=True)
class RuleSet:
    files: tuple[Path, ...]
    # The groups as loaded, each {"name": ..., "rules": [...]}, and the same without the
    # recording rules no alert depends on (what the backtest evaluates).
    groups: tuple[dict, ...]
    pruned: tuple[dict, ...]
    # promtool's group_eval_order: recording groups first (an alert then reads the values of the
    # same evaluation, as the repository's unit tests assume), groups reading ALERTS last.
    order: tuple[str, ...]
    # Raw (not recorded) metric names the expressions read, and their selectors as written.
    selectors: dict[str, tuple[str, ...]]
    # The longest range or offset an expression reads, in seconds (the warm-up a history needs).
    lookback: float

    @property
    def metric_names(self) -> set[str]:
        return set(self.selectors)


def load(rules_dir: Path) -> RuleSet:
    import promql_parser  # only the backtest needs it

    files = tuple(sorted(Path(rules_dir).glob("*.yaml")))
    if not files:
        raise RulesError(f"{rules_dir}: no rule files (*.yaml) there; name the directory of "
                         "the rule files with --rules")
    groups: list[tuple[str, list[dict]]] = []
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise RulesError(f"{path}: {err}") from err
        for group in data.get("groups") or []:
            groups.append((group["name"], group.get("rules") or []))

    recorded = {r["record"] for _, rules in groups for r in rules if "record" in r}
    reads: dict[int, set[str]] = {}  # id(rule) -> names it reads
    raw: dict[int, list[tuple[str, str, float]]] = {}  # id(rule) -> (name, selector, window)
    reads_alerts: set[str] = set()
    for name, rules in groups:
        for rule in rules:
            where = f"group {name}, {rule.get('alert') or rule.get('record')}"
            try:
                expr = promql_parser.parse(str(rule["expr"]))
            except Exception as err:  # the parser raises plain ValueError/RuntimeError
                raise RulesError(f"{where}: cannot parse expr: {err}") from err
            names, raw[id(rule)] = set(), []
            for node, window in _selectors(expr):
                names.add(node.name)
                if node.name in RULE_OUTPUTS:
                    reads_alerts.add(name)
                elif node.name and node.name not in recorded:
                    raw[id(rule)].append((node.name, str(node).split(" offset ")[0], window))
            # Annotation templates query recorded series too (`query` in descriptions).
            for text in (rule.get("annotations") or {}).values():
                names |= set(_NAME.findall(str(text))) & recorded
            reads[id(rule)] = names
    needed = _needed(groups, reads)
    recording = [n for n, rules in groups if rules and all("record" in r for r in rules)]
    alerting = [n for n, _ in groups if n not in recording and n not in reads_alerts]
    last = [n for n, _ in groups if n in reads_alerts and n not in recording]
    pruned = tuple({"name": n, "rules": [r for r in rules if "alert" in r or r["record"] in needed]}
                   for n, rules in groups)
    kept = [r for g in pruned for r in g["rules"]]
    selectors: dict[str, set[str]] = {}
    for rule in kept:
        for metric, selector, _ in raw[id(rule)]:
            selectors.setdefault(metric, set()).add(selector)
    lookback = max((w for r in kept for _, _, w in raw[id(r)]), default=0.0)
    return RuleSet(files, tuple({"name": n, "rules": rules} for n, rules in groups),
                   tuple(g for g in pruned if g["rules"]), tuple(recording + alerting + last),
                   {k: tuple(sorted(v)) for k, v in selectors.items()}, lookback)


_NAME = re.compile(r"[a-z_][a-z0-9_]*:[a-z0-9_:]+")


def _needed(groups: list[tuple[str, list[dict]]], reads: dict[int, set[str]]) -> set[str]:
    """Recorded names that some alert reads, directly or through other recording rules."""
    by_name: dict[str, list[dict]] = {}
    for _, rules in groups:
        for rule in rules:
            if "record" in rule:
                by_name.setdefault(rule["record"], []).append(rule)
    todo = [n for _, rules in groups for r in rules if "alert" in r for n in reads[id(r)]]
    needed: set[str] = set()
    while todo:
        name = todo.pop()
        if name in needed or name not in by_name:
            continue
        needed.add(name)
        for rule in by_name[name]:
            todo.extend(reads[id(rule)])
    return needed


def write_pruned(rules: RuleSet, directory: Path) -> list[Path]:
    """The pruned groups as one rule file in `directory` (what promtool loads)."""
    path = directory / "backtest-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": list(rules.pruned)}, sort_keys=False),
                    encoding="utf-8")
    return [path]


def _selectors(node, window: float = 0.0):
    """(vector selector, range + offset seconds above it) for every selector in a PromQL AST."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        yield node, window + _seconds(node.offset)
        return
    if kind == "MatrixSelector":
        yield from _selectors(node.vector_selector, window + _seconds(node.range))
        return
    if kind == "SubqueryExpr":
        window += _seconds(node.range) + _seconds(getattr(node, "offset", None))
    for attr in ("args", "expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if child is None:
            continue
        for item in child if isinstance(child, list) else [child]:
            yield from _selectors(item, window)


def _seconds(value) -> float:
    return value.total_seconds() if value is not None else 0.0
