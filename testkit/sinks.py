"""Local stand-ins for the receivers Alertmanager notifies: Slack, PagerDuty, a heartbeat webhook
(HTTP, `HttpSink`) and an SMTP relay (`SmtpSink`). Both listen on 127.0.0.1 on a port the OS
picks, record what they receive with the time it arrived, and are stopped by `stop()`.

Standard library only: the SMTP sink speaks the part of SMTP that Go's net/smtp (Alertmanager's
client) uses: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no STARTTLS.
"""

from __future__ import annotations

import base64
import email
import email.policy
import importlib.util
import json
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from testkit import ROOT
from testkit.net import LoopbackServer


@dataclass(frozen=True)
class Request:
    """One HTTP request: its path, a few headers and its JSON body."""

    at: float  # time.time() when it arrived
    path: str
    authorization: str | None
    body: dict


class HttpSink(LoopbackServer):
    """Answers every POST with 2xx and records it (PagerDuty's path answers 202 like the API)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, path: str | None = None) -> list[Request]:
        """What arrived so far (at `path` only, if given), oldest first."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def _handler_class(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with sink._lock:
                    sink._requests.append(Request(time.time(), self.path,
                                                  self.headers.get("Authorization"), body))
                if "pagerduty" in self.path:
                    status, answer = 202, json.dumps({"status": "success",
                                                      "message": "Event processed"}).encode()
                else:
                    status, answer = 200, b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler


@dataclass
class Mail:
    at: float
    auth: tuple[str, str] | None
    mail_from: str
    rcpt_to: list[str] = field(default_factory=list)
    message: EmailMessage | None = None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def body(self, subtype: str = "plain") -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else ""


