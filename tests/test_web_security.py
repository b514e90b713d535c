"""TLS and basic auth (`--web.config.file`) and SIGHUP reloads, on the real process."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from io import BytesIO
from wsgiref.util import setup_testing_defaults

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipemon import webconfig
from pipemon.config import ConfigError
from testkit.app import queue_source, write_config
from testkit.net import free_port, wait_until

PASSWORD = "scrape-Secr3t"


def _certificate(subject: str, key, issuer=None, ca=False, ip=None):
    """A certificate for `key`, signed by `issuer` ((cert, key)) or by itself."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(folder, stem: str, cert, key) -> tuple:
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / f"{stem}.crt", folder / f"{stem}.key"


def make_ca(folder, stem: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(f"{stem} CA", key, ca=True)
    _write(folder, stem, cert, key)
    return cert, key


def issue(folder, stem: str, ca, ip=None) -> tuple:
    """A certificate signed by `ca` (for 127.0.0.1 when ip is given); returns (crt, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(folder, stem, _certificate(stem, key, issuer=ca, ip=ip), key)


def self_signed(folder):
    """A certificate for 127.0.0.1 and its key, written to folder; returns (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(folder, "server", _certificate("pipemon test", key, ip="127.0.0.1"), key)


def web_config(folder, tls=True, users=None) -> str:
    data = {}
    if tls:
        self_signed(folder)
        data["tls_server_config"] = {"cert_file": "server.crt", "key_file": "server.key"}
    if users is not None:
        data["basic_auth_users"] = users
    path = folder / "web.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode().replace(
        "$2b$", "$2y$", 1)  # htpasswd writes $2y$


class Serve:
    def __init__(self, tmp_path, config, *extra):
        self.port = free_port()
        self.log_path = tmp_path / "serve.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipemon", "serve", "--config", config,
                 "--web.listen-address", f"127.0.0.1:{self.port}", *extra],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


def get(url, context=None, auth=None):
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.postgres
def test_tls_and_basic_auth(tmp_path, pg_dsn):
    config = write_config(tmp_path / "pipemon.yaml", [queue_source(pg_dsn)])
    web = web_config(tmp_path, users={"prometheus": hashed(PASSWORD)})
    serve = Serve(tmp_path, config, "--web.config.file", web)
    context = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
    base = f"https://127.0.0.1:{serve.port}"
    try:
        wait_until(lambda: get(f"{base}/readyz", context, ("prometheus", PASSWORD))[0] == 200,
                   30, "/readyz over TLS with credentials")
        status, body = get(f"{base}/metrics", context, ("prometheus", PASSWORD))
        assert status == 200 and "pipemon_source_up" in body
        for auth in (None, ("prometheus", "wrong"), ("nobody", PASSWORD)):
            assert get(f"{base}/metrics", context, auth)[0] == 401, auth
        # plain HTTP to the TLS port gets no answer
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/metrics", timeout=5)
    finally:
        assert serve.stop() == 0, serve.log()
    assert PASSWORD not in serve.log()


@pytest.mark.parametrize(("content", "problem"), [
    ({"basic_auth_users": {"prometheus": "plain-password"}},
     "basic_auth_users.prometheus: expected a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters),"
     " not a plain password"),
    ({"tls_server_config": {"cert_file": "missing.crt", "key_file": "missing.key"}},
     "tls_server_config.cert_file: cannot load: No such file or directory"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "cipher_suites": ["X"]}},
     "tls_server_config.cipher_suites: not supported by pipemon"),
    ({"basic_auth": {}}, "basic_auth: unknown key"),
])
def test_invalid_web_config_exits_2_with_a_clear_error(tmp_path, content, problem):
    web = tmp_path / "web.yaml"
    web.write_text(yaml.safe_dump(content))
    config = write_config(tmp_path / "pipemon.yaml",
                          [queue_source("postgresql://u@127.0.0.1:1/db")])
    result = subprocess.run(
        [sys.executable, "-m", "pipemon", "serve", "--config", config, "--web.config.file",
         str(web), "--web.listen-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{web}: {problem}"


def test_basic_auth_runs_bcrypt_for_unknown_users_too(monkeypatch):
    """No timing difference between an unknown user and a wrong password: both pay bcrypt."""
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    auth = webconfig.BasicAuth(app, {"prometheus": hashed(PASSWORD).encode()})
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw",
                        lambda pw, h: calls.append(h) or real(pw, h))

    def status(user, password):
        environ = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()}
        setup_testing_defaults(environ)
        environ["wsgi.input"] = BytesIO()
        seen = []
        auth(environ, lambda s, h, e=None: seen.append(s))
        return seen[0]

    assert status("nobody", PASSWORD).startswith("401")
    assert status("prometheus", "wrong").startswith("401")
    assert len(calls) == 2
    assert status("prometheus", PASSWORD).startswith("200")
    assert status("prometheus", PASSWORD).startswith("200")
    assert len(calls) == 3  # a verified password is remembered: bcrypt once per (user, password)


