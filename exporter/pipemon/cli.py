"""The `pipemon` command: parse options, build the config and the App, and hand over."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from importlib import import_module

import click
from prometheus_client import generate_latest

from pipemon import logs, webconfig
from pipemon.app import VERSION, App
from pipemon.config import Config, ConfigError, load
from pipemon.server import HttpServer, parse_listen_address

log = logging.getLogger("pipemon")

EXIT_CONFIG = 2
SHUTDOWN_SECONDS = 4.0
WEB_CONFIG = "web config"  # what App.reload_failed/reload_succeeded track, next to "config"


M_ARENA_MAX = -8  # glibc's malloc.h


def _one_malloc_arena() -> None:
    """glibc gives a thread that allocates while another holds the lock an arena of its own (up
    to 8 per core), each keeping freed memory for itself: 1.5 MiB of the exporter's resident
    memory (bench/README.md, issue 19). Its threads take turns under the GIL anyway, so one
    arena costs no speed. An operator's own MALLOC_ARENA_MAX or GLIBC_TUNABLES wins."""
    if "MALLOC_ARENA_MAX" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return
    try:
        import ctypes  # loaded already: psycopg uses it

        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


def _load_or_exit(path: str, loader: Callable = load):
    """The config `loader` reads from `path`; exit 2 with one line per problem if invalid."""
    try:
        return loader(path)
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


class _Commands(click.Group):
    """Subcommands; `backtest` (Prometheus's rule engine, scenarios, reports) and `relay` are
    imported only when run, so that `serve` does not carry them in memory (bench/README.md,
    issue 19)."""

    LAZY = {"backtest": "pipemon.backtest.command:backtest",
            "relay": "pipemon.relay.command:relay"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            module, _, attr = self.LAZY[name].partition(":")
            return getattr(import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
    _one_malloc_arena()  # before any thread starts
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
        server = HttpServer.of(app, host, port, web)
    except OSError as err:
        click.echo(f"--web.listen-address: cannot listen on {listen_address}: {err.strerror}",
                   err=True)
        sys.exit(EXIT_CONFIG)

    signals = _Signals((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
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
    while (received := signals.next(idle, web_reloader.check_every if web_reloader else None)
           ) == signal.SIGHUP:
        _reload(app, config_path)
        if web_reloader:
            web_reloader.reload()
    log.info("received %s, shutting down", signal.Signals(received).name)
    server.stop()
    app.stop(SHUTDOWN_SECONDS)
    log.info("stopped")


class _Signals:
    """Waits for signals without waking up in between. The kernel may deliver a signal to any
    thread, and Python runs handlers only in the main thread, so a main thread blocked in a
    plain wait would not notice; polling for them woke the process 5 times a second, its main
    cost when idle (bench/README.md, issue 19). Instead the C-level handler, in whichever
    thread, writes the signal's number to a socket the main thread blocks on."""

    def __init__(self, signums: tuple[int, ...]):
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, lambda _received, _frame: None)

    def next(self, idle=None, idle_every: float | None = None) -> int:
        """The next signal received, calling `idle` every `idle_every` seconds meanwhile."""
        while True:
            ready, _, _ = select.select([self._read], [], [], idle_every)
            if ready:
                return self._read.recv(1)[0]
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
@click.option("--explain", is_flag=True,
              help="Also plan each queue source's poll queries on its database (read-only) and"
                   " say which read more than they should, with the index to create; exit 1"
                   " if any does.")
@click.option("--analyze", is_flag=True,
              help="With --explain: run the queries too (EXPLAIN ANALYZE, still read-only).")
def check_config(config_path: str, explain: bool, analyze: bool) -> None:
    """Validate a config file: exit 0 when valid, 2 with one line per problem when not."""
    config = _load_or_exit(config_path)
    click.echo(_summary(config))
    if explain and not _explain(config, analyze):
        sys.exit(1)


def _explain(config: Config, analyze: bool) -> bool:
    """Each queue source's query plans, one line each; True when every one is as it should."""
    from pipemon.errors import PollError
    from pipemon.sources.presets.explain import explain_source

    good = True
    for source in config.sources:
        if source.kind != "queue":
            continue
        try:
            findings = explain_source(source, analyze)
        except PollError as err:
            click.echo(f"{source.name}: cannot plan: {err.reason}: {err.message}")
            good = False
            continue
        for finding in findings:
            click.echo(f"{source.name}: {finding}")
            good = good and finding.ok
    return good


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

