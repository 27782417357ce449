"""LLMEngine end to end on the built-in "tiny" model (CPU, float32)."""

import threading

import pytest

from bottleneck_map.embedded_engine.core.engine_config import ConfigError
from bottleneck_map.embedded_engine.core.sequence import SamplingParams

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def test_greedy_is_deterministic_and_batch_independent(make_engine, make_prompts):
    ps = make_prompts(6, [5, 23, 40, 70])
    batched = make_engine(num_kv_blocks=128).generate(ps, GREEDY)
    again = make_engine(num_kv_blocks=128).generate(ps, GREEDY)
    one_by_one = [make_engine(num_kv_blocks=128).generate([p], GREEDY)[0] for p in ps[:3]]
    assert batched == again
    assert batched[:3] == one_by_one
    assert all(len(o) == 12 for o in batched)


def test_seeded_sampling_is_reproducible(make_engine, make_prompts):
    ps = make_prompts(3, [9, 30])
    params = [SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=i, ignore_eos=True) for i in range(3)]
    a = make_engine(num_kv_blocks=64).generate(ps, params)
    b = make_engine(num_kv_blocks=64).generate(ps, params)
    assert a == b
    assert len({tuple(x) for x in a}) > 1


def test_prefix_caching_gives_identical_outputs_and_counts_hits(make_engine, make_prompts):
    prefix = make_prompts(1, [48], seed=3)[0]
    ps = [prefix + tail for tail in make_prompts(4, [7, 19], seed=4)]
    plain = make_engine(num_kv_blocks=128, enable_prefix_caching=False)
    cached = make_engine(num_kv_blocks=128)
    expected = [plain.generate([p], GREEDY)[0] for p in ps]
    got = [cached.generate([p], GREEDY)[0] for p in ps]
    assert got == expected
    assert cached.block_manager.prefix_hit_tokens == 3 * 48  # every later request reuses 3 full blocks
    assert plain.block_manager.prefix_hit_tokens == 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_under_few_blocks_completes_with_correct_outputs(make_engine, make_prompts, mode):
    ps = make_prompts(6, [40, 56])
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    roomy = make_engine(num_kv_blocks=256).generate(ps, params)
    tight = make_engine(num_kv_blocks=14, preemption_mode=mode, swap_space_gib=0.01, max_model_len=200)
    outs = tight.generate(ps, params)
    assert tight.stats.num_preemptions > 0
    assert outs == roomy
    if mode == "swap":
        assert tight.stats.swap_out_bytes > 0 and tight.stats.swap_in_bytes == tight.stats.swap_out_bytes


def test_prompt_longer_than_context_is_rejected_and_others_go_on(make_engine, make_prompts):
    eng = make_engine(num_kv_blocks=64, max_model_len=64)
    ok, too_long = make_prompts(2, [10, 80])
    eng.add_request("ok", ok, GREEDY)
    eng.add_request("long", too_long, GREEDY)
    outs = eng.run_until_done()
    final = {o.request_id: o for o in outs if o.finished}
    assert final["long"].finish_reason == "rejected" and "max_model_len 64" in final["long"].error
    assert final["ok"].finish_reason == "length" and final["ok"].num_output_tokens == 12
    assert eng.stats.num_rejected == 1


def test_abort_and_callbacks(make_engine, make_prompts):
    eng = make_engine(num_kv_blocks=64)
    seen = []
    a, b = make_prompts(2, [12])
    eng.add_request("a", a, SamplingParams(max_tokens=50, ignore_eos=True), on_output=seen.append)
    eng.add_request("b", b, SamplingParams(max_tokens=3, ignore_eos=True))
    eng.step()
    eng.step()
    eng.abort("a")
    outs = eng.run_until_done()
    assert any(o.request_id == "a" and o.finish_reason == "abort" for o in outs)
    assert seen[-1].finished and seen[-1].finish_reason == "abort"
    assert sum(len(o.new_token_ids) for o in seen) == 2
    assert eng.block_manager.num_used == 0  # finished and aborted requests returned their blocks


def test_submit_from_another_thread_while_stepping(make_engine, make_prompts):
    eng = make_engine(num_kv_blocks=128)
    ps = make_prompts(8, [6, 20])
    done = []

    def submit():
        for i, p in enumerate(ps):
            eng.add_request(f"t{i}", p, SamplingParams(max_tokens=5, ignore_eos=True))

    t = threading.Thread(target=submit)
    t.start()
    while t.is_alive() or eng.has_unfinished():
        if not eng.has_unfinished():
            eng.wait_for_work(0.01)
            continue
        done += [o.request_id for o in eng.step() if o.finished]
    t.join()
    assert sorted(done) == sorted(f"t{i}" for i in range(8))


def test_text_prompt_is_tokenized_and_stamped(make_engine):
    eng = make_engine(num_kv_blocks=64)
    eng.add_request("x", "hello world, a text prompt", GREEDY)
    seq_trace = eng._inbox[0].trace
    assert seq_trace.tokenize_start_ns <= seq_trace.tokenize_end_ns
    assert eng.run_until_done()[-1].finished


def test_duplicate_request_id_is_refused(make_engine):
    eng = make_engine(num_kv_blocks=64)
    eng.add_request("x", [5, 6, 7], GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request("x", [5, 6, 7], GREEDY)


def test_too_few_blocks_for_max_model_len_is_a_config_error(make_engine):
    with pytest.raises(ConfigError) as exc:
        make_engine(num_kv_blocks=2, max_model_len=100)
    assert exc.value.field == "num_kv_blocks"


def test_logprobs_come_with_each_token_when_asked(make_engine, make_prompts):
    eng = make_engine(num_kv_blocks=64)
    a, b = make_prompts(2, [9])
    eng.add_request("greedy", a, SamplingParams(max_tokens=5, ignore_eos=True, logprobs=3))
    eng.add_request("plain", b, SamplingParams(max_tokens=5, ignore_eos=True))
    eng.add_request("sampled", b, SamplingParams(max_tokens=5, ignore_eos=True, temperature=1.0, seed=3, logprobs=0))
    outs = eng.run_until_done()
    by = {}
    for o in outs:
        by.setdefault(o.request_id, []).append(o)
    greedy = [(t, lp) for o in by["greedy"] for t, lp in zip(o.new_token_ids, o.logprobs or [], strict=True)]
    assert len(greedy) == 5
    for token, (own, top) in greedy:
        assert len(top) == 3 and top[0][0] == token and own == top[0][1]  # greedy: the most likely token
        assert top[0][1] >= top[1][1] >= top[2][1] and own <= 0
    assert all(o.logprobs is None for o in by["plain"])
    sampled = [lp for o in by["sampled"] for lp in o.logprobs or []]
    assert len(sampled) == 5 and all(top == () and own <= 0 for own, top in sampled)
