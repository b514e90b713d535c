"""`pipemon relay serve | migrate` (docs/relay.md)."""

from __future__ import annotations

import logging
import signal
import sys

import click
import psycopg

from pipemon import logs, webconfig
from pipemon.app import VERSION
from pipemon.errors import redact
from pipemon.relay.app import Relay, wsgi
from pipemon.relay.config import RelayConfig, load
from pipemon.relay.store import migrate as run_migrations
from pipemon.schema import ConfigError
from pipemon.server import HttpServer, parse_listen_address

log = logging.getLogger("pipemon.relay")
EXIT_CONFIG = 2

CONFIG = click.option("--config", "config_path", required=True, envvar="PIPEMON_RELAY_CONFIG",
                      type=click.Path(dir_okay=False),
                      help="The relay's YAML config file. [env: PIPEMON_RELAY_CONFIG]")


def _load_or_exit(path: str) -> RelayConfig:
    from pipemon.cli import _load_or_exit as load_or_exit

    return load_or_exit(path, load)


@click.group()
def relay() -> None:
    """Alertmanager's webhook receiver: the alert history in PostgreSQL, passed on to Sentry
    and PostHog."""


@relay.command()
@CONFIG
def migrate(config_path: str) -> None:
    """Create or bring up to date the relay's tables (as a role that may create them)."""
    config = _load_or_exit(config_path)
    try:
        before, after = run_migrations(config.database)
    except psycopg.Error as err:
        click.echo(f"relay migrate: {redact(str(err).strip(), config.secrets())}", err=True)
        sys.exit(1)
    click.echo(f"relay schema {config.database.db_schema}: version {before} -> {after}")


@relay.command()
@CONFIG
@click.option("--web.listen-address", "listen_address", default="127.0.0.1:9866",
              show_default=True, envvar="PIPEMON_RELAY_WEB_LISTEN_ADDRESS",
              help="host:port to serve on. [env: PIPEMON_RELAY_WEB_LISTEN_ADDRESS]")
@click.option("--web.config.file", "web_config_path", default=None,
              envvar="PIPEMON_RELAY_WEB_CONFIG_FILE", type=click.Path(dir_okay=False),
              help="TLS and basic auth, as for the exporter.")
@click.option("--log.level", "log_level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log.format", "log_format", default="text", show_default=True,
              type=click.Choice(["text", "json"]))
def serve(config_path: str, listen_address: str, web_config_path: str | None, log_level: str,
          log_format: str) -> None:
    """Receive Alertmanager's notifications until SIGTERM."""
    from pipemon.cli import _Signals

    logs.setup(log_level, log_format)
    config = _load_or_exit(config_path)
    web = None
    try:
        if web_config_path:
            web = webconfig.load(web_config_path)
        host, port = parse_listen_address(listen_address)
    except ConfigError as err:
        for line in err.lines():
            click.echo(line, err=True)
        sys.exit(EXIT_CONFIG)
    except ValueError as err:
        click.echo(f"--web.listen-address: {err}", err=True)
        sys.exit(EXIT_CONFIG)
    app = Relay(config)
    try:
        server = HttpServer(lambda web_config: wsgi(app, web_config), host, port, web)
    except OSError as err:
        click.echo(f"--web.listen-address: cannot listen on {listen_address}: {err.strerror}",
                   err=True)
        sys.exit(EXIT_CONFIG)
    signals = _Signals((signal.SIGTERM, signal.SIGINT))
    server.start()
    app.start()
    log.info("pipemon relay %s serving on %s", VERSION, listen_address)
    received = signals.next()
    log.info("received %s, shutting down", signal.Signals(received).name)
    server.stop()
    app.stop()
