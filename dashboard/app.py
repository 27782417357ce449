"""The Dash application: ``create_app(bundles, live=False)``.

The app renders the analyzer's BottleneckMap of each bundle (analysed once and
cached) and reads the bundle itself only for drill-down. Debug mode is never
turned on here; the CLI binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dash
from flask import Response

from bottleneck_map.dashboard import callbacks, layout
from bottleneck_map.dashboard.bundles import BundleRegistry
from bottleneck_map.dashboard.index_page import Dash
from bottleneck_map.dashboard.store import Store

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_REQUEST_BYTES = 1024 * 1024  # a callback request's body


def create_app(
    bundles: BundleRegistry | Iterable[str | os.PathLike[str]],
    live: bool = False,
    *,
    runs_dir: str | os.PathLike[str] | None = None,
    window_s: float = 1.0,
    slo: Mapping[str, float] | None = None,
    store: Store | None = None,
    warm: bool = True,
    live_interval_ms: int = layout.LIVE_INTERVAL_MS,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> dash.Dash:
    """A Dash app over ``bundles`` (a registry, or bundle paths; runs under ``runs_dir`` are added).

    With ``warm`` the default bundle is analysed before the app is returned, so the first
    page shows at once. ``live`` polls the open bundle every few seconds and re-renders the
    current view when it has grown. A request body over ``max_request_bytes`` gets 413 (the
    browser's callbacks send a few kilobytes).
    """
    registry = bundles if isinstance(bundles, BundleRegistry) else BundleRegistry(bundles, runs_dir=runs_dir)
    store = store or Store(registry, window_s=window_s, slo=dict(slo or {}), live=live)
    app = Dash(
        __name__,
        title="bottleneck-map",
        update_title=None,
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        serve_locally=True,
        compress=_can_compress(),
    )
    app.layout = lambda: layout.page(registry, store, live, live_interval_ms)
    callbacks.register(app, store)
    _harden(app.server)
    app.server.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.server.config["BMAP_STORE"] = store
    if warm and registry.default is not None:
        loaded = store.get(registry.default.id)
        if loaded is not None:
            layout.view("map", loaded, store)
            threading.Thread(target=_prewarm, args=(loaded, store), name="dashboard-prewarm", daemon=True).start()
    return app


def _prewarm(loaded: Any, store: Store) -> None:
    """Build the other views in the background so opening a tab does not wait for them."""
    for tab in ("timeline", "latency", "roofline"):
        try:
            layout.view(tab, loaded, store)
        except Exception:  # a view that fails here fails again, visibly, when its tab is opened
            return


def _can_compress() -> bool:
    try:
        import flask_compress  # noqa: F401
    except ImportError:
        return False
    return True


def _harden(server: Any) -> None:
    """Conservative response headers; the app serves only its own assets and callbacks."""

    @server.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp
