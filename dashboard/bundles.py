"""Which bundles the dashboard may open, each behind an opaque id.

The set is fixed by the server side: the bundles named on the command line, plus
the runs found under the run folder (``./bmap-runs/``). The browser only ever
sends an id; an id that is not in the registry opens nothing. No path taken from
a URL or a form reaches the file system.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bottleneck_map.bundle import META_FILE, BundleError, read_meta
from bottleneck_map.runs import RUNS_DIR, is_bundle, runs_under

SAMPLES_DIR = "sample_traces"
DEFAULT_SAMPLE = "default"


@dataclass(frozen=True)
class BundleEntry:
    """One openable bundle: ``id`` is what the browser sees, ``path`` never leaves the server."""

    id: str
    label: str
    path: Path
    origin: str  # "argument" | "run" | "sample"


def bundle_id(path: Path) -> str:
    """An opaque, stable id for a resolved bundle path (a hash, not the path)."""
    return "b" + hashlib.blake2s(str(path).encode(), digest_size=6).hexdigest()


def _source_checkout() -> Path:
    return Path(__file__).resolve().parent.parent


def shipped_samples(cwd: Path) -> list[Path]:
    """The shipped sample bundles: ``sample_traces/`` under ``cwd``, else in the source checkout.

    ``sample_traces/default`` comes first when it exists.
    """
    for root in (cwd / SAMPLES_DIR, _source_checkout() / SAMPLES_DIR):
        if not root.is_dir():
            continue
        found = sorted(p.resolve() for p in root.iterdir() if is_bundle(p))
        found.sort(key=lambda p: p.name != DEFAULT_SAMPLE)
        if found:
            return found
    return []


class BundleRegistry:
    """The bundles this server may open: explicit ones and the runs under ``runs_dir``.

    Look-ups are by id only. ``refresh()`` rescans ``runs_dir`` (for ``--live``, so
    a run started after the dashboard shows up); explicit entries never change.
    """

    def __init__(self, explicit: Iterable[Path] = (), runs_dir: Path | None = None, origin: str = "argument"):
        self._lock = threading.Lock()
        self._explicit: list[BundleEntry] = []
        for p in explicit:
            path = Path(p).resolve()
            if not is_bundle(path):
                raise BundleError(f"{p}: not a bundle (no {META_FILE})")
            self._explicit.append(BundleEntry(bundle_id(path), _label(path, origin), path, origin))
        self.runs_dir = Path(runs_dir).resolve() if runs_dir is not None else None
        self._entries: dict[str, BundleEntry] = {}
        self.refresh()

    def refresh(self) -> None:
        entries = {e.id: e for e in self._explicit}
        if self.runs_dir is not None:
            for path in runs_under(self.runs_dir):
                bid = bundle_id(path)
                entries.setdefault(bid, BundleEntry(bid, _label(path, "run"), path, "run"))
        with self._lock:
            self._entries = entries

    def entries(self) -> list[BundleEntry]:
        with self._lock:
            return list(self._entries.values())

    def get(self, bid: object) -> BundleEntry | None:
        """The entry for an id sent by the browser, or None (anything else opens nothing)."""
        if not isinstance(bid, str):
            return None
        with self._lock:
            return self._entries.get(bid)

    @property
    def default(self) -> BundleEntry | None:
        entries = self.entries()
        return entries[0] if entries else None

    def options(self) -> list[dict[str, str]]:
        """Dropdown options: label and id only."""
        return [{"label": e.label, "value": e.id} for e in self.entries()]


def _label(path: Path, origin: str) -> str:
    try:
        meta = read_meta(path)
    except BundleError:
        meta = {}
    model = (meta.get("model") or {}).get("name")
    kind = {"run": "run", "sample": "sample", "argument": "bundle"}[origin]
    return f"{path.name} ({kind}{', ' + model if model else ''})"


def resolve_default(bundles: Iterable[str | os.PathLike[str]], cwd: Path | None = None) -> BundleRegistry:
    """The registry for ``bottleneck-map dashboard [BUNDLE ...]``.

    Named bundles come first; every run under ``./bmap-runs/`` is listed too. With no
    bundle named, the newest run is the default, else the shipped sample.
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)
    named = [Path(b) for b in bundles]
    runs_dir = cwd / RUNS_DIR
    if named or runs_under(runs_dir):
        return BundleRegistry(named, runs_dir=runs_dir)
    samples = shipped_samples(cwd)
    if not samples:
        raise BundleError(
            f"no bundle to open: none named, no run under {runs_dir}, and no sample under {SAMPLES_DIR}/; "
            "run `bottleneck-map run` first or name a bundle"
        )
    return BundleRegistry(samples, runs_dir=runs_dir, origin="sample")
