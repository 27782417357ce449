"""``bottleneck-map serve``: the embedded engine behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from bottleneck_map.embedded_engine.core.engine_config import ConfigError, EngineConfig
from bottleneck_map.embedded_engine.serving.limits import ServeLimits, fit_connections_to_fd_limit, quiet_accept_errors
from bottleneck_map.embedded_engine.workloads import engine_flags as flags


@dataclass
class Served:
    """A built server: the ASGI app and what must be closed after it stops.

    With the engine in its own process (``state.engine`` is None), ``writer`` is this
    process's appender for the agent's samples (None without ``agent``); the engine
    process writes ``meta.json``, requests and steps."""

    app: Any
    state: Any
    writer: Any = None
    provider: Any = None
    sampler: Any = None
    closed: bool = field(default=False)

    @property
    def engine_process(self) -> bool:
        return self.state.engine is None

    def snapshot(self):
        """The engine's gauges now (a ``server_process.EngineState``)."""
        from bottleneck_map.embedded_engine.serving.server_process import EngineState

        if self.engine_process:
            return self.state.loop.call("snapshot")
        e = self.state.engine
        bm = e.block_manager
        return EngineState(
            e.num_requests_running, e.num_requests_waiting, bm.num_used, bm.num_free, max(1, bm.num_blocks),
            e.has_unfinished(), len(e._delivering), e.stats.num_finished, e.stats.num_steps,
        )  # fmt: skip

    def flush(self) -> None:
        """Write the bundle rows buffered so far (in the engine process too)."""
        if self.engine_process:
            self.state.loop.call("flush")
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Stop the engine loop and agent, then flush the bundle and the span exporter."""
        if self.closed:
            return
        self.closed = True
        if self.engine_process:
            if self.sampler is not None:
                self.sampler.stop()
            if self.writer is not None:
                self.writer.close()
            self.state.loop.stop()  # the engine process closes its bundle writer and span exporter
            return
        self.state.loop.stop()
        if self.sampler is not None:
            self.sampler.stop()
        self.state.engine.close()
        if self.writer is not None:
            self.writer.update_meta(
                result_summary={
                    "num_steps": self.state.engine.stats.num_steps,
                    "num_preemptions": self.state.engine.stats.num_preemptions,
                }
            )
            self.writer.close()
        if self.provider is not None:
            self.provider.shutdown()


def tracer_provider_from_env(instance: str):
    """OTLP/HTTP span export when ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set (the
    exporter reads the other ``OTEL_EXPORTER_OTLP_*`` settings itself); None otherwise.
    The resource carries ``service.instance.id`` = the serving address, which is also
    Prometheus' ``instance`` label for this server, so `collect` can join the two."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or "bottleneck-map-serve"
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": instance}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def build_server(
    *,
    model: str,
    engine_config: EngineConfig,
    served_model_name: str | None = None,
    instance: str,
    bundle: Path | None = None,
    record_prompts: bool = False,
    agent: bool = False,
    agent_interval: float = 0.5,
    tracer_provider: Any = None,
    measure_device: bool = True,
    loaded: Any = None,
    engine_process: bool | None = None,
    injection: Any = None,
    threads: int | None = None,
    flush_interval_s: float = 2.0,
    limits: Any = None,
) -> Served:
    """Start the engine and return the app (not yet listening).

    ``engine_process`` (default: True unless ``loaded`` is given): the engine core runs
    in its own process, which loads the model itself (see ``server_process``). Otherwise
    the model (``loaded``, or loaded here) is stepped by a thread of this process;
    ``tracer_provider`` is only for that case (the engine process builds its own from
    the ``OTEL_*`` environment; it is started with ``spawn``, so the caller's ``__main__`` must be
    safe to import). ``threads``: torch intra-op threads of the engine on
    CPU (default with its own process: the idle cores less one for the HTTP process,
    at least one; in a thread: torch's default). ``limits``: the request-level
    :class:`~bottleneck_map.embedded_engine.serving.limits.ServeLimits` (default: their defaults)."""
    if engine_process is None:
        engine_process = loaded is None
    if engine_process:
        if loaded is not None or tracer_provider is not None:
            raise ValueError("loaded= and tracer_provider= need the engine in this process (engine_process=False)")
        return _build_process_server(
            model=model,
            engine_config=engine_config,
            served_model_name=served_model_name,
            instance=instance,
            bundle=bundle,
            record_prompts=record_prompts,
            agent=agent,
            agent_interval=agent_interval,
            measure_device=measure_device,
            injection=injection,
            threads=threads,
            flush_interval_s=flush_interval_s,
            limits=limits,
        )
    from bottleneck_map.bundle import BundleWriter
    from bottleneck_map.embedded_engine.core.engine import LLMEngine
    from bottleneck_map.embedded_engine.core.tracing import Clock
    from bottleneck_map.embedded_engine.model.loader import load_model
    from bottleneck_map.embedded_engine.serving.server import MetricsSink, build_app, make_state

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    loaded = loaded or load_model(
        model, device=engine_config.device, dtype=engine_config.dtype, seed=engine_config.seed
    )
    name = served_model_name or loaded.config.name
    provider = tracer_provider if tracer_provider is not None else tracer_provider_from_env(instance)
    sink = MetricsSink(None, provider, model_name=name, instance=instance, record_prompts=record_prompts)
    engine = LLMEngine(loaded, engine_config, sink=sink, injection=injection)
    writer = None
    if bundle is not None:
        from bottleneck_map.embedded_engine.serving.server_process import serve_meta

        meta = serve_meta(
            loaded,
            engine,
            name,
            instance=instance,
            engine_process=False,
            samples=agent,
            measure_device=measure_device,
            injection=injection,
        )
        writer = BundleWriter(bundle, meta, flush_interval_s=flush_interval_s)
        sink.writer, sink.clock = writer, Clock.from_meta(writer.meta)
    state = make_state(engine, name)
    if limits is not None:
        state.limits = limits
    if injection is not None:
        state.tokenize_us_per_token = injection.tokenize_us_per_token
    sampler = None
    if agent:
        from prometheus_client import CollectorRegistry

        from bottleneck_map.agent.collector import AgentCollector
        from bottleneck_map.agent.sampler import Sampler

        sampler = Sampler(interval_s=agent_interval, watch_pid=os.getpid(), writer=writer, instance=instance).start()
        agent_registry = CollectorRegistry()
        agent_registry.register(AgentCollector(sampler))
        state.extra_registries.append(agent_registry)
    return Served(build_app(state), state, writer, provider, sampler)


