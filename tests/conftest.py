"""Fixtures for real PostgreSQL: PIPEMON_TEST_POSTGRES_DSN, else testcontainers where a Docker
engine answers, else a throwaway cluster from the local PostgreSQL binaries. Never a skip."""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from contextlib import contextmanager

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from testkit import ROOT
from testkit.app import build_app
from testkit.net import free_port
from testkit.postgres import PgCluster
from testkit.s3 import BUCKET, Moto, S3Proxy, s3_client

SCHEMA = (ROOT / "examples" / "schema.sql").read_text()


def _docker_answers() -> bool:
    """Whether a Docker engine answers; quietly, leaving no socket open behind."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    with warnings.catch_warnings():
        # docker-py leaves its socket to the garbage collector when the engine is absent
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


@pytest.fixture(scope="session")
def postgres_server():
    """An admin DSN of a PostgreSQL server the tests may create databases on."""
    dsn = os.environ.get("PIPEMON_TEST_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    cluster = PgCluster(free_port()).init()
    cluster.start()
    try:
        yield cluster.dsn()
    finally:
        cluster.destroy()


def _create_database(admin_dsn: str) -> tuple[str, str]:
    name = f"pipemon_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, make_conninfo(admin_dsn, dbname=name)


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(postgres_server):
    """A fresh database with the example schema, dropped after the test."""
    name, dsn = _create_database(postgres_server)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    try:
        yield dsn
    finally:
        _drop_database(postgres_server, name)


@pytest.fixture
def db(pg_dsn):
    """An autocommit connection to the test database, for arranging data."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def cluster():
    """A PostgreSQL of the test's own (password auth), which the test may stop and start."""
    cluster = PgCluster(free_port(), password="pg-Secr3t-pw-9f1c").init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def make_app(tmp_path):
    """Build Apps from source dicts; every one is closed after the test, pass or fail."""
    apps = []

    def make(sources, **top):
        folder = tmp_path / f"app{len(apps)}"
        folder.mkdir()
        apps.append(build_app(folder, sources, **top))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def services(tmp_path):
    """Start real processes (testkit.processes, testkit.prometheus); all are stopped after the test.

        exporter = services(Exporter(tmp_path / "x", sources))
    """
    started = []

    def start(process):
        started.append(process)
        return process.start()

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def sinks():
    """Local Slack/PagerDuty/webhook (HTTP) and SMTP receivers (testkit.sinks), stopped after
    the test. Ask for it before `services`, so that Alertmanager stops first."""
    from testkit.sinks import HttpSink, SmtpSink

    http, smtp = HttpSink().start(), SmtpSink().start()
    try:
        yield http, smtp
    finally:
        http.stop()
        smtp.stop()


# --- S3: moto's server on loopback, and a fault-injecting proxy in front of it ---


@contextmanager
def running(server):
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto():
    """One moto server for the session (stopping one takes half a second); `s3` resets it."""
    with running(Moto()) as server:
        yield server


@pytest.fixture
def stoppable(moto):
    """A second moto server, for a test to stop and start: it shares the process's state."""
    with running(Moto()) as server:
        yield server


@pytest.fixture
def s3(moto):
    """A client of the test's own, with the bucket created the way R2 names its region."""
    client = s3_client(moto.url)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"})
    try:
        yield client
    finally:
        client.close()
        moto.reset()


@pytest.fixture
def proxy(moto):
    proxy = S3Proxy(moto.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
