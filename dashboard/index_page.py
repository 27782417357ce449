"""The page's HTML shell: what the browser fetches first, and what it fetches only when needed.

Dash puts a ``<script>`` tag for every imported component library into the page. Libraries in
:data:`LAZY_LIBRARIES` (the request explorer's AG Grid, 1.3 MB of script) are taken out of it:
their URLs go into a ``<meta name="bmap-lazy-scripts">`` tag, and ``assets/lazy-libraries.js``
loads them when their view is opened (the tab change waits for it, see ``callbacks.register``)
or once the first view is drawn and the browser is idle. (plotly.js is not in the page either:
Dash loads it when a graph first renders, and the first view, the map, is HTML.)
"""

from __future__ import annotations

import html
import re

import dash

LAZY_LIBRARIES = ("dash_ag_grid",)
LAZY_META = "bmap-lazy-scripts"
_SCRIPT_TAG = re.compile(r'<script src="(?P<src>[^"]+)"></script>\s*')


def split_lazy_scripts(scripts: str, libraries: tuple[str, ...] = LAZY_LIBRARIES) -> tuple[str, dict[str, list[str]]]:
    """Remove the script tags of ``libraries`` from Dash's scripts HTML; return the rest and their URLs."""
    lazy: dict[str, list[str]] = {}

    def take(m: re.Match[str]) -> str:
        src = m.group("src")
        for lib in libraries:
            if f"/_dash-component-suites/{lib}/" in src:
                lazy.setdefault(lib, []).append(src)
                return ""
        return m.group(0)

    return _SCRIPT_TAG.sub(take, scripts), lazy


class Dash(dash.Dash):
    """``dash.Dash`` with the page shell above; everything else is Dash's own."""

    lazy_libraries: tuple[str, ...] = LAZY_LIBRARIES

    def interpolate_index(self, **kwargs: str) -> str:
        scripts, lazy = split_lazy_scripts(kwargs.get("scripts", ""), self.lazy_libraries)
        spec = " ".join(f"{lib}={','.join(urls)}" for lib, urls in lazy.items())
        kwargs["scripts"] = scripts
        kwargs["metas"] = kwargs.get("metas", "") + f'<meta name="{LAZY_META}" content="{html.escape(spec)}">'
        return super().interpolate_index(**kwargs)
