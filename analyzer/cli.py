"""``bottleneck-map analyze``, ``bottleneck-map diff`` and ``bottleneck-map fleet``."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path

import typer


class Format(str, Enum):
    text = "text"
    json = "json"
    html = "html"


class TextOrJson(str, Enum):
    text = "text"
    json = "json"


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error[/red]: {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(1)


def _analyze(path: Path, window: float, slo: dict, cost: float | None, full: bool = False, instance: str | None = None):
    from bottleneck_map.analyzer.api import analyze, analyze_full
    from bottleneck_map.analyzer.data import UnknownInstance
    from bottleneck_map.bundle import BundleError

    try:
        # The map alone (``analyze``) drops its per-request frames early: less memory.
        run = analyze_full if full else analyze
        a = run(path, window_s=window, slo=slo, gpu_hour_cost=cost, instance=instance)
    except UnknownInstance as exc:
        raise typer.BadParameter(str(exc), param_hint="--instance") from None
    except BundleError as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:
        raise _fail(f"{path}: {exc}") from None
    except (OSError, LookupError, TypeError, ArithmeticError) as exc:  # data the reader let through
        raise _fail(f"{path}: cannot be analysed ({type(exc).__name__}: {exc})") from None
    return a


def _newest_runs(n: int) -> list[Path]:
    """The newest runs under ./bmap-runs/ for a command given no bundle, named on stderr."""
    from rich.console import Console

    from bottleneck_map.bundle import BundleError
    from bottleneck_map.runs import newest_runs

    try:
        runs = newest_runs(n)
    except BundleError as exc:
        raise _fail(str(exc)) from None
    Console(stderr=True).print(f"using {', '.join(str(r) for r in reversed(runs))}", highlight=False, soft_wrap=True)
    return runs


def _check_valid(path: Path, force: bool) -> None:
    """Refuse a bundle that ``validate`` rejects (its verdicts would rest on broken data);
    with ``force``, say why it is invalid and go on."""
    from rich.console import Console

    from bottleneck_map.bundle import BundleError
    from bottleneck_map.validate import refuse_unless_forced, validate_bundle

    report = validate_bundle(path)
    try:
        warning = refuse_unless_forced(path, [] if report.valid else report.errors, force, ("analyse", "analysing"))
    except BundleError as exc:
        raise _fail(str(exc)) from None
    if warning:
        Console(stderr=True).print(f"[yellow]warning[/yellow]: {warning}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze_cmd(
        bundle: Path | None = typer.Argument(
            None, help="Bundle directory to analyse (default: the newest run under ./bmap-runs/).", show_default=False
        ),
        fmt: Format = typer.Option(
            Format.text, "--format", help="text (terminal summary), json (the map) or html (offline report)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Write to this file instead of stdout (default for html: BUNDLE/report.html)."
        ),
        slo: str | None = typer.Option(
            None, "--slo", help="SLOs in seconds for goodput, e.g. ttft=0.5,tpot=0.05,e2e=10."
        ),
        window: float = typer.Option(1.0, "--window", help="Seconds per timeline window."),
        gpu_hour_cost: float | None = typer.Option(
            None, "--gpu-hour-cost", help="Price of one GPU hour, for cost per million tokens."
        ),
        instance: str | None = typer.Option(
            None, "--instance", help="Analyse one serving instance of a fleet bundle (its `instance`, e.g. host:8000)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Analyse even a bundle that `validate` rejects (with a warning listing why)."
        ),
    ) -> None:
        """Find which constraint holds latency back, when, for which requests, and what to change."""
        from bottleneck_map.analyzer.latency import parse_slo

        try:
            slo_d = parse_slo(slo)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--slo") from None
        if not (math.isfinite(window) and window > 0):
            raise typer.BadParameter(f"must be a positive number of seconds, got {window}", param_hint="--window")
        if gpu_hour_cost is not None and not (math.isfinite(gpu_hour_cost) and gpu_hour_cost >= 0):
            raise typer.BadParameter(
                f"must be a non-negative number, got {gpu_hour_cost}", param_hint="--gpu-hour-cost"
            )
        bundle = bundle or _newest_runs(1)[0]
        if not bundle.exists():
            raise _fail(f"{bundle}: no such bundle directory")
        _check_valid(bundle, force)
        html = fmt is Format.html
        a = _analyze(bundle, window, slo_d, gpu_hour_cost, full=html, instance=instance)
        m = a.result if html else a
        if fmt is Format.json:
            text = m.to_json()
        elif html:
            from bottleneck_map.analyzer.report_html import render_html

            text = render_html(m, per_step=a.roofline)
            out = out or bundle / "report.html"
        else:
            from bottleneck_map.analyzer.report_text import render, summary_text

            if out is None:
                from rich.console import Console

                Console(highlight=False).print(render(m))
                return
            text = summary_text(m)
        if out is None:
            typer.echo(text)
            return
        try:
            out.write_text(text)
        except OSError as exc:
            raise _fail(f"cannot write {out}: {exc}") from None
        typer.echo(f"wrote {out}")

    @app.command("diff")
    def diff_cmd(
        before: Path | None = typer.Argument(
            None, help="Bundle (or map JSON) before the change (default: the second newest run).", show_default=False
        ),
        after: Path | None = typer.Argument(
            None, help="Bundle (or map JSON) after the change (default: the newest run).", show_default=False
        ),
        fmt: TextOrJson = typer.Option(TextOrJson.text, "--format", help="text or json."),
        window: float = typer.Option(1.0, "--window", help="Seconds per timeline window."),
        force: bool = typer.Option(
            False, "--force", help="Compare even bundles that `validate` rejects (with a warning listing why)."
        ),
    ) -> None:
        """Per stage, per class and per percentile: what got better or worse, and by how much."""
        import json

        from bottleneck_map.analyzer.diff import diff_maps, diff_view
        from bottleneck_map.analyzer.result import BottleneckMap

        if not (math.isfinite(window) and window > 0):
            raise typer.BadParameter(f"must be a positive number of seconds, got {window}", param_hint="--window")
        if before is None:
            after, before = _newest_runs(2)
        elif after is None:
            after = _newest_runs(1)[0]
        maps = []
        for p in (before, after):
            if not p.exists():
                raise _fail(f"{p}: no such bundle directory or map file")
            if p.is_file():
                try:
                    maps.append(BottleneckMap.from_json(p.read_text()))
                except (ValueError, KeyError, TypeError) as exc:
                    raise _fail(f"{p}: not a bottleneck map JSON ({exc})") from None
            else:
                _check_valid(p, force)
                maps.append(_analyze(p, window, {}, None))
        d = diff_maps(*maps)
        if fmt is TextOrJson.json:
            typer.echo(json.dumps(d.to_dict(), indent=2))
        else:
            from rich.console import Console

            Console(highlight=False).print(diff_view(d))

    @app.command()
    def fleet(
        bundle: Path = typer.Argument(..., help="Bundle whose rows carry several instances (from collect)."),
        fmt: TextOrJson = typer.Option(
            TextOrJson.text, "--format", help="text (a table) or json (one object per instance)."
        ),
        as_json: bool = typer.Option(False, "--json", hidden=True, help="Same as --format json."),
        force: bool = typer.Option(
            False, "--force", help="Analyse even a bundle that `validate` rejects (with a warning listing why)."
        ),
    ) -> None:
        """The bottleneck map per serving instance and fleet-wide: top verdict and latency per instance."""
        import json

        from rich.console import Console

        from bottleneck_map.analyzer.fleet import fleet_maps, fleet_table, summary_rows
        from bottleneck_map.bundle import BundleError

        if not bundle.exists():
            raise _fail(f"{bundle}: no such bundle directory")
        _check_valid(bundle, force)
        try:
            rows = summary_rows(fleet_maps(bundle))
        except BundleError as exc:
            raise _fail(str(exc)) from None
        if as_json or fmt is TextOrJson.json:
            typer.echo(json.dumps(rows, indent=2))
            return
        Console().print(fleet_table(rows))