class SmtpSink(LoopbackServer):
    """An SMTP relay that accepts every message (and any AUTH PLAIN) and records it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mails: list[Mail] = []
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler_class())
        server.daemon_threads = False  # server_close() waits for open sessions
        super().__init__(server)

    @property
    def smarthost(self) -> str:
        return f"127.0.0.1:{self.port}"

    def mails(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)

    def _handler_class(self):
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 15  # an idle client cannot hold server_close() forever

            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")
                self.wfile.flush()

            def handle(self):
                self.reply("220 pipemon-test-sink ESMTP")
                auth = None
                mail: Mail | None = None
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    verb, _, arg = line.partition(" ")
                    verb = verb.upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250-pipemon-test-sink")
                        self.reply("250-8BITMIME")
                        self.reply("250 AUTH PLAIN")
                    elif verb == "AUTH":
                        mechanism, _, initial = arg.partition(" ")
                        if mechanism.upper() != "PLAIN":
                            self.reply("504 only PLAIN")
                            continue
                        if not initial:
                            self.reply("334 ")
                            initial = self.rfile.readline().decode().strip()
                        _, user, password = base64.b64decode(initial).decode().split("\0")
                        auth = (user, password)
                        self.reply("235 2.7.0 accepted")
                    elif verb == "MAIL":
                        address = arg.split(":", 1)[1].strip().split(" ")[0].strip("<>")
                        mail = Mail(at=0.0, auth=auth, mail_from=address)
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        mail.rcpt_to.append(arg.split(":", 1)[1].strip().strip("<>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = []
                        while True:
                            chunk = self.rfile.readline()
                            if not chunk or chunk in (b".\r\n", b".\n"):
                                break
                            chunk = chunk[1:] if chunk.startswith(b"..") else chunk
                            data.append(chunk.rstrip(b"\r\n") + b"\n")
                        mail.at = time.time()
                        mail.message = email.message_from_bytes(b"".join(data),
                                                                policy=email.policy.default)
                        with sink._lock:
                            sink._mails.append(mail)
                        mail = None
                        self.reply("250 OK queued")
                    elif verb in ("RSET", "NOOP"):
                        mail = None if verb == "RSET" else mail
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        return Handler


def notifications(http: HttpSink, smtp: SmtpSink) -> list[tuple[float, str]]:
    """Every notification the sinks hold as (arrival time, "receiver: title"), oldest first:
    Slack as slack/<webhook>, PagerDuty as pagerduty/<routing key>, email as email/<rcpts>; the
    heartbeat is left out."""
    found = []
    for r in http.requests():
        if r.path.startswith("/slack/"):
            found.append((r.at, f"slack/{r.path.rsplit('/', 1)[1]}: "
                                f"{r.body['attachments'][0]['title']}"))
        elif r.path == "/pagerduty":
            title = r.body["payload"]["summary"].partition(": ")[0]
            found.append((r.at, f"pagerduty/{r.body['routing_key']}: {title}"))
    found += [(m.at, f"email/{','.join(m.rcpt_to)}: {m.subject}") for m in smtp.mails()]
    return sorted(found)


# ------------------------------------------------------------------------------------------------
# pipemon's Alertmanager configuration pointed at the sinks.

RENDER = ROOT / "tools" / "render_alertmanager.py"
TEMPLATES = ROOT / "alertmanager" / "templates"


def _load_render_tool():
    spec = importlib.util.spec_from_file_location("render_alertmanager", RENDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tools/render_alertmanager.py as a module (secret_files, check_secrets, render ...).
render_tool = _load_render_tool()

# Secret file name -> content; the Slack URLs and the SMTP password are filled in per sink.
PAGERDUTY_KEYS = {"critical": "pd-key-level1", "escalation-level2": "pd-key-level2",
                  "escalation-level3": "pd-key-level3"}
SMTP_USER = "alertmanager@example.com"
SMTP_PASSWORD = "smtp-Secr3t-7d1e"
HEARTBEAT_TOKEN = "hb-Secr3t-c0ffee"


def secret_files(http: HttpSink) -> dict[str, str]:
    return {
        "pagerduty-level1-routing-key": PAGERDUTY_KEYS["critical"],
        "pagerduty-level2-routing-key": PAGERDUTY_KEYS["escalation-level2"],
        "pagerduty-level3-routing-key": PAGERDUTY_KEYS["escalation-level3"],
        "slack-critical-url": f"{http.url}/slack/critical",
        "slack-warning-url": f"{http.url}/slack/warning",
        "slack-info-url": f"{http.url}/slack/info",
        "smtp-password": SMTP_PASSWORD,
        "heartbeat-token": HEARTBEAT_TOKEN,
    }


def site_values(secrets_dir: Path, http: HttpSink, smtp: SmtpSink) -> dict:
    """What a site changes in alertmanager/values.yaml, here: everything points at the sinks."""
    return {
        "secrets_dir": str(secrets_dir),
        "templates_dir": str(TEMPLATES),
        "email": {"smarthost": smtp.smarthost, "require_tls": False},
        "pagerduty": {"url": f"{http.url}/pagerduty"},
        "heartbeat": {"url": f"{http.url}/heartbeat"},
    }


def site_config(workdir: Path, http: HttpSink, smtp: SmtpSink,
                extra_values: dict | None = None, relay_token: str | None = None) -> Path:
    """Write the secret files and render the real configuration for the sinks; its path.
    `extra_values` (keys of alertmanager/values.yaml, e.g. the demo's shorter timings) are
    merged over the sinks' values, as a second --values file. `relay_token`: the secret file
    relay-token, for a config with relay.url set."""
    secrets = workdir / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    files = secret_files(http)
    if relay_token is not None:
        files["relay-token"] = relay_token
    for name, content in files.items():
        path = secrets / name
        # Alertmanager trims every secret file but the SMTP password (see docs/alertmanager.md)
        path.write_text(content if name == "smtp-password" else content + "\n")
        path.chmod(0o600)
    values = workdir / "site-values.yaml"
    values.write_text(yaml.safe_dump(site_values(secrets, http, smtp)))
    files = ["--values", str(values)]
    if extra_values:
        extra = workdir / "extra-values.yaml"
        extra.write_text(yaml.safe_dump(extra_values))
        files += ["--values", str(extra)]
    config = workdir / "alertmanager.yml"
    result = subprocess.run([sys.executable, str(RENDER), *files, "-o", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return config
