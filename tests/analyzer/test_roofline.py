"""Analytic roofline counts checked against an independent published reference.

Reference: Yuan et al., "LLM Inference Unveiled: Survey and Roofline Model Insights",
arXiv:2402.16363 (v6), Table 1 "Analysis for layers in Llama-2-7b using the Roofline model
of Nvidia A6000 GPU. In this example, the sequence length is 2048 and the batch size is 1."
The numbers were produced with the authors' LLM-Viewer (github.com/hahnyuan/LLM-Viewer), which
counts OPs as 2 per multiply-add and memory access as weights + inputs + outputs of each
operator, with attention scores materialised (no FlashAttention). Values are copied from the
table as printed (per decoder layer, rounded by the authors).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bottleneck_map.analyzer.data import load
from bottleneck_map.analyzer.devices import device_peaks, lookup_gpu
from bottleneck_map.analyzer.roofline import ModelShape, layer_ops, step_costs, step_roofline

LLAMA2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "dtype": "float16",
}

G, M = 1e9, 1e6
# (operator, OPs, memory access bytes) from arXiv:2402.16363 Table 1.
PAPER_PREFILL = [
    ("q_proj", 69 * G, 67 * M),
    ("k_proj", 69 * G, 67 * M),
    ("v_proj", 69 * G, 67 * M),
    ("o_proj", 69 * G, 67 * M),
    ("gate_proj", 185 * G, 152 * M),
    ("up_proj", 185 * G, 152 * M),
    ("down_proj", 185 * G, 152 * M),
    ("qk_matmul", 34 * G, 302 * M),
    ("sv_matmul", 34 * G, 302 * M),
]
PAPER_DECODE = [
    ("q_proj", 34 * M, 34 * M),
    ("k_proj", 34 * M, 34 * M),
    ("v_proj", 34 * M, 34 * M),
    ("o_proj", 34 * M, 34 * M),
    ("gate_proj", 90 * M, 90 * M),
    ("up_proj", 90 * M, 90 * M),
    ("down_proj", 90 * M, 90 * M),
    ("qk_matmul", 17 * M, 17 * M),
    ("sv_matmul", 17 * M, 17 * M),
]


@pytest.mark.parametrize(
    ("phase", "q", "c", "table"), [("prefill", 2048, 2048, PAPER_PREFILL), ("decode", 1, 2048, PAPER_DECODE)]
)
def test_llama2_7b_per_layer_flops_and_bytes_match_llm_viewer_table(phase, q, c, table):
    shape = ModelShape.from_meta(LLAMA2_7B)
    ops = layer_ops(shape, [q], [c], materialize_scores=True)
    for name, ref_ops, ref_bytes in table:
        flops, nbytes = ops[name]
        assert flops == pytest.approx(ref_ops, rel=0.05), (phase, name, flops, ref_ops)
        assert nbytes == pytest.approx(ref_bytes, rel=0.05), (phase, name, nbytes, ref_bytes)


def test_vectorised_step_costs_equal_the_sum_of_layer_ops():
    shape = ModelShape.from_meta(LLAMA2_7B)
    q = np.array([300, 1, 1, 1])
    c = np.array([300, 500, 17, 2048])
    ops = layer_ops(shape, q, c)
    layer_f = sum(f for f, _ in ops.values())
    layer_b = sum(b for _, b in ops.values())
    f, b = step_costs(shape, np.array([q.sum()]), np.array([4.0]), np.array([c.sum()]), np.array([(q * c).sum()]))
    head_f = 2.0 * 4 * 4096 * 32000
    head_b = 2 * (32000 * 4096 + 4 * 4096 + 4 * 32000)
    assert f[0] == pytest.approx(32 * layer_f + head_f)
    assert b[0] == pytest.approx(32 * layer_b + head_b)


def test_decode_is_memory_bound_and_long_prefill_compute_bound_on_h100():
    shape = ModelShape.from_meta(LLAMA2_7B)
    peaks = device_peaks({"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"})
    assert peaks.source == "table" and peaks.ridge_point == pytest.approx(989.4e12 / 3.35e12)
    f, b = step_costs(
        shape,
        np.array([8.0, 4096.0]),
        np.array([8.0, 2.0]),
        np.array([8 * 1024.0, 4096.0]),
        np.array([8 * 1024.0, 2048.0 * 2048 * 2]),
    )
    ai = f / b
    assert ai[0] < peaks.ridge_point < ai[1]


def test_step_roofline_table(sim_bundle):
    t = load(sim_bundle(output_tokens=8, prompt_tokens=64))
    peaks = device_peaks(t.meta["device"])
    df = step_roofline(t.steps, t.meta["model"], peaks)
    assert len(df) == t.steps.num_rows
    assert set(df["phase"]) <= {"prefill", "decode", "mixed"}
    assert (df["flops"] > 0).all() and (df["bytes"] > 0).all()
    dec = df[df["phase"] == "decode"]
    assert (dec["bound"] == "memory").all()
    assert np.allclose(df["achieved_flops_per_s"], df["flops"] / df["time_s"])


@pytest.mark.parametrize(
    ("name", "row"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
    ],
)
def test_gpu_table_lookup(name, row):
    assert lookup_gpu(name).name == row


def test_cpu_uses_measured_peaks_only():
    p = device_peaks(
        {"kind": "cpu", "name": "x", "measured": {"matmul_flops": 1e11, "copy_bandwidth_bytes_per_s": 1e10}}
    )
    assert (p.peak_flops, p.peak_bandwidth_bytes_per_s, p.source) == (1e11, 1e10, "measured")
    assert device_peaks({"kind": "cuda", "name": "mystery"}).source == "none"


def test_median_step_bandwidth_is_not_dragged_down_by_stalled_steps():
    from bottleneck_map.analyzer.result import DevicePeaks
    from bottleneck_map.analyzer.roofline import roofline_points

    peaks = DevicePeaks("cpu", "cpu", 1e11, 1e10, "measured")
    # 19 decode steps moving 100 MB in 20 ms (5 GB/s = 50% of 10 GB/s) and one stalled for 2 s.
    times = np.r_[np.full(19, 0.02), 2.0]
    per_step = pd.DataFrame(
        {
            "phase": "decode",
            "flops": 1e8,
            "bytes": 1e8,
            "time_s": times,
            "achieved_flops_per_s": 1e8 / times,
            "achieved_bytes_per_s": 1e8 / times,
        }
    )
    (dec, _all) = roofline_points(per_step, peaks)
    assert dec.bandwidth_utilization == pytest.approx(20 * 1e8 / (19 * 0.02 + 2.0) / 1e10)  # ~8%
    assert dec.step_bytes_per_s_p50 == pytest.approx(5e9)
    assert dec.step_bandwidth_utilization_p50 == pytest.approx(0.5)
