"""Analytic FLOPs and bytes of every engine step, and where each step sits on the roofline.

Counting rules (a Llama-family decoder: attention with grouped KV heads, SwiGLU MLP):

* linear layers (q, k, v, o, gate, up, down): 2 FLOPs per multiply-add over the step's
  ``T`` new tokens; bytes = weights read once per step + inputs read + outputs written;
* attention: ``qk`` and ``sv`` each 2 * heads * head_dim * query_len * context_len FLOPs
  per sequence (the full query x context rectangle, as LLM-Viewer counts it); bytes = Q read,
  K (or V) of the whole context read, output written; ``materialize_scores=True`` adds
  the score matrix written and read back (unfused attention, as LLM-Viewer's table);
* KV writes: the new tokens' K and V written to the cache;
* lm_head: logits of one position per sequence (the sampled one);
* norms, rotary, residual adds and the embedding gather are ignored (under 1% of either).

``context_len`` is the number of tokens attended, including this step's query tokens.
Everything is linear in four per-step aggregates (tokens, sequences, sum of context
lengths, sum of query x context), so a million steps cost a few ``bincount`` calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bottleneck_map.analyzer.data import f64, ns
from bottleneck_map.analyzer.result import DevicePeaks, RooflinePoint

# A step runs "near its roofline" when its forward pass takes at most 1/ROOF_NEAR of the time the
# roofline gives it (achieved bytes/s or FLOP/s, whichever bounds the step, at least this fraction of
# peak). Well-tuned engines reach 60-85% of HBM bandwidth in decode and of tensor FLOP/s in large
# prefills, and the peaks measured on a CPU (copy bandwidth, matmul FLOP/s) are what a good kernel
# reaches; a step at under half of either roof is held back by something else (framework or launch
# overhead, matrices too small to use the hardware), so more bandwidth or FLOP/s would not speed it up.
ROOF_NEAR = 0.5

_DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "float16": 2,
    "fp16": 2,
    "bfloat16": 2,
    "bf16": 2,
    "float8": 1,
    "fp8": 1,
    "int8": 1,
}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_weights(self) -> int:
        """Weights of one decoder layer's linear layers (elements)."""
        h = self.hidden
        return h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * self.intermediate

    @classmethod
    def from_meta(cls, model: Mapping[str, Any] | None) -> ModelShape | None:
        """From ``meta["model"]`` (HF config keys); None when the keys needed are missing."""
        m = dict(model or {})
        try:
            hidden = int(m["hidden_size"])
            heads = int(m["num_attention_heads"])
            layers = int(m["num_hidden_layers"])
            inter = int(m["intermediate_size"])
            vocab = int(m["vocab_size"])
        except (KeyError, TypeError, ValueError):
            return None
        kv = int(m.get("num_key_value_heads") or heads)
        head_dim = int(m.get("head_dim") or hidden // heads)
        b = m.get("dtype_bytes") or _DTYPE_BYTES.get(str(m.get("dtype", "float16")).removeprefix("torch."), 2)
        return cls(hidden, layers, heads, kv, head_dim, inter, vocab, int(b))


def layer_ops(
    shape: ModelShape,
    query_lens: np.ndarray | list[int],
    context_lens: np.ndarray | list[int],
    *,
    materialize_scores: bool = False,
) -> dict[str, tuple[float, float]]:
    """FLOPs and bytes of each operator of ONE decoder layer for a batch of sequences."""
    q = np.asarray(query_lens, dtype=np.float64)
    c = np.asarray(context_lens, dtype=np.float64)
    t = q.sum()
    h, b, qs, kvs, i = shape.hidden, shape.dtype_bytes, shape.q_size, shape.kv_size, shape.intermediate

    def linear(n_in: int, n_out: int) -> tuple[float, float]:
        return 2.0 * t * n_in * n_out, float(b * (n_in * n_out + t * n_in + t * n_out))

    ops = {
        "q_proj": linear(h, qs),
        "k_proj": linear(h, kvs),
        "v_proj": linear(h, kvs),
        "o_proj": linear(qs, h),
        "gate_proj": linear(h, i),
        "up_proj": linear(h, i),
        "down_proj": linear(i, h),
    }
    qc = float((q * c).sum())
    scores = shape.heads * qc * b if materialize_scores else 0.0
    ops["qk_matmul"] = (2.0 * qs * qc, b * (t * qs + c.sum() * kvs) + scores)
    ops["sv_matmul"] = (2.0 * qs * qc, b * (c.sum() * kvs + t * qs) + scores)
    ops["kv_write"] = (0.0, float(b * 2 * t * kvs))
    return ops


def step_costs(
    shape: ModelShape, tokens: np.ndarray, seqs: np.ndarray, sum_ctx: np.ndarray, sum_qc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Total FLOPs and bytes of whole steps from their aggregates (vectorised form of :func:`layer_ops`)."""
    h, b, qs, kvs, i, L = shape.hidden, shape.dtype_bytes, shape.q_size, shape.kv_size, shape.intermediate, shape.layers
    t = tokens.astype(np.float64)
    w = shape.layer_weights
    act_io = h + qs + h + kvs + h + kvs + qs + h + h + i + h + i + i + h  # inputs + outputs of the 7 linear layers
    layer_flops = 2.0 * t * w + 4.0 * qs * sum_qc
    layer_bytes = b * (w + t * act_io) + b * (2 * t * qs + 2 * sum_ctx * kvs) + b * 2 * t * kvs
    head_flops = 2.0 * seqs * h * shape.vocab
    head_bytes = b * (shape.vocab * h + seqs * h + seqs * shape.vocab)
    return L * layer_flops + head_flops, L * layer_bytes + head_bytes


def step_roofline(
    steps: pa.Table, model: Mapping[str, Any] | None, peaks: DevicePeaks, membership: Any = None, sums: Any = None
) -> pd.DataFrame:
    """One row per step: phase, tokens, FLOPs, bytes, time, achieved FLOP/s and bytes/s, intensity, bound.

    ``sums`` (:class:`~bottleneck_map.analyzer.steprows.StepSums`, reduced chunk by chunk) or
    ``membership`` (:class:`~bottleneck_map.analyzer.stages.Membership`) avoid exploding the lists again.
    """
    from bottleneck_map.analyzer.steprows import StepSums

    n = steps.num_rows
    shape = ModelShape.from_meta(model)
    counters = [f64(steps, c) for c in ("num_prefill_tokens", "num_prefill_seqs", "num_decode_seqs")]
    from_counters = all(np.isfinite(c).all() for c in counters) and n > 0
    if sums is None:
        if membership is None:
            from bottleneck_map.analyzer.stages import step_membership

            membership = step_membership(steps, pa.array([], pa.string()))
        sums = StepSums.of(membership, n, lists=not from_counters)
    seqs, sum_ctx, d_ctx, sum_qc = sums.seqs, sums.sum_ctx, sums.d_ctx, sums.sum_qc
    if from_counters:
        # Step counters give tokens and decode rows directly (decode rows have query length 1).
        tokens = counters[0] + counters[2]
        d_seqs = counters[2]
        d_tok, d_qc = d_seqs, d_ctx
    else:
        tokens, d_tok, d_seqs, d_qc = sums.list_tokens, sums.list_d_tok, sums.list_d_seqs, sums.list_d_qc
    # Steps recorded without per-sequence lists fall back to their counters.
    pre_tok = f64(steps, "num_prefill_tokens")
    dec = f64(steps, "num_decode_seqs")
    pre_seqs = f64(steps, "num_prefill_seqs")
    missing = seqs == 0
    if missing.any():
        tokens = np.where(missing, np.nan_to_num(pre_tok) + np.nan_to_num(dec), tokens)
        seqs = np.where(missing, np.nan_to_num(pre_seqs) + np.nan_to_num(dec), seqs)
        sum_ctx = np.where(missing, tokens, sum_ctx)
        sum_qc = np.where(missing, tokens, sum_qc)
    start, end = ns(steps, "start_ns"), ns(steps, "end_ns")
    fwd = f64(steps, "forward_ns")
    dur = (end - start).astype(np.float64)
    time_ns = np.where(np.isfinite(fwd) & (fwd > 0), fwd, dur)
    if np.isfinite(pre_tok).all():
        prefill_tokens = pre_tok
    else:
        prefill_tokens = np.where(np.isfinite(pre_tok), pre_tok, sums.list_prefill_tokens)
    phase = np.where(prefill_tokens <= 0, "decode", np.where(prefill_tokens >= tokens, "prefill", "mixed"))
    out = pd.DataFrame(
        {
            "step_id": steps.column("step_id").to_numpy(),
            "start_ns": start,
            "end_ns": end,
            "phase": phase,
            "tokens": tokens,
            "seqs": seqs,
            "prefill_tokens": prefill_tokens,
            "time_s": time_ns / 1e9,
        },
        copy=False,
    )
    if shape is None:
        for col in ("flops", "bytes", "achieved_flops_per_s", "achieved_bytes_per_s", "arithmetic_intensity"):
            out[col] = np.nan
        out["bound"] = None
        return out
    flops, nbytes = step_costs(shape, tokens, seqs, sum_ctx, sum_qc)
    # The prefill part of a mixed step: 1 - (modelled time of its decode rows alone) / (modelled time of the step).
    d_flops, d_bytes = step_costs(shape, d_tok, d_seqs, d_ctx, d_qc)
    pf = peaks.peak_flops or 0.0
    pb = peaks.peak_bandwidth_bytes_per_s or 0.0
    if pf > 0 and pb > 0:
        full_t = np.maximum(flops / pf, nbytes / pb)
        out["model_time_s"] = full_t
        dec_t = np.where(d_seqs > 0, np.maximum(d_flops / pf, d_bytes / pb), 0.0)
        out["prefill_time_frac"] = np.where(
            prefill_tokens > 0, np.clip(1 - dec_t / np.where(full_t > 0, full_t, 1), 0, 1), 0.0
        )
        # The decode rows alone sit above the ridge point: their roofline time is compute time.
        out["decode_compute_bound"] = (d_seqs > 0) & (d_flops / pf > d_bytes / pb)
    else:
        out["model_time_s"] = np.nan
        out["prefill_time_frac"] = np.where(tokens > 0, prefill_tokens / np.where(tokens > 0, tokens, 1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["flops"] = flops
        out["bytes"] = nbytes
        secs = time_ns / 1e9
        out["achieved_flops_per_s"] = np.where(secs > 0, flops / secs, np.nan)
        out["achieved_bytes_per_s"] = np.where(secs > 0, nbytes / secs, np.nan)
        out["arithmetic_intensity"] = flops / nbytes
        # The fraction of its roofline speed the step reached (1 = at the roof).
        out["roof_efficiency"] = np.where(secs > 0, out["model_time_s"].to_numpy() / secs, np.nan)
    ridge = peaks.ridge_point
    out["bound"] = (
        None if ridge is None else np.where(out["arithmetic_intensity"].to_numpy() >= ridge, "compute", "memory")
    )
    return out


def roofline_points(per_step: pd.DataFrame, peaks: DevicePeaks) -> list[RooflinePoint]:
    """Aggregate roofline positions for prefill, decode, mixed and all steps.

    The aggregate rates are summed FLOPs and bytes over summed step time, so a few steps stalled
    for hundreds of milliseconds (a CPU shared with other processes, a host hiccup) pull them far
    below what a typical step reaches; ``step_bytes_per_s_p50`` (the median step's achieved
    bytes/s, every step counted once) and its fraction of peak say whether the steps themselves
    run near the roofline, and ``near_roof_fraction`` is the fraction of the phase's step time in
    steps at or above :data:`ROOF_NEAR` of their roofline.
    """
    points = []
    if "flops" not in per_step or per_step.empty:
        return points
    for phase in ("prefill", "decode", "mixed", "all"):
        sel = per_step if phase == "all" else per_step[per_step["phase"] == phase]
        if sel.empty:
            continue
        flops, nbytes, secs = float(sel["flops"].sum()), float(sel["bytes"].sum()), float(sel["time_s"].sum())
        if not np.isfinite(flops):
            continue
        af = flops / secs if secs > 0 else None
        ab = nbytes / secs if secs > 0 else None
        ai = flops / nbytes if nbytes > 0 else None
        ridge = peaks.ridge_point
        step_t = sel["time_s"].to_numpy(dtype=float)
        step_bw = sel["achieved_bytes_per_s"].to_numpy(dtype=float)
        step_bw = step_bw[np.isfinite(step_bw)]
        bw_p50 = float(np.median(step_bw)) if len(step_bw) else None
        near = None
        if "roof_efficiency" in sel:
            eff = sel["roof_efficiency"].to_numpy(dtype=float)
            ok = np.isfinite(eff) & np.isfinite(step_t)
            if ok.any() and step_t[ok].sum() > 0:
                near = float(step_t[ok & (eff >= ROOF_NEAR)].sum() / step_t[ok].sum())
        points.append(
            RooflinePoint(
                phase=phase,
                steps=len(sel),
                flops=flops,
                bytes=nbytes,
                time_s=secs,
                achieved_flops_per_s=af,
                achieved_bytes_per_s=ab,
                arithmetic_intensity=ai,
                ridge_point=ridge,
                bound=None if ridge is None or ai is None else ("compute" if ai >= ridge else "memory"),
                flops_utilization=af / peaks.peak_flops if af is not None and peaks.peak_flops else None,
                bandwidth_utilization=ab / peaks.peak_bandwidth_bytes_per_s
                if ab is not None and peaks.peak_bandwidth_bytes_per_s
                else None,
                step_bytes_per_s_p50=bw_p50,
                step_bandwidth_utilization_p50=bw_p50 / peaks.peak_bandwidth_bytes_per_s
                if bw_p50 is not None and peaks.peak_bandwidth_bytes_per_s
                else None,
                near_roof_fraction=near,
            )
        )
    return points
