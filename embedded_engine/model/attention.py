"""Paged attention: write new keys/values through a slot mapping, read them back through block tables.

A step's tokens are laid out sequence after sequence (``query_lens`` in input order). Sequences with
one new token (decodes) are attended in one batched call, padded to the longest context among them
with a mask; sequences with several new tokens (prefill chunks) are attended one by one with a causal
mask in which the cached prefix (``context_len - query_len`` tokens) is fully visible. Given a
``decode_kernel`` (:mod:`.cpu_attention`: float32 on the CPU), decodes are attended by it instead,
reading the cache in place through their block tables, all of them in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [T]: flat KV slot (block_id*block_size + offset) per new token
    query_lens: list[int]  # per sequence: tokens computed this step (sum == T), in input order
    context_lens: list[int]  # per sequence: total KV length after this step (cached + new)
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks], rows padded with 0
    block_size: int

    def __post_init__(self) -> None:
        if len(self.query_lens) != len(self.context_lens):
            raise ValueError("query_lens and context_lens must have one entry per sequence")
        if len(self.query_lens) != self.block_tables.shape[0]:
            raise ValueError("block_tables must have one row per sequence")
        if any(q <= 0 or q > c for q, c in zip(self.query_lens, self.context_lens, strict=True)):
            raise ValueError("each sequence needs 0 < query_len <= context_len")
        if sum(self.query_lens) != self.slot_mapping.shape[0]:
            raise ValueError("slot_mapping must have one slot per new token")


@dataclass
class _Prefill:
    start: int  # first token row in the step
    end: int
    blocks: torch.Tensor  # block ids covering the context
    context_len: int
    mask: torch.Tensor | None  # None: plain causal (no cached prefix)


@dataclass
class _DecodeGroup:
    rows: torch.Tensor  # token rows of these decoding sequences (input order within the group)
    blocks: torch.Tensor  # [n * nb] their block tables, flattened
    length: int  # keys attended: the longest context in the group
    mask: torch.Tensor | None  # [n, 1, 1, length] bool, True = attend; None when all lengths are equal
    table: torch.Tensor | None = None  # with the kernel: int32 [n, blocks] block tables
    lens: torch.Tensor | None = None  # with the kernel: int32 [n] context lengths


@dataclass
class AttentionPlan:
    """Per-step indexing derived once from the metadata and shared by every layer."""

    num_tokens: int
    slot_mapping: torch.Tensor
    block_size: int
    decode_groups: list[_DecodeGroup] = field(default_factory=list)
    all_decode: bool = False  # one decode group holding every sequence, in input order
    prefills: list[_Prefill] = field(default_factory=list)
    last_rows: torch.Tensor | None = None  # row of each sequence's last token, input order
    gather_blocks: int = 0  # the most blocks one attention call gathers this step
    workspace: list[torch.Tensor] = field(default_factory=list)  # K and V gather buffers (>= gather_blocks)
    decode_kernel: Callable | None = None  # cpu_attention.decode_kernel(): decodes read the cache in place


# Decodes are padded to the longest context of their group; a new group starts when padding
# would exceed this share of the real context blocks (at most MAX_DECODE_GROUPS groups).
PADDING_SLACK = 1.1
MAX_DECODE_GROUPS = 8


def group_decodes(blocks_needed: list[int]) -> list[list[int]]:
    """Split decode sequences (by index) into groups of similar context length."""
    order = sorted(range(len(blocks_needed)), key=lambda i: -blocks_needed[i])
    groups: list[list[int]] = []
    total = 0
    for i in order:
        if not groups:
            groups.append([])
        elif len(groups) < MAX_DECODE_GROUPS:
            group = groups[-1]  # its first member is its longest
            padded = (len(group) + 1) * blocks_needed[group[0]]
            if padded > PADDING_SLACK * (total + blocks_needed[i]):
                groups.append([])
                total = 0
        groups[-1].append(i)
        total += blocks_needed[i]
    return [sorted(g) for g in groups]


def plan_attention(
    meta: AttentionMetadata, device: torch.device, decode_kernel: Callable | None = None
) -> AttentionPlan:
    bs = meta.block_size
    tables = meta.block_tables.to(device=device, dtype=torch.long)
    starts, pos = [], 0
    for q in meta.query_lens:
        starts.append(pos)
        pos += q
    plan = AttentionPlan(num_tokens=pos, slot_mapping=meta.slot_mapping.to(device), block_size=bs)
    plan.last_rows = torch.tensor([s + q - 1 for s, q in zip(starts, meta.query_lens, strict=True)], device=device)
    dec = [i for i, q in enumerate(meta.query_lens) if q == 1]
    if dec and decode_kernel is not None:
        plan.decode_kernel = decode_kernel
        every = len(dec) == len(meta.query_lens)
        table = meta.block_tables if every else meta.block_tables[dec]
        lens = [meta.context_lens[i] for i in dec]
        plan.decode_groups.append(
            _DecodeGroup(
                rows=torch.tensor([starts[i] for i in dec], device=device),
                blocks=torch.empty(0, dtype=torch.long),
                length=max(lens),
                mask=None,
                table=table.to(dtype=torch.int32).contiguous(),
                lens=torch.tensor(lens, dtype=torch.int32),
            )
        )
        dec = []
    for members in group_decodes([-(-meta.context_lens[i] // bs) for i in dec]) if dec else []:
        seqs = [dec[m] for m in members]
        ctx = [meta.context_lens[i] for i in seqs]
        length = max(ctx)
        nb = -(-length // bs)
        mask = None
        if min(ctx) != length:
            mask = torch.arange(length, device=device)[None, :] < torch.tensor(ctx, device=device)[:, None]
            mask = mask[:, None, None, :]
        blocks = tables[seqs, :nb] if len(seqs) < len(meta.query_lens) else tables[:, :nb]
        rows = torch.tensor([starts[i] for i in seqs], device=device)
        plan.decode_groups.append(_DecodeGroup(rows, blocks.flatten(), length, mask))
    plan.all_decode = len(plan.decode_groups) == 1 and all(q == 1 for q in meta.query_lens)
    plan.gather_blocks = max((len(g.blocks) for g in plan.decode_groups), default=0)
    for i, (q, c) in enumerate(zip(meta.query_lens, meta.context_lens, strict=True)):
        if q == 1:
            continue
        cached = c - q
        mask = None
        if cached:
            rows = torch.arange(q, device=device)[:, None] + cached
            mask = torch.arange(c, device=device)[None, :] <= rows
        plan.prefills.append(_Prefill(starts[i], starts[i] + q, tables[i, : -(-c // bs)], c, mask))
        plan.gather_blocks = max(plan.gather_blocks, len(plan.prefills[-1].blocks))
    return plan


def ensure_workspace(plan: AttentionPlan, buffers: list[torch.Tensor], cache: torch.Tensor) -> list[torch.Tensor]:
    """Give ``plan`` K/V gather buffers from ``buffers`` (grown if too small); returns the buffers to keep.

    Gathering into buffers kept across layers and steps, instead of fresh tensors, avoids the page
    faults of large new allocations, which on CPU cost as much as the gather itself.
    """
    if plan.gather_blocks == 0:
        return buffers
    shape = cache.shape[1:]
    if (
        not buffers
        or buffers[0].shape[0] < plan.gather_blocks
        or buffers[0].shape[1:] != shape
        or (buffers[0].dtype != cache.dtype or buffers[0].device != cache.device)
    ):
        rows = max(plan.gather_blocks, int(1.25 * buffers[0].shape[0]) if buffers else 0)
        buffers = [cache.new_empty((rows, *shape)) for _ in range(2)]
    plan.workspace = buffers
    return buffers


def _gather(cache: torch.Tensor, blocks: torch.Tensor, plan: AttentionPlan, which: int) -> torch.Tensor:
    """``cache[blocks]``, written into the plan's workspace when it has one."""
    if not plan.workspace:
        return cache.index_select(0, blocks)
    return torch.index_select(cache, 0, blocks, out=plan.workspace[which][: len(blocks)])


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: AttentionPlan,
    scale: float,
) -> torch.Tensor:
    """q ``[T, H, D]``, k/v ``[T, KV, D]`` for the new tokens; caches ``[blocks, block_size, KV, D]``.

    Returns ``[T, H, D]``. The new keys and values are stored in the cache first, so every sequence
    reads its whole context (cached prefix and this step's tokens) from the paged cache.
    """
    n_kv, d = k_cache.shape[2], k_cache.shape[3]
    group = q.shape[1] // n_kv
    k_cache.view(-1, n_kv, d).index_copy_(0, plan.slot_mapping, k)
    v_cache.view(-1, n_kv, d).index_copy_(0, plan.slot_mapping, v)
    if plan.all_decode:
        return _decode(q, k_cache, v_cache, plan.decode_groups[0], plan, scale)
    out = torch.empty_like(q)
    for g in plan.decode_groups:
        out[g.rows] = _decode(q[g.rows], k_cache, v_cache, g, plan, scale)
    for p in plan.prefills:
        kp = _gather(k_cache, p.blocks, plan, 0).view(-1, n_kv, d)[: p.context_len].transpose(0, 1)
        vp = _gather(v_cache, p.blocks, plan, 1).view(-1, n_kv, d)[: p.context_len].transpose(0, 1)
        qp = q[p.start : p.end].transpose(0, 1)
        # 4-D inputs: on CPU, SDPA takes its flash kernel only for [batch, heads, len, dim] (3-D: math)
        o = F.scaled_dot_product_attention(
            qp[None], kp[None], vp[None], attn_mask=p.mask, is_causal=p.mask is None, scale=scale, enable_gqa=group > 1
        )
        out[p.start : p.end] = o[0].transpose(0, 1)
    return out


def _decode(q, k_cache, v_cache, g: _DecodeGroup, plan: AttentionPlan, scale: float) -> torch.Tensor:
    if g.table is not None:
        return plan.decode_kernel(q.contiguous(), k_cache, v_cache, g.table, g.lens, scale)
    # One query per sequence: the query heads sharing a KV head become that head's "query rows",
    # so grouped-query attention needs no repeated keys or values.
    b, heads, d = q.shape
    n_kv = k_cache.shape[2]
    kd = _gather(k_cache, g.blocks, plan, 0).view(b, -1, n_kv, d)[:, : g.length].transpose(1, 2)
    vd = _gather(v_cache, g.blocks, plan, 1).view(b, -1, n_kv, d)[:, : g.length].transpose(1, 2)
    o = F.scaled_dot_product_attention(q.view(b, n_kv, heads // n_kv, d), kd, vd, attn_mask=g.mask, scale=scale)
    return o.reshape(b, heads, d)
