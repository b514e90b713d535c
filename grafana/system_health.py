"""System health (the AI Mixer stack's "CPU, memory, network, Kubernetes pods", the migration
guide's database CPU, memory, connections and long queries): the platform under the pipeline.

Kubernetes rows read kube-state-metrics and the kubelet's cAdvisor (what kube-prometheus-stack
scrapes), scoped to the pipeline's namespaces by rules/kubernetes-alerts.yaml's
namespace:pipemon_kubernetes_namespace:selected; the host rows read node_exporter, the database
rows postgres_exporter. Thresholds are those of kubernetes-alerts.yaml and infra-alerts.yaml
(database and other hosts: the migration guide's). Opened from the Kubernetes alerts
(var-namespace).
"""

from __future__ import annotations

from grafana.common import (
    GREEN,
    RED,
    UID_ERRORS,
    UID_SYSTEM,
    Grid,
    above,
    colored_cell,
    dashboard,
    label_variable,
    query,
    runbook,
    stat,
    steps,
    table,
    timeseries,
    to_dashboard,
)

NS = 'namespace=~"$namespace"'
# every Kubernetes query keeps only the pipeline's namespaces
SELECTED = "and on (namespace) namespace:pipemon_kubernetes_namespace:selected"
NODE = 'instance=~"$node"'
PG = 'instance=~"$database"'
# rules/kubernetes-alerts.yaml (thresholds marked "# threshold" in its exprs)
RESTARTS, MEMORY, VOLUME = 3, 0.80, 0.85
# rules/infra-alerts.yaml, database and other hosts (warning, critical)
HOST_CPU, HOST_MEMORY, HOST_DISK, PG_CONNECTIONS = (0.80, 0.90), (0.85, 0.95), (0.85, 0.90), \
    (0.80, 0.95)