def default_engine_threads(device: str) -> int | None:
    """Torch intra-op threads for an engine process on CPU: the idle cores (1-minute load
    average) less one left to the HTTP process, at least one. None on GPUs (torch's default)."""
    if device not in ("cpu", "auto"):
        return None
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return None
    from bottleneck_map.embedded_engine.workloads.cli import auto_threads

    return max(1, auto_threads() - 1)


def _build_process_server(
    *,
    model: str,
    engine_config: EngineConfig,
    served_model_name: str | None,
    instance: str,
    bundle: Path | None,
    record_prompts: bool,
    agent: bool,
    agent_interval: float,
    measure_device: bool,
    injection: Any,
    threads: int | None,
    flush_interval_s: float,
    limits: Any,
) -> Served:
    from bottleneck_map.bundle import BundleWriter
    from bottleneck_map.embedded_engine.serving.server import build_app, make_process_state
    from bottleneck_map.embedded_engine.serving.server_process import EngineProcess, EngineSpec

    spec = EngineSpec(
        model=model,
        engine_config=engine_config,
        served_model_name=served_model_name,
        instance=instance,
        bundle=bundle,
        record_prompts=record_prompts,
        samples=agent,
        measure_device=measure_device,
        injection=injection,
        threads=threads if threads is not None else default_engine_threads(engine_config.device),
        flush_interval_s=flush_interval_s,
    )
    proc = EngineProcess(spec)
    state = make_process_state(proc)
    if limits is not None:
        state.limits = limits
    if injection is not None:
        state.tokenize_us_per_token = injection.tokenize_us_per_token
    writer = sampler = None
    if agent:
        from prometheus_client import CollectorRegistry

        from bottleneck_map.agent.collector import AgentCollector
        from bottleneck_map.agent.sampler import Sampler

        if bundle is not None:
            writer = BundleWriter(bundle, None, flush_interval_s=flush_interval_s)  # appends next to the engine's
        sampler = Sampler(interval_s=agent_interval, watch_pid=proc.info.pid, writer=writer, instance=instance).start()
        agent_registry = CollectorRegistry()
        agent_registry.register(AgentCollector(sampler))
        state.extra_registries.append(agent_registry)
    return Served(build_app(state), state, writer, None, sampler)


