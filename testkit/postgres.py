"""A throwaway PostgreSQL cluster from the Debian binaries, for tests that stop and start it,
the demo and the benchmarks.

Runs the server as the `postgres` user when the tests run as root (initdb refuses root), in a
temp dir, on a free loopback port, with its own socket dir.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def find_bindir() -> Path | None:
    candidates = [os.environ.get("PIPEMON_TEST_PG_BINDIR", "")]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


# Server settings (-c) of every cluster: loopback only, and speed over durability.
SETTINGS = {"listen_addresses": "127.0.0.1", "fsync": "off", "full_page_writes": "off",
            "max_connections": "50"}


class PgCluster:
    """`settings` are added to (or override) SETTINGS, e.g. shared_preload_libraries."""

    def __init__(self, port: int, password: str | None = None,
                 settings: dict[str, str] | None = None):
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(
                "no PostgreSQL server binaries found (initdb): apt-get install postgresql")
        self.bindir = bindir
        self.port = port
        self.password = password
        self.settings = {**SETTINGS, **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="pipemon-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr}{result.stdout}\n{log}")

    def init(self) -> PgCluster:
        args = ["initdb", "-D", str(self.data), "-U", "postgres", "--no-sync", "-E", "UTF8"]
        if self.password:
            pwfile = self.root / "pw"
            pwfile.write_text(self.password)
            if self._as_postgres:
                entry = pwd.getpwnam("postgres")
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth=trust"]
        self._run(*args)
        return self

    def start(self) -> None:
        options = " ".join([f"-p {self.port} -k {self.root}",
                            *(f"-c {key}={value}" for key, value in self.settings.items())])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        password = self.password if password is None else password
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
