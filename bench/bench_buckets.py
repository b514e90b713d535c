"""Percentile error of histogram buckets against exact percentiles, by simulation.

Draws job times from media-shaped lognormal distributions, puts them in a bucket layout,
and compares PromQL's histogram_quantile (bench.peers.accuracy, a port of promql/quantile.go)
with percentile_cont over the same jobs (statistics.quantiles, method "inclusive", is the same
linear interpolation). Each trial is a pipeline of `--queues` queues with `--jobs` jobs each;
the report gives, per layout and percentile, the median over trials of the worst queue's error
and the share of trials in which every queue was within 5 %.

    python -m bench.bench_buckets                      # the table in bench/README.md
    python -m bench.bench_buckets --jobs 100,1000 --trials 50
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics

from bench.peers.accuracy import histogram_quantile
from pipemon.metrics import JOB_SECONDS_BUCKETS
from pipemon.schema import bucket_layout

# (name, median seconds, sigma of ln): the bench's jobs (bench/peers/data.py) and media work.
SHAPES = (
    ("bench.peers jobs (median 1 min)", 60.0, 0.9),
    ("stem separation (median 3 min)", 180.0, 0.5),
    ("feature-film transcode (median 40 min)", 2400.0, 0.8),
    ("audio analysis (median 2 s)", 2.0, 0.7),
)
LAYOUTS = {
    "before issue 19 (16 bounds, 1 s-1 h)": (1, 2.5, 5, 10, 30, 60, 120, 180, 300, 450, 600, 900,
                                             1200, 1800, 2700, 3600),
    f"default ({len(JOB_SECONDS_BUCKETS)} bounds, 0.5 s-12 h)": JOB_SECONDS_BUCKETS,
    "{min: 1s, max: 12h, count: 60}": bucket_layout({"min": "1s", "max": "12h", "count": 60}),
    "{min: 1s, max: 12h, count: 100}": bucket_layout({"min": "1s", "max": "12h", "count": 100}),
}
QUANTILES = (0.5, 0.95, 0.99)


def errors(values: list[float], bounds: tuple[float, ...]) -> list[float]:
    """|relative error| of histogram_quantile at each of QUANTILES, for one queue."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1  # le is inclusive: v == bound counts there
    cumulative, buckets = 0, []
    for le, n in zip((*bounds, math.inf), counts, strict=True):
        cumulative += n
        buckets.append((le, cumulative))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    out = []
    for q in QUANTILES:
        exact = cuts[round(q * 100) - 1]
        out.append(abs(histogram_quantile(q, buckets) - exact) / exact)
    return out


def simulate(median: float, sigma: float, bounds: tuple[float, ...], jobs: int, queues: int,
             trials: int, rng: random.Random) -> list[tuple[float, float]]:
    """Per quantile: (median over trials of the worst queue's error, share of trials with
    every queue within 5 %)."""
    worst: list[list[float]] = [[] for _ in QUANTILES]
    for _ in range(trials):
        per_queue = [errors([rng.lognormvariate(math.log(median), sigma) for _ in range(jobs)],
                            bounds) for _ in range(queues)]
        for i in range(len(QUANTILES)):
            worst[i].append(max(e[i] for e in per_queue))
    return [(statistics.median(w), sum(x <= 0.05 for x in w) / len(w)) for w in worst]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_buckets",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="100,1000", help="jobs per queue, comma-separated")
    parser.add_argument("--queues", type=int, default=12)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"{args.queues} queues, {args.trials} trials; cell: worst queue's error, median over"
          " trials (share of trials with every queue within 5 %)\n")
    for shape, median, sigma in SHAPES:
        for jobs in (int(x) for x in args.jobs.split(",")):
            print(f"#### {shape}, {jobs:,} jobs per queue\n")
            print("| layout | p50 | p95 | p99 |\n|---|---|---|---|")
            for name, bounds in LAYOUTS.items():
                cells = simulate(median, sigma, bounds, jobs, args.queues, args.trials, rng)
                print(f"| {name} | " + " | ".join(f"{e:.1%} ({ok:.0%})" for e, ok in cells)
                      + " |", flush=True)
            print()


if __name__ == "__main__":
    main()
