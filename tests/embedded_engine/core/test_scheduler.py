"""Scheduler behaviour without a model: a fake step marks scheduled tokens computed and samples token 1."""

from bottleneck_map.embedded_engine.core.block_manager import BlockManager
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.scheduler import Scheduler
from bottleneck_map.embedded_engine.core.sequence import SequenceStatus


def _scheduler(num_blocks=64, block_size=4, **kw) -> Scheduler:
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_num_batched_tokens", 16)
    cfg = EngineConfig(block_size=block_size, num_kv_blocks=num_blocks, max_model_len=num_blocks * block_size, **kw)
    swap = 64 if cfg.preemption_mode == "swap" else 0
    return Scheduler(cfg, BlockManager(num_blocks, block_size, cfg.enable_prefix_caching, num_swap_blocks=swap))


def _fake_step(s: Scheduler):
    out = s.schedule()
    for item in out.scheduled:
        seq = item.seq
        seq.num_computed_tokens += item.num_tokens
        s.bm.register_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(1)
            if seq.num_output_tokens >= seq.params.max_tokens:
                s.finish(seq, SequenceStatus.FINISHED_LENGTH)
    return out


def test_token_budget_chunks_a_long_prompt():
    s = _scheduler()
    seq_factory_prompt = 40
    from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams, Sequence

    seq = Sequence("a", list(range(3, 3 + seq_factory_prompt)), SamplingParams(max_tokens=2), RequestTrace(0), 0)
    s.add(seq)
    lens = []
    while s.has_unfinished():
        out = _fake_step(s)
        lens.append([i.num_tokens for i in out.scheduled])
    assert lens == [[16], [16], [8], [1]]


def test_decodes_first_then_leftover_budget_to_prefill(make_seq):
    s = _scheduler()
    a, b = make_seq("a", 4, 0, max_tokens=10), make_seq("b", 4, 1, max_tokens=10, first_token=100)
    s.add(a)
    s.add(b)
    _fake_step(s)  # both prefills fit (8 tokens)
    c = make_seq("c", 40, 2, first_token=200)
    s.add(c)
    out = _fake_step(s)
    kinds = [(i.seq.request_id, i.num_tokens, i.is_prefill) for i in out.scheduled]
    assert kinds == [("a", 1, False), ("b", 1, False), ("c", 14, True)]
    assert out.num_batched_tokens == 16


def test_fcfs_and_max_num_seqs(make_seq):
    s = _scheduler(max_num_seqs=2)
    seqs = [make_seq(f"r{i}", 3, i, max_tokens=3, first_token=10 * i + 5) for i in range(4)]
    for q in seqs:
        s.add(q)
    out = _fake_step(s)
    assert [i.seq.request_id for i in out.scheduled] == ["r0", "r1"]
    assert [q.request_id for q in s.waiting] == ["r2", "r3"]
    order = []
    while s.has_unfinished():
        for i in _fake_step(s).scheduled:
            if i.is_prefill:
                order.append(i.seq.request_id)
    assert order == ["r2", "r3"]


def test_without_chunked_prefill_steps_are_all_prefill_or_all_decode(make_seq):
    s = _scheduler(num_blocks=16, chunked_prefill=False, max_num_batched_tokens=64)
    s.add(make_seq("a", 5, 0, max_tokens=4))
    _fake_step(s)
    s.add(make_seq("b", 30, 1, max_tokens=4, first_token=300))
    out = _fake_step(s)
    assert [(i.seq.request_id, i.num_tokens, i.is_prefill) for i in out.scheduled] == [("b", 30, True)]
    out = _fake_step(s)
    assert all(not i.is_prefill for i in out.scheduled) and len(out.scheduled) == 2


def test_recompute_preemption_evicts_the_newest(make_seq):
    # 6 blocks of 4 tokens; three sequences of 8 prompt tokens fill them, so decoding forces preemption
    s = _scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=32, enable_prefix_caching=False)
    seqs = [make_seq(f"r{i}", 8, i, max_tokens=6, first_token=50 * i + 3) for i in range(3)]
    for q in seqs:
        s.add(q)
    out = _fake_step(s)
    assert len(out.scheduled) == 2  # the third does not fit under the watermark
    preempted = []
    for _ in range(40):
        if not s.has_unfinished():
            break
        out = _fake_step(s)
        preempted += [p.request_id for p in out.preempted]
    assert not s.has_unfinished()
    assert preempted and preempted[0] == "r1"  # the newer of the two running ones
    victim = seqs[1]
    assert victim.trace.preempted_ns and victim.trace.resumed_ns
    assert victim.trace.recomputed_tokens > 0
    assert all(q.num_output_tokens == 6 for q in seqs)


def test_swap_preemption_moves_blocks_to_host_and_back(make_seq):
    s = _scheduler(
        num_blocks=6, block_size=4, max_num_batched_tokens=32, preemption_mode="swap", enable_prefix_caching=False
    )
    seqs = [make_seq(f"r{i}", 8, i, max_tokens=6, first_token=50 * i + 3) for i in range(2)]
    for q in seqs:
        s.add(q)
    swapped_out, swapped_in = 0, 0
    for _ in range(40):
        if not s.has_unfinished():
            break
        out = _fake_step(s)
        swapped_out += len(out.swap.swap_out)
        swapped_in += len(out.swap.swap_in)
    assert not s.has_unfinished()
    assert swapped_out > 0 and swapped_in == swapped_out
    assert seqs[1].trace.preempted_ns and seqs[1].trace.recomputed_tokens == 0
    assert all(q.num_output_tokens == 6 for q in seqs)


def test_abort_frees_blocks(make_seq):
    s = _scheduler()
    s.add(make_seq("a", 10, 0))
    _fake_step(s)
    assert s.bm.num_used > 0
    seq = s.abort("a")
    assert seq.status is SequenceStatus.FINISHED_ABORTED and s.bm.num_used == 0 and not s.has_unfinished()
    assert s.abort("missing") is None


def test_prefix_hit_skips_cached_tokens(make_seq):
    s = _scheduler()
    s.add(make_seq("a", 12, 0, max_tokens=1))
    while s.has_unfinished():
        _fake_step(s)
    b = make_seq("b", 12, 1, max_tokens=1)
    s.add(b)
    out = _fake_step(s)
    assert out.scheduled[0].num_tokens == 4 and b.num_cached_tokens == 8


def test_a_step_that_preempts_admits_nothing_new(make_seq):
    # two slots: a small request waits for one; swapping out the newer long request frees a slot and
    # enough blocks for it, yet it must wait for the next step
    s = _scheduler(
        num_blocks=8,
        block_size=4,
        max_num_seqs=2,
        max_num_batched_tokens=32,
        enable_prefix_caching=False,
        preemption_mode="swap",
    )
    for i in range(2):
        s.add(make_seq(f"r{i}", 8, i, max_tokens=16, first_token=50 * i + 3))
    preempting_steps = 0
    for k in range(60):
        if not s.waiting:  # keep a small request waiting at every step
            s.add(make_seq(f"small{k}", 2, 10 + k, max_tokens=1, first_token=500 + k))
        waiting_before = {q.request_id for q in s.waiting}
        out = _fake_step(s)
        if out.preempted:
            preempting_steps += 1
            assert not waiting_before & {i.seq.request_id for i in out.scheduled}
        if not (s.running or any(q.request_id.startswith("r") for q in s.waiting)):
            break
    assert preempting_steps > 0
