"""``bottleneck-map agent``: sample GPUs and host, serve /metrics, optionally write a bundle."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import threading
from enum import Enum
from pathlib import Path
from typing import Any

import typer

BASIC_AUTH_ENV = "BMAP_AGENT_BASIC_AUTH"
FLUSH_INTERVAL_S = 10.0  # bundle segments: a crash loses at most the last 10 s of samples
# the sampler thread writes the segments itself, right after a tick, every FLUSH_INTERVAL_S; the
# writer's own flusher thread (BundleWriter always runs one) finds nothing buffered, so its timer is
# set long enough that it never wakes up during a run
WRITER_TIMER_S = 3600.0


class MetricNames(str, Enum):
    prometheus = "prometheus"
    dcgm = "dcgm"


def _agent_meta(sampler: Any, names: str) -> dict[str, Any]:
    from bottleneck_map.agent.nvml import NvmlSource

    meta: dict[str, Any] = {"interval_s": sampler.interval_s, "watch_pid": sampler.watch_pid, "metric_names": names}
    for src in sampler.sources:
        if isinstance(src, NvmlSource):
            st = src.status
            meta["gpm_interval_s"] = src.gpm_spacing_ns / 1e9
            meta["nvml"] = {
                "available": st.available,
                "host_only_reason": st.host_only_reason,
                "driver_version": st.driver_version,
                "blocking_queries": st.blocking_queries,
                "gpus": [
                    {
                        "index": d.index,
                        "name": d.name,
                        "uuid": d.uuid,
                        "pci_bus_id": d.pci_bus_id,
                        "gpm": d.gpm is not None,
                    }
                    for d in src.devices
                ],
            }
    return meta


def agent(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve /metrics on (loopback by default)."),
    port: int = typer.Option(9400, "--port", help="Port for /metrics (0 picks a free one)."),
    interval: float = typer.Option(0.1, "--interval", help="Sampling interval in seconds."),
    gpm_interval: float = typer.Option(
        0.2,
        "--gpm-interval",
        help="Seconds between GPM samples (Hopper and newer; at least 0.1). A GPM metric averages the time "
        "between two samples; ticks in between carry the last values (marked stale in the bundle).",
    ),
    watch_pid: int | None = typer.Option(None, "--watch-pid", help="Also sample this process (CPU, RSS, GPU memory)."),
    out: Path | None = typer.Option(None, "--out", help="Write samples into this bundle (created, or appended to)."),
    metric_names: MetricNames = typer.Option(
        MetricNames.prometheus, "--metric-names", help="Prometheus names or dcgm-exporter names for GPU metrics."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="TLS certificate (PEM); needs --tls-key."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="TLS private key (PEM); needs --tls-cert."),
    basic_auth: str | None = typer.Option(
        None,
        "--basic-auth",
        envvar=BASIC_AUTH_ENV,
        help=f"Require HTTP basic auth, user:password (or ${BASIC_AUTH_ENV}).",
    ),
    duration: float | None = typer.Option(None, "--duration", help="Stop by itself after this many seconds."),
    read_timeout: float = typer.Option(
        10.0, "--read-timeout", help="Seconds a /metrics client may send nothing before it is dropped."
    ),
    max_connections: int = typer.Option(64, "--max-connections", help="Open /metrics connections at most."),
    backlog: int = typer.Option(128, "--backlog", help="Listen backlog of /metrics."),
) -> None:
    """Sample NVML/GPM and host metrics; serve them on /metrics and optionally write them to a bundle."""
    import psutil

    from bottleneck_map.agent.collector import AgentCollector
    from bottleneck_map.agent.sampler import Sampler, default_sources
    from bottleneck_map.agent.server import BasicAuth, MetricsServer
    from bottleneck_map.bundle import META_FILE, BundleError, BundleWriter, new_meta

    if not interval > 0 or interval > 3600:
        raise typer.BadParameter(
            f"must be a positive number of seconds (at most 3600), got {interval}", param_hint="--interval"
        )
    if not 0.1 <= gpm_interval <= 3600:
        raise typer.BadParameter(
            f"must be between 0.1 (NVML's minimum GPM spacing) and 3600 seconds, got {gpm_interval}",
            param_hint="--gpm-interval",
        )
    if not 0 <= port <= 65535:
        raise typer.BadParameter(f"must be between 0 and 65535, got {port}", param_hint="--port")
    if not read_timeout > 0:
        raise typer.BadParameter(
            f"must be a positive number of seconds, got {read_timeout}", param_hint="--read-timeout"
        )
    for flag, value in (("--max-connections", max_connections), ("--backlog", backlog)):
        if value < 1:
            raise typer.BadParameter(f"must be at least 1, got {value}", param_hint=flag)
    if duration is not None and not duration > 0:
        raise typer.BadParameter(f"must be a positive number of seconds, got {duration}", param_hint="--duration")
    if watch_pid is not None and (watch_pid <= 0 or not psutil.pid_exists(watch_pid)):
        raise typer.BadParameter(f"no process with pid {watch_pid}", param_hint="--watch-pid")
    if (tls_cert is None) != (tls_key is None):
        missing = "--tls-key" if tls_key is None else "--tls-cert"
        raise typer.BadParameter(f"TLS needs both --tls-cert and --tls-key; {missing} is missing", param_hint=missing)
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"{path}: no such file", param_hint=flag)
    auth = None
    if basic_auth is not None:
        try:
            auth = BasicAuth.parse(basic_auth)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--basic-auth") from None
    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a bundle directory", param_hint="--out")

    logging.basicConfig(level=logging.WARNING, format="bottleneck-map agent: %(message)s")
    hostname = socket.gethostname()
    sampler = Sampler(
        interval_s=interval,
        watch_pid=watch_pid,
        sources=default_sources(watch_pid, gpm_interval_s=gpm_interval),
        instance=hostname,
        write_every_s=FLUSH_INTERVAL_S,
        flush_writes=True,
    )

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(sampler, metric_names.value, hostname=hostname))
    try:  # bind first: a busy port or a bad certificate is reported before NVML is touched
        server = MetricsServer(
            registry,
            host,
            port,
            tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None,
            basic_auth=auth,
            read_timeout_s=read_timeout,
            max_connections=max_connections,
            backlog=backlog,
        )
    except ssl.SSLError as exc:
        raise typer.BadParameter(f"cannot load {tls_cert} with {tls_key}: {exc}", param_hint="--tls-cert") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc}", param_hint="--port") from None

    sampler.open()
    writer = None
    created = False
    if out is not None:
        try:
            if (out / META_FILE).exists():
                writer = BundleWriter(out, None, tables=("samples",), flush_interval_s=WRITER_TIMER_S)
            else:
                meta = new_meta(
                    "bottleneck-map agent",
                    capabilities={"steps": False, "samples": True, "streaming": False},
                    agent=_agent_meta(sampler, metric_names.value),
                )
                writer = BundleWriter(out, meta, tables=("samples",), flush_interval_s=WRITER_TIMER_S)
                created = True
        except (BundleError, OSError) as exc:
            sampler.stop()
            server.stop()
            typer.echo(f"error: --out {out}: {exc}", err=True)
            raise typer.Exit(1) from None
        sampler.writer = writer

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    sampler.start()
    typer.echo(
        f"agent serving {server.url} ({metric_names.value} names, every {interval:g} s"
        + (f", watching pid {watch_pid}" if watch_pid else "")
        + (f", writing {out}" if out else "")
        + f"); pid {os.getpid()}",
        err=True,
    )
    try:
        stop.wait(duration)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()
        sampler.stop()
        if writer is not None:
            writer.close(end_meta=created)
            typer.echo(f"wrote {sampler.stats.rows_written} sample rows to {out}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``bottleneck-map agent`` to the CLI."""
    app.command("agent")(agent)
