"""pipemon's Alertmanager configuration: rendering, amtool checks, the routing table, the secret
files, and a real Alertmanager (Debian's 0.25) delivering to local sinks: every route to its
receivers, and inhibition.

Needs amtool and prometheus-alertmanager (`apt-get install prometheus-alertmanager`); without
them these tests fail, they do not skip.
"""

from __future__ import annotations

import subprocess
import sys
import time
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from testkit.net import wait_until
from testkit.processes import require
from testkit.prometheus import Alertmanager
from testkit.sinks import (
    HEARTBEAT_TOKEN,
    PAGERDUTY_KEYS,
    RENDER,
    SMTP_PASSWORD,
    SMTP_USER,
    HttpSink,
    SmtpSink,
    notifications,
    render_tool,
    secret_files,
    site_config,
)

pytestmark = pytest.mark.alertmanager

ROOT = Path(__file__).resolve().parent.parent
AM_DIR = ROOT / "alertmanager"
CONFIG = AM_DIR / "alertmanager.yml"
DOC = ROOT / "docs" / "alertmanager.md"
EXTERNAL_URL = "https://alertmanager.example.com"

VALUES = yaml.safe_load((AM_DIR / "values.yaml").read_text())
CRITICAL_TO = ["oncall@example.com", "devops@example.com"]
WARNING_TO = ["dev-team@example.com"]
LEVEL2_TO = ["database-admin@example.com", "devops-lead@example.com"]
LEVEL3_TO = ["engineering-manager@example.com"]


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(RENDER), *args])


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return run([require("amtool", "prometheus-alertmanager"), *args])


# ----------------------------------------------------------------------------------------------
# The configuration as files.


def test_committed_config_is_rendered_from_the_defaults():
    result = render("-o", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == CONFIG.read_text(), (
        "alertmanager/alertmanager.yml is stale: run python3 tools/render_alertmanager.py")


def test_amtool_check_config_accepts_the_committed_and_a_site_config(tmp_path):
    site = site_config(tmp_path, types.SimpleNamespace(url="http://127.0.0.1:9"),
                       types.SimpleNamespace(smarthost="127.0.0.1:25"))
    for config in (CONFIG, site):
        result = amtool("check-config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
    # The site config names the real templates: amtool parsed them (unknown functions fail).
    assert " - 1 templates" in result.stdout, result.stdout


def test_overrides_change_the_config_and_typos_are_refused(tmp_path):
    values = tmp_path / "site.yaml"
    values.write_text("slack:\n  critical_channel: '#ops-pages'\ntiming:\n  critical:\n"
                      "    group_wait: 5s\n")
    result = render("--values", str(values), "--set", "email.warning_to=team@corp.example",
                    "-o", "-")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["critical"]["slack_configs"][0]["channel"] == "#ops-pages"
    assert receivers["warning"]["email_configs"][0]["to"] == "team@corp.example"
    critical_routes = [r for r in config["route"]["routes"]
                       if r.get("receiver") in ("critical", "escalation-level2")]
    assert {r["group_wait"] for r in critical_routes} == {"5s"}

    for bad in (["--set", "slack.critical_chanel=#x"], ["--set", "timing=1m"]):
        result = render(*bad, "-o", "-")
        assert result.returncode == 2 and "render_alertmanager:" in result.stderr, result


def test_every_receiver_sends_resolved_notifications():
    config = yaml.safe_load(CONFIG.read_text())
    integrations = [(receiver["name"], kind, entry) for receiver in config["receivers"]
                    for kind, entries in receiver.items() if kind.endswith("_configs")
                    for entry in entries]
    assert len(integrations) >= 10
    missing = [(name, kind) for name, kind, entry in integrations
               if entry.get("send_resolved") is not True]
    assert not missing, f"send_resolved is not true for {missing}"


# The routing table: labels of an alert -> the receivers it must reach (amtool, no server).
ROUTES = [
    ("critical", {"alertname": "PipemonQueueStalled", "severity": "critical", "source": "s",
                  "queue": "q"}, "critical"),
    ("critical-infra", {"alertname": "PipemonHostCpuHigh", "severity": "critical",
                        "instance": "h1"}, "critical"),
    ("warning", {"alertname": "PipemonQueueJobsStuck", "severity": "warning"}, "warning"),
    ("info", {"alertname": "PipemonSomething", "severity": "info"}, "info"),
    ("escalation-level2", {"alertname": "PipemonAlertEscalated", "severity": "critical",
                           "escalation": "level2",
                           "original_alertname": "PipemonQueueStalled"}, "escalation-level2"),
    ("escalation-level3", {"alertname": "PipemonAlertEscalated", "severity": "critical",
                           "escalation": "level3",
                           "original_alertname": "PipemonQueueStalled"}, "escalation-level3"),
    ("watchdog", {"alertname": "Watchdog", "severity": "none"}, "heartbeat"),
    ("unknown-severity", {"alertname": "SomeoneElsesAlert", "severity": "page"},
     "unclassified"),
    ("no-severity", {"alertname": "SomeoneElsesAlert"}, "unclassified"),
    ("severity-none-not-watchdog", {"alertname": "Other", "severity": "none"}, "unclassified"),
]


@pytest.mark.parametrize(("labels", "receiver"), [case[1:] for case in ROUTES],
                         ids=[case[0] for case in ROUTES])
def test_route(labels, receiver):
    pairs = [f"{k}={v}" for k, v in labels.items()]
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}",
                    f"--verify.receivers={receiver}", *pairs)
    assert result.returncode == 0, f"{labels} -> {result.stdout.strip()}, want {receiver}"


