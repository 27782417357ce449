"""CLI registration of ``bottleneck-map collect`` (imports nothing heavy until it runs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def collect(
        out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address of the OTLP/HTTP receiver."),
        port: int = typer.Option(4318, "--port", help="Port of the OTLP/HTTP receiver (0 picks a free one)."),
        prometheus: str | None = typer.Option(
            None, "--prometheus", help="Prometheus base URL; its series over the run are added as samples."
        ),
        instance: list[str] = typer.Option(
            [], "--instance", help="Keep only these Prometheus `instance` label values (repeatable)."
        ),
        duration: float | None = typer.Option(
            None, "--duration", help="Stop after this many seconds (default: until Ctrl-C)."
        ),
        receive: bool = typer.Option(True, "--receive/--no-receive", help="Run the OTLP receiver."),
        lookback: float = typer.Option(
            0.0, "--lookback", help="Also query Prometheus this many seconds before the start."
        ),
        step: float | None = typer.Option(None, "--step", help="Prometheus query step in seconds (default: auto)."),
        otlp_file: list[Path] = typer.Option(
            [], "--otlp-file", help="Also ingest OTLP/JSON span files (the Collector's file exporter; repeatable)."
        ),
        scrape: list[str] = typer.Option(
            [], "--scrape", help="Also read this vLLM server's /metrics every --scrape-interval (base URL; repeatable)."
        ),
        scrape_agent: list[str] = typer.Option(
            [], "--scrape-agent", help="Also read a node agent's (or dcgm-exporter's) GPU series (repeatable)."
        ),
        scrape_interval: float = typer.Option(1.0, "--scrape-interval", help="Seconds between scrapes of --scrape."),
        model_config: Path | None = typer.Option(
            None, "--model-config", help="The served model's config.json (default: read via /v1/models when local)."
        ),
        max_num_seqs: int | None = typer.Option(
            None, "--max-num-seqs", help="The server's --max-num-seqs (batch slots), for the queueing evidence."
        ),
        max_num_batched_tokens: int | None = typer.Option(
            None, "--max-num-batched-tokens", help="The server's --max-num-batched-tokens (token budget per step)."
        ),
        device_name: str | None = typer.Option(
            None, "--device-name", help="GPU name for the roofline's peak table (e.g. 'NVIDIA H100 80GB HBM3')."
        ),
        peak_flops: float | None = typer.Option(None, "--peak-flops", help="Device peak FLOP/s for the roofline."),
        peak_bandwidth: float | None = typer.Option(
            None, "--peak-bandwidth", help="Device peak memory bandwidth in bytes/s for the roofline."
        ),
        measure_peaks: bool = typer.Option(
            False, "--measure-peaks", help="Measure this host's CPU copy bandwidth and matmul FLOP/s (a CPU server)."
        ),
        measure_threads: int | None = typer.Option(
            None, "--measure-threads", help="Threads for --measure-peaks: the cores the server's engine runs on."
        ),
        max_body_bytes: int = typer.Option(
            16 * 1024 * 1024, "--max-body-bytes", help="Largest OTLP request body as sent (larger: 413)."
        ),
        max_inflated_bytes: int = typer.Option(
            32 * 1024 * 1024, "--max-inflated-bytes", help="Largest OTLP request body once decompressed (larger: 413)."
        ),
        body_timeout: float = typer.Option(
            30.0, "--body-timeout", help="Seconds a client has to send a whole request body (slower: 408)."
        ),
        header_timeout: float = typer.Option(
            10.0, "--header-timeout", help="Seconds a client has to send the request line and headers (slower: 408)."
        ),
        max_header_bytes: int = typer.Option(16 * 1024, "--max-header-bytes", help="Largest request line and headers."),
        max_connections: int = typer.Option(
            1024, "--max-connections", help="Open connections at most (more: 503); lowered to the open-file limit."
        ),
    ) -> None:
        """Receive vLLM OTLP traces and pull Prometheus series into a bundle."""
        from bottleneck_map.bundle import BundleWriter
        from bottleneck_map.ingest.collect import (
            TraceSink,
            add_otlp_file,
            collect_meta,
            finish,
            guard_connections,
            otlp_app,
            sigterm_as_interrupt,
        )
        from bottleneck_map.ingest.http_server import UvicornServer
        from bottleneck_map.ingest.otlp import OtlpError
        from bottleneck_map.ingest.prometheus import PrometheusError

        if not 0 <= port <= 65535:
            raise typer.BadParameter(f"{port} is not a TCP port", param_hint="--port")
        if duration is not None and duration < 0:
            raise typer.BadParameter("must be >= 0", param_hint="--duration")
        if lookback < 0:
            raise typer.BadParameter("must be >= 0", param_hint="--lookback")
        if step is not None and step <= 0:
            raise typer.BadParameter("must be > 0", param_hint="--step")
        for value, flag in ((max_body_bytes, "--max-body-bytes"), (max_inflated_bytes, "--max-inflated-bytes")):
            if value <= 0:
                raise typer.BadParameter("must be > 0", param_hint=flag)
        for value, flag in (
            (body_timeout, "--body-timeout"),
            (header_timeout, "--header-timeout"),
            (max_header_bytes, "--max-header-bytes"),
            (max_connections, "--max-connections"),
        ):
            if not value > 0:
                raise typer.BadParameter("must be > 0", param_hint=flag)
        if not receive and not prometheus and not otlp_file and not scrape and not scrape_agent:
            raise typer.BadParameter(
                "--no-receive needs --prometheus, --scrape or --otlp-file", param_hint="--no-receive"
            )
        if not scrape_interval > 0:
            raise typer.BadParameter("must be > 0", param_hint="--scrape-interval")
        for urls, flag in ((scrape, "--scrape"), (scrape_agent, "--scrape-agent")):
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise typer.BadParameter(f"{url!r} is not an http(s) URL", param_hint=flag)
        for value, flag in ((max_num_seqs, "--max-num-seqs"), (max_num_batched_tokens, "--max-num-batched-tokens")):
            if value is not None and value <= 0:
                raise typer.BadParameter("must be > 0", param_hint=flag)
        if measure_threads is not None and measure_threads <= 0:
            raise typer.BadParameter("must be > 0", param_hint="--measure-threads")
        for value, flag in ((peak_flops, "--peak-flops"), (peak_bandwidth, "--peak-bandwidth")):
            if value is not None and not value > 0:
                raise typer.BadParameter("must be > 0", param_hint=flag)
        from bottleneck_map.ingest.target import TargetOptions, describe_target

        try:
            target = describe_target(
                TargetOptions(
                    model_config=model_config,
                    max_num_seqs=max_num_seqs,
                    max_num_batched_tokens=max_num_batched_tokens,
                    device_name=device_name,
                    peak_flops=peak_flops,
                    peak_bandwidth=peak_bandwidth,
                    measure_peaks=measure_peaks,
                    measure_threads=measure_threads,
                )
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model-config") from None
        for f in otlp_file:
            if not f.is_file():
                raise typer.BadParameter(f"{f} is not a file", param_hint="--otlp-file")
        if prometheus and not prometheus.startswith(("http://", "https://")):
            raise typer.BadParameter(f"{prometheus!r} is not an http(s) URL", param_hint="--prometheus")
        writer = BundleWriter(out, collect_meta(**target.meta_sections()))
        sink = TraceSink(writer)
        started = time.time_ns()
        for f in otlp_file:
            try:
                add_otlp_file(sink, f)
            except (OtlpError, UnicodeDecodeError) as exc:
                writer.close()
                typer.echo(f"collect: {exc}", err=True)
                raise typer.Exit(1) from None
        from bottleneck_map.ingest.scrape import Scraper

        scrapers = [
            Scraper(writer, url, scrape_interval, model_config=target.model_config).start() for url in scrape
        ] + [Scraper(writer, url, scrape_interval, kind="agent").start() for url in scrape_agent]
        for sc in scrapers:
            typer.echo(f"collect: scraping {sc.instance} every {scrape_interval:g} s", err=True)
        if not receive and scrapers:
            try:  # scrape only: for --duration, or until Ctrl-C
                time.sleep(duration) if duration is not None else threading.Event().wait()
            except KeyboardInterrupt:
                pass
        if receive:
            try:
                receiver = otlp_app(
                    sink,
                    max_body_bytes=max_body_bytes,
                    max_inflated_bytes=max_inflated_bytes,
                    body_timeout_s=body_timeout,
                )
                server = UvicornServer(receiver, host, port)
                guard_connections(
                    server,
                    header_timeout_s=header_timeout,
                    body_timeout_s=body_timeout,
                    max_header_bytes=max_header_bytes,
                    max_connections=max_connections,
                )
            except OSError as exc:
                for sc in scrapers:
                    sc.stop()
                writer.close()
                raise typer.BadParameter(str(exc), param_hint="--port") from None
            typer.echo(f"collect: OTLP/HTTP receiver on {server.url}/v1/traces, writing {out}", err=True)
            if duration is not None:
                threading.Timer(duration, lambda: setattr(server.server, "should_exit", True)).start()
            try:
                with sigterm_as_interrupt():
                    server.run()
            except KeyboardInterrupt:
                pass
        try:
            summary = finish(
                writer,
                sink,
                started,
                prometheus=prometheus,
                instances=instance,
                step_s=step,
                lookback_s=lookback,
                scrapers=scrapers,
                target=target,
            )
        except PrometheusError as exc:
            writer.close()
            typer.echo(f"collect: {exc}; the bundle keeps the requests received", err=True)
            raise typer.Exit(1) from None
        typer.echo(
            f"collect: {summary['requests']} requests, "
            f"{sum(summary['prometheus_points'].values())} Prometheus points, "
            f"{summary['scrapes']} scrapes -> {out}",
            err=True,
        )
        for warning in summary["warnings"]:
            typer.echo(f"collect: warning: {warning}", err=True)
