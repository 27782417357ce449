"""`serve` exporting OTLP/HTTP (standard OTEL_EXPORTER_OTLP_* settings) into `collect`:
the ingested bundle carries the same request timings as the server's own bundle. The engine
runs in its own process (as `serve` runs it), which exports the spans; a `traceparent`
header becomes the parent of the request's span."""

from __future__ import annotations

import time

import openai

from bottleneck_map.bundle import BundleWriter, read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.collect import TraceSink, collect_meta, finish, otlp_app
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.validate import validate_bundle


def test_engine_spans_round_trip_through_collect(tmp_path, monkeypatch):
    writer = BundleWriter(tmp_path / "collected", collect_meta(), flush_interval_s=0.2)
    sink = TraceSink(writer)
    receiver = UvicornServer(otlp_app(sink)).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/v1/traces")
    served = build_server(
        model="tiny",
        threads=1,
        engine_config=EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=128, max_model_len=256),
        instance="127.0.0.1:18000",
        bundle=tmp_path / "served",
        measure_device=False,
    )
    http = UvicornServer(served.app).start()
    started = time.time_ns()
    client = openai.OpenAI(base_url=http.url + "/v1", api_key="unused", max_retries=0)
    for i in range(4):
        client.completions.create(
            model="tiny", prompt=f"request number {i}", max_tokens=3 + i, extra_body={"ignore_eos": True}
        )
    list(client.completions.create(model="tiny", prompt="streamed", max_tokens=5, stream=True))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = client.completions.create(
        model="tiny", prompt="traced", max_tokens=2, extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    http.stop()
    served.close()  # flushes the span exporter
    receiver.stop()
    finish(writer, sink, started, prometheus=None, instances=None, step_s=None)

    assert validate_bundle(tmp_path / "collected").valid
    meta = read_bundle(tmp_path / "collected").meta
    assert meta["capabilities"] == {"steps": False, "samples": False, "streaming": True}
    assert abs(meta["end_ns"] - time.time_ns()) < 60e9  # Unix time, as the bundle's clock
    ours = read_bundle(tmp_path / "served")
    got = read_bundle(tmp_path / "collected").requests.set_index("request_id")
    clock = ours.meta["clock"]
    offset = clock["origin_unix_ns"] - clock["origin_monotonic_ns"]
    sent = ours.requests.set_index("request_id")
    assert set(got.index) == set(sent.index) and len(got) == 6
    assert got.loc[traced.id, "trace_id"] == sent.loc[traced.id, "trace_id"] == trace_id
    assert set(got["instance"]) == {"127.0.0.1:18000"}
    # the lifecycle from the span's latency attributes and our stage child spans (tokenize, queue, stream)
    cols = ("arrival_ns", "tokenize_start_ns", "tokenize_end_ns", "queued_ns", "first_scheduled_ns",
            "first_token_ns", "finished_ns", "first_byte_ns", "last_byte_ns")  # fmt: skip
    for col in cols:
        expected = (sent[col] + offset).reindex(got.index)
        assert got[col].isna().equals(expected.isna()), col
        diff = (got[col] - expected).abs()
        assert diff.max() <= 1_000, (col, diff.max())  # within 1 us (latencies travel as float seconds)
    assert got["first_byte_ns"].notna().sum() == 1  # the one streamed request
    for col in ("prompt_tokens", "output_tokens", "max_tokens", "trace_id"):
        assert (got[col] == sent[col].reindex(got.index)).all(), col
