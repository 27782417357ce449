"""The BottleneckMap JSON document: versioned, strict JSON, and a lossless round trip."""

from __future__ import annotations

import json
import math

import pytest

from bottleneck_map.analyzer import MAP_SCHEMA_VERSION, BottleneckMap, analyze


def test_json_round_trip(sim_bundle):
    m = analyze(
        sim_bundle(num_kv_blocks=24, rate_per_s=80, prompt_tokens=48, output_tokens=40),
        slo={"ttft": 0.5},
        gpu_hour_cost=2.0,
    )
    text = m.to_json()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["schema_version"] == MAP_SCHEMA_VERSION
    back = BottleneckMap.from_json(text)
    assert back.to_dict() == doc
    assert back.top.cls == m.top.cls and back.top.evidence[0].text == m.top.evidence[0].text
    assert back.latency[0].ttft.p50 == m.latency[0].ttft.p50
    assert back.windows[0].scores == m.windows[0].scores


def test_no_nan_in_json(sim_bundle):
    doc = analyze(sim_bundle(with_steps=False)).to_dict()

    def walk(x):
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)


def test_other_schema_version_is_refused():
    with pytest.raises(ValueError, match="schema_version"):
        BottleneckMap.from_json(json.dumps({"schema_version": 999}))
