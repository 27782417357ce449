"""The ``bottleneck-map`` command line.

Each component contributes its subcommands through a ``register(app)`` function
in its own ``cli`` module; heavy imports (torch, dash) happen inside the
commands, so ``bottleneck-map --help`` stays fast.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from bottleneck_map import __version__
from bottleneck_map.terminal import HelpGroup, use_plain_help

app = typer.Typer(
    name="bottleneck-map",
    help="Find which constraint holds LLM inference latency back, when, for which requests, and what to change.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help (click's layout, see bottleneck_map.terminal): whole option names, wrapped at the
    # terminal's width, the same in a pipe; rich's panels shorten names to fit an 80-column table.
    rich_markup_mode=None,
    cls=HelpGroup,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)


class TextOrJson(str, Enum):
    text = "text"
    json = "json"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bottleneck-map {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """bottleneck-map: the latency bottleneck map of an LLM serving system."""


def validate(
    bundle: Path = typer.Argument(..., help="Bundle directory to check."),
    fmt: TextOrJson = typer.Option(TextOrJson.text, "--format", help="Output format."),
) -> None:
    """Check a bundle's schema and consistency; exit 0 when valid, 1 when not."""
    from bottleneck_map.validate import validate_bundle

    report = validate_bundle(bundle)
    if fmt is TextOrJson.json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        status = "[green]valid[/green]" if report.valid else "[red]invalid[/red]"
        console.print(f"{bundle}: {status}", highlight=False)
        for name, n in report.rows.items():
            console.print(f"  {name:<9} {n:>10,d} rows", highlight=False)
        if report.span_s is not None:
            console.print(f"  time span {report.span_s:.3f} s", highlight=False)
        for w in report.warnings:
            console.print(f"  [yellow]warning[/yellow]: {w}", highlight=False)
        for e in report.errors:
            console.print(f"  [red]error[/red]: {e}", highlight=False)
    raise typer.Exit(0 if report.valid else 1)


def _register_components() -> None:
    """Subcommands in the order a newcomer meets them: record, diagnose, look, then the rest."""
    from bottleneck_map.agent import cli as agent_cli
    from bottleneck_map.analyzer import cli as analyzer_cli
    from bottleneck_map.dashboard import cli as dashboard_cli
    from bottleneck_map.embedded_engine.serving import server_cli
    from bottleneck_map.embedded_engine.workloads import cli as engine_cli
    from bottleneck_map.ingest import cli as collect_cli

    engine_cli.register(app)  # run
    analyzer_cli.register(app)  # analyze, diff, fleet
    dashboard_cli.register(app)  # dashboard
    app.command()(validate)
    agent_cli.register(app)  # agent
    server_cli.register(app)  # serve
    collect_cli.register(app)  # collect
    use_plain_help(app)


_register_components()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
