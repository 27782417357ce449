"""Per-bundle cache of the opened bundle and its BottleneckMap.

The analysis runs once per bundle (and again only when a live bundle grows);
every view and drill-down reads from the cached entry. Bundles are opened by
registry id only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bottleneck_map.bundle import META_FILE, Bundle, BundleError, read_bundle
from bottleneck_map.dashboard.bundles import BundleEntry, BundleRegistry
from bottleneck_map.schema import TABLES


def signature(path: Path) -> tuple:
    """Cheap fingerprint of a bundle on disk: changes whenever a segment or meta.json is written."""
    parts: list[Any] = []
    try:
        parts.append((path / META_FILE).stat().st_mtime_ns)
    except OSError:
        parts.append(None)
    for t in TABLES:
        folder = path / t
        try:
            names = sorted(n for n in (e.name for e in folder.iterdir()) if n.endswith(".parquet") and n[0] != ".")
        except OSError:
            names = []
        parts.append((len(names), names[-1] if names else None))
    return tuple(parts)


@dataclass
class Loaded:
    """An opened bundle, its analysis, and memoised drill-down results."""

    entry: BundleEntry
    bundle: Bundle
    analysis: Any  # bottleneck_map.analyzer.Analysis: the map and its drill-down tables
    signature: tuple
    analyze_s: float
    memo: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    key_locks: dict[str, threading.Lock] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)  # why ``validate`` rejects the bundle (empty: valid)

    @property
    def bmap(self) -> Any:
        """The analyzer's BottleneckMap of this bundle."""
        return self.analysis.result

    @property
    def tables(self) -> Any:
        """The bundle's tables as the analyzer read them (Arrow)."""
        return self.analysis.tables

    def memoised(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute once per loaded bundle (drill-down tables, aggregated series, views).

        One lock per key: a slow computation of one thing never blocks reading another.
        """
        with self.lock:
            if key in self.memo:
                return self.memo[key]
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self.lock:
                if key in self.memo:
                    return self.memo[key]
            value = compute()
            with self.lock:
                self.memo[key] = value
            return value


class Store:
    """Open and analyze bundles by registry id, keeping the last few in memory."""

    def __init__(
        self,
        registry: BundleRegistry,
        *,
        window_s: float = 1.0,
        slo: dict[str, float] | None = None,
        live: bool = False,
        capacity: int = 4,
        analyze: Callable[..., Any] | None = None,
    ) -> None:
        self.registry = registry
        self.window_s = window_s
        self.slo = dict(slo or {})
        self.live = live
        self.capacity = capacity
        self._analyze = analyze
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._failed: dict[str, tuple[tuple, str]] = {}

    def analyze(self, bundle: Bundle) -> Any:
        """The analyzer's full analysis (the map plus its per-request, per-step and per-window tables)."""
        if self._analyze is None:
            from bottleneck_map.analyzer import analyze_full

            self._analyze = analyze_full
        return self._analyze(bundle, window_s=self.window_s, slo=self.slo or None)

    @staticmethod
    def validate(path: Path) -> list[str]:
        """What ``bottleneck-map validate`` finds wrong with the bundle at ``path`` (empty when valid):
        the page shows it above the map, whose verdicts may then be wrong."""
        from bottleneck_map.validate import validate_bundle

        report = validate_bundle(path)
        return [] if report.valid else list(report.errors)

    def get(self, bid: object) -> Loaded | None:
        """The loaded bundle for an id from the browser; None when the id is unknown or the bundle
        cannot be analysed (``error(bid)`` says why; a live bundle is retried once it changes)."""
        entry = self.registry.get(bid)
        if entry is None:
            return None
        with self._lock:
            per_id = self._loading.setdefault(entry.id, threading.Lock())
        with per_id:
            with self._lock:
                cached = self._cache.get(entry.id)
            if cached is not None and (not self.live or cached.signature == signature(entry.path)):
                with self._lock:
                    self._cache.move_to_end(entry.id)
                return cached
            sig = signature(entry.path)
            failed = self._failed.get(entry.id)
            if failed is not None and failed[0] == sig:
                return None
            try:
                bundle = read_bundle(entry.path)
                t0 = time.perf_counter()
                # a bundle still being written (live) may hold steps of requests not yet finished
                invalid = [] if self.live else self.validate(entry.path)
                analysis = self.analyze(bundle)
            except (BundleError, ValueError) as exc:
                self._failed[entry.id] = (sig, str(exc))
                return None
            except Exception as exc:  # data the reader let through: a message for the page, not a traceback
                self._failed[entry.id] = (sig, f"{entry.path}: cannot be analysed ({type(exc).__name__}: {exc})")
                return None
            self._failed.pop(entry.id, None)
            loaded = Loaded(entry, bundle, analysis, sig, time.perf_counter() - t0, invalid=invalid)
            with self._lock:
                self._cache[entry.id] = loaded
                self._cache.move_to_end(entry.id)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            return loaded

    def error(self, bid: object) -> str | None:
        """Why the bundle behind ``bid`` could not be analysed (None when it could, or is unknown)."""
        entry = self.registry.get(bid)
        failed = self._failed.get(entry.id) if entry is not None else None
        return None if failed is None else failed[1]

    def current_signature(self, bid: object) -> tuple | None:
        entry = self.registry.get(bid)
        return None if entry is None else signature(entry.path)