def test_web_config_paths_are_relative_to_the_file(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    loaded = webconfig.load(web_config(folder, users={"a": hashed("b")}))
    assert loaded.tls is not None and set(loaded.users) == {"a"}
    with pytest.raises(ConfigError):
        webconfig.load(str(tmp_path / "nope.yaml"))


@pytest.mark.postgres
def test_sighup_reloads_and_an_invalid_config_keeps_the_old_one(tmp_path, pg_dsn, db):
    path = tmp_path / "pipemon.yaml"
    stems = queue_source(pg_dsn, interval="1s", timeout="1s")
    write_config(path, [stems])
    serve = Serve(tmp_path, str(path))
    base = f"http://127.0.0.1:{serve.port}"

    def metric(line):
        return line in get(f"{base}/metrics")[1]

    done = 'pipemon_queue_jobs_finished_total{outcome="succeeded",queue="q",source="stems"}'
    try:
        _sighup_test_body(serve, base, path, stems, db, metric, done)
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- pipemon log ---\n{serve.log()}") from None
    finally:
        assert serve.stop() == 0, serve.log()


def _sighup_test_body(serve, base, path, stems, db, metric, done):
    """Add a source by SIGHUP, then send a broken config: the running one must stay."""
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, 30, "/readyz")
    db.execute("INSERT INTO jobs (queue, status, started_at, finished_at)"
               " VALUES ('q', 'succeeded', now(), now())")
    wait_until(lambda: metric(f"{done} 1.0"), 10, "the finished job counted")

    write_config(path, [stems, {**stems, "name": "second"}])
    serve.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric('pipemon_source_up{kind="queue",source="second"} 1.0'), 10,
               "the added source polled")
    assert metric(f"{done} 1.0"), "the unchanged source lost its counters on reload"
    assert metric("pipemon_config_last_reload_successful 1.0")

    path.write_text("sources: [ {name: broken\n")
    serve.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric("pipemon_config_last_reload_successful 0.0"), 10,
               "the failed reload reported")
    assert metric('pipemon_source_up{kind="queue",source="second"} 1.0')
    # The gauge is set before the log line reaches the file: poll for the line too.
    wait_until(lambda: "config reload failed, keeping the running config" in serve.log(), 10,
               "the failed reload logged")


# --- client certificates and web config reloads ---

HANDSHAKE_REFUSED = (ssl.SSLError, ConnectionError, urllib.error.URLError,
                     http.client.RemoteDisconnected)


def fetch_status(url, context) -> int | str:
    """The HTTP status, or the name of the error that ended the TLS connection."""
    try:
        return get(url, context)[0]
    except HANDSHAKE_REFUSED as err:
        return type(getattr(err, "reason", err)).__name__


