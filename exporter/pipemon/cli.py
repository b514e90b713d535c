"""The `pipemon` command: parse options, build the config and the App, and hand over."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click
from prometheus_client import generate_latest

from pipemon import logs
from pipemon.app import VERSION, App
from pipemon.config import Config, ConfigError, load
from pipemon.server import HttpServer, parse_listen_address

log = logging.getLogger("pipemon")

EXIT_CONFIG = 2
SHUTDOWN_SECONDS = 4.0


def _load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as err:
        for line in err.lines():
            click.echo(line, err=True)
        sys.exit(EXIT_CONFIG)


def _summary(config: Config) -> str:
    kinds: dict[str, int] = {}
    for source in config.sources:
        kinds[source.kind] = kinds.get(source.kind, 0) + 1
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    names = ", ".join(s.name for s in config.sources)
    return f"{config.file}: valid: {len(config.sources)} sources ({parts}): {names}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="pipemon")
def main() -> None:
    """pipemon: a Prometheus exporter for media-processing pipelines."""


@main.command()
@click.option("--config", "config_path", required=True, envvar="PIPEMON_CONFIG",
              type=click.Path(dir_okay=False), help="YAML config file. [env: PIPEMON_CONFIG]")
@click.option("--web.listen-address", "listen_address", default="127.0.0.1:9864",
              show_default=True, envvar="PIPEMON_WEB_LISTEN_ADDRESS",
              help="host:port to serve on. [env: PIPEMON_WEB_LISTEN_ADDRESS]")
@click.option("--log.level", "log_level", default="info", show_default=True,
              envvar="PIPEMON_LOG_LEVEL",
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="[env: PIPEMON_LOG_LEVEL]")
@click.option("--log.format", "log_format", default="text", show_default=True,
              envvar="PIPEMON_LOG_FORMAT", type=click.Choice(["text", "json"]),
              help="[env: PIPEMON_LOG_FORMAT]")
def serve(config_path: str, listen_address: str, log_level: str, log_format: str) -> None:
    """Poll the sources in the background and serve /metrics."""
    logs.setup(log_level, log_format)
    config = _load_or_exit(config_path)
    try:
        host, port = parse_listen_address(listen_address)
    except ValueError as err:
        click.echo(f"--web.listen-address: {err}", err=True)
        sys.exit(EXIT_CONFIG)

    app = App(config)
    try:
        server = HttpServer(app, host, port)
    except OSError as err:
        click.echo(f"--web.listen-address: cannot listen on {listen_address}: {err.strerror}",
                   err=True)
        sys.exit(EXIT_CONFIG)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    app.start()
    log.info("pipemon %s serving on %s with %d sources", VERSION, listen_address,
             len(config.sources), extra={"listen_address": listen_address})
    stop.wait()
    server.stop()
    app.stop(SHUTDOWN_SECONDS)
    log.info("stopped")


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file: exit 0 when valid, 2 with one line per problem when not."""
    click.echo(_summary(_load_or_exit(config_path)))


@main.command()
@click.option("--config", "config_path", required=True, envvar="PIPEMON_CONFIG",
              type=click.Path(dir_okay=False), help="YAML config file. [env: PIPEMON_CONFIG]")
@click.option("--log.level", "log_level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def once(config_path: str, log_level: str) -> None:
    """Poll every source once, print the metrics, exit 1 if any source failed."""
    logs.setup(log_level, "text")
    app = App(_load_or_exit(config_path))
    try:
        ok = app.poll_all_once()
        sys.stdout.write(generate_latest(app.registry).decode("utf-8"))
    finally:
        app.close()
    for runner in app.runners:
        if runner.last_error is not None and not runner.up:
            click.echo(f"source {runner.name}: {runner.last_error.reason}: "
                       f"{runner.last_error.message}", err=True)
    sys.exit(0 if ok else 1)
