"""The test kit: real services on loopback, shared by tests/, demo/ and bench/.

  testkit.postgres      PgCluster: a throwaway PostgreSQL cluster from the Debian binaries
  testkit.s3            Moto (moto's S3 server) and S3Proxy, a proxy to it that injects faults
  testkit.processes     Process (a child with its log, waited for, stopped) and Exporter
                        (`pipemon serve` with source dicts); `require` for a missing binary
  testkit.prometheus    Prometheus and Alertmanager (Debian's) as processes, and the healthy
                        SLO history to backfill
  testkit.sinks         HttpSink (Slack, PagerDuty, heartbeat) and SmtpSink, and pipemon's
                        Alertmanager configuration rendered for them (`site_config`)
  testkit.fake_trigger  FakeTrigger: a stand-in for Trigger.dev's management API
  testkit.tcpproxy      TcpProxy: a loopback TCP proxy that can stop forwarding
  testkit.net           free_port, wait_until / stays, http_get / http_request, LoopbackServer
  testkit.app           pipemon in process: write_config, build_app, sample, queue_source, url_dsn

Import from the modules (`from testkit.net import free_port`); run from the repository root
(pytest's `pythonpath`, `python -m demo`, `python -m bench.peers`).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
