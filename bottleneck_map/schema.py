"""Arrow schemas of the trace bundle tables, defined once and versioned.

Every field is documented with its unit in ``docs/trace-format.md``. Times are
int64 nanoseconds on the clock that ``meta.json`` describes; durations are int64
nanoseconds. A field that a producer cannot measure is null, never zero.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

TABLES = ("requests", "steps", "samples")

_ns = pa.int64()
_i32 = pa.int32()
_f64 = pa.float64()


def _f(name: str, typ: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


REQUESTS = pa.schema(
    [
        _f("request_id", pa.string(), False),
        _f("instance", pa.string()),
        _f("workload_class", pa.string()),
        _f("trace_id", pa.string()),
        _f("finish_reason", pa.string()),
        _f("error", pa.string()),
        _f("prompt_tokens", _i32),
        _f("output_tokens", _i32),
        _f("max_tokens", _i32),
        _f("cached_prompt_tokens", _i32),
        _f("recomputed_tokens", _i32),
        _f("swapped_bytes", pa.int64()),
        _f("arrival_ns", _ns, False),
        _f("tokenize_start_ns", _ns),
        _f("tokenize_end_ns", _ns),
        _f("queued_ns", _ns),
        _f("first_scheduled_ns", _ns),
        _f("first_token_ns", _ns),
        _f("finished_ns", _ns),
        _f("first_byte_ns", _ns),
        _f("last_byte_ns", _ns),
        _f("scheduled_ns", pa.list_(_ns)),
        _f("preempted_ns", pa.list_(_ns)),
        _f("resumed_ns", pa.list_(_ns)),
        _f("token_ns", pa.list_(_ns)),
        _f("delivered_ns", pa.list_(_ns)),
        _f("prompt_text", pa.string()),
        _f("output_text", pa.string()),
    ],
    metadata={"bottleneck_map.table": "requests", "bottleneck_map.schema_version": str(SCHEMA_VERSION)},
)

STEPS = pa.schema(
    [
        _f("step_id", pa.int64(), False),
        _f("instance", pa.string()),
        _f("start_ns", _ns, False),
        _f("end_ns", _ns, False),
        _f("schedule_ns", _ns),
        _f("prepare_ns", _ns),
        _f("forward_ns", _ns),
        _f("sample_ns", _ns),
        _f("postprocess_ns", _ns),
        _f("swap_ns", _ns),
        _f("num_prefill_tokens", _i32),
        _f("num_prefill_seqs", _i32),
        _f("num_decode_seqs", _i32),
        _f("num_running", _i32),
        _f("num_waiting", _i32),
        _f("num_swapped", _i32),
        _f("num_preempted", _i32),
        _f("kv_blocks_used", _i32),
        _f("kv_blocks_free", _i32),
        _f("swap_out_bytes", pa.int64()),
        _f("swap_in_bytes", pa.int64()),
        _f("request_ids", pa.list_(pa.string())),
        _f("query_lens", pa.list_(_i32)),
        _f("context_lens", pa.list_(_i32)),
        _f("is_prefill", pa.list_(pa.bool_())),
    ],
    metadata={"bottleneck_map.table": "steps", "bottleneck_map.schema_version": str(SCHEMA_VERSION)},
)

SAMPLES = pa.schema(
    [
        _f("ts_ns", _ns, False),
        _f("source", pa.string(), False),
        _f("device", pa.string()),
        _f("instance", pa.string()),
        # GPU (NVML)
        _f("gpu_util_ratio", _f64),
        _f("mem_util_ratio", _f64),
        _f("gpu_mem_used_bytes", _f64),
        _f("gpu_mem_total_bytes", _f64),
        _f("pcie_tx_bytes_per_s", _f64),
        _f("pcie_rx_bytes_per_s", _f64),
        _f("power_w", _f64),
        _f("power_limit_w", _f64),
        _f("energy_j", _f64),
        _f("temperature_c", _f64),
        _f("sm_clock_hz", _f64),
        _f("sm_clock_max_hz", _f64),
        _f("mem_clock_hz", _f64),
        _f("mem_clock_max_hz", _f64),
        _f("clock_event_reasons", pa.int64()),
        # GPU (GPM, Hopper and newer)
        _f("gpm_sm_util_ratio", _f64),
        _f("gpm_sm_occupancy_ratio", _f64),
        _f("gpm_dram_bw_util_ratio", _f64),
        _f("gpm_tensor_active_ratio", _f64),
        _f("gpm_pcie_tx_bytes_per_s", _f64),
        _f("gpm_pcie_rx_bytes_per_s", _f64),
        # watched process on the GPU
        _f("proc_gpu_mem_bytes", _f64),
        _f("proc_gpu_util_ratio", _f64),
        # host (psutil)
        _f("cpu_util_ratio", _f64),
        _f("cpu_util_max_core_ratio", _f64),
        _f("cpu_util_per_core", pa.list_(pa.float32())),
        _f("load1", _f64),
        _f("host_mem_used_bytes", _f64),
        _f("host_mem_total_bytes", _f64),
        _f("host_swap_used_bytes", _f64),
        _f("net_rx_bytes_total", _f64),
        _f("net_tx_bytes_total", _f64),
        _f("net_rx_packets_total", _f64),
        _f("net_tx_packets_total", _f64),
        _f("disk_read_bytes_total", _f64),
        _f("disk_write_bytes_total", _f64),
        # watched process on the host
        _f("proc_cpu_ratio", _f64),
        _f("proc_num_threads", _f64),
        _f("proc_rss_bytes", _f64),
        _f("proc_ctx_switches_voluntary_total", _f64),
        _f("proc_ctx_switches_involuntary_total", _f64),
        # serving engine (Prometheus ingest of vLLM-compatible series)
        _f("num_requests_running", _f64),
        _f("num_requests_waiting", _f64),
        _f("kv_cache_usage_ratio", _f64),
        _f("num_preemptions_total", _f64),
        _f("prompt_tokens_total", _f64),
        _f("generation_tokens_total", _f64),
        _f("prefix_cache_queries_total", _f64),
        _f("prefix_cache_hits_total", _f64),
        # serving engine, further vLLM series (collect --scrape / --prometheus; raw counter values)
        _f("num_requests_waiting_capacity", _f64),
        _f("num_requests_waiting_deferred", _f64),
        _f("engine_steps_total", _f64),
        _f("engine_step_tokens_total", _f64),
        _f("prompt_tokens_cached_total", _f64),
        _f("prefill_computed_tokens_total", _f64),
        _f("estimated_flops_total", _f64),
        _f("estimated_read_bytes_total", _f64),
        _f("estimated_write_bytes_total", _f64),
        _f("requests_finished_total", _f64),
        _f("request_queue_seconds_total", _f64),
        _f("request_prefill_seconds_total", _f64),
        _f("request_decode_seconds_total", _f64),
        _f("itl_seconds_total", _f64),
        _f("itl_count_total", _f64),
        _f("itl_bucket_counts", pa.list_(pa.float64())),
    ],
    metadata={"bottleneck_map.table": "samples", "bottleneck_map.schema_version": str(SCHEMA_VERSION)},
)

SCHEMAS: dict[str, pa.Schema] = {"requests": REQUESTS, "steps": STEPS, "samples": SAMPLES}

# NVML clock-event reason bits (nvmlClocksEventReason*), decoded by name.
CLOCK_EVENT_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
    "display_clock_setting": 0x100,
}
THROTTLE_FLAGS = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


def schema_for(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise ValueError(f"unknown bundle table {table!r}; expected one of {', '.join(TABLES)}") from None
