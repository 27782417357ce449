"""Stage decomposition: every request's stages add up to its end-to-end latency."""

from __future__ import annotations

import numpy as np
import pytest
from analyzer_synth import MS

from bottleneck_map.analyzer import request_stages
from bottleneck_map.analyzer.result import STAGES
from bottleneck_map.bundle import BundleWriter, new_meta


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_kv_blocks": 24, "rate_per_s": 80, "prompt_tokens": 48, "output_tokens": 40},  # recompute preemption
        {
            "num_kv_blocks": 40,
            "max_num_seqs": 8,
            "rate_per_s": 40,
            "output_tokens": 40,
            "preemption_mode": "swap",
            "swap_ns_per_block": 5 * MS,
        },
        {"max_num_seqs": 2, "rate_per_s": 60, "tokenizer_workers": 1, "tokenize_ns": 20 * MS},
    ],
    ids=["plain", "recompute", "swap", "queued"],
)
def test_stages_add_up_to_e2e_within_one_percent(sim_bundle, kw):
    st = request_stages(sim_bundle(**kw))
    assert st["complete"].all()
    total = st[list(STAGES)].sum(axis=1).to_numpy()
    e2e = st["e2e_ns"].to_numpy()
    assert (st[list(STAGES)].to_numpy() >= 0).all()
    np.testing.assert_allclose(total, e2e, rtol=0.01)


def test_preemptions_show_as_requeue_and_recompute(sim_bundle):
    st = request_stages(sim_bundle(num_kv_blocks=24, rate_per_s=80, prompt_tokens=48, output_tokens=40))
    pre = st[st["preemptions"] > 0]
    assert len(pre) > 0
    assert (pre["requeue"] > 0).all()
    assert pre["recompute"].sum() > 0
    assert st.loc[st["preemptions"] == 0, "recompute"].sum() == 0


def test_swap_time_is_its_own_stage(sim_bundle):
    st = request_stages(
        sim_bundle(
            num_kv_blocks=40,
            max_num_seqs=8,
            rate_per_s=40,
            prompt_tokens=48,
            output_tokens=40,
            preemption_mode="swap",
            swap_ns_per_block=5 * MS,
        )
    )
    assert st["swap"].sum() > 0
    assert st["recompute"].sum() == 0


def _one_request_bundle(path):
    """One request with hand-placed events and three steps (times in ms from t=1000 s)."""
    t = 1_000_000_000_000
    ms = 1_000_000
    w = BundleWriter(path, new_meta("test", engine={"max_num_seqs": 4}))
    w.add_request(
        {
            "request_id": "a",
            "arrival_ns": t,
            "tokenize_start_ns": t + 1 * ms,
            "tokenize_end_ns": t + 3 * ms,
            "queued_ns": t + 3 * ms,
            "first_scheduled_ns": t + 10 * ms,
            "first_token_ns": t + 20 * ms,
            "finished_ns": t + 50 * ms,
            "first_byte_ns": t + 21 * ms,
            "last_byte_ns": t + 55 * ms,
            "preempted_ns": [t + 30 * ms],
            "resumed_ns": [t + 38 * ms],
            "output_tokens": 3,
            "prompt_tokens": 8,
            "token_ns": [t + 20 * ms, t + 29 * ms, t + 50 * ms],
            "delivered_ns": [t + 21 * ms, t + 30 * ms, t + 55 * ms],
        }
    )
    # prefill step 10..20 ms; another sequence's step 22..24 without "a"; decode 25..29; decode 45..50
    for i, (s, e, ids, q, pf) in enumerate(
        [
            (10, 20, ["a"], [8], [True]),
            (22, 24, ["b"], [1], [False]),
            (25, 29, ["a"], [1], [False]),
            (45, 50, ["a"], [1], [False]),
        ]
    ):
        w.add_step(
            {
                "step_id": i,
                "start_ns": t + s * ms,
                "end_ns": t + e * ms,
                "request_ids": ids,
                "query_lens": q,
                "context_lens": q,
                "is_prefill": pf,
            }
        )
    w.add_request(
        {
            "request_id": "b",
            "arrival_ns": t + 21 * ms,
            "first_token_ns": t + 24 * ms,
            "finished_ns": t + 24 * ms,
            "output_tokens": 1,
        }
    )
    w.close()
    return path


def test_stage_values_of_a_hand_built_request(tmp_path):
    st = request_stages(_one_request_bundle(tmp_path / "one")).set_index("request_id")
    a = st.loc["a", [*STAGES, "e2e_ns"]].astype(float) / 1e6  # ms
    assert a["receive"] == 1 and a["tokenize"] == 2 and a["queue"] == 7
    assert a["prefill_compute"] == 10 and a["prefill_wait"] == 0
    assert a["requeue"] == 8  # preempted 30 -> resumed 38
    assert a["decode_compute"] == 9  # steps 25..29 and 45..50
    assert a["decode_wait"] == 30 - 8 - 9
    assert a["streaming"] == 5
    assert a["e2e_ns"] == 55
