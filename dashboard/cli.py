"""``bottleneck-map dashboard [BUNDLE ...] [--host 127.0.0.1] [--port 8050] [--live]``."""

from __future__ import annotations

from pathlib import Path

import typer

# callbacks of one page load run side by side (a view, the bundle picker, live polling)
SERVER_THREADS = 8


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        bundles: list[Path] = typer.Argument(
            None,
            help="Bundles to open. Default: the newest run under ./bmap-runs/, else the shipped sample.",
            show_default=False,
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 127.0.0.1 keeps it on this machine."),
        port: int = typer.Option(8050, "--port", help="TCP port."),
        live: bool = typer.Option(False, "--live", help="Refresh every few seconds from a bundle still being written."),
        window: float = typer.Option(1.0, "--window", help="Analysis window in seconds."),
        slo: str = typer.Option(None, "--slo", help="SLOs, e.g. ttft=0.5,tpot=0.05,e2e=10 (seconds)."),
        max_request_bytes: int = typer.Option(
            1024 * 1024, "--max-request-bytes", help="Largest request body (larger: 413)."
        ),
        max_header_bytes: int = typer.Option(
            64 * 1024, "--max-header-bytes", help="Largest request line and headers (larger: 431)."
        ),
        max_connections: int = typer.Option(
            100, "--max-connections", help="Open connections at most; further ones wait in the listen backlog."
        ),
        read_timeout: int = typer.Option(
            30, "--read-timeout", help="Seconds a connection may stay silent before it is closed."
        ),
        force: bool = typer.Option(
            False, "--force", help="Open even a bundle that `validate` rejects (the page says why)."
        ),
    ) -> None:
        """Open the bottleneck map in the browser: the map, timeline, latency, requests, roofline, compare."""
        from rich.console import Console

        from bottleneck_map.bundle import BundleError

        if not 0 < port < 65536:
            raise typer.BadParameter(f"{port} is not a TCP port (1-65535)", param_hint="--port")
        if not window > 0:
            raise typer.BadParameter(f"{window} must be a positive number of seconds", param_hint="--window")
        slos = _parse_slo(slo)
        for value, flag in (
            (max_request_bytes, "--max-request-bytes"),
            (max_header_bytes, "--max-header-bytes"),
            (max_connections, "--max-connections"),
            (read_timeout, "--read-timeout"),
        ):
            if not value > 0:
                raise typer.BadParameter(f"{value} must be > 0", param_hint=flag)
        console = Console(stderr=True, soft_wrap=True)
        _check_port_free(host, port)  # before analysing: a busy port is the flag's error, not the run's
        from bottleneck_map.dashboard.app import create_app
        from bottleneck_map.dashboard.bundles import resolve_default
        from bottleneck_map.validate import refuse_unless_forced

        try:
            registry = resolve_default(bundles or [])
            default = registry.default
            console.print(f"analysing {default.path} ...", highlight=False)
            app = create_app(registry, live=live, window_s=window, slo=slos, max_request_bytes=max_request_bytes)
            store = app.server.config["BMAP_STORE"]
            why = store.error(default.id)
            if why is not None and not live:
                raise BundleError(why)
            loaded = store.get(default.id) if why is None else None  # analysed (and validated) by create_app
            warning = refuse_unless_forced(default.path, loaded.invalid if loaded else [], force, ("open", "opening"))
            if warning:
                console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
            if why is not None:
                console.print(f"[yellow]waiting[/yellow]: {why}; the page refreshes when the run writes more")
        except BundleError as exc:
            console.print(f"[red]error[/red]: {exc}", highlight=False)
            raise typer.Exit(1) from None
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"[yellow]warning[/yellow]: serving on {host}: anyone who can reach it sees these traces")
        from waitress.server import create_server

        try:  # waitress: a production WSGI server (Flask's own server is for development only)
            server = create_server(
                app.server,
                host=host,
                port=port,
                threads=SERVER_THREADS,
                max_request_body_size=max_request_bytes,
                max_request_header_size=max_header_bytes,
                connection_limit=max_connections,
                channel_timeout=read_timeout,
                cleanup_interval=max(1, min(30, read_timeout // 2)),  # how often silent connections are found
            )
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from None
        console.print(
            f"dashboard on http://{_url_host(host)}:{port}/  ({len(registry.entries())} bundle(s); Ctrl-C stops)"
        )
        server.run()  # returns on Ctrl-C, after closing the listening sockets


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, as the server will (exit 2 naming --port when it cannot)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
            s.bind(addr)
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None


def _cannot_listen(host: str, port: int, exc: OSError) -> typer.BadParameter:
    return typer.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}", param_hint="--port")


def _parse_slo(text: str | None) -> dict[str, float]:
    from bottleneck_map.analyzer.latency import parse_slo

    try:
        return parse_slo(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--slo") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
