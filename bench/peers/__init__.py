"""Benchmark: pipemon side by side with two generic SQL exporters (issue 10).

Same throwaway PostgreSQL cluster (with pg_stat_statements), same data, same machine, one run:
  * pipemon (`pipemon serve`, a queue source on `jobs` and an analysis source on
    `audio_events_cache`, 15 s polls);
  * query-exporter 5.0 (PyPI, own venv `bench/.venv-peers`) with the queries a user writes for the
    same metrics (bench/peers/queries.yaml: the product documents' "last hour" counts, averages
    and percentiles, active jobs per state, oldest waiting, stuck), on a 15 s schedule, and the
    same config without `interval` (query-exporter then runs the queries on every scrape);
  * Debian's prometheus-sql-exporter (justwatchcom/sql_exporter) with the same queries, 15 s.

Data: N finished jobs over 30 days (examples/schema.sql, lognormal run times, 2 % failed),
10,000 active jobs, N/10 analysis rows, indexes built after loading; a writer keeps finishing
jobs (and writing analysis rows) at the history's rate, so "the last hour" stays the same size.
Each exporter connects as its own role, so pg_stat_statements tells their statements apart.

Per exporter, one after the other: database time per collection cycle (pg_stat_statements,
snapshot at the midpoint between cycles), its wall time, CPU seconds per hour of polling
(/proc/<pid>/stat, with one Prometheus-like scrape per interval), /metrics latency for 1 scraper,
10 back-to-back scrapers and 10 scrapers once a second each (Prometheus's Accept headers and
gzip), peak RSS (VmHWM), and accuracy: pipemon's run-time percentiles (histogram_quantile over
its buckets, as Prometheus computes it) against percentile_cont over exactly the jobs it
counted; the peers' "last hour" values against the same SQL run when they are scraped.
Then the growth: the same at 100k and 1M rows, and at 1 and 120 queues (~100 and ~10,000
pipemon series).

From the repository root:

    python -m bench.peers                    # full run: 10M rows + growth, ~40 minutes
    python -m bench.peers --quick            # smoke run, 100k rows, < 2 minutes
    python -m bench.peers --write-configs    # refresh bench/peers/*.y*ml from queries.yaml

Prints markdown tables; writes JSON and CSV to bench/results/ (see bench/README.md).

The modules, by job: data (the cluster, the dataset, the writer), exporters (the contenders,
their configurations, starting them), measure (one exporter on one dataset), accuracy, report
(tables, JSON, CSV, problems); __main__ runs it all. bench/peers/*.y*ml are the configurations.
"""