def test_route_table_covers_every_receiver():
    config = yaml.safe_load(CONFIG.read_text())
    assert {r["name"] for r in config["receivers"]} == {case[2] for case in ROUTES}


# ----------------------------------------------------------------------------------------------
# Secret files.


def test_every_secret_file_is_documented():
    config = yaml.safe_load(CONFIG.read_text())
    doc = DOC.read_text()
    files = [path for _, path in render_tool.secret_files(config)]
    assert len(files) >= 8, files
    for path in files:
        assert path.startswith(VALUES["secrets_dir"] + "/"), path
        assert f"`{Path(path).name}`" in doc, f"{Path(path).name} is not in docs/alertmanager.md"
    # ... and the test writes exactly those files (so the e2e test exercises every one).
    test_files = secret_files(types.SimpleNamespace(url="http://x"))
    assert {Path(p).name for p in files} == set(test_files)


def test_config_refuses_to_start_without_its_secret_files(tmp_path, services):
    config = site_config(tmp_path, types.SimpleNamespace(url="http://127.0.0.1:9"),
                         types.SimpleNamespace(smarthost="127.0.0.1:25"))
    result = render("--check-secrets", str(config))
    assert result.returncode == 0, result.stderr

    for secret in sorted((tmp_path / "secrets").iterdir()):
        content = secret.read_text()
        secret.unlink()
        result = render("--check-secrets", str(config))
        assert result.returncode == 1 and f"{secret} does not exist" in result.stderr, result
        secret.write_text("\n")
        result = render("--check-secrets", str(config))
        assert result.returncode == 1 and f"{secret} is empty" in result.stderr, result
        secret.write_text(content)
    password = tmp_path / "secrets" / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n")
    result = render("--check-secrets", str(config))
    assert result.returncode == 1 and "ends with whitespace or a newline" in result.stderr, result
    password.write_text(SMTP_PASSWORD)

    # Why the check exists: Alertmanager 0.25 itself starts without them (it reads them only
    # when it sends). Should a later version refuse, this fails and the docs need updating.
    for secret in (tmp_path / "secrets").iterdir():
        secret.unlink()
    am = services(Alertmanager(tmp_path / "am", config))
    assert am.proc.poll() is None


# ----------------------------------------------------------------------------------------------
# A real Alertmanager delivering to the sinks.


def alert(labels: dict, summary: str | None = None, **annotations) -> dict:
    name = labels["alertname"]
    return {
        "labels": labels,
        "annotations": {
            "summary": summary or f"{name} summary.",
            "description": f"{name} description with the value 42.",
            "runbook_url": f"https://runbooks.example/{name}.md",
            "dashboard_url": f"https://grafana.example/d/{name}",
            **annotations,
        },
        "startsAt": datetime.now(UTC).isoformat(),
        "generatorURL": "http://prometheus.example/graph",
    }


def delivered(http: HttpSink, smtp: SmtpSink) -> list[str]:
    return sorted(line for _, line in notifications(http, smtp))