def _kubernetes(g: Grid) -> None:
    g.row("Kubernetes: the pipeline's namespaces")
    g.add(stat("Pods not running", "Pods of the selected namespaces in phase Pending, Failed "
               "or Unknown.", "short",
               [query("sum(max without (instance) (kube_pod_status_phase"
                      f'{{{NS}, phase=~"Pending|Failed|Unknown"}}) {SELECTED}) or vector(0)',
                      "not running")],
               thresholds=steps(GREEN, (1, RED)), graph=False), 6, 4)
    g.add(stat("Deployments without a replica", "Deployments that should run and have no "
               "available replica (PipemonDeploymentUnavailable after 5 minutes).", "short",
               [query(f"count(max without (instance) (kube_deployment_spec_replicas{{{NS}}}) > 0"
                      " and on (namespace, deployment) max without (instance) "
                      f"(kube_deployment_status_replicas_available{{{NS}}}) == 0 {SELECTED})"
                      " or vector(0)", "unavailable")],
               thresholds=steps(GREEN, (1, RED)), graph=False,
               links=[runbook("PipemonDeploymentUnavailable")]), 6, 4)
    g.add(stat("Restarts (1h)", "Container restarts in the selected namespaces in the last "
               "hour.", "short",
               [query("sum(max without (instance) (kube_pod_container_status_restarts_total"
                      f"{{{NS}}} - min_over_time(kube_pod_container_status_restarts_total"
                      f"{{{NS}}}[1h])) {SELECTED})", "restarts")],
               thresholds=above(0, count=True), graph=False,
               links=[runbook("PipemonPodRestartsHigh")]), 6, 4)
    g.add(stat("Errors", "Failed requests, jobs and endpoints: the error tracking dashboard.",
               "short", [query('count(ALERTS{alertstate="firing", severity="critical"})'
                               " or vector(0)", "critical alerts")],
               thresholds=steps(GREEN, (1, RED)), graph=False,
               links=[to_dashboard("Error tracking", UID_ERRORS)]), 6, 4)
    g.add(timeseries("Container restarts in 5 minutes", "Restarts per container in the last 5 "
                     f"minutes (exact, as PipemonPodRestartsHigh counts them: above {RESTARTS} "
                     "warns).", "short",
                     [query("max without (instance) (kube_pod_container_status_restarts_total"
                            f"{{{NS}}} - min_over_time(kube_pod_container_status_restarts_total"
                            f"{{{NS}}}[5m])) {SELECTED}", "{{pod}} {{container}}")],
                     thresholds=above(RESTARTS, count=True),
                     links=[runbook("PipemonPodRestartsHigh")]), 12, 8)
    g.add(timeseries("Container memory / limit", "Working set (what the OOM killer judges) of "
                     f"each container over its memory limit; above {MEMORY:.0%} for 5 minutes "
                     "warns. Containers without a limit are not shown.", "percentunit",
                     [query('max without (id, name) (container_memory_working_set_bytes{'
                            f'{NS}, container!="", container!="POD", image!=""}})'
                            " / on (namespace, pod, container) group_left () max by (namespace, "
                            "pod, container) (kube_pod_container_resource_limits{"
                            f'{NS}, resource="memory", unit="byte"}}) {SELECTED}',
                            "{{pod}} {{container}}")],
                     thresholds=above(MEMORY), max_val=1,
                     links=[runbook("PipemonContainerMemoryHigh")]), 12, 8)
    g.add(timeseries("CPU by pod", "CPU cores used per pod (cAdvisor).", "short",
                     [query("sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{"
                            f'{NS}, container!="", container!="POD", image!=""}}'
                            f"[$__rate_interval])) {SELECTED}", "{{pod}}")]), 12, 8)
    g.add(timeseries("Volume used", "Used share of each mounted PersistentVolumeClaim; above "
                     f"{VOLUME:.0%} for 5 minutes is critical.", "percentunit",
                     [query("max without (instance, node) (kubelet_volume_stats_used_bytes"
                            f"{{{NS}}} / kubelet_volume_stats_capacity_bytes{{{NS}}}) "
                            f"{SELECTED}", "{{persistentvolumeclaim}}")],
                     thresholds=above(None, VOLUME), max_val=1,
                     links=[runbook("PipemonVolumeSpaceLow")]), 12, 8)
    g.add(table("Deployments", "Desired and available replicas of each deployment.", "short",
                [query(f"max without (instance) (kube_deployment_spec_replicas{{{NS}}}) "
                       f"{SELECTED}", instant=True, table=True),
                 query("max without (instance) (kube_deployment_status_replicas_available"
                       f"{{{NS}}}) {SELECTED}", instant=True, table=True)],
                columns={"namespace": "Namespace", "deployment": "Deployment",
                         "Value #A": "Desired", "Value #B": "Available"},
                overrides=[("Available", colored_cell("short", steps(RED, (1, GREEN))))],
                links=[runbook("PipemonDeploymentUnavailable")]), 24, 7)


def _hosts(g: Grid) -> None:
    g.row("Hosts (node_exporter)")
    g.add(timeseries("CPU used", "Busy share of all CPUs per host over 5 minutes; dashed: "
                     "warning and critical of database and other hosts.", "percentunit",
                     [query("1 - avg without (cpu, mode) (rate(node_cpu_seconds_total"
                            f'{{mode="idle", {NODE}}}[5m]))', "{{instance}}")],
                     thresholds=above(*HOST_CPU), max_val=1,
                     links=[runbook("PipemonHostCpuHigh")]), 8, 8)
    g.add(timeseries("Memory used", "Memory not available to new processes, per host.",
                     "percentunit",
                     [query(f"1 - node_memory_MemAvailable_bytes{{{NODE}}} / "
                            f"node_memory_MemTotal_bytes{{{NODE}}}", "{{instance}}")],
                     thresholds=above(*HOST_MEMORY), max_val=1,
                     links=[runbook("PipemonHostMemoryHigh")]), 8, 8)
    g.add(timeseries("Disk used", "Used share of each filesystem (no tmpfs and the like).",
                     "percentunit",
                     [query(f'1 - node_filesystem_avail_bytes{{{NODE}, fstype!~"tmpfs|ramfs|'
                            'squashfs|overlay", mountpoint!~"/run.*"} / '
                            f'node_filesystem_size_bytes{{{NODE}, fstype!~"tmpfs|ramfs|'
                            'squashfs|overlay", mountpoint!~"/run.*"}',
                            "{{instance}} {{mountpoint}}")],
                     thresholds=above(*HOST_DISK), max_val=1,
                     links=[runbook("PipemonHostDiskUsageHigh")]), 8, 8)
    g.add(timeseries("Network", "Bytes per second received (+) and sent (-) per host, "
                     "loopback excluded.", "Bps",
                     [query("sum by (instance) (rate(node_network_receive_bytes_total"
                            f'{{{NODE}, device!="lo"}}[$__rate_interval]))', "{{instance}} in"),
                      query("-sum by (instance) (rate(node_network_transmit_bytes_total"
                            f'{{{NODE}, device!="lo"}}[$__rate_interval]))',
                            "{{instance}} out")],
                     min_val=None), 12, 8)
    g.add(timeseries("Load per CPU", "1-minute load average over the number of CPUs: above 1 "
                     "work waits for a CPU.", "short",
                     [query(f"node_load1{{{NODE}}} / on (instance) count by (instance) "
                            f'(node_cpu_seconds_total{{mode="idle", {NODE}}})',
                            "{{instance}}")],
                     thresholds=above(1)), 12, 8)


