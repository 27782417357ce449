"""The non-editable wheel holds every subpackage under one namespace and a working console script."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"agent": "agent", "analyzer": "analyzer", "dashboard": "dashboard", "embedded_engine": "embedded_engine"}


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[Path, str]:
    """The wheel and the build's own output (``-v``: setuptools' warnings included)."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (whl,) = out.glob("bottleneck_map-*.whl")
    return whl, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(build) -> Path:
    return build[0]


def test_build_warns_of_no_ignored_package(build):
    assert "would be ignored" not in build[1]


def test_wheel_contains_every_module_of_every_component(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bottleneck_map/__init__.py" in names
    for pkg, folder in COMPONENTS.items():
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder).as_posix()
            assert f"bottleneck_map/{pkg}/{rel}" in names, f"{folder}/{rel} missing from the wheel"
    for src in (ROOT / "bottleneck_map").rglob("*.py"):
        assert f"bottleneck_map/{src.relative_to(ROOT / 'bottleneck_map').as_posix()}" in names


def test_wheel_installs_no_generic_top_level_module(wheel):
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"bottleneck_map"}


def test_wheel_declares_the_console_script_and_it_runs(wheel, tmp_path):
    z = zipfile.ZipFile(wheel)
    (ep,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
    assert "bottleneck-map = bottleneck_map.cli:main" in z.read(ep).decode()
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    script = target / "bin" / "bottleneck-map"
    out = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "validate" in out.stdout
    probe = "import bottleneck_map, bottleneck_map.agent, bottleneck_map.analyzer, bottleneck_map.dashboard, bottleneck_map.embedded_engine as e; print(e.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))
