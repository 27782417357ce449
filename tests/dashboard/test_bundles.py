"""Which bundles the dashboard may open: named ones and runs under ./bmap-runs/, by opaque id only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bottleneck_map.bundle import BundleError
from bottleneck_map.dashboard.bundles import BundleRegistry, bundle_id, resolve_default, runs_under, shipped_samples


def _copy(src: Path, dst: Path, created: int) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["created_unix_ns"] = created
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def test_ids_are_opaque_and_stable(bundles: dict[str, Path]) -> None:
    reg = BundleRegistry([bundles["busy"]])
    (entry,) = reg.entries()
    assert entry.id == bundle_id(bundles["busy"].resolve())
    assert str(bundles["busy"]) not in entry.id and "/" not in entry.id
    assert reg.get(entry.id) is entry


@pytest.mark.parametrize("bad", [None, 3, "", "../", "/etc/passwd", "b0", {"path": "/etc"}, ["/tmp"]])
def test_only_known_ids_open_anything(bundles: dict[str, Path], bad: object) -> None:
    reg = BundleRegistry([bundles["busy"]])
    assert reg.get(bad) is None
    assert reg.get(str(bundles["busy"])) is None, "a path is not an id"


def test_a_directory_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        BundleRegistry([tmp_path])


def test_runs_folder_newest_first_and_default(bundles: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "bmap-runs"
    runs.mkdir()
    _copy(bundles["light"], runs / "older", created=1)
    _copy(bundles["busy"], runs / "newer", created=2)
    (runs / "not-a-bundle").mkdir()
    assert [p.name for p in runs_under(runs)] == ["newer", "older"]
    reg = resolve_default([], cwd=tmp_path)
    assert reg.default.path.name == "newer"
    assert {e.origin for e in reg.entries()} == {"run"}
    named = resolve_default([bundles["light"]], cwd=tmp_path)
    assert named.default.path == bundles["light"].resolve(), "a named bundle comes first"
    assert len(named.entries()) == 3, "runs under ./bmap-runs/ stay selectable"


def test_refresh_picks_up_a_new_run(bundles: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "bmap-runs"
    runs.mkdir()
    reg = BundleRegistry([bundles["busy"]], runs_dir=runs)
    assert len(reg.entries()) == 1
    _copy(bundles["light"], runs / "later", created=5)
    reg.refresh()
    assert [e.path.name for e in reg.entries()] == ["busy", "later"]


def test_without_runs_the_shipped_sample_opens(bundles: dict[str, Path], tmp_path: Path) -> None:
    samples = tmp_path / "sample_traces"
    samples.mkdir()
    _copy(bundles["light"], samples / "other", created=1)
    _copy(bundles["busy"], samples / "default", created=1)
    assert [p.name for p in shipped_samples(tmp_path)] == ["default", "other"]
    reg = resolve_default([], cwd=tmp_path)
    assert reg.default.path.name == "default" and reg.default.origin == "sample"


def test_nothing_to_open_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bottleneck_map.dashboard.bundles.shipped_samples", lambda cwd: [])
    with pytest.raises(BundleError, match="no bundle to open"):
        resolve_default([], cwd=tmp_path)
