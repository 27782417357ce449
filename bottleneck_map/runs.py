"""Where runs live: ``bottleneck-map run`` writes its bundles under ``./bmap-runs/``, and the
commands that read a bundle (``analyze``, ``diff``, ``dashboard``) take the newest runs there
when none is named."""

from __future__ import annotations

from pathlib import Path

from bottleneck_map.bundle import META_FILE, BundleError, read_meta

RUNS_DIR = "bmap-runs"


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def runs_under(folder: Path) -> list[Path]:
    """Bundles directly under ``folder``, newest first (by the run's creation time in meta, else mtime)."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        if not is_bundle(child):
            continue
        try:
            created = int(read_meta(child).get("created_unix_ns") or 0)
        except BundleError:
            continue
        found.append((created or int(child.stat().st_mtime_ns), child.resolve()))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def newest_runs(n: int, cwd: Path | None = None) -> list[Path]:
    """The ``n`` newest runs under ``cwd/bmap-runs/``, newest first; BundleError when there are fewer."""
    folder = (Path.cwd() if cwd is None else Path(cwd)) / RUNS_DIR
    runs = runs_under(folder)
    if len(runs) < n:
        found = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
        raise BundleError(
            f"no bundle named, and {found} under {folder} (need {n}): name one, or record one with `bottleneck-map run`"
        )
    return runs[:n]


__all__ = ["RUNS_DIR", "is_bundle", "newest_runs", "runs_under"]
