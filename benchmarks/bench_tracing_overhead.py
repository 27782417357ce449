"""Throughput with full tracing (bundle rows for every request and step, plus OpenTelemetry
spans through the SDK's BatchSpanProcessor) against tracing off, same engine, same workload.

Runs alternate off/on ``--repeats`` times (so machine noise hits both) through the real-time
runner with every request present at t=0; the figure is the ratio of the median
throughputs. Target: >= 97 %.

    python benchmarks/bench_tracing_overhead.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from bottleneck_map.bundle import BundleWriter, new_meta
    from bottleneck_map.embedded_engine.engine import LLMEngine
    from bottleneck_map.embedded_engine.engine_config import EngineConfig
    from bottleneck_map.embedded_engine.loader import load_model
    from bottleneck_map.embedded_engine.runner import run_workload
    from bottleneck_map.embedded_engine.tracing import TraceSink
    from bottleneck_map.embedded_engine.workload import WorkloadSpec, build_workload, word_pool

    loaded = load_model(args.model, device="cpu", dtype="float32")
    spec = WorkloadSpec(num_requests=args.num_requests, request_rate=float("inf"), seed=0)
    requests = build_workload(spec, word_pool(loaded.tokenizer))
    engine_cfg = EngineConfig(device="cpu", num_kv_blocks=1024)

    def once(traced: bool) -> float:
        engine = LLMEngine(loaded, engine_cfg)
        writer = provider = None
        with tempfile.TemporaryDirectory() as tmp:
            if traced:
                writer = BundleWriter(tmp, new_meta("bench", engine=engine.config.to_meta()))
                provider = TracerProvider()
                exporter = InMemorySpanExporter()
                provider.add_span_processor(BatchSpanProcessor(exporter))
                engine.sink = TraceSink(writer, provider, model_name=args.model, instance="bench")
            t0 = time.perf_counter()
            result = run_workload(engine, requests)
            engine.close()
            if writer is not None:
                writer.close()
                provider.shutdown()
            dt = time.perf_counter() - t0
            if traced:
                assert len(exporter.get_finished_spans()) >= len(requests)
        return result.output_tokens / dt

    once(False)  # warm-up
    off, on = [], []
    for i in range(args.repeats):
        for traced in (False, True) if i % 2 == 0 else (True, False):
            (on if traced else off).append(once(traced))
    r_off, r_on = statistics.median(off), statistics.median(on)
    print(
        f"model {args.model}, {args.threads} threads, {args.num_requests} requests (mixed default), {args.repeats} runs each"
    )
    print(f"tracing off: {r_off:8.1f} output tok/s  (runs: {', '.join(f'{x:.1f}' for x in off)})")
    print(f"tracing on : {r_on:8.1f} output tok/s  (runs: {', '.join(f'{x:.1f}' for x in on)})")
    print(f"on / off: {100 * r_on / r_off:.1f}% (target >= 97%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
