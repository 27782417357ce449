from bottleneck_map.embedded_engine.core.block_manager import BlockManager, SwapPlan


def test_allocate_and_free_return_blocks_to_the_free_list(make_seq):
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq("a", 10, 0)
    assert bm.blocks_needed(seq, 10) == 3
    bm.allocate(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free == 5 and bm.num_used == 3
    assert all(bm.blocks[b].ref_count == 1 for b in seq.block_table)
    seq.num_computed_tokens = 10
    assert bm.blocks_needed(seq, 2) == 0  # 12 tokens still fit in 3 blocks
    assert bm.blocks_needed(seq, 3) == 1
    bm.free_seq(seq)
    assert bm.num_free == 8 and seq.block_table == []


def test_allocate_beyond_capacity_raises(make_seq):
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq("a", 12, 0)
    assert not bm.can_allocate(seq, 12)
    try:
        bm.allocate(seq, 12)
    except RuntimeError as exc:
        assert "out of KV blocks" in str(exc)
    else:
        raise AssertionError("expected RuntimeError")


def _compute(bm, seq):
    bm.allocate(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.register_full_blocks(seq)


def test_prefix_hits_share_blocks_and_count_tokens(make_seq):
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq("a", 10, 0)  # two full blocks + 2 tokens
    _compute(bm, a)
    b = make_seq("b", 13, 1)  # same first 10 tokens, then 3 more
    hit = bm.match_prefix(b)
    assert hit == 8  # only full blocks are shared
    assert b.block_table == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert bm.prefix_hit_tokens == 8 and bm.prefix_query_tokens == 13
    # freeing the first owner keeps the shared blocks alive
    bm.free_seq(a)
    assert bm.blocks[b.block_table[0]].ref_count == 1
    assert bm.num_used == 2


def test_freed_blocks_stay_cached_until_reused(make_seq):
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq("a", 9, 0)
    _compute(bm, a)
    bm.free_seq(a)
    assert bm.num_free == 4
    b = make_seq("b", 9, 1)
    assert bm.match_prefix(b) == 8
    assert bm.num_free == 2  # revived from the free list
    # fill the cache with other tokens: the cached blocks get reused and their hashes dropped
    bm.free_seq(b)
    c = make_seq("c", 16, 2, first_token=500)
    _compute(bm, c)
    bm.free_seq(c)
    d = make_seq("d", 9, 3)
    assert bm.match_prefix(d) == 0


def test_at_least_one_prompt_token_is_left_to_compute(make_seq):
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", 8, 0)
    _compute(bm, a)
    b = make_seq("b", 8, 1)  # identical prompt of exactly two blocks
    assert bm.match_prefix(b) == 4
    assert b.num_uncomputed_tokens == 4


def test_hash_collision_is_caught_by_the_token_check(make_seq):
    bm = BlockManager(num_blocks=8, block_size=4, hash_fn=lambda prev, ids: 42)  # every block collides
    a = make_seq("a", 9, 0)
    _compute(bm, a)
    other = make_seq("b", 9, 1, first_token=900)
    assert bm.match_prefix(other) == 0
    same = make_seq("c", 9, 2)
    assert bm.match_prefix(same) == 4  # first block matches by tokens; the second's hash maps elsewhere


def test_prefix_caching_off_never_hits(make_seq):
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_seq("a", 9, 0)
    _compute(bm, a)
    assert bm.match_prefix(make_seq("b", 9, 1)) == 0


def test_unmatch_prefix_restores_state(make_seq):
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", 9, 0)
    _compute(bm, a)
    bm.free_seq(a)
    b = make_seq("b", 9, 1)
    bm.match_prefix(b)
    bm.unmatch_prefix(b)
    assert bm.num_free == 8 and b.num_computed_tokens == 0 and bm.prefix_hit_tokens == 0


def test_swap_out_and_in_plan_copies_and_counts_bytes(make_seq):
    bm = BlockManager(num_blocks=4, block_size=4, num_swap_blocks=4, bytes_per_block=100)
    seq = make_seq("a", 8, 0)
    bm.allocate(seq, 8)
    seq.num_computed_tokens = 8
    device_blocks = list(seq.block_table)
    plan = SwapPlan()
    assert bm.can_swap_out(seq)
    bm.swap_out(seq, plan)
    assert [s for s, _ in plan.swap_out] == device_blocks
    assert bm.num_free == 4 and len(seq.swap_table) == 2 and len(bm.free_swap) == 2
    assert seq.trace.swapped_bytes == 200
    plan2 = SwapPlan()
    bm.swap_in(seq, plan2)
    assert len(seq.block_table) == 2 and bm.num_free == 2 and len(bm.free_swap) == 4
    assert [d for _, d in plan2.swap_in] == seq.block_table
    assert seq.trace.swapped_bytes == 400


def test_swap_out_needs_host_space(make_seq):
    bm = BlockManager(num_blocks=4, block_size=4, num_swap_blocks=1)
    seq = make_seq("a", 8, 0)
    bm.allocate(seq, 8)
    assert not bm.can_swap_out(seq)