def test_every_route_delivers_to_its_receivers(tmp_path, sinks, services):
    http, smtp = sinks
    am = services(Alertmanager(tmp_path / "am", site_config(tmp_path, http, smtp),
                               external_url=EXTERNAL_URL))
    where = {"job": "delivery", "source": "stems"}
    am.post([
        alert({"alertname": "PipemonQueueStalled", "severity": "critical", "queue": "q1",
               **where}),
        alert({"alertname": "PipemonQueueJobsStuck", "severity": "warning", "queue": "q2",
               **where}),
        alert({"alertname": "PipemonInfoThing", "severity": "info", **where}),
        alert({"alertname": "PipemonAlertEscalated", "severity": "critical",
               "escalation": "level2", "original_alertname": "PipemonQueueStalled",
               "queue": "q1", **where}),
        alert({"alertname": "PipemonAlertEscalated", "severity": "critical",
               "escalation": "level3", "original_alertname": "PipemonQueueStalled",
               "queue": "q1", **where}),
        alert({"alertname": "Watchdog", "severity": "none"}),
        alert({"alertname": "SomeoneElsesAlert", "severity": "page", **where}),
    ])
    expected = sorted([
        "slack/critical: [FIRING] CRITICAL PipemonQueueStalled - queue=q1 source=stems",
        "pagerduty/pd-key-level1: [FIRING] CRITICAL PipemonQueueStalled - queue=q1 source=stems",
        "email/oncall@example.com,devops@example.com: [FIRING] CRITICAL PipemonQueueStalled"
        " - queue=q1 source=stems",
        "slack/warning: [FIRING] WARNING PipemonQueueJobsStuck - queue=q2 source=stems",
        "email/dev-team@example.com: [FIRING] WARNING PipemonQueueJobsStuck"
        " - queue=q2 source=stems",
        "slack/info: [FIRING] INFO PipemonInfoThing - source=stems",
        "pagerduty/pd-key-level2: [FIRING] [ESCALATED level2] CRITICAL PipemonQueueStalled"
        " (unresolved, escalated) - queue=q1 source=stems",
        "email/database-admin@example.com,devops-lead@example.com: [FIRING] [ESCALATED level2]"
        " CRITICAL PipemonQueueStalled (unresolved, escalated) - queue=q1 source=stems",
        "pagerduty/pd-key-level3: [FIRING] [ESCALATED level3] CRITICAL PipemonQueueStalled"
        " (unresolved, escalated) - queue=q1 source=stems",
        "email/engineering-manager@example.com: [FIRING] [ESCALATED level3] CRITICAL"
        " PipemonQueueStalled (unresolved, escalated) - queue=q1 source=stems",
        "slack/warning: [FIRING] [UNCLASSIFIED severity=page] SomeoneElsesAlert"
        " - source=stems",
        "email/dev-team@example.com: [FIRING] [UNCLASSIFIED severity=page] SomeoneElsesAlert"
        " - source=stems",
    ])
    wait_until(lambda: len(delivered(http, smtp)) >= len(expected), 60,
               "every route's notifications")
    assert delivered(http, smtp) == expected

    # Slack: the channel of the severity, and a message to act on from a phone.
    for channel in ("critical", "warning", "info"):
        for request in http.requests(f"/slack/{channel}"):
            assert request.body["channel"] == VALUES["slack"][f"{channel}_channel"]
    critical = http.requests("/slack/critical")[0].body["attachments"][0]
    assert critical["color"] == "danger"
    assert critical["title_link"] == "https://grafana.example/d/PipemonQueueStalled"
    text = critical["text"]
    for part in ("*PipemonQueueStalled summary.*", "description with the value 42",
                 "`queue=q1`", "`source=stems`", "*Severity:* critical", "*Since:* 20",
                 "<https://runbooks.example/PipemonQueueStalled.md|Runbook>",
                 "<https://grafana.example/d/PipemonQueueStalled|Dashboard>",
                 f"<{EXTERNAL_URL}/#/silences/new?filter=%7B"
                 "alertname%3D~%22PipemonQueueStalled%7CPipemonAlertEscalated%22"
                 "%2Cjob%3D%22delivery%22%2Cqueue%3D%22q1%22%2Cseverity%3D%22critical%22"
                 "%2Csource%3D%22stems%22%7D|Silence this>"):
        assert part in text, f"{part!r} not in the Slack text:\n{text}"

    # PagerDuty Events API v2: the key of the level, severity from the label, links.
    pages = {r.body["routing_key"]: r.body for r in http.requests("/pagerduty")}
    assert set(pages) == set(PAGERDUTY_KEYS.values())
    page = pages[PAGERDUTY_KEYS["critical"]]
    assert page["event_action"] == "trigger" and page["dedup_key"]
    assert page["payload"]["severity"] == "critical"
    assert page["payload"]["source"]  # Alertmanager's default: the client
    details = page["payload"]["custom_details"]
    assert details["where"] == "job=delivery queue=q1 source=stems", details
    assert details["runbook"] == "https://runbooks.example/PipemonQueueStalled.md"
    assert details["silence"].startswith(f"{EXTERNAL_URL}/#/silences/new?filter=")
    assert {link["text"] for link in page["links"]} == {"Runbook", "Dashboard"}

    # Email: authenticated with the password file, both parts carry the same facts.
    mails = {tuple(m.rcpt_to): m for m in smtp.mails()}
    assert {m.auth for m in smtp.mails()} == {(SMTP_USER, SMTP_PASSWORD)}
    mail = mails[tuple(CRITICAL_TO)]
    assert mail.mail_from == VALUES["email"]["from"]
    for body in (mail.body("plain"), mail.body("html")):
        for part in ("PipemonQueueStalled summary.", "description with the value 42",
                     "queue=q1", "source=stems", "critical", "UTC",
                     "https://runbooks.example/PipemonQueueStalled.md",
                     "https://grafana.example/d/PipemonQueueStalled",
                     f"{EXTERNAL_URL}/#/silences/new?filter="):
            assert part in body, f"{part!r} not in the email:\n{body}"
    assert tuple(WARNING_TO) in mails and tuple(LEVEL2_TO) in mails and tuple(LEVEL3_TO) in mails

    # The heartbeat: the webhook with the token from its file, and nothing else went there.
    beats = wait_until(lambda: http.requests("/heartbeat"), 30, "a heartbeat")
    assert beats[0].authorization == f"Bearer {HEARTBEAT_TOKEN}"
    assert [a["labels"]["alertname"] for a in beats[0].body["alerts"]] == ["Watchdog"]
    assert not any("Watchdog" in line for line in delivered(http, smtp))


