"""Row builders shared by tests: complete, consistent bundle rows."""

from __future__ import annotations


def request_row(i: int, t0: int = 1_000_000_000, **over) -> dict:
    """A complete, consistent request row whose events are 1 ms apart."""
    ms = 1_000_000
    base = t0 + i * 10 * ms
    row = {
        "request_id": f"req-{i}",
        "workload_class": "chat",
        "finish_reason": "length",
        "prompt_tokens": 32,
        "output_tokens": 4,
        "max_tokens": 4,
        "cached_prompt_tokens": 0,
        "arrival_ns": base,
        "tokenize_start_ns": base,
        "tokenize_end_ns": base + ms,
        "queued_ns": base + ms,
        "first_scheduled_ns": base + 2 * ms,
        "first_token_ns": base + 3 * ms,
        "finished_ns": base + 6 * ms,
        "first_byte_ns": base + 3 * ms,
        "last_byte_ns": base + 7 * ms,
        "scheduled_ns": [base + 2 * ms],
        "token_ns": [base + 3 * ms, base + 4 * ms, base + 5 * ms, base + 6 * ms],
        "delivered_ns": [base + 3 * ms, base + 7 * ms],
    }
    row.update(over)
    return row


def step_row(i: int, request_ids: list[str], t0: int = 1_000_000_000, **over) -> dict:
    ms = 1_000_000
    row = {
        "step_id": i,
        "start_ns": t0 + i * ms,
        "end_ns": t0 + i * ms + ms // 2,
        "forward_ns": ms // 3,
        "num_decode_seqs": len(request_ids),
        "request_ids": request_ids,
        "query_lens": [1] * len(request_ids),
        "context_lens": [33] * len(request_ids),
        "is_prefill": [False] * len(request_ids),
    }
    row.update(over)
    return row


def span_request_row(i: int, instance: str, arrival_ns: int, queue_ns: int) -> dict:
    """A request as `collect` records it from a span (no steps, no tokens): queued 2 ms after
    arrival, scheduled ``queue_ns`` later, first token 50 ms and finish 250 ms after scheduling."""
    ms = 1_000_000
    sched = arrival_ns + 2 * ms + queue_ns
    return {
        "request_id": f"{instance}-{i}",
        "instance": instance,
        "finish_reason": "length",
        "prompt_tokens": 64,
        "output_tokens": 21,
        "arrival_ns": arrival_ns,
        "queued_ns": arrival_ns + 2 * ms,
        "first_scheduled_ns": sched,
        "first_token_ns": sched + 50 * ms,
        "finished_ns": sched + 250 * ms,
    }


def otlp_span(i: int, t0: int = 1_763_900_000_000_000_000, **attrs) -> dict:
    """One vLLM `llm_request` span in OTLP/JSON (ids from ``i``; ``attrs`` add or replace attributes)."""
    s = 1_000_000_000
    values = {
        "gen_ai.request.id": {"stringValue": f"cmpl-{i:04d}"},
        "gen_ai.latency.time_to_first_token": {"doubleValue": 0.25},
        "gen_ai.latency.e2e": {"doubleValue": 1.5},
        "gen_ai.latency.time_in_queue": {"doubleValue": 0.1},
        "gen_ai.latency.time_in_model_prefill": {"doubleValue": 0.05},
        "gen_ai.usage.prompt_tokens": {"intValue": "100"},
        "gen_ai.usage.completion_tokens": {"intValue": "32"},
        **attrs,
    }
    return {
        "traceId": f"{i + 1:032x}",
        "spanId": f"{i + 1:016x}",
        "name": "llm_request",
        "startTimeUnixNano": str(t0 + i * s),
        "endTimeUnixNano": str(t0 + i * s + 2 * s),
        "attributes": [{"key": k, "value": v} for k, v in values.items()],
    }


def otlp_json(spans: list[dict], instance: str = "vllm-0:8000") -> dict:
    """An OTLP/JSON export request holding ``spans`` from one instance."""
    resource = {"attributes": [{"key": "service.instance.id", "value": {"stringValue": instance}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
