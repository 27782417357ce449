"""One request's failure inside a step fails that request alone: it finishes with reason ``error``,
its KV blocks are freed, and the requests batched with it go on to the same tokens they get alone.
Shutting the engine down ends every unfinished request, so each one a step names has its record."""

from __future__ import annotations

import math

from bottleneck_map.embedded_engine.core.sequence import SamplingParams
from bottleneck_map.embedded_engine.core.tracing import TraceSink


class RecordingSink(TraceSink):
    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, str | None] = {}
        self.step_ids: set[str] = set()

    @property
    def enabled(self) -> bool:
        return True

    def request(self, seq) -> None:
        self.requests[seq.request_id] = seq.finish_reason

    def step(self, row) -> None:
        self.step_ids.update(row["request_ids"])


def _unsampleable() -> SamplingParams:
    """Parameters the API refuses, set past SamplingParams' own checks (as a future bug might):
    a NaN temperature makes every probability NaN, which torch.multinomial refuses."""
    params = SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True)
    object.__setattr__(params, "temperature", math.nan)
    return params


def test_a_request_whose_sampling_fails_ends_alone(make_engine, make_prompts):
    prompts = make_prompts(3, [12, 30, 7])
    greedy = SamplingParams(max_tokens=8, ignore_eos=True)
    alone = make_engine(num_kv_blocks=64).generate(prompts, greedy)

    sink = RecordingSink()
    engine = make_engine(num_kv_blocks=64, sink=sink)
    for i, p in enumerate(prompts):
        engine.add_request(f"ok{i}", p, greedy)
    engine.add_request("bad", prompts[0], _unsampleable())
    outputs = engine.run_until_done()

    bad = [o for o in outputs if o.request_id == "bad"]
    assert len(bad) == 1 and bad[0].finished and bad[0].finish_reason == "error"
    assert "sampling failed" in bad[0].error and bad[0].new_token_ids == []
    for i in range(3):
        tokens = [t for o in outputs if o.request_id == f"ok{i}" for t in o.new_token_ids]
        assert tokens == alone[i]
    assert sink.requests == {"ok0": "length", "ok1": "length", "ok2": "length", "bad": "error"}
    assert engine.num_requests_running == 0 and engine.num_requests_waiting == 0
    assert engine.block_manager.num_used == 0
    assert engine.stats.num_steps > 1  # the engine kept stepping after the failure


def test_a_failing_output_callback_does_not_stop_the_step(make_engine, make_prompts):
    engine = make_engine(num_kv_blocks=64)
    seen = []

    def broken(out):
        raise RuntimeError("consumer went away")

    p1, p2 = make_prompts(2, [10])
    engine.add_request("broken", p1, SamplingParams(max_tokens=4, ignore_eos=True), on_output=broken)
    engine.add_request("fine", p2, SamplingParams(max_tokens=4, ignore_eos=True), on_output=seen.append)
    engine.run_until_done()
    assert sum(len(o.new_token_ids) for o in seen) == 4 and seen[-1].finish_reason == "length"
    assert engine.block_manager.num_used == 0


def test_close_ends_unfinished_requests_so_every_stepped_request_has_a_record(make_engine, make_prompts):
    sink = RecordingSink()
    engine = make_engine(num_kv_blocks=64, max_num_seqs=2, sink=sink)
    for i, p in enumerate(make_prompts(4, [9])):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    engine.add_request("queued", make_prompts(1, [5])[0], SamplingParams(max_tokens=5))
    assert engine.num_requests_running == 2
    engine.close()
    assert sink.step_ids <= set(sink.requests)
    assert sink.requests == {"r0": "abort", "r1": "abort", "r2": "abort", "r3": "abort", "queued": "abort"}
    assert engine.block_manager.num_used == 0 and not engine.has_unfinished()
