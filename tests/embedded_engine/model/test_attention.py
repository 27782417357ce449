"""Paged attention against a plain dense reference on random data, through the portable path
(gather + SDPA) and through the CPU kernel that reads the cache in place."""

from __future__ import annotations

import pytest
import torch

from bottleneck_map.embedded_engine.model import cpu_attention
from bottleneck_map.embedded_engine.model.attention import (
    MAX_DECODE_GROUPS,
    AttentionMetadata,
    ensure_workspace,
    group_decodes,
    paged_attention,
    plan_attention,
)

H, KV, D, BS, NUM_BLOCKS = 4, 2, 8, 4, 64


def _reference(q, k_full, v_full, cached):
    """Dense attention of ``q`` [n, H, D] over one sequence's whole context [c, KV, D]."""
    k = k_full.repeat_interleave(H // KV, dim=1)
    v = v_full.repeat_interleave(H // KV, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * D**-0.5
    n, c = q.shape[0], k.shape[0]
    visible = torch.arange(c)[None, :] <= (torch.arange(n)[:, None] + cached)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


@pytest.fixture(params=["portable", "kernel"])
def kernel(request):
    if request.param == "portable":
        return None
    fn = cpu_attention.decode_kernel()
    if fn is None:
        pytest.skip("the CPU decode kernel could not be built here (see the log)")
    return fn


def _run(query_lens, context_lens, seed=0, workspace=None, kernel=None):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(NUM_BLOCKS, BS, KV, D, generator=gen)  # junk everywhere a sequence does not own
    v_cache = torch.randn(NUM_BLOCKS, BS, KV, D, generator=gen)
    perm = torch.randperm(NUM_BLOCKS - 1, generator=gen) + 1  # scattered, non-contiguous blocks
    tables, slots, k_full, v_full, used = [], [], [], [], 0
    for q, c in zip(query_lens, context_lens, strict=True):
        nb = -(-c // BS)
        blocks = perm[used : used + nb].tolist()
        used += nb
        tables.append(blocks)
        slots += [blocks[p // BS] * BS + p % BS for p in range(c - q, c)]
        k_full.append(torch.randn(c, KV, D, generator=gen))
        v_full.append(torch.randn(c, KV, D, generator=gen))
        for p in range(c - q):  # the cached prefix is already in the cache
            k_cache[blocks[p // BS], p % BS] = k_full[-1][p]
            v_cache[blocks[p // BS], p % BS] = v_full[-1][p]
    width = max(map(len, tables))
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        query_lens=list(query_lens),
        context_lens=list(context_lens),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        block_size=BS,
    )
    q_all = torch.randn(sum(query_lens), H, D, generator=gen)
    new_k = torch.cat([kf[c - q :] for kf, q, c in zip(k_full, query_lens, context_lens, strict=True)])
    new_v = torch.cat([vf[c - q :] for vf, q, c in zip(v_full, query_lens, context_lens, strict=True)])
    plan = plan_attention(meta, torch.device("cpu"), kernel)
    if workspace is not None:
        workspace[:] = ensure_workspace(plan, list(workspace), k_cache)
    out = paged_attention(q_all, new_k, new_v, k_cache, v_cache, plan, D**-0.5)
    expected, start = [], 0
    for i, (q, c) in enumerate(zip(query_lens, context_lens, strict=True)):
        expected.append(_reference(q_all[start : start + q], k_full[i], v_full[i], c - q))
        start += q
    return out, torch.cat(expected), (k_cache, slots, new_k)


@pytest.mark.parametrize(
    ("query_lens", "context_lens"),
    [
        ([1, 1, 1], [1, 9, 23]),  # decodes only, different context lengths
        ([7], [7]),  # fresh prefill
        ([5], [18]),  # prefill chunk after a cached prefix
        ([1, 6, 1, 3], [13, 6, 4, 11]),  # mixed batch: decodes between prefill chunks
        ([1] * 7, [8, 8, 8, 30, 31, 2, 29]),  # decodes in several length groups, one without padding
    ],
)
def test_matches_dense_reference(query_lens, context_lens, kernel):
    out, expected, _ = _run(query_lens, context_lens, kernel=kernel)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_new_keys_are_written_through_the_slot_mapping():
    _, _, (k_cache, slots, new_k) = _run([1, 6], [9, 6])
    torch.testing.assert_close(k_cache.view(-1, KV, D)[torch.tensor(slots)], new_k)


def test_metadata_rejects_inconsistent_lengths():
    with pytest.raises(ValueError, match="slot"):
        AttentionMetadata(torch.zeros(3, dtype=torch.long), [2], [2], torch.zeros(1, 1, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="query_len"):
        AttentionMetadata(torch.zeros(3, dtype=torch.long), [3], [2], torch.zeros(1, 1, dtype=torch.int32), 4)


def test_decodes_are_grouped_by_context_length():
    assert group_decodes([5, 5, 5]) == [[0, 1, 2]]  # equal lengths: one batched call
    assert group_decodes([40, 2, 39, 2, 38]) == [[0, 2, 4], [1, 3]]  # long ones apart from short ones
    lengths = [1 + (i * 37) % 64 for i in range(50)]
    groups = group_decodes(lengths)
    assert len(groups) <= MAX_DECODE_GROUPS
    assert sorted(i for g in groups for i in g) == list(range(50))
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded < 1.3 * sum(lengths)  # one group would pad to 64 * 50 = 1.97x


def test_gather_workspace_is_reused_and_grown():
    workspace = []
    out, expected, _ = _run([1, 6, 1, 3], [13, 6, 4, 11], workspace=workspace)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    first = workspace[0]
    out, expected, _ = _run([1, 1], [5, 9], seed=1, workspace=workspace)  # smaller step: same buffers
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert workspace[0] is first
    out, expected, _ = _run([1] * 7, [8, 8, 8, 30, 31, 2, 29], seed=2, workspace=workspace)  # larger: grown
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert workspace[0].shape[0] > first.shape[0]


@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 8), (8, 2), (12, 3)])
def test_kernel_matches_the_portable_path_at_engine_sizes(heads, kv_heads):
    """32 sequences of 1-300 tokens in blocks of 32, head_dim 64, as a decode step runs them."""
    fn = cpu_attention.decode_kernel()
    if fn is None:
        pytest.skip("the CPU decode kernel could not be built here (see the log)")
    gen = torch.Generator().manual_seed(3)
    bs, d, blocks = 32, 64, 400
    k_cache, v_cache = (
        torch.randn(blocks, bs, kv_heads, d, generator=gen),
        torch.randn(blocks, bs, kv_heads, d, generator=gen),
    )
    lens = torch.randint(1, 301, (32,), generator=gen).tolist()
    perm = torch.randperm(blocks, generator=gen).tolist()
    width = -(-max(lens) // bs)
    tables, used = [], 0
    for n in lens:
        nb = -(-n // bs)
        tables.append(perm[used : used + nb] + [0] * (width - nb))
        used += nb
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([t[(n - 1) // bs] * bs + (n - 1) % bs for t, n in zip(tables, lens, strict=True)]),
        query_lens=[1] * 32,
        context_lens=lens,
        block_tables=torch.tensor(tables, dtype=torch.int32),
        block_size=bs,
    )
    q = torch.randn(32, heads, d, generator=gen)
    new_k, new_v = torch.randn(32, kv_heads, d, generator=gen), torch.randn(32, kv_heads, d, generator=gen)
    outs = []
    for decode_kernel in (None, fn):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(
            paged_attention(q, new_k, new_v, kc, vc, plan_attention(meta, torch.device("cpu"), decode_kernel), d**-0.5)
        )
    torch.testing.assert_close(outs[1], outs[0], atol=2e-6, rtol=1e-5)


def test_kernel_refuses_what_it_cannot_read():
    fn = cpu_attention.decode_kernel()
    if fn is None:
        pytest.skip("the CPU decode kernel could not be built here (see the log)")
    q, kc = torch.randn(1, 4, 8), torch.randn(4, 4, 2, 8)
    table, lens = torch.tensor([[1, 2]], dtype=torch.int32), torch.tensor([7], dtype=torch.int32)
    assert fn(q, kc, kc, table, lens, 1.0).shape == (1, 4, 8)
    with pytest.raises(RuntimeError, match="float32"):
        fn(q.double(), kc, kc, table, lens, 1.0)
    with pytest.raises(RuntimeError, match="block id outside"):
        fn(q, kc, kc, torch.tensor([[1, 9]], dtype=torch.int32), lens, 1.0)
    with pytest.raises(RuntimeError, match="length outside"):
        fn(q, kc, kc, table, torch.tensor([9], dtype=torch.int32), 1.0)


def test_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_attention.ENV, "0")
    cpu_attention.decode_kernel.cache_clear()
    try:
        assert cpu_attention.decode_kernel() is None
    finally:
        cpu_attention.decode_kernel.cache_clear()