def client_context(ca_file, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert:
        context.load_cert_chain(*map(str, cert))
    return context


def served_certificate(port: int, ca_file) -> bytes:
    """The DER certificate a new connection to the port is shown."""
    context = client_context(ca_file)
    with (socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
        return tls.getpeercert(binary_form=True)


def der(path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER)


@pytest.mark.postgres
def test_client_certificates_are_required_and_verified(tmp_path, pg_dsn):
    ca = make_ca(tmp_path, "ca")
    rogue = make_ca(tmp_path, "rogue")
    issue(tmp_path, "server", ca, ip="127.0.0.1")
    trusted = issue(tmp_path, "prometheus", ca)
    untrusted = issue(tmp_path, "intruder", rogue)
    (tmp_path / "web.yaml").write_text(yaml.safe_dump({"tls_server_config": {
        "cert_file": "server.crt", "key_file": "server.key",
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt"}}))
    config = write_config(tmp_path / "pipemon.yaml", [queue_source(pg_dsn)])
    serve = Serve(tmp_path, config, "--web.config.file", str(tmp_path / "web.yaml"))
    url = f"https://127.0.0.1:{serve.port}/metrics"
    ca_file = tmp_path / "ca.crt"
    try:
        wait_until(lambda: fetch_status(url, client_context(ca_file, trusted)) == 200, 30,
                   "/metrics with a client certificate signed by the CA")
        for name, context in (("none", client_context(ca_file)),
                              ("another CA", client_context(ca_file, untrusted))):
            outcome = fetch_status(url, context)
            assert outcome != 200 and isinstance(outcome, str), (name, outcome)
        # the refused handshakes did not hurt the server
        assert fetch_status(url, client_context(ca_file, trusted)) == 200
    finally:
        assert serve.stop() == 0, serve.log()


@pytest.mark.postgres
def test_web_config_reloads_on_sighup_and_on_certificate_rotation(tmp_path, pg_dsn):
    ca = make_ca(tmp_path, "ca")
    issue(tmp_path, "server", ca, ip="127.0.0.1")
    web = tmp_path / "web.yaml"
    tls = {"cert_file": "server.crt", "key_file": "server.key"}
    web.write_text(yaml.safe_dump({"tls_server_config": tls,
                                   "basic_auth_users": {"prometheus": hashed(PASSWORD)}}))
    config = write_config(tmp_path / "pipemon.yaml", [queue_source(pg_dsn)])
    serve = Serve(tmp_path, config, "--web.config.file", str(web))
    base = f"https://127.0.0.1:{serve.port}"
    context = client_context(tmp_path / "ca.crt")

    def status(password):
        return get(f"{base}/metrics", context, ("prometheus", password))[0]

    try:
        wait_until(lambda: fetch_status(f"{base}/healthz", context) in (200, 401), 30,
                   "pipemon serving TLS")
        assert status(PASSWORD) == 200

        # a new password, by SIGHUP
        web.write_text(yaml.safe_dump({"tls_server_config": tls,
                                       "basic_auth_users": {"prometheus": hashed("n3w-pass")}}))
        serve.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: status(PASSWORD) == 401, 10, "the old password refused")
        assert status("n3w-pass") == 200

        # a renewed certificate, without a signal (as cert-manager renews a Secret)
        before = served_certificate(serve.port, tmp_path / "ca.crt")
        assert before == der(tmp_path / "server.crt")
        issue(tmp_path, "server", ca, ip="127.0.0.1")
        renewed = der(tmp_path / "server.crt")
        wait_until(lambda: served_certificate(serve.port, tmp_path / "ca.crt") == renewed, 20,
                   "the renewed certificate served to new connections")
        wait_until(lambda: "web config reloaded (changed on disk)" in serve.log(), 10,
                   "the reload logged")

        # a broken file keeps the running one, and says so
        web.write_text(yaml.safe_dump({"tls_server_config": tls,
                                       "basic_auth_users": {"prometheus": "plain-password"}}))
        serve.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "web config reload (SIGHUP) failed" in serve.log(), 10,
                   "the failed reload logged")
        assert status("n3w-pass") == 200
        _, body = get(f"{base}/metrics", context, ("prometheus", "n3w-pass"))
        assert "pipemon_config_last_reload_successful 0.0" in body
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- pipemon log ---\n{serve.log()}") from None
    finally:
        assert serve.stop() == 0, serve.log()
    assert "n3w-pass" not in serve.log() and PASSWORD not in serve.log()
