"""`--web.config.file`: TLS and basic auth, in the format Prometheus's own exporters read.

    tls_server_config:
      cert_file: server.crt          # paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # optional: TLS12 or TLS13
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}

The same keys as the Prometheus exporter-toolkit; the few it has and pipemon does not
(cipher_suites, curve_preferences, http2) are refused by name rather than silently ignored.
The file is read again on SIGHUP and whenever it or a file it names changes (`Reloader`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipemon.schema import ConfigError, Node, one_of, string

log = logging.getLogger(__name__)

# What Python's ssl can do faithfully; exporter-toolkit's RequestClientCert and
# RequireAnyClientCert (a certificate asked for but not verified) are refused by name.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
UNSUPPORTED = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
               "client_allowed_sans", "http2"}


@dataclass(frozen=True)
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()  # the config file and the files it names, watched for changes


def _bcrypt_hash(value) -> bytes:
    text = string(value)
    if not text.startswith(("$2a$", "$2b$", "$2y$")) or len(text) != 60:
        raise ValueError("expected a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters), "
                         "not a plain password")
    return text.encode()


def _refuse_unsupported(node: Node) -> None:
    for key in UNSUPPORTED & set(node.data):
        node.get(key, lambda v: v)
        node.problem(key, "not supported by pipemon")


def _tls_context(node: Node, base: Path) -> ssl.SSLContext | None:
    cert = node.get("cert_file", string)
    key = node.get("key_file", string)
    client_auth = node.get("client_auth_type", one_of(*CLIENT_AUTH), "NoClientCert")
    client_ca = node.get("client_ca_file", string, None)
    min_version = node.get("min_version", one_of(*TLS_VERSIONS), "TLS12")
    max_version = node.get("max_version", one_of(*TLS_VERSIONS), None)
    _refuse_unsupported(node)
    node.finish()
    if client_auth not in (None, "NoClientCert") and not client_ca:
        node.problem("client_ca_file", f"required with client_auth_type {client_auth}")
    if node.problems or not (cert and key):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    if max_version:
        context.maximum_version = TLS_VERSIONS[max_version]
    for key_name, load in (
        ("cert_file", lambda: context.load_cert_chain(base / cert, base / key)),
        ("client_ca_file", lambda: client_ca and context.load_verify_locations(base / client_ca)),
    ):
        try:
            load()
        except (OSError, ssl.SSLError) as err:
            node.problem(key_name, f"cannot load: {getattr(err, 'strerror', None) or err}")
            return None
    context.verify_mode = CLIENT_AUTH[client_auth]
    return context


def load(path: str) -> WebConfig:
    """Read and check a web config file; ConfigError lists every problem."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(path, [f"cannot read file: {err.strerror}"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(path, [f"invalid YAML: {str(err).splitlines()[0]}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(path, ["expected a mapping"])
    problems: list[str] = []
    base = Path(path).resolve().parent
    root = Node(data, "", problems, base)
    tls_node = root.child("tls_server_config", required=False)
    tls = _tls_context(tls_node, base) if tls_node else None
    users = root.mapping("basic_auth_users", _bcrypt_hash, default={})
    headers = {}
    http = root.child("http_server_config", required=False)
    if http:
        headers = http.mapping("headers", string, default={})
        _refuse_unsupported(http)
        http.finish()
    root.finish()
    if problems:
        raise ConfigError(path, problems)
    files = [Path(path)]
    if tls_node:
        files += [base / tls_node.data[key] for key in ("cert_file", "key_file", "client_ca_file")
                  if isinstance(tls_node.data.get(key), str)]
    return WebConfig(tls=tls, users=users, headers=headers, files=tuple(files))


def fingerprint(files) -> tuple:
    """What changes when a file is rewritten or replaced (a Kubernetes Secret update swaps a
    symlink: stat follows it, so the inode changes)."""
    stamps = []
    for path in files:
        try:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class Reloader:
    """Reads the web config again on SIGHUP, and when the file or a certificate, key or CA it
    names changes (a rotated certificate needs no signal, as with exporter-toolkit).

    A new config that fails to load leaves the running one in place and calls `failed`; the same
    broken files are not retried (or logged) again until they change. One that loads is applied,
    then `succeeded` is called (the failure is over, however the reload came about).
    """

    def __init__(self, path: str, current: WebConfig, apply: Callable[[WebConfig], None],
                 failed: Callable[[], None], check_every: float = 5.0,
                 succeeded: Callable[[], None] = lambda: None):
        self.path = path
        self._apply, self._failed, self._succeeded = apply, failed, succeeded
        self._files = current.files or (Path(path),)
        self._seen = fingerprint(self._files)
        self.check_every = check_every
        self._next_check = time.monotonic() + check_every

    def check(self) -> None:
        """Reload if any watched file changed; cheap enough to call often."""
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.check_every
        if fingerprint(self._files) != self._seen:
            self.reload("changed on disk")

    def reload(self, why: str = "SIGHUP") -> bool:
        try:
            web = load(self.path)
        except ConfigError as err:
            self._seen = fingerprint(self._files)
            self._failed()
            log.error("web config reload (%s) failed, keeping the running one: %s", why,
                      "; ".join(err.problems), extra={"web_config": self.path})
            return False
        self._files = web.files
        self._seen = fingerprint(self._files)
        self._apply(web)
        self._succeeded()
        log.info("web config reloaded (%s): TLS %s, %d basic auth users", why,
                 "on" if web.tls else "off", len(web.users), extra={"web_config": self.path})
        return True


class BasicAuth:
    """WSGI middleware: every request needs a user of `users` and its password.

    bcrypt is slow by design, so a verified (user, password) pair is remembered (by a SHA-256 of
    the password, never the password itself); an unknown user costs the same bcrypt check as a
    known one, so response time does not tell which users exist.
    """

    def __init__(self, app, users: dict[str, bytes], realm: str = "pipemon"):
        self._app = app
        self._users = users
        self._realm = realm
        self._verified: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()
        import bcrypt  # here, not at the top: half a MiB that only basic auth needs

        self._bcrypt = bcrypt
        self._dummy = bcrypt.hashpw(b"pipemon", bcrypt.gensalt(rounds=_cost(users)))

    def _check(self, user: str, password: str) -> bool:
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            if key in self._verified:
                return True
        hashed = self._users.get(user)
        ok = self._bcrypt.checkpw(password.encode(), hashed or self._dummy) and hashed is not None
        if ok:
            with self._lock:
                self._verified.add(key)
        return ok

    def __call__(self, environ, start_response):
        user, password = _credentials(environ.get("HTTP_AUTHORIZATION", ""))
        if user is not None and self._check(user, password):
            return self._app(environ, start_response)
        body = b"Unauthorized\n"
        start_response("401 Unauthorized", [
            ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
            ("WWW-Authenticate", f'Basic realm="{self._realm}"')])
        return [body]


def _credentials(header: str) -> tuple[str | None, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, "")


def _cost(users: dict[str, bytes]) -> int:
    """The bcrypt cost of the configured hashes, so the dummy check takes as long."""
    for hashed in users.values():
        try:
            return int(hashed.split(b"$")[2])
        except (IndexError, ValueError):
            continue
    return 10