def test_inhibition(tmp_path, sinks, services):
    http, smtp = sinks
    am = services(Alertmanager(tmp_path / "am", site_config(tmp_path, http, smtp)))
    inhibiting = [
        alert({"alertname": "PipemonQueueFailureRatioHigh", "severity": "critical",
               "job": "pipemon", "source": "stems", "queue": "mix"}),
        alert({"alertname": "PipemonSourceDown", "severity": "warning", "job": "pipemon",
               "source": "jobs-db", "kind": "queue"}),
        alert({"alertname": "PipemonExporterDown", "severity": "critical", "job": "pipemon-eu"}),
        alert({"alertname": "PipemonHostCpuHigh", "severity": "critical", "job": "node",
               "instance": "host-1"}),
    ]
    inhibited = [
        # the warning of the same alert at the same place
        alert({"alertname": "PipemonQueueFailureRatioHigh", "severity": "warning",
               "job": "pipemon", "source": "stems", "queue": "mix"}),
        # the other alerts of a source that is down (warning and critical)
        alert({"alertname": "PipemonQueueJobsStuck", "severity": "warning", "job": "pipemon",
               "source": "jobs-db", "queue": "render"}),
        alert({"alertname": "PipemonQueueStalled", "severity": "critical", "job": "pipemon",
               "source": "jobs-db", "queue": "render"}),
        # everything computed from an exporter that is down
        alert({"alertname": "PipemonStorageProbeFailing", "severity": "critical",
               "job": "pipemon-eu", "source": "r2", "bucket": "media"}),
        alert({"alertname": "PipemonSourceDown", "severity": "warning", "job": "pipemon-eu",
               "source": "eu-db", "kind": "queue"}),
    ]
    am.post(inhibiting + inhibited)

    def suppressed():
        states = {_identity(a["labels"]): a["status"] for a in am.alerts()}
        return all(states.get(_identity(a["labels"]), {}).get("inhibitedBy")
                   for a in inhibited) and states

    wait_until(suppressed, 30, "Alertmanager to mark the targets inhibited")

    # Posted after the inhibited ones: once these are delivered, the inhibited groups (same
    # group_wait, started earlier) have been flushed too.
    kept = [
        # the warning of the same alert elsewhere (another queue, another host)
        alert({"alertname": "PipemonQueueFailureRatioHigh", "severity": "warning",
               "job": "pipemon", "source": "stems", "queue": "separate"}),
        alert({"alertname": "PipemonHostCpuHigh", "severity": "warning", "job": "node",
               "instance": "host-2"}),
        # a long outage of a source must still page through its availability budget
        alert({"alertname": "PipemonPipelineAvailabilityBudgetBurn", "severity": "critical",
               "job": "pipemon", "source": "jobs-db", "slo": "pipeline_availability"}),
        # the escalation of the exporter being down
        alert({"alertname": "PipemonAlertEscalated", "severity": "critical",
               "escalation": "level2", "original_alertname": "PipemonExporterDown",
               "job": "pipemon-eu"}),
    ]
    am.post(kept)
    critical = ["PipemonQueueFailureRatioHigh - queue=mix source=stems",
                "PipemonExporterDown",
                "PipemonHostCpuHigh - instance=host-1",
                "PipemonPipelineAvailabilityBudgetBurn - source=jobs-db"]
    warning = ["PipemonSourceDown - source=jobs-db",
               "PipemonQueueFailureRatioHigh - queue=separate source=stems",
               "PipemonHostCpuHigh - instance=host-2"]
    escalated = ("[FIRING] [ESCALATED level2] CRITICAL PipemonExporterDown"
                 " (unresolved, escalated)")
    expected = sorted(
        [f"slack/critical: [FIRING] CRITICAL {t}" for t in critical]
        + [f"email/oncall@example.com,devops@example.com: [FIRING] CRITICAL {t}"
           for t in critical]
        + [f"pagerduty/pd-key-level1: [FIRING] CRITICAL {t}" for t in critical]
        + [f"slack/warning: [FIRING] WARNING {t}" for t in warning]
        + [f"email/dev-team@example.com: [FIRING] WARNING {t}" for t in warning]
        + [f"pagerduty/pd-key-level2: {escalated}",
           f"email/database-admin@example.com,devops-lead@example.com: {escalated}"])
    wait_until(lambda: len(delivered(http, smtp)) >= len(expected), 60,
               "the notifications that are not inhibited")
    assert delivered(http, smtp) == expected


