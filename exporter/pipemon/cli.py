"""The `pipemon` command: parse options, build the config and the App, and hand over."""

from __future__ import annotations

import logging
import queue
import signal
import sys

import click
from prometheus_client import generate_latest

from pipemon import logs, webconfig
from pipemon.app import VERSION, App
from pipemon.backtest.command import backtest
from pipemon.config import Config, ConfigError, load
from pipemon.server import HttpServer, parse_listen_address

log = logging.getLogger("pipemon")

EXIT_CONFIG = 2
SHUTDOWN_SECONDS = 4.0
SIGNAL_CHECK_SECONDS = 0.2
WEB_CONFIG = "web config"  # what App.reload_failed/reload_succeeded track, next to "config"


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
@click.option("--web.config.file", "web_config_path", default=None,
              envvar="PIPEMON_WEB_CONFIG_FILE", type=click.Path(dir_okay=False),
              help="TLS and basic auth, as for Prometheus exporters. [env: "
                   "PIPEMON_WEB_CONFIG_FILE]")
@click.option("--log.level", "log_level", default="info", show_default=True,
              envvar="PIPEMON_LOG_LEVEL",
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="[env: PIPEMON_LOG_LEVEL]")
@click.option("--log.format", "log_format", default="text", show_default=True,
              envvar="PIPEMON_LOG_FORMAT", type=click.Choice(["text", "json"]),
              help="[env: PIPEMON_LOG_FORMAT]")
def serve(config_path: str, listen_address: str, web_config_path: str | None, log_level: str,
          log_format: str) -> None:
    """Poll the sources in the background and serve /metrics. SIGHUP reloads the config."""
    logs.setup(log_level, log_format)
    config = _load_or_exit(config_path)
    web = None
    if web_config_path:
        try:
            web = webconfig.load(web_config_path)
        except ConfigError as err:
            for line in err.lines():
                click.echo(line, err=True)
            sys.exit(EXIT_CONFIG)
    try:
        host, port = parse_listen_address(listen_address)
    except ValueError as err:
        click.echo(f"--web.listen-address: {err}", err=True)
        sys.exit(EXIT_CONFIG)

    app = App(config)
    try:
        server = HttpServer(app, host, port, web)
    except OSError as err:
        click.echo(f"--web.listen-address: cannot listen on {listen_address}: {err.strerror}",
                   err=True)
        sys.exit(EXIT_CONFIG)

    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda received, _frame: signals.put(received))
    web_reloader = None
    if web is not None:
        web_reloader = webconfig.Reloader(
            web_config_path, web, server.apply, lambda: app.reload_failed(WEB_CONFIG),
            succeeded=lambda: app.reload_succeeded(WEB_CONFIG))
    server.start()
    app.start()
    scheme = "https" if web and web.tls else "http"
    log.info("pipemon %s serving on %s://%s with %d sources", VERSION, scheme, listen_address,
             len(config.sources), extra={"listen_address": listen_address})
    idle = web_reloader.check if web_reloader else None
    while (received := _next_signal(signals, idle)) == signal.SIGHUP:
        _reload(app, config_path)
        if web_reloader:
            web_reloader.reload()
    log.info("received %s, shutting down", signal.Signals(received).name)
    server.stop()
    app.stop(SHUTDOWN_SECONDS)
    log.info("stopped")


def _next_signal(signals: queue.SimpleQueue, idle=None) -> int:
    """The next signal received, calling `idle` between checks. The wait is bounded: the
    kernel may deliver a signal to any thread, and Python runs handlers only when the main
    thread wakes, so it must wake often."""
    while True:
        try:
            return signals.get(timeout=SIGNAL_CHECK_SECONDS)
        except queue.Empty:
            if idle is not None:
                idle()


def _reload(app: App, config_path: str) -> None:
    """SIGHUP: load the config again; an invalid one leaves the running one in place."""
    try:
        config = load(config_path)
    except ConfigError as err:
        app.reload_failed()
        log.error("config reload failed, keeping the running config: %s",
                  "; ".join(err.problems), extra={"config": config_path})
        return
    kept, started, stopped = app.reload(config, SHUTDOWN_SECONDS)
    log.info("config reloaded: %d sources kept, %d started, %d stopped", kept, started, stopped,
             extra={"config": config_path})


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
    """Poll every source once, print the metrics, exit 1 if anything failed.

    Failed means a source's poll failed (pipemon_source_up 0: unreachable, refused, past its
    timeout), or a poll that worked measured something broken: a storage probe, a SQL check,
    a host tool or scratch directory. Each failure is one line on stderr. Exit 0 means all is
    well, so `once` can serve as a cron or CI health gate.
    """
    logs.setup(log_level, "text")
    app = App(_load_or_exit(config_path))
    try:
        app.poll_all_once()
        sys.stdout.write(generate_latest(app.registry).decode("utf-8"))
    finally:
        app.close()
    failures = []
    for runner in app.runners:
        if not runner.up:
            error = runner.last_error
            failures.append(f"source {runner.name}: {error.reason}: {error.message}")
        else:
            failures += [f"source {runner.name}: {line}"
                         for line in runner.source.failed_measurements(runner.snapshot)]
    for line in failures:
        click.echo(line, err=True)
    sys.exit(1 if failures else 0)


main.add_command(backtest)