def _database(g: Grid) -> None:
    g.row("Database (postgres_exporter)")
    g.add(stat("PostgreSQL up", "Whether postgres_exporter reaches the server.", "none",
               [query(f"pg_up{{{PG}}}", "{{instance}}")],
               thresholds=steps(RED, (1, GREEN)), graph=False), 6, 5)
    g.add(timeseries("Connections used", "Connections / max_connections per server.",
                     "percentunit",
                     [query(f"sum by (job, instance) (pg_stat_activity_count{{{PG}}}) / on "
                            "(job, instance) max by (job, instance) "
                            f"(pg_settings_max_connections{{{PG}}})", "{{instance}}")],
                     thresholds=above(*PG_CONNECTIONS), max_val=1,
                     links=[runbook("PipemonPostgresConnectionsHigh")]), 9, 5)
    g.add(timeseries("Connections by state", "Connections per state (active, idle, idle in "
                     "transaction: holds locks while the client thinks).", "short",
                     [query(f"sum by (state) (pg_stat_activity_count{{{PG}}})", "{{state}}")],
                     stack=True), 9, 5)
    g.add(timeseries("Transactions per second", "Commits and rollbacks per second, all "
                     "databases.", "ops",
                     [query("sum by (instance) (rate(pg_stat_database_xact_commit"
                            f"{{{PG}}}[$__rate_interval]))", "{{instance}} commits"),
                      query("sum by (instance) (rate(pg_stat_database_xact_rollback"
                            f"{{{PG}}}[$__rate_interval]))", "{{instance}} rollbacks")]), 8, 8)
    g.add(timeseries("Longest transaction", "Age of the oldest open transaction per state: a "
                     "long one is a slow query or a client that forgot to commit (it holds "
                     "back vacuum).", "s",
                     [query(f"max by (instance, state) (pg_stat_activity_max_tx_duration{{{PG}}})",
                            "{{instance}} {{state}}")],
                     links=[runbook("PipemonPostgresSlowQueries")]), 8, 8)
    g.add(timeseries("Database size", "Size of each database.", "bytes",
                     [query(f"pg_database_size_bytes{{{PG}}}", "{{datname}}")]), 8, 8)


def build() -> dict:
    g = Grid()
    _kubernetes(g)
    _hosts(g)
    _database(g)
    return dashboard(
        UID_SYSTEM, "pipemon / System health",
        "The platform under the pipeline: Kubernetes pods of its namespaces, its hosts and its "
        "database.", g,
        [label_variable("namespace", "Namespace",
                        "namespace:pipemon_kubernetes_namespace:selected"),
         label_variable("node", "Host", "node_memory_MemTotal_bytes", of="instance"),
         label_variable("database", "Database server", "pg_up", of="instance")],
        'namespace=~"$namespace|"', tags=["platform"])