DEFAULT_LIMITS = ServeLimits()
_LIMIT_FLAGS = {
    "max_body_bytes": "--max-body-bytes",
    "max_prompt_chars": "--max-prompt-chars",
    "max_header_bytes": "--max-header-bytes",
    "header_timeout_s": "--header-timeout",
    "body_timeout_s": "--body-timeout",
    "keep_alive_timeout_s": "--keep-alive-timeout",
    "max_connections": "--max-connections",
    "backlog": "--backlog",
}


def serve_limits(**values: Any) -> ServeLimits:
    """``ServeLimits`` from the flags' values, a bad one reported against its flag; the connection
    cap fitted to the open-file limit."""
    try:
        limits = ServeLimits(**values)
    except ValueError as exc:
        name = str(exc).split(" ", 1)[0]
        raise typer.BadParameter(str(exc), param_hint=_LIMIT_FLAGS.get(name)) from None
    return dataclasses.replace(limits, max_connections=fit_connections_to_fd_limit(limits.max_connections))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model: str = flags.MODEL,
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8000, "--port", help="Port to listen on."),
        served_model_name: str | None = typer.Option(
            None, "--served-model-name", help="Model name in the API (default: the model's name)."
        ),
        device: str = flags.DEVICE,
        dtype: str = flags.DTYPE,
        max_num_seqs: int = flags.MAX_NUM_SEQS,
        max_num_batched_tokens: int | None = flags.MAX_NUM_BATCHED_TOKENS,
        block_size: int = flags.BLOCK_SIZE,
        num_kv_blocks: int | None = flags.NUM_KV_BLOCKS,
        kv_cache_memory_bytes: int | None = flags.KV_CACHE_MEMORY_BYTES,
        max_model_len: int | None = flags.MAX_MODEL_LEN,
        enable_prefix_caching: bool = flags.ENABLE_PREFIX_CACHING,
        preemption_mode: str = flags.PREEMPTION_MODE,
        swap_space: float = flags.SWAP_SPACE,
        no_chunked_prefill: bool = flags.NO_CHUNKED_PREFILL,
        seed: int = flags.SEED,
        bundle: Path | None = typer.Option(None, "--bundle", help="Write a trace bundle here while serving."),
        record_prompts: bool = flags.RECORD_PROMPTS,
        agent: bool = typer.Option(
            False, "--agent/--no-agent", help="Sample host/GPU metrics in-process (bundle and /metrics)."
        ),
        agent_interval: float = typer.Option(0.5, "--agent-interval", help="Seconds between agent samples."),
        instance: str | None = typer.Option(
            None, "--instance", help="Instance name in the bundle and spans (default HOST:PORT, Prometheus' label)."
        ),
        log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
        engine_thread: bool = typer.Option(
            False,
            "--engine-thread",
            help="Step the engine in a thread of the HTTP process instead of its own process (the default).",
        ),
        threads: int | None = typer.Option(
            None,
            "--threads",
            help="CPU threads for the model on CPU (default: the idle cores less one for HTTP, at least 1).",
        ),
        inject: list[str] = typer.Option(
            [], "--inject", help="Fault injection NAME=VALUE: tokenize_us_per_token, step_host_ms."
        ),
        max_body_bytes: int = typer.Option(
            DEFAULT_LIMITS.max_body_bytes, "--max-body-bytes", help="Largest request body (413 beyond it)."
        ),
        max_prompt_chars: int | None = typer.Option(
            None,
            "--max-prompt-chars",
            help="Longest prompt in characters, refused before tokenizing (default: max_model_len x the "
            "longest vocabulary entry, which no longer text can fit).",
        ),
        max_header_bytes: int = typer.Option(
            DEFAULT_LIMITS.max_header_bytes, "--max-header-bytes", help="Largest request line and headers."
        ),
        header_timeout: float = typer.Option(
            DEFAULT_LIMITS.header_timeout_s, "--header-timeout", help="Seconds to receive a request's headers."
        ),
        body_timeout: float = typer.Option(
            DEFAULT_LIMITS.body_timeout_s, "--body-timeout", help="Seconds to receive a request's body."
        ),
        keep_alive_timeout: float = typer.Option(
            DEFAULT_LIMITS.keep_alive_timeout_s, "--keep-alive-timeout", help="Seconds an idle connection is kept."
        ),
        max_connections: int = typer.Option(
            DEFAULT_LIMITS.max_connections,
            "--max-connections",
            help="Open connections at most (lowered to fit the open-file limit); more get 503.",
        ),
        backlog: int = typer.Option(DEFAULT_LIMITS.backlog, "--backlog", help="Listen backlog."),
    ) -> None:
        """Serve the embedded engine over an OpenAI-compatible API, with vLLM's /metrics."""
        from bottleneck_map.ingest.http_server import UvicornServer

        if not 0 <= port <= 65535:
            raise typer.BadParameter(f"{port} is not a TCP port", param_hint="--port")
        if not agent_interval > 0:
            raise typer.BadParameter(f"must be > 0, got {agent_interval}", param_hint="--agent-interval")
        if bundle is not None and bundle.exists() and any(bundle.iterdir()):
            raise typer.BadParameter(f"{bundle} exists and is not empty", param_hint="--bundle")
        if threads is not None and threads < 1:
            raise typer.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
        limits = serve_limits(
            max_body_bytes=max_body_bytes,
            max_prompt_chars=max_prompt_chars,
            max_header_bytes=max_header_bytes,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            keep_alive_timeout_s=keep_alive_timeout,
            max_connections=max_connections,
            backlog=backlog,
        )
        from bottleneck_map.embedded_engine.core.inject import parse_injections

        try:
            injection = parse_injections(inject)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--inject") from None
        if injection.client_read_ms:
            raise typer.BadParameter(
                "client_read_ms is a client's fault; serve takes the others", param_hint="--inject"
            )
        ecfg = flags.engine_config(
            block_size=block_size,
            num_kv_blocks=num_kv_blocks,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            no_chunked_prefill=no_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            preemption_mode=preemption_mode,
            swap_space=swap_space,
            max_model_len=max_model_len,
            device=device,
            dtype=dtype,
            seed=seed,
        )
        try:
            http = UvicornServer(None, host, port, log_level=log_level)
        except OSError as exc:
            raise typer.BadParameter(str(exc), param_hint="--port") from None
        from bottleneck_map.embedded_engine.model.loader import CheckpointError

        try:
            served = build_server(
                model=model,
                engine_config=ecfg,
                served_model_name=served_model_name,
                instance=instance or f"{host}:{http.port}",
                bundle=bundle,
                record_prompts=record_prompts,
                agent=agent,
                agent_interval=agent_interval,
                engine_process=not engine_thread,
                injection=injection,
                threads=threads if threads is not None else default_engine_threads(device),
                limits=limits,
            )
        except ConfigError as exc:
            http.sock.close()
            raise flags.config_error(exc) from None
        except (CheckpointError, ValueError) as exc:
            http.sock.close()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        http.server.config.app = served.app
        from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol

        # arrival stamped when a request's bytes are read; connection limits and read timeouts
        http.server.config.http = ArrivalH11Protocol.with_limits(limits)
        http.server.config.h11_max_incomplete_event_size = limits.max_header_bytes
        http.server.config.timeout_keep_alive = limits.keep_alive_timeout_s
        http.server.config.backlog = limits.backlog  # asyncio listens with it (and accepts as many per tick)
        quiet_accept_errors()
        typer.echo(
            f"serve: {served.state.served_model} on {http.url}/v1 (metrics {http.url}/metrics)"
            + (f", bundle {bundle}" if bundle else ""),
            err=True,
        )
        # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again:
        # make SIGTERM end like Ctrl-C, so the engine and the bundle are closed either way
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            http.run()
        except KeyboardInterrupt:
            pass
        finally:
            served.close()
