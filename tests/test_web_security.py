"""TLS and basic auth (`--web.config.file`) and SIGHUP reloads, on the real process."""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
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
from tests.helpers import free_port, queue_source, wait_until, write_config

PASSWORD = "scrape-Secr3t"


def self_signed(folder):
    """A certificate for 127.0.0.1 and its key, written to folder; returns (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipemon test")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / "server.crt", folder / "server.key"


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
    monkeypatch.setattr(webconfig.bcrypt, "checkpw",
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
    assert "config reload failed, keeping the running config" in serve.log()
