"""`kind: host`: the worker host's tools (e.g. `ffmpeg -version`) and scratch directories.

Tools: each command runs without a shell, with its own timeout; a command that overruns is
killed with its whole process group. Up when it exits 0 in time; the version is read from its
output with a regex. Scratch directories: writable (a temp file created and deleted), the regular
files under it (count, bytes, older than `old_after`; a bounded walk), and the filesystem's free
space. Like the storage probe, a broken tool or directory is a measurement, not a failed poll.

A poll ends by its deadline: tools run least recently run first, each until its own timeout or
the deadline (then `timeout`); one the deadline leaves no time for fails as `deadline` and goes
first at the next poll.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass

from pipemon import metrics as m
from pipemon.schema import (
    Checked,
    Node,
    described,
    name,
    one_of,
    positive_duration,
    positive_int,
    ratio,
    section_list,
    string,
    string_list,
    value,
)
from pipemon.sources.base import Source, SourceConfig
from pipemon.verdict import CRITICAL, WARNING, Finding

log = logging.getLogger(__name__)

TOOL_REASONS = ("timeout", "not_found", "permission", "exit_code", "exec_error", "deadline")
SCRATCH_REASONS = ("missing", "not_a_directory", "permission", "read_only", "no_space",
                   "io_error")
DEFAULT_VERSION_REGEX = r"version\s+(\S+)"
MAX_OUTPUT_SCANNED = 65536
MAX_VERSION_LENGTH = 64
UNKNOWN_VERSION = "unknown"
ROLES = ("transcoder", "tool")


# --- config ---


@described("regular expression")
def regex(value) -> re.Pattern:
    text = string(value)
    try:
        return re.compile(text)
    except re.error as err:
        raise ValueError(f"invalid regular expression: {err}") from None


@described("absolute path")
def absolute_path(value) -> str:
    text = string(value)
    if not os.path.isabs(text):
        raise ValueError(f"expected an absolute path, got {text!r}")
    return os.path.normpath(text)


@dataclass(frozen=True, kw_only=True)
class Tool(Checked):
    name: str = value("The tool's name: the `tool` label.", name)
    command: tuple[str, ...] = value("The command and its arguments, run without a shell.",
                                     string_list)
    version_regex: re.Pattern = value(
        "Searched in the output: its first group (else the match) is the `version` label.",
        regex, re.compile(DEFAULT_VERSION_REGEX), shown_default=f"`{DEFAULT_VERSION_REGEX}`")
    timeout: float = value("Killed (with its process group) if still running after this,"
                           " at most the source's timeout.", positive_duration,
                           shown_default="the source's")
    role: str = value("`transcoder` for a tool the host cannot transcode without (FFmpeg): with"
                      " no transcoder up the host pages; any other tool down warns.",
                      one_of(*ROLES), "tool")

    def check(self, node: Node, parent: dict) -> None:
        limit = parent.get("timeout")
        if self.timeout and limit and self.timeout > limit:
            node.problem("timeout", f"must not exceed the source's timeout ({limit:g}s)")


@dataclass(frozen=True, kw_only=True)
class Scratch(Checked):
    path: str = value("The directory.", absolute_path)
    old_after: float = value("Files last modified longer ago count as old.", positive_duration,
                             86400.0)
    max_entries: int = value("Directory entries the walk visits at most.", positive_int,
                             100_000)
    used_warning: float = value("The verdict on /health warns above this used share of the"
                                " directory's filesystem (the video guide's disk alert).", ratio,
                                0.90)
    used_critical: float = value("... and is critical above this one.", ratio, 0.95)


@dataclass(frozen=True, kw_only=True)
class HostConfig(SourceConfig):
    tools: tuple[Tool, ...] = section_list(Tool, "Commands run every poll.",
                                           inherit=("timeout",))
    scratch: tuple[Scratch, ...] = section_list(Scratch, "Scratch directories to check.")

    def check(self, node: Node, parent: dict) -> None:
        super().check(node, parent)
        if not self.tools and not self.scratch and not node.has("tools") \
                and not node.has("scratch"):
            node.problem("tools", "set tools, scratch or both")
        for key, names in (("tools", [t.name for t in self.tools]),
                           ("scratch", [s.path for s in self.scratch])):
            duplicates = sorted({n for n in names if n and names.count(n) > 1})
            if duplicates:
                node.problem(key, f"duplicate {'names' if key == 'tools' else 'paths'}: "
                                  f"{', '.join(duplicates)}")


# --- tools ---


@dataclass(frozen=True)
class ToolResult:
    up: bool
    duration: float
    version: str | None = None
    reason: str | None = None
    message: str = ""


def run_tool(tool: Tool, deadline: float) -> ToolResult:
    """Run the tool until its own timeout or the poll's deadline, whichever comes first."""
    started = time.monotonic()
    remaining = deadline - started
    if remaining <= 0:
        return ToolResult(False, 0.0, reason="deadline",
                          message="the poll's deadline passed before the tool could run")
    cut_by_deadline = remaining < tool.timeout - 0.1  # not just the first tool's own start
    try:
        # A session of its own, so that a timeout kills the command's children too.
        proc = subprocess.Popen(tool.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        return ToolResult(False, time.monotonic() - started, reason="not_found",
                          message=f"{tool.command[0]}: command not found")
    except PermissionError:
        return ToolResult(False, time.monotonic() - started, reason="permission",
                          message=f"{tool.command[0]}: permission denied")
    except OSError as err:
        return ToolResult(False, time.monotonic() - started, reason="exec_error",
                          message=f"{tool.command[0]}: {err.strerror}")
    with proc:
        try:
            output, _ = proc.communicate(timeout=min(tool.timeout, remaining))
        except subprocess.TimeoutExpired:
            _kill(proc)
            limit = "the poll's deadline" if cut_by_deadline else f"{tool.timeout:g}s"
            return ToolResult(False, time.monotonic() - started, reason="timeout",
                              message=f"no exit within {limit}: killed")
    duration = time.monotonic() - started
    text = output[:MAX_OUTPUT_SCANNED].decode("utf-8", errors="replace")
    if proc.returncode != 0:
        last_line = text.strip().splitlines()[-1:] or [""]
        return ToolResult(False, duration, reason="exit_code",
                          message=f"exit code {proc.returncode}: {last_line[0][:200]}")
    return ToolResult(True, duration, version=_version(tool.version_regex, text))


def _kill(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=1)
    except subprocess.TimeoutExpired:  # a process outside the group still holds the pipe
        proc.stdout.close()
        proc.wait()


def _version(pattern: re.Pattern, text: str) -> str:
    match = pattern.search(text)
    if match is None:
        return UNKNOWN_VERSION
    found = match.group(1) if pattern.groups else match.group(0)
    return (found or "").strip()[:MAX_VERSION_LENGTH] or UNKNOWN_VERSION


# --- scratch directories ---


@dataclass(frozen=True)
class WalkResult:
    files: int
    bytes: int
    old_files: int
    truncated: bool


@dataclass(frozen=True)
class ScratchResult:
    writable: bool
    reason: str | None = None
    walk: WalkResult | None = None
    free_bytes: int | None = None
    size_bytes: int | None = None


_ERRNO_REASONS = {errno.ENOENT: "missing", errno.ENOTDIR: "not_a_directory",
                  errno.EACCES: "permission", errno.EPERM: "permission",
                  errno.EROFS: "read_only", errno.ENOSPC: "no_space", errno.EDQUOT: "no_space"}


def check_scratch(scratch: Scratch, deadline: float) -> ScratchResult:
    reason = _write_test(scratch.path)
    walk = None
    if os.path.isdir(scratch.path):
        walk = walk_tree(scratch.path, time.time() - scratch.old_after, scratch.max_entries,
                         deadline)
    try:
        fs = os.statvfs(scratch.path)
        free, size = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
    except OSError:
        free = size = None
    return ScratchResult(reason is None, reason, walk, free, size)


def _write_test(path: str) -> str | None:
    """None when a file can be created, written and deleted in `path`, else a reason."""
    try:
        fd, name = tempfile.mkstemp(prefix=".pipemon-write-test-", dir=path)
        try:
            os.write(fd, b"pipemon")
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as err:
        return _ERRNO_REASONS.get(err.errno, "io_error")
    return None


def walk_tree(root: str, old_before: float, max_entries: int, deadline: float) -> WalkResult:
    """Regular files under `root` (symlinks not followed), visiting at most max_entries."""
    files = size = old = visited = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    visited += 1
                    if visited > max_entries or time.monotonic() > deadline:
                        return WalkResult(files, size, old, truncated=True)
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            stat = entry.stat(follow_symlinks=False)
                            files += 1
                            size += stat.st_size
                            old += stat.st_mtime < old_before
                    except FileNotFoundError:  # scratch files come and go during the walk
                        continue
        except OSError:  # a directory removed, or not readable, since it was listed
            continue
    return WalkResult(files, size, old, truncated=False)


# --- the source ---


@dataclass(frozen=True)
class HostSnapshot:
    tools: dict[str, ToolResult]
    scratch: dict[str, ScratchResult]


class HostSource(Source):
    config_type = HostConfig
    specs = (m.HOST_TOOL_UP, m.HOST_TOOL_DURATION, m.HOST_TOOL_INFO, m.HOST_TOOL_FAILURES,
             m.HOST_TOOLS, m.HOST_TOOLS_UP,
             m.HOST_SCRATCH_WRITABLE, m.HOST_SCRATCH_BYTES, m.HOST_SCRATCH_FILES,
             m.HOST_SCRATCH_OLD_FILES, m.HOST_SCRATCH_WALK_TRUNCATED, m.HOST_SCRATCH_FREE_BYTES,
             m.HOST_SCRATCH_FS_SIZE, m.HOST_SCRATCH_ERRORS)

    def __init__(self, config: HostConfig):
        super().__init__(config)
        self.config: HostConfig = config
        self._lock = threading.Lock()
        self._tool_failures = m.CounterSet()
        self._scratch_errors = m.CounterSet()
        for tool in config.tools:
            for reason in TOOL_REASONS:
                self._tool_failures.ensure((tool.name, reason))
        for scratch in config.scratch:
            for reason in SCRATCH_REASONS:
                self._scratch_errors.ensure((scratch.path, reason))
        self._last_run: dict[str, float] = {}  # tool -> monotonic start of its last run

    def poll(self, deadline: float) -> HostSnapshot:
        tools = {}
        # Least recently run first: a tool the deadline cut off last time goes first now.
        not_run = []
        for tool in sorted(self.config.tools, key=lambda t: self._last_run.get(t.name, -1.0)):
            result = tools[tool.name] = run_tool(tool, deadline)
            if result.reason == "deadline":
                not_run.append(tool.name)
            else:
                self._last_run[tool.name] = time.monotonic()
                if not result.up:
                    self._failed("tool", tool.name, result.reason, result.message)
            if not result.up:
                with self._lock:
                    self._tool_failures.inc((tool.name, result.reason))
        if not_run:
            log.warning("source %s: %d tools not run, the poll's deadline had passed (they go"
                        " first next time): %s", self.name, len(not_run), ", ".join(not_run),
                        extra={"source": self.name, "reason": "deadline"})
        scratch = {}
        for item in self.config.scratch:
            result = scratch[item.path] = check_scratch(item, deadline)
            if result.reason:
                self._failed("scratch directory", item.path, result.reason, "not writable")
                with self._lock:
                    self._scratch_errors.inc((item.path, result.reason))
        return HostSnapshot(tools, scratch)

    def findings(self, snapshot: HostSnapshot) -> list[Finding]:
        found = []
        transcoders = [t.name for t in self.config.tools if t.role == "transcoder"]
        down = {name: r for name, r in snapshot.tools.items() if not r.up}
        if transcoders and all(name in down for name in transcoders):
            found.append(Finding(CRITICAL, "no transcoder runs (" + ", ".join(
                f"{name}: {down[name].reason}" for name in transcoders) + ")"))
            down = {name: r for name, r in down.items() if name not in transcoders}
        found += [Finding(WARNING, f"tool {name} down: {r.reason}")
                  for name, r in sorted(down.items())]
        for item in self.config.scratch:
            result = snapshot.scratch.get(item.path)
            if result is None:
                continue
            if not result.writable:
                found.append(Finding(CRITICAL, f"scratch directory {item.path} not writable:"
                                               f" {result.reason}"))
            if result.free_bytes is not None and result.size_bytes:
                used = 1 - result.free_bytes / result.size_bytes
                for status, limit in ((CRITICAL, item.used_critical),
                                      (WARNING, item.used_warning)):
                    if used > limit:
                        found.append(Finding(status, f"scratch filesystem of {item.path}"
                                                     f" {used:.0%} used ({status} above"
                                                     f" {limit:.0%})"))
                        break
            if result.walk is not None and result.walk.old_files:
                found.append(Finding(WARNING, f"{result.walk.old_files} files in {item.path}"
                                              " older than old_after"))
        return found

    def failed_measurements(self, snapshot: HostSnapshot) -> list[str]:
        return [*(f"tool {name}: {r.reason}: {r.message}"
                  for name, r in sorted(snapshot.tools.items()) if not r.up),
                *(f"scratch directory {path}: {r.reason}"
                  for path, r in sorted(snapshot.scratch.items()) if r.reason)]

    def _failed(self, what: str, which: str, reason: str, message: str) -> None:
        log.warning("source %s: %s %s failed (%s): %s", self.name, what, which, reason, message,
                    extra={"source": self.name, "reason": reason})

    def collect(self, families: m.Families, snapshot: HostSnapshot | None) -> None:
        if snapshot is not None:
            self._collect_roles(families, snapshot.tools)
            self._collect_tools(families, snapshot.tools)
            self._collect_scratch(families, snapshot.scratch)
        with self._lock:
            self._tool_failures.emit(families(m.HOST_TOOL_FAILURES), (self.name,))
            self._scratch_errors.emit(families(m.HOST_SCRATCH_ERRORS), (self.name,))

    def _collect_roles(self, families: m.Families, tools: dict[str, ToolResult]) -> None:
        for role in ROLES:
            of_role = [t.name for t in self.config.tools if t.role == role]
            if of_role:
                families(m.HOST_TOOLS).add_metric([self.name, role], len(of_role))
                up = sum(1 for name in of_role if tools.get(name) and tools[name].up)
                families(m.HOST_TOOLS_UP).add_metric([self.name, role], up)

    def _collect_tools(self, families: m.Families, tools: dict[str, ToolResult]) -> None:
        for tool, result in sorted(tools.items()):
            labels = [self.name, tool]
            families(m.HOST_TOOL_UP).add_metric(labels, 1 if result.up else 0)
            families(m.HOST_TOOL_DURATION).add_metric(labels, result.duration)
            if result.up:
                families(m.HOST_TOOL_INFO).add_metric([*labels, result.version], 1)

    def _collect_scratch(self, families: m.Families, scratch: dict[str, ScratchResult]) -> None:
        for path, result in sorted(scratch.items()):
            labels = [self.name, path]
            families(m.HOST_SCRATCH_WRITABLE).add_metric(labels, 1 if result.writable else 0)
            if result.walk is not None:
                walk = result.walk
                families(m.HOST_SCRATCH_FILES).add_metric(labels, walk.files)
                families(m.HOST_SCRATCH_BYTES).add_metric(labels, walk.bytes)
                families(m.HOST_SCRATCH_OLD_FILES).add_metric(labels, walk.old_files)
                families(m.HOST_SCRATCH_WALK_TRUNCATED).add_metric(
                    labels, 1 if walk.truncated else 0)
            if result.free_bytes is not None:
                families(m.HOST_SCRATCH_FREE_BYTES).add_metric(labels, result.free_bytes)
                families(m.HOST_SCRATCH_FS_SIZE).add_metric(labels, result.size_bytes)

    def describe(self) -> dict:
        return {"target": ", ".join([*(t.name for t in self.config.tools),
                                     *(s.path for s in self.config.scratch)])}
