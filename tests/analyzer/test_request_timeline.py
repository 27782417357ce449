"""request_timeline: one request's lifecycle, preempted spans and member steps, for waterfalls."""

from __future__ import annotations

import numpy as np

from bottleneck_map.analyzer import STAGES, analyze_full, request_timeline
from bottleneck_map.bundle import read_bundle

KV_STARVED = dict(n_requests=40, rate_per_s=80, num_kv_blocks=24, prompt_tokens=48, output_tokens=40)


def test_timeline_of_a_preempted_request(sim_bundle):
    path = sim_bundle(**KV_STARVED)
    a = analyze_full(path)
    st = a.stages
    i = int(st["preemptions"].to_numpy().argmax())
    rid = str(st["request_id"].iloc[i])
    assert st["preemptions"].iloc[i] > 0
    tl = request_timeline(a, rid)
    assert tl is not None and tl.request_id == rid and tl.complete

    b = tl.bounds
    assert [b[f"t{k}"] for k in range(7)] == sorted(b[f"t{k}"] for k in range(7))
    life = tl.intervals[tl.intervals["stage"] != "preempted"]
    assert list(life["stage"])[:1] == ["receive"] or list(life["stage"])[0] in ("tokenize", "queue")
    assert life["start_ns"].iloc[0] == b["t0"] and life["end_ns"].iloc[-1] == b["t6"]
    assert (life["start_ns"].to_numpy()[1:] == life["end_ns"].to_numpy()[:-1]).all(), "contiguous"

    req = read_bundle(path).requests.set_index("request_id").loc[rid]
    pre = [int(x) for x in req["preempted_ns"]]
    spans = tl.intervals[tl.intervals["stage"] == "preempted"]
    assert list(spans["start_ns"]) == pre
    resumed = [int(x) for x in req["resumed_ns"]]
    assert list(spans["end_ns"])[: len(resumed)] == resumed
    assert int((spans["end_ns"] - spans["start_ns"]).sum()) == int(st["requeue"].iloc[i])

    steps = read_bundle(path).steps
    member = steps[steps["request_ids"].apply(lambda ids: rid in list(ids))]
    assert list(tl.steps["step_id"]) == list(member.sort_values("start_ns")["step_id"])
    assert list(tl.steps["step_index"]) == sorted(member.index)
    assert (tl.steps["batch_size"].to_numpy() == member["request_ids"].apply(len).to_numpy()).all()
    assert tl.steps["is_prefill"].sum() >= 2, "the prompt, and its recompute after preemption"
    assert len(tl.steps) >= int(req["output_tokens"]), "every step that carried it produced a token"
    assert tl.stages_ns == {s: int(st[s].iloc[i]) for s in STAGES}
    assert sum(tl.stages_ns.values()) == b["t6"] - b["t0"]


def test_path_and_analysis_agree_and_unknown_ids(sim_bundle):
    path = sim_bundle(n_requests=10, rate_per_s=10)
    a = analyze_full(path)
    rid = str(a.stages["request_id"].iloc[3])
    by_path, by_analysis = request_timeline(path, rid), request_timeline(a, rid)
    assert by_path.bounds == by_analysis.bounds and by_path.stages_ns == by_analysis.stages_ns
    assert by_path.steps.equals(by_analysis.steps) and len(by_path.steps) > 0
    assert request_timeline(a, "no-such-request") is None


def test_timeline_without_steps(sim_bundle):
    path = sim_bundle(with_steps=False, n_requests=10, rate_per_s=10)
    a = analyze_full(path)
    rid = str(a.stages["request_id"].iloc[0])
    tl = request_timeline(a, rid)
    assert tl is not None and tl.steps.empty
    assert set(tl.intervals["stage"]) >= {"prefill", "decode"}
    assert np.isclose(sum(tl.stages_ns.values()), tl.bounds["t6"] - tl.bounds["t0"])
