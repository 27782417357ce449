"""``bottleneck-map run``: a small real run end to end, and usage errors naming their flag."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bottleneck_map.bundle import read_bundle
from bottleneck_map.cli import app
from bottleneck_map.validate import validate_bundle

runner = CliRunner()
SMALL = [
    "--model",
    "tiny",
    "--num-requests",
    "6",
    "--request-rate",
    "inf",
    "--output-len",
    "6",
    "--prompt-len",
    "uniform:8:40",
    "--shared-prefix",
    "16",
    "--threads",
    "1",
    "--agent-interval",
    "0.05",
]


def test_small_run_writes_a_complete_valid_bundle(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", *SMALL, "--out", str(out), "--inject", "step_host_ms=1"])
    assert res.exit_code == 0, res.output
    assert f"bundle: {out}" in res.output.replace("\n", "")
    report = validate_bundle(out)
    assert report.valid, report.errors
    b = read_bundle(out)
    m = b.meta
    for key in ("name", "architecture", "hidden_size", "num_hidden_layers", "num_key_value_heads", "dtype"):
        assert key in m["model"], key
    for key in (
        "block_size",
        "num_kv_blocks",
        "max_num_seqs",
        "max_num_batched_tokens",
        "chunked_prefill",
        "enable_prefix_caching",
        "preemption_mode",
        "swap_space_gib",
        "device",
        "dtype",
        "max_model_len",
    ):
        assert key in m["engine"], key
    assert m["device"]["kind"] == "cpu" and m["device"]["peaks_source"] == "measured"
    assert m["device"]["peak_bandwidth_bytes_per_s"] > 0 and m["device"]["peak_flops"] > 0
    assert m["workload"]["num_requests"] == 6 and m["injected"] == {"step_host_ms": 1.0}
    assert m["capabilities"] == {"steps": True, "samples": True, "streaming": True}
    assert len(b.requests) == 6 and (b.requests.output_tokens == 6).all()
    assert len(b.steps) > 0 and len(b.samples) > 0  # the agent sampled the host during the run
    assert b.requests.prompt_text.isna().all()


def test_workload_file_replay_and_record_prompts(tmp_path):
    wl = tmp_path / "w.jsonl"
    wl.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"arrival_s": 0.0, "prompt": "the quick brown fox", "max_tokens": 3, "class": "chat"},
                {"arrival_s": 0.05, "prompt_tokens": 20, "max_tokens": 4, "class": "rag"},
            )
        )
    )
    out = tmp_path / "replay"
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "tiny",
            "--workload-file",
            str(wl),
            "--out",
            str(out),
            "--record-prompts",
            "--no-agent",
            "--threads",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    b = read_bundle(out)
    r = b.requests.set_index("request_id")
    assert r.loc["req-00000", "prompt_text"] == "the quick brown fox"
    assert sorted(r.workload_class) == ["chat", "rag"]
    assert b.meta["workload"]["kind"] == "replay" and b.meta["capabilities"]["samples"] is False


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--max-num-seqs", "0"], "--max-num-seqs"),
        (["--block-size", "12"], "--block-size"),
        (["--preemption-mode", "drop"], "--preemption-mode"),
        (["--swap-space", "-1"], "--swap-space"),
        (["--dtype", "int8"], "--dtype"),
        (["--device", "tpu"], "--device"),
        (["--max-num-batched-tokens", "8"], "--max-num-batched-tokens"),
        (["--num-requests", "0"], "--num-requests"),
        (["--request-rate", "0"], "--request-rate"),
        (["--burstiness", "-2"], "--burstiness"),
        (["--prompt-len", "uniform:9"], "--prompt-len"),
        (["--output-len", "lognormal:x:1"], "--output-len"),
        (["--inject", "gpu_melt=1"], "--inject"),
        (["--shared-prefix", "-4"], "--shared-prefix"),
        (["--workload-file", "/nonexistent/w.jsonl"], "--workload-file"),
        (["--num-kv-blocks", "2", "--max-model-len", "4096"], "--num-kv-blocks"),
        (["--kv-cache-memory-bytes", "0"], "--kv-cache-memory-bytes"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(args, flag):
    res = runner.invoke(app, ["run", "--model", "tiny", "--no-agent", *args])
    assert res.exit_code == 2, res.output
    assert flag in res.output


def test_directory_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "tokenizer.json").write_text("{}")
    res = runner.invoke(app, ["run", "--model", str(tmp_path), "--no-agent"])
    assert res.exit_code == 1
    assert "error" in res.output and "Traceback" not in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["run", "--model", str(empty), "--no-agent"])
    assert res.exit_code == 1 and "config.json" in res.output
