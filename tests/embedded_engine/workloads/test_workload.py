import json
import math

import numpy as np
import pytest

from bottleneck_map.embedded_engine.workloads.workload import (
    LengthDist,
    WorkloadSpec,
    arrival_times,
    build_workload,
    default_mix,
    load_jsonl,
    make_text,
    word_pool,
)


def _gaps(kind, rate, burstiness=1.0, n=20000):
    return np.diff(arrival_times(kind, n, rate, burstiness, np.random.default_rng(0)))


def test_poisson_gaps_are_exponential_at_the_rate():
    g = _gaps("poisson", 5.0)
    assert g.mean() == pytest.approx(0.2, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)  # coefficient of variation 1


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_keeps_the_rate_and_changes_the_variance(burstiness):
    g = _gaps("gamma", 5.0, burstiness)
    assert g.mean() == pytest.approx(0.2, rel=0.04)
    assert g.std() / g.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.06)


def test_constant_and_burst_arrivals():
    assert np.allclose(_gaps("constant", 4.0, n=10), 0.25)
    assert (arrival_times("burst", 10, 4.0, 1.0, np.random.default_rng(0)) == 0).all()
    assert (arrival_times("poisson", 10, math.inf, 1.0, np.random.default_rng(0)) == 0).all()


@pytest.mark.parametrize(
    ("dist", "mean", "std"),
    [
        (LengthDist("fixed", 64), 64, 0),
        (LengthDist("uniform", 32, 512), 272, 480 / math.sqrt(12)),
        (LengthDist("normal", 256, 40), 256, 40),
    ],
)
def test_length_distributions(dist, mean, std):
    x = dist.sample(np.random.default_rng(0), 20000)
    assert x.mean() == pytest.approx(mean, rel=0.02, abs=0.6)
    assert x.std() == pytest.approx(std, rel=0.05, abs=0.6)
    assert x.min() >= 1


def test_lognormal_median_and_clipping():
    x = LengthDist("lognormal", 100, 0.8, lo=10, hi=300).sample(np.random.default_rng(0), 20000)
    assert np.median(x) == pytest.approx(100, rel=0.03)
    assert x.min() >= 10 and x.max() <= 300


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128", LengthDist("fixed", 128)),
        ("uniform:32:512", LengthDist("uniform", 32, 512)),
        ("lognormal:100:0.5", LengthDist("lognormal", 100, 0.5)),
    ],
)
def test_parse_length(text, expected):
    assert LengthDist.parse(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "uniform:10", "uniform:50:10", "zipf:1:2", "0", "normal:10:-1"])
def test_parse_length_rejects(text):
    with pytest.raises(ValueError):
        LengthDist.parse(text)


@pytest.mark.parametrize("text", ["abc", "uniform:a:b", "1:2"])
def test_a_malformed_length_names_the_accepted_forms(text):
    with pytest.raises(ValueError, match="expected N, uniform:MIN:MAX") as err:
        LengthDist.parse(text)
    assert "convert" not in str(err.value)


def test_prompts_are_real_text_of_about_the_target_length(tiny):
    words = word_pool(tiny.tokenizer)
    assert len(words) > 100
    rng = np.random.default_rng(0)
    for n in (10, 100, 300):
        ids = tiny.tokenizer.encode(make_text(n, rng, words))
        assert abs(len(ids) - n) <= max(2, n // 20)


def test_mixed_default_has_classes_and_shared_prefix_groups(tiny):
    spec = WorkloadSpec(num_requests=400, request_rate=10.0, seed=3)
    reqs = build_workload(spec, word_pool(tiny.tokenizer))
    classes = {c.name for c in default_mix()}
    assert {r.workload_class for r in reqs} == classes
    share = {c: sum(r.workload_class == c for r in reqs) / 400 for c in classes}
    assert share["chat"] == pytest.approx(0.5, abs=0.08)
    agentic = [r for r in reqs if r.workload_class == "agentic"]
    groups = {r.prefix_group for r in agentic}
    assert len(groups) == 2
    by_group = [r.prompt_text for r in agentic if r.prefix_group == sorted(groups)[0]]
    prefix = by_group[0].split("\n")[0]
    assert all(t.startswith(prefix + "\n") for t in by_group)
    rag = [len(tiny.tokenizer.encode(r.prompt_text)) for r in reqs if r.workload_class == "rag"]
    chat = [len(tiny.tokenizer.encode(r.prompt_text)) for r in reqs if r.workload_class == "chat"]
    assert np.mean(rag) > 3 * np.mean(chat)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))


def test_same_seed_same_workload(tiny):
    words = word_pool(tiny.tokenizer)
    a = build_workload(WorkloadSpec(num_requests=20, seed=5), words)
    b = build_workload(WorkloadSpec(num_requests=20, seed=5), words)
    assert a == b


def test_replay_jsonl(tmp_path):
    p = tmp_path / "w.jsonl"
    rows = [
        {"arrival_s": 10.5, "prompt": "hello there", "max_tokens": 5, "class": "chat"},
        {"timestamp": 10.0, "prompt_tokens": 40, "max_tokens": 7},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reqs = load_jsonl(p)
    assert [r.arrival_s for r in reqs] == [0.0, 0.5]
    assert reqs[0].workload_class == "replay" and reqs[0].max_tokens == 7 and len(reqs[0].prompt_text.split()) == 40
    assert reqs[1].prompt_text == "hello there" and reqs[1].workload_class == "chat"


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"prompt": "x", "max_tokens": 3}',
        '{"arrival_s": 0, "prompt": "x"}',
        '{"arrival_s": 0, "max_tokens": 2}',
        '{"arrival_s": 1, "prompt": "y", "max_tokens": 1, "request_id": "a"}',
    ],
)
def test_replay_rejects_bad_lines_naming_the_line(tmp_path, line):
    p = tmp_path / "w.jsonl"
    p.write_text('{"arrival_s": 0, "prompt": "ok", "max_tokens": 1, "request_id": "a"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"w.jsonl:2"):
        load_jsonl(p)


def test_burstiness_turns_poisson_into_gamma_and_meta_says_so():
    assert WorkloadSpec(burstiness=0.5).to_meta()["arrival"] == "gamma"
    assert WorkloadSpec().to_meta()["arrival"] == "poisson"
    assert WorkloadSpec(request_rate=math.inf).to_meta()["arrival"] == "burst"
    assert WorkloadSpec(arrival="constant", burstiness=3.0).to_meta()["arrival"] == "constant"


def test_runner_surfaces_a_front_end_failure_instead_of_hanging(make_engine):
    from bottleneck_map.embedded_engine.workloads.runner import run_workload
    from bottleneck_map.embedded_engine.workloads.workload import WorkloadRequest

    engine = make_engine(num_kv_blocks=16)
    dup = [WorkloadRequest("same", 0.0, "chat", 2, "hello there"), WorkloadRequest("same", 0.0, "chat", 2, "again")]
    with pytest.raises(ValueError, match="already in use"):
        run_workload(engine, dup)
