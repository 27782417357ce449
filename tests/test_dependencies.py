"""Data flows one way: producers never import the analyzer, the analyzer never imports a producer,
and the dashboard renders a map without diagnosing.

Each rule is checked on every module's import statements (top level and inside functions), read
with :mod:`ast`, so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the dotted package it installs as.
PACKAGES = {
    "bottleneck_map": "bottleneck_map",
    "agent": "bottleneck_map.agent",
    "analyzer": "bottleneck_map.analyzer",
    "dashboard": "bottleneck_map.dashboard",
    "embedded_engine": "bottleneck_map.embedded_engine",
}
PRODUCERS = ("bottleneck_map.agent", "bottleneck_map.embedded_engine", "bottleneck_map.ingest")
# The analysis steps that reach a verdict; the dashboard may read results and tables, not these.
DIAGNOSIS = tuple(
    f"bottleneck_map.analyzer.{m}" for m in ("classify", "attribution", "windows", "roofline", "stages", "hardware")
)
# Command-line front ends compose producers and the analyzer (``run`` prints the map of its bundle).
CLI_MODULES = {"cli"}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, dotted in PACKAGES.items():
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder).with_suffix("")
            if "presets" in rel.parts:
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([dotted, *parts])] = src
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("bottleneck_map")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for mod, path in MODULES.items():
        if not _under(mod, sources) or mod.rsplit(".", 1)[-1] in CLI_MODULES:
            continue
        bad += [f"{mod} imports {imp}" for imp in sorted(_imports(path)) if _under(imp, forbidden)]
    return bad


def test_the_module_table_sees_every_subpackage():
    for sub in ("core", "model", "serving", "workloads"):
        assert any(m.startswith(f"bottleneck_map.embedded_engine.{sub}.") for m in MODULES), sub
    assert "bottleneck_map.ingest.otlp" in MODULES
    assert "bottleneck_map.embedded_engine.core.scheduler" in MODULES


@pytest.mark.parametrize("producer", PRODUCERS)
def test_producers_never_import_the_analyzer_or_the_dashboard(producer):
    assert _violations((producer,), ("bottleneck_map.analyzer", "bottleneck_map.dashboard")) == []


def test_the_analyzer_never_imports_a_producer_or_the_dashboard():
    assert _violations(("bottleneck_map.analyzer",), (*PRODUCERS, "bottleneck_map.dashboard")) == []


def test_the_dashboard_never_imports_a_producer_or_a_diagnosis_step():
    assert _violations(("bottleneck_map.dashboard",), (*PRODUCERS, *DIAGNOSIS)) == []


def test_the_shared_contract_imports_no_component():
    ground = ("bottleneck_map.bundle", "bottleneck_map.schema", "bottleneck_map.validate")
    components = (*PRODUCERS, "bottleneck_map.analyzer", "bottleneck_map.dashboard")
    assert _violations(ground, components) == []


def test_the_model_never_imports_the_engine_core_or_serving():
    engine = ("bottleneck_map.embedded_engine.core", "bottleneck_map.embedded_engine.serving")
    assert _violations(("bottleneck_map.embedded_engine.model",), engine) == []


def test_the_engine_core_never_imports_serving_or_workloads():
    outer = ("bottleneck_map.embedded_engine.serving", "bottleneck_map.embedded_engine.workloads")
    assert _violations(("bottleneck_map.embedded_engine.core",), outer) == []


def test_a_violation_is_reported(tmp_path, monkeypatch):
    fake = tmp_path / "leak.py"
    fake.write_text("def f():\n    from bottleneck_map.analyzer.classify import classify\n")
    monkeypatch.setitem(MODULES, "bottleneck_map.agent.leak", fake)
    assert _violations(("bottleneck_map.agent",), ("bottleneck_map.analyzer",)) == [
        "bottleneck_map.agent.leak imports bottleneck_map.analyzer.classify",
        "bottleneck_map.agent.leak imports bottleneck_map.analyzer.classify.classify",
    ]
