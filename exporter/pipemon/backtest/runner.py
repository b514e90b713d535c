"""Run scenarios: simulate, evaluate with promtool, judge. Scenarios run in parallel processes
(promtool evaluates one history on one core)."""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from pipemon.backtest import promtool, simulate
from pipemon.backtest.judge import ScenarioResult, judge
from pipemon.backtest.rules import RuleSet
from pipemon.backtest.scenario import Scenario


def run_scenario(scenario: Scenario, rules: RuleSet) -> ScenarioResult:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pipemon-backtest-") as tmp:
        history = simulate.history(scenario, rules.metric_names)
        firing = promtool.evaluate(rules, history, Path(tmp))
        single = None
        if scenario.same_as_one_replica:
            alone = simulate.history(scenario.with_replicas(1), rules.metric_names)
            single = promtool.evaluate(rules, alone, Path(tmp))
    result = judge(scenario, firing, history.step, single)
    result.seconds = time.monotonic() - started
    result.series = len(history)
    return result


def run_all(scenarios: list[Scenario], rules: RuleSet, jobs: int | None = None,
            progress=None) -> list[ScenarioResult]:
    """Every scenario, longest first (the pool then finishes together), results in input
    order. `progress(result)` is called as each one finishes."""
    jobs = jobs or os.cpu_count() or 1
    order = sorted(range(len(scenarios)), key=lambda i: -_cost(scenarios[i]))
    results: dict[int, ScenarioResult] = {}
    if jobs == 1 or len(scenarios) == 1:
        for i in order:
            results[i] = run_scenario(scenarios[i], rules)
            if progress:
                progress(results[i])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_scenario, scenarios[i], rules): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress:
                    progress(results[futures[future]])
    return [results[i] for i in range(len(scenarios))]


def _cost(scenario: Scenario) -> float:
    queues = sum(len(s.queues) + 1 + sum(r.pods for r in s.regions) for s in scenario.sources)
    runs = 2 if scenario.same_as_one_replica else 1
    return scenario.duration * (queues + 2) * scenario.replicas * runs
