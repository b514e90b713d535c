"""The host source with real commands and real directories (ffmpeg itself is not needed: the
tools are Python one-liners that behave like it, exit 1, or hang)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pipemon.config import ConfigError, load
from testkit import ROOT
from testkit.app import sample, write_config
from testkit.net import wait_until

PY = sys.executable
FAKE_FFMPEG = [PY, "-c", "print('ffmpeg version 6.1.1-3ubuntu5 Copyright (c) 2000-2023')"]


def host_source(**overrides) -> dict:
    source = {"name": "worker", "kind": "host", "interval": "30s", "timeout": "2s"}
    source.update(overrides)
    return source


def tool(app, metric, name, **labels):
    return sample(app, f"pipemon_host_tool_{metric}", source="worker", tool=name, **labels)


def scratch(app, metric, path):
    return sample(app, f"pipemon_host_scratch_{metric}", source="worker", path=str(path))


def test_tools_up_down_and_versions(make_app):
    app = make_app([host_source(tools=[
        {"name": "ffmpeg", "command": FAKE_FFMPEG},
        {"name": "whole_match", "command": FAKE_FFMPEG, "version_regex": r"\d+\.\d+"},
        {"name": "no_match", "command": FAKE_FFMPEG, "version_regex": "nothing like this"},
        {"name": "broken", "command": [PY, "-c", "import sys; print('no codec'); sys.exit(1)"]},
        {"name": "missing", "command": ["/nonexistent/bin/ffmpeg", "-version"]},
    ])])
    assert app.poll_all_once()

    assert sample(app, "pipemon_source_up", source="worker", kind="host") == 1
    assert [tool(app, "up", t) for t in ("ffmpeg", "whole_match", "no_match")] == [1, 1, 1]
    assert tool(app, "info", "ffmpeg", version="6.1.1-3ubuntu5") == 1
    assert tool(app, "info", "whole_match", version="6.1") == 1
    assert tool(app, "info", "no_match", version="unknown") == 1
    assert 0 < tool(app, "duration_seconds", "ffmpeg") < 2

    assert (tool(app, "up", "broken"), tool(app, "up", "missing")) == (0, 0)
    assert tool(app, "failures_total", "broken", reason="exit_code") == 1
    assert tool(app, "failures_total", "missing", reason="not_found") == 1
    assert tool(app, "failures_total", "ffmpeg", reason="timeout") == 0  # zeros exported
    assert tool(app, "info", "broken", version="unknown") is None  # no info while down


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_hanging_tool_is_killed_with_its_children(make_app, tmp_path):
    pids = tmp_path / "pids"
    hang = ("import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
            "time.sleep(60)\n")
    app = make_app([host_source(timeout="1s", tools=[
        {"name": "hangs", "command": [PY, "-c", hang]}])])
    started = time.monotonic()
    assert app.poll_all_once()
    assert time.monotonic() - started < 5
    assert tool(app, "up", "hangs") == 0
    assert tool(app, "failures_total", "hangs", reason="timeout") == 1
    parent, child = (int(pid) for pid in pids.read_text().split())
    wait_until(lambda: not _alive(parent) and not _alive(child), 5,
               "the command and its child to be killed")


def make_tree(root: Path) -> None:
    """Four regular files of 650 bytes, two of them older than a day, and a symlink."""
    day = 86400
    now = time.time()
    (root / "sub" / "deeper").mkdir(parents=True)
    files = {"a.wav": (100, now), "sub/b.wav": (200, now - 3600),
             "sub/deeper/c.wav": (300, now - 2 * day), "d.tmp": (50, now - day - 3600)}
    for name, (size, mtime) in files.items():
        path = root / name
        path.write_bytes(b"x" * size)
        os.utime(path, (mtime, mtime))
    (root / "link").symlink_to("/usr")  # not followed, not counted


def test_scratch_directory_health(make_app, tmp_path):
    work = tmp_path / "scratch"
    work.mkdir()
    make_tree(work)
    app = make_app([host_source(scratch=[{"path": str(work), "old_after": "24h"}])])
    assert app.poll_all_once()

    assert scratch(app, "writable", work) == 1
    assert scratch(app, "files", work) == 4
    assert scratch(app, "bytes", work) == 650
    assert scratch(app, "old_files", work) == 2
    assert scratch(app, "walk_truncated", work) == 0
    fs = os.statvfs(work)
    assert 0 < scratch(app, "free_bytes", work) <= fs.f_blocks * fs.f_frsize
    assert scratch(app, "filesystem_size_bytes", work) == fs.f_blocks * fs.f_frsize
    assert sorted(p.name for p in work.iterdir()) == ["a.wav", "d.tmp", "link", "sub"]

    # A file ages past old_after: the next poll counts it.
    day_ago = time.time() - 86400 - 1
    os.utime(work / "a.wav", (day_ago, day_ago))
    assert app.poll_all_once()
    assert scratch(app, "old_files", work) == 3


def test_walk_stops_at_max_entries(make_app, tmp_path):
    make_tree(tmp_path)
    app = make_app([host_source(scratch=[{"path": str(tmp_path), "max_entries": 3}])])
    assert app.poll_all_once()
    assert scratch(app, "walk_truncated", tmp_path) == 1
    assert scratch(app, "files", tmp_path) < 4


def test_unusable_scratch_paths_are_not_writable(make_app, tmp_path):
    """Tests run as root, whom file modes do not stop: a file and a missing path stand in."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    missing = tmp_path / "missing"
    app = make_app([host_source(scratch=[{"path": str(a_file)}, {"path": str(missing)}])])
    assert app.poll_all_once()
    assert sample(app, "pipemon_source_up", source="worker", kind="host") == 1

    assert scratch(app, "writable", a_file) == 0
    assert sample(app, "pipemon_host_scratch_errors_total", source="worker", path=str(a_file),
                  reason="not_a_directory") == 1
    assert scratch(app, "files", a_file) is None  # nothing to walk: absent, not 0
    assert scratch(app, "free_bytes", a_file) > 0  # its filesystem is still there

    assert scratch(app, "writable", missing) == 0
    assert sample(app, "pipemon_host_scratch_errors_total", source="worker", path=str(missing),
                  reason="missing") == 1
    assert scratch(app, "free_bytes", missing) is None

    missing.mkdir()  # the directory comes back
    assert app.poll_all_once()
    assert scratch(app, "writable", missing) == 1
    assert scratch(app, "files", missing) == 0


