"""One vLLM ``/metrics`` page -> the samples columns collect keeps (a page vLLM 0.32 served)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bottleneck_map.ingest.vllm_series import ENGINE_SERIES, ExpositionError, promql, row_from_exposition
from bottleneck_map.schema import SAMPLES

PAGE = (Path(__file__).parent / "data" / "vllm-0.32-metrics.txt").read_text()


def test_every_series_lands_in_a_samples_column():
    columns = set(SAMPLES.names)
    assert {e.column for e in ENGINE_SERIES} <= columns


def test_a_real_page_gives_counters_gauges_histograms_and_cache_config():
    page = row_from_exposition(PAGE)
    c = page.columns
    # the page was taken after one 3-token prompt generated 16 tokens in 16 engine steps
    assert c["engine_steps_total"] == 16
    assert c["engine_step_tokens_total"] == 19
    assert c["prompt_tokens_total"] == 3 and c["generation_tokens_total"] == 16
    assert c["requests_finished_total"] == 1  # summed over finish reasons
    assert c["num_requests_waiting_capacity"] == 0 and c["num_requests_waiting"] == 0
    assert c["itl_count_total"] == 15
    assert c["request_decode_seconds_total"] == pytest.approx(0.2239, abs=1e-4)
    assert page.itl_bounds_s[:3] == (0.01, 0.025, 0.05)
    assert len(page.itl_buckets) == len(page.itl_bounds_s) + 1  # the +Inf total last
    assert page.itl_buckets[-1] == 15
    assert page.cache_config["num_gpu_blocks"] == "2048" and page.cache_config["block_size"] == "32"
    assert page.model_names == ("default",)


def test_engines_are_summed_and_ratios_averaged():
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 3',
            'vllm:num_requests_running{engine="1",model_name="m"} 4',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7',
            "# TYPE vllm:gpu_prefix_cache_hits counter",
            'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 11',
            "",
        ]
    )
    c = row_from_exposition(text).columns
    assert c["num_requests_running"] == 7
    assert c["kv_cache_usage_ratio"] == pytest.approx(0.6)
    assert c["prefix_cache_hits_total"] == 11  # the older name still counts
    assert "num_requests_waiting" not in c  # absent series stay absent


def test_a_page_that_is_not_exposition_is_a_clear_error():
    with pytest.raises(ExpositionError, match="not Prometheus text exposition"):
        row_from_exposition('vllm:num_requests_running{engine="0" 3\n')


def test_promql_keeps_label_filters_and_older_names():
    by = {e.column: e for e in ENGINE_SERIES}
    assert promql(by["num_requests_waiting_capacity"]) == (
        'sum by (instance) (vllm:num_requests_waiting_by_reason{reason="capacity"})'
    )
    assert promql(by["kv_cache_usage_ratio"]) == (
        "avg by (instance) (vllm:kv_cache_usage_perc) or avg by (instance) (vllm:gpu_cache_usage_perc)"
    )
