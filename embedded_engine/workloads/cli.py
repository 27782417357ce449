"""``bottleneck-map run``: the embedded engine on a workload, written to a trace bundle."""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import typer

from bottleneck_map.embedded_engine.core.engine_config import ConfigError, EngineConfig
from bottleneck_map.embedded_engine.workloads import engine_flags as flags


def _bad(flag: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=flag)


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_meta(device, dtype) -> dict:
    """``meta["device"]`` with peaks measured on this machine now."""
    from bottleneck_map.embedded_engine.model.peaks import measure_peaks

    measured = measure_peaks(device, dtype, seconds=0.5)
    return {
        "kind": device.type,
        "name": _device_name(device),
        "peak_flops": measured["matmul_flops"],
        "peak_bandwidth_bytes_per_s": measured["copy_bandwidth_bytes_per_s"],
        "peaks_source": "measured",
        "measured": measured,
        "num_threads": __import__("torch").get_num_threads(),
    }


def auto_threads() -> int:
    """Intra-op CPU threads: the cores not already busy (1-minute load average), at least one.

    On a shared machine, OpenMP threads competing with other processes spin and run several
    times slower than fewer threads; on an idle machine this is every core.
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def print_summary(bundle: Path, result, console) -> None:
    """The run's own numbers, then the analyzer's summary when the analyzer is installed."""
    console.print(
        f"{result.num_finished}/{result.num_requests} requests finished"
        + (f", {result.num_rejected} rejected" if result.num_rejected else "")
        + f" in {result.duration_s:.1f} s: {result.output_tokens:,} output tokens "
        f"({result.output_tokens_per_s:,.0f} tok/s), {result.num_steps:,} steps, "
        f"{result.num_preemptions} preemptions",
        highlight=False,
    )
    try:
        from bottleneck_map.analyzer import summarize_bundle  # type: ignore[attr-defined]
    except ImportError:
        return
    try:
        console.print(summarize_bundle(bundle), highlight=False)
    except Exception as exc:  # the bundle is written; a summary failure must not hide it
        console.print(f"[yellow]analyzer summary unavailable: {exc}[/yellow]")


def register(app: typer.Typer) -> None:
    @app.command("export-hf")
    def export_hf(
        preset: str = typer.Argument(..., help="Built-in preset to export (default, small-150m, tiny)."),
        out: Path = typer.Option(..., "--out", help="Directory to write the checkpoint into."),
        seed: int = typer.Option(0, "--seed", help="Seed of the preset's random weights (as `run --seed`)."),
        dtype: str = typer.Option("float32", "--dtype", help="Weights' dtype: float32, bfloat16 or float16."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of a non-empty --out."),
    ) -> None:
        """Write a built-in preset as a Hugging Face checkpoint (serve it with vLLM, transformers or `serve`)."""
        from bottleneck_map.embedded_engine.model.export import export_preset
        from bottleneck_map.embedded_engine.model.loader import CheckpointError

        try:
            export_preset(preset, out, seed=seed, dtype=dtype, overwrite=overwrite)
        except CheckpointError as exc:
            typer.echo(f"export-hf: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"export-hf: {preset} (seed {seed}) -> {out}", err=True)

    @app.command("run")
    def run(
        model: str = flags.MODEL,
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
        num_requests: int | None = typer.Option(
            None, "--num-requests", help="Requests in the synthetic workload (default 64)."
        ),
        request_rate: float = typer.Option(
            5.0, "--request-rate", help="Mean arrivals per second; inf sends all at once."
        ),
        burstiness: float = typer.Option(
            1.0, "--burstiness", help="Gamma shape of inter-arrival gaps (1 = Poisson; < 1 burstier)."
        ),
        arrival: str = typer.Option("poisson", "--arrival", help="poisson, gamma, constant or burst."),
        prompt_len: str | None = typer.Option(
            None,
            "--prompt-len",
            help="Prompt tokens for every class: N, uniform:MIN:MAX, normal:MEAN:STD, lognormal:MEDIAN:SIGMA.",
        ),
        output_len: str | None = typer.Option(
            None, "--output-len", help="Output tokens for every class (same forms as --prompt-len)."
        ),
        shared_prefix: int | None = typer.Option(
            None, "--shared-prefix", help="Tokens of shared system prompt per class group."
        ),
        workload_file: Path | None = typer.Option(
            None,
            "--workload-file",
            help="Replay a JSONL workload (arrival_s, prompt or prompt_tokens, max_tokens, class).",
        ),
        out: Path | None = typer.Option(None, "--out", help="Bundle directory (default ./bmap-runs/<timestamp>/)."),
        inject: list[str] = typer.Option(
            [], "--inject", help="Fault injection NAME=VALUE: tokenize_us_per_token, step_host_ms, client_read_ms."
        ),
        record_prompts: bool = flags.RECORD_PROMPTS,
        agent: bool = typer.Option(
            True, "--agent/--no-agent", help="Sample host and GPU metrics into the bundle while running."
        ),
        agent_interval: float = typer.Option(0.1, "--agent-interval", help="Seconds between agent samples."),
        threads: int | None = typer.Option(
            None, "--threads", help="CPU threads for the model on CPU (default: the idle cores, at least 1)."
        ),
    ) -> None:
        """Run the embedded engine on a workload and write a trace bundle."""
        from rich.console import Console

        from bottleneck_map.embedded_engine.core.inject import parse_injections
        from bottleneck_map.embedded_engine.workloads.workload import ARRIVALS, LengthDist, WorkloadSpec

        console = Console()
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
        lengths = {}
        for flag, text in (("--prompt-len", prompt_len), ("--output-len", output_len)):
            try:
                lengths[flag] = LengthDist.parse(text) if text is not None else None
            except ValueError as exc:
                raise _bad(flag, str(exc)) from None
        if shared_prefix is not None and shared_prefix < 0:
            raise _bad("--shared-prefix", f"must be >= 0, got {shared_prefix}")
        if threads is not None and threads < 1:
            raise _bad("--threads", f"must be >= 1, got {threads}")
        if not agent_interval > 0:
            raise _bad("--agent-interval", f"must be > 0, got {agent_interval}")
        try:
            injection = parse_injections(inject)
        except ValueError as exc:
            raise _bad("--inject", str(exc)) from None
        spec = None
        if workload_file is None:
            checks = (
                ("--num-requests", num_requests is None or num_requests >= 1, "must be >= 1"),
                ("--request-rate", request_rate > 0, "must be > 0 (inf sends all at once)"),
                ("--burstiness", math.isfinite(burstiness) and burstiness > 0, "must be a finite number > 0"),
                ("--arrival", arrival in ARRIVALS, f"must be one of {', '.join(ARRIVALS)}"),
            )
            for flag, ok, message in checks:
                if not ok:
                    raise _bad(flag, message)
            spec = WorkloadSpec(
                num_requests=64 if num_requests is None else num_requests,
                request_rate=request_rate,
                burstiness=burstiness,
                arrival=arrival,
                seed=seed,
            ).with_lengths(lengths["--prompt-len"], lengths["--output-len"], shared_prefix)
        elif not workload_file.is_file():
            raise _bad("--workload-file", f"{workload_file} is not a file")

        bundle = run_bundle(
            model=model,
            engine_config=ecfg,
            spec=spec,
            workload_file=workload_file,
            num_requests=num_requests,
            out=out,
            injection=injection,
            record_prompts=record_prompts,
            agent=agent,
            agent_interval=agent_interval,
            threads=threads,
            console=console,
        )
        console.print(f"bundle: {bundle}", highlight=False, soft_wrap=True)


def run_bundle(
    *,
    model: str,
    engine_config: EngineConfig,
    spec,
    workload_file: Path | None,
    num_requests: int | None,
    out: Path | None,
    injection,
    record_prompts: bool,
    agent: bool,
    agent_interval: float,
    console,
    threads: int | None = None,
) -> Path:
    """Load, run and write the bundle; returns its path. Exits 1 with a message on bad input data."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bottleneck_map.bundle import BundleWriter, new_meta
    from bottleneck_map.embedded_engine.core.engine import LLMEngine
    from bottleneck_map.embedded_engine.core.tracing import TraceSink, otel_provider_from_env
    from bottleneck_map.embedded_engine.model.loader import CheckpointError, load_model
    from bottleneck_map.embedded_engine.workloads.runner import run_workload
    from bottleneck_map.embedded_engine.workloads.workload import build_workload, describe_replay, load_jsonl, word_pool

    def fail(message: str) -> typer.Exit:
        console.print(f"[red]error[/red]: {message}", highlight=False)
        return typer.Exit(1)

    import torch

    torch.set_num_threads(threads or auto_threads())
    with console.status(f"loading model {model} ..."):
        try:
            loaded = load_model(model, device=engine_config.device, dtype=engine_config.dtype, seed=engine_config.seed)
        except CheckpointError as exc:
            raise fail(str(exc)) from None
        except ValueError as exc:  # e.g. cuda requested but unavailable
            raise fail(str(exc)) from None
        try:
            engine = LLMEngine(loaded, engine_config, injection=injection)
        except ConfigError as exc:
            raise flags.config_error(exc) from None
    words = word_pool(loaded.tokenizer)
    if workload_file is not None:
        try:
            requests = load_jsonl(workload_file, words, seed=engine_config.seed)
        except (ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        if num_requests is not None:
            requests = requests[:num_requests]
        workload_meta = describe_replay(workload_file, requests)
    else:
        requests = build_workload(spec, words)
        workload_meta = spec.to_meta()
    with console.status("measuring device peaks ..."):
        device = device_meta(engine.device, engine.dtype)
    path = out or Path("bmap-runs") / time.strftime("%Y%m%d-%H%M%S")
    if path.exists() and any(path.iterdir()):
        raise fail(f"{path} exists and is not empty")
    meta = new_meta(
        "bottleneck-map run",
        model=loaded.config.to_meta(engine.dtype),
        engine=engine.config.to_meta(),
        device=device,
        workload=workload_meta,
        injected=injection.to_meta(),
        capabilities={"steps": True, "samples": agent, "streaming": True},
        instance="engine-0",
    )
    writer = BundleWriter(path, meta)
    provider = otel_provider_from_env()
    engine.sink = TraceSink(
        writer, provider, model_name=loaded.config.name, instance="engine-0", record_prompts=record_prompts
    )
    sampler = None
    if agent:
        from bottleneck_map.agent.sampler import Sampler

        sampler = Sampler(interval_s=agent_interval, watch_pid=os.getpid(), writer=writer, instance="engine-0")
        sampler.start()
    try:
        with Progress(
            TextColumn("[bold]serving"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("run", total=len(requests))
            result = run_workload(engine, requests, on_request_done=lambda d, t: progress.update(task, completed=d))
    finally:
        if sampler is not None:
            sampler.stop()
        engine.close()
        writer.update_meta(
            result_summary={"num_steps": engine.stats.num_steps, "num_preemptions": engine.stats.num_preemptions}
        )
        writer.close()
        if provider is not None:
            provider.shutdown()
    print_summary(path, result, console)
    return path