def test_example_host_config_is_valid():
    [source] = load(ROOT / "examples" / "host.yaml", env={}).sources
    assert [t.command for t in source.tools] == [("ffmpeg", "-version"), ("ffprobe", "-version")]
    assert [(s.path, s.old_after) for s in source.scratch] == [("/tmp", 86400)]


def test_config_problems_are_reported(tmp_path):
    path = write_config(tmp_path / "bad.yaml", [
        host_source(name="a", tools=[
            {"name": "x", "command": ["true"], "version_regex": "(", "timeout": "5s"},
            {"name": "x", "command": "ffmpeg -version"},
        ], scratch=[{"path": "relative/dir"}]),
        host_source(name="b"),
    ])
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert sorted(err.value.problems) == sorted([
        "sources[0].tools[0].timeout: must not exceed the source's timeout (2s)",
        "sources[0].tools[0].version_regex: invalid regular expression: missing ), unterminated"
        " subpattern at position 0",
        "sources[0].tools[1].command: expected a non-empty list of strings, got 'ffmpeg -version'",
        "sources[0].scratch[0].path: expected an absolute path, got 'relative/dir'",
        "sources[0].tools: duplicate names: x",
        "sources[1].tools: set tools, scratch or both",
    ])


def test_tools_are_counted_by_role(make_app):
    """The transcoder alert needs to know when none of a host's transcoders is up."""
    app = make_app([host_source(tools=[
        {"name": "ffmpeg", "command": FAKE_FFMPEG, "role": "transcoder"},
        {"name": "gst", "command": ["/nonexistent/gst-launch"], "role": "transcoder"},
        {"name": "ffprobe", "command": ["/nonexistent/ffprobe"]},
    ])])
    assert app.poll_all_once()

    def count(metric, role):
        return sample(app, metric, source="worker", role=role)

    assert (count("pipemon_host_tools", "transcoder"), count("pipemon_host_tools_up",
                                                             "transcoder")) == (2, 1)
    assert (count("pipemon_host_tools", "tool"), count("pipemon_host_tools_up", "tool")) == (1, 0)
