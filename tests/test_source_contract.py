"""The source contract: keys declared once, the reference generated from them, a new kind in one
module and one registry line, and no import circle in exporter/."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from pipemon import kinds
from pipemon import metrics as m
from pipemon.app import App
from pipemon.config import ConfigError, Defaults, load
from pipemon.errors import PollError
from pipemon.schema import positive_int, settings, value
from pipemon.sources.base import Source, SourceConfig
from testkit import ROOT
from testkit.app import sample

PACKAGE = ROOT / "exporter" / "pipemon"


def config_classes() -> set[type]:
    """Every config class reachable from the registry (kinds, their sections and lists)."""
    found, todo = set(), [Defaults, *(kinds.source_class(k).config_type for k in kinds.KINDS)]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo += [s.cls for _, s in settings(cls) if s.cls is not None]
    return found


def test_the_reference_in_docs_is_generated_from_the_declarations():
    result = subprocess.run([sys.executable, "-m", "pipemon.reference", "--check",
                             "docs/configuration.md"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cls", sorted(config_classes(), key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_every_key_is_declared_once_with_its_doc_and_type(cls):
    declared = {f.name for f, _ in settings(cls)}
    assert {f.name for f in fields(cls)} - declared <= {"kind"}, "a field read by hand"
    for f, setting in settings(cls):
        assert setting.doc.strip().endswith("."), f"{cls.__name__}.{f.name}: no one-line doc"
        if setting.parse is not None:
            assert getattr(setting.parse, "type_text", ""), \
                f"{cls.__name__}.{f.name}: its parser does not say what it takes (described)"


def test_every_metric_of_the_contract_is_documented():
    doc = (ROOT / "docs" / "exporter.md").read_text()
    specs = [spec for spec in vars(m).values() if isinstance(spec, m.Spec)]
    assert len(specs) > 30
    assert [spec.name for spec in specs if f"`{spec.name}`" not in doc] == []


# --- a new kind: one module (here, this test) and one registry line ---


@dataclass(frozen=True, kw_only=True)
class CounterConfig(SourceConfig):
    step: int = value("How much the counter goes up per poll.", positive_int, 1)


class CounterSource(Source):
    config_type = CounterConfig
    specs = (m.FOLDED_LABEL_VALUES,)

    def __init__(self, config: CounterConfig):
        super().__init__(config)
        self.total = 0

    def poll(self, deadline: float) -> int:
        if self.config.step > 5:
            raise PollError("internal", "too far")
        self.total += self.config.step
        return self.total

    def collect(self, families, snapshot):
        if snapshot is not None:
            families(m.FOLDED_LABEL_VALUES).add_metric([self.name, "counter"], snapshot)


def test_a_new_kind_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "counter", f"{__name__}:CounterSource")
    path = tmp_path / "pipemon.yaml"
    path.write_text("defaults: {timeout: 2s}\n"
                    "sources:\n  - {name: c, kind: counter, step: 3}\n"
                    "  - {name: d, kind: counter, step: 9}\n")
    config = load(path, env={})
    assert [(s.kind, s.step, s.timeout) for s in config.sources] == \
        [("counter", 3, 2.0), ("counter", 9, 2.0)]
    app = App(config)
    try:
        assert not app.poll_all_once()  # d fails its poll, c does not
        assert sample(app, "pipemon_source_folded_label_values", source="c", label="counter") \
            == 3
        assert sample(app, "pipemon_source_up", source="d", kind="counter") == 0
        assert sample(app, "pipemon_source_poll_errors_total", source="d", kind="counter",
                      reason="internal") == 1
    finally:
        app.close()
    path.write_text("sources:\n  - {name: c, kind: counter, step: 0, colour: red}\n")
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert sorted(err.value.problems) == [
        "sources[0].colour: unknown key",
        "sources[0].step: expected a whole number >= 1, got 0"]


# --- no import circle ---


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The pipemon modules `path` imports, at any depth of its code; importing a.b.c runs a
    and a.b first, so those count too."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return found


def test_no_module_of_the_exporter_imports_in_a_circle():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: sorted((imports_of(path, name) & modules.keys()) - {name})
             for name, path in modules.items()}
    # a package's __init__ is run before its modules: importing pipemon.x.y imports pipemon.x
    for name in modules:
        parent = name.rpartition(".")[0]
        if parent and parent in modules:
            graph[name].append(parent)
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for child in graph[name]:
            if state.get(child) == "open":
                cycle = [*trail[trail.index(child):], child] if child in trail else [name, child]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, [*trail, child])
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