def _identity(labels: dict) -> tuple:
    return tuple(sorted(labels.items()))


def test_sinks_record_what_they_receive():
    """The sinks themselves: a JSON POST and an authenticated SMTP message."""
    import json
    import smtplib
    import urllib.request

    http, smtp = HttpSink().start(), SmtpSink().start()
    try:
        request = urllib.request.Request(f"{http.url}/slack/x", data=json.dumps({"a": 1}).encode(),
                                         headers={"Authorization": "Bearer t"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        host, port = smtp.smarthost.split(":")
        with smtplib.SMTP(host, int(port), timeout=5) as client:
            client.login("u", "p")
            client.sendmail("a@example.com", ["b@example.com", "c@example.com"],
                            "Subject: hi\r\n\r\n.dot\r\nbody\r\n")
        assert [(r.path, r.authorization, r.body) for r in http.requests()] == [
            ("/slack/x", "Bearer t", {"a": 1})]
        mail = wait_until(smtp.mails, 5, "the mail")[0]
        assert (mail.auth, mail.mail_from, mail.rcpt_to, mail.subject) == (
            ("u", "p"), "a@example.com", ["b@example.com", "c@example.com"], "hi")
        assert mail.body() == ".dot\nbody\n"
        assert mail.at <= time.time()
    finally:
        http.stop()
        smtp.stop()


def test_constant_labels_keep_environments_apart(tmp_path, sinks, services):
    """With constant_labels [env], two environments' alerts at the same source and queue are
    two notifications, and a source down in one environment silences only that one's alerts."""
    http, smtp = sinks
    am = services(Alertmanager(tmp_path / "am", site_config(
        tmp_path, http, smtp, extra_values={
            "constant_labels": ["env"],
            "timing": {"critical": {"group_wait": "1s"}, "warning": {"group_wait": "1s"}}})))
    where = {"job": "pipemon", "source": "jobs-db"}
    down = alert({"alertname": "PipemonSourceDown", "severity": "warning", "kind": "queue",
                  "env": "staging", **where})
    silenced = alert({"alertname": "PipemonQueueStalled", "severity": "critical",
                      "queue": "render", "env": "staging", **where})
    am.post([down, silenced])
    wait_until(lambda: any(a["status"].get("inhibitedBy") for a in am.alerts()
                           if a["labels"].get("env") == "staging"
                           and a["labels"]["alertname"] == "PipemonQueueStalled"),
               30, "Alertmanager to inhibit staging's stall")
    am.post([alert({"alertname": "PipemonQueueStalled", "severity": "critical",
                    "queue": "render", "env": "prod", **where})])
    wait_until(lambda: len(delivered(http, smtp)) >= 5, 60,
               "prod's stall (3 receivers) and staging's source down (2)")
    lines = delivered(http, smtp)
    assert [line for line in lines if line.startswith("slack/")] == [
        "slack/critical: [FIRING] CRITICAL PipemonQueueStalled - env=prod queue=render"
        " source=jobs-db",
        "slack/warning: [FIRING] WARNING PipemonSourceDown - env=staging source=jobs-db"], lines
    assert not [a for a in am.alerts() if a["labels"].get("env") == "prod"
                and a["status"].get("inhibitedBy")]
