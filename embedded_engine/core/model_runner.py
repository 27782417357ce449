"""Turns a scheduled batch into model inputs, runs the forward pass and samples; times each part."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bottleneck_map.bundle import now_ns
from bottleneck_map.embedded_engine.core.block_manager import SwapPlan
from bottleneck_map.embedded_engine.core.sampler import (
    SamplingError,
    TokenLogprobs,
    rows_logprobs,
    sample,
    token_logprobs,
)
from bottleneck_map.embedded_engine.core.scheduler import ScheduledSeq
from bottleneck_map.embedded_engine.core.sequence import Sequence
from bottleneck_map.embedded_engine.model.attention import AttentionMetadata


@dataclass
class StepResult:
    sampled: dict[str, int] = field(default_factory=dict)  # request_id -> new token id
    failed: dict[str, str] = field(default_factory=dict)  # request_id -> why its sampling failed
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)  # request_id -> its new token's, when asked
    # request_id -> (index of its first prompt token scored, one entry per prompt token scored this step)
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)
    prepare_ns: int | None = None
    forward_ns: int | None = None
    sample_ns: int | None = None
    swap_ns: int | None = None
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0


def build_inputs(
    batch: list[ScheduledSeq], block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """input_ids, positions and attention metadata for one step (sequences in batch order)."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    context_lens: list[int] = []
    for item in batch:
        seq, start = item.seq, item.seq.num_computed_tokens
        end = start + item.num_tokens
        ids.extend(seq.token_ids[start:end])
        positions = range(start, end)
        pos.extend(positions)
        table = seq.block_table
        slots.extend(table[p // block_size] * block_size + p % block_size for p in positions)
        query_lens.append(item.num_tokens)
        context_lens.append(end)
    width = max(len(item.seq.block_table) for item in batch)
    tables = [item.seq.block_table + [0] * (width - len(item.seq.block_table)) for item in batch]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_lens=query_lens,
        context_lens=context_lens,
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        block_size=block_size,
    )
    return (
        torch.tensor(ids, dtype=torch.int64, device=device),
        torch.tensor(pos, dtype=torch.int64, device=device),
        meta,
    )


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv, device: torch.device, num_swap_blocks: int = 0) -> None:
        self.model = model
        self.kv = kv
        self.device = torch.device(device)
        self.block_size = kv.block_size
        self.host_k: list[torch.Tensor] = []
        self.host_v: list[torch.Tensor] = []
        if num_swap_blocks:
            pin = self.device.type == "cuda"
            for layer_k, layer_v in zip(kv.k, kv.v, strict=True):
                shape = (num_swap_blocks, *layer_k.shape[1:])
                self.host_k.append(torch.empty(shape, dtype=layer_k.dtype, pin_memory=pin))
                self.host_v.append(torch.empty(shape, dtype=layer_v.dtype, pin_memory=pin))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def swap(self, plan: SwapPlan) -> tuple[int, int, int]:
        """Copy swapped-out blocks to host, then swapped-in blocks back; (ns, out_bytes, in_bytes)."""
        t0 = now_ns()
        for src_layers, dst_layers, pairs in (
            ((self.kv.k, self.kv.v), (self.host_k, self.host_v), plan.swap_out),
            ((self.host_k, self.host_v), (self.kv.k, self.kv.v), plan.swap_in),
        ):
            if not pairs:
                continue
            src_idx = torch.tensor([s for s, _ in pairs])
            dst_idx = torch.tensor([d for _, d in pairs])
            for src_list, dst_list in zip(src_layers, dst_layers, strict=True):
                for src, dst in zip(src_list, dst_list, strict=True):
                    dst[dst_idx.to(dst.device)] = src[src_idx.to(src.device)].to(dst.device, non_blocking=False)
        self._sync()
        per_block = self.kv.bytes_per_block
        return now_ns() - t0, len(plan.swap_out) * per_block, len(plan.swap_in) * per_block

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq], swap: SwapPlan) -> StepResult:
        res = StepResult()
        if swap:
            res.swap_ns, res.swap_out_bytes, res.swap_in_bytes = self.swap(swap)
        t0 = now_ns()
        input_ids, positions, meta = build_inputs(batch, self.block_size, self.device)
        t1 = now_ns()
        scored = _prompt_rows(batch, meta.query_lens)
        if scored:
            # every sequence's last row first, then the rows whose next token is a prompt token scored
            last = torch.tensor(meta.query_lens).cumsum(0) - 1
            extra = torch.tensor([r for _, first, n, row0 in scored for r in range(row0, row0 + n)], dtype=torch.long)
            both = self.model(input_ids, positions, meta, self.kv, rows=torch.cat([last, extra]))
            logits, prompt_logits = both[: len(batch)], both[len(batch) :]
        else:
            logits = self.model(input_ids, positions, meta, self.kv)
        self._sync()
        t2 = now_ns()
        rows = [
            i for i, item in enumerate(batch) if item.seq.num_computed_tokens + item.num_tokens == item.seq.num_tokens
        ]
        seqs: list[Sequence] = [batch[i].seq for i in rows]
        if rows:
            for row, s, t in zip(rows, seqs, sample(logits[rows], seqs), strict=True):
                if isinstance(t, SamplingError):
                    res.failed[s.request_id] = str(t)
                else:
                    res.sampled[s.request_id] = t
                    if s.params.logprobs is not None:
                        res.logprobs[s.request_id] = token_logprobs(logits[row], t, s.params.logprobs)
        at = 0
        for seq, first, n, _ in scored:
            res.prompt_logprobs[seq.request_id] = (
                first,
                rows_logprobs(prompt_logits[at : at + n], seq.token_ids[first : first + n], seq.params.prompt_logprobs),
            )
            at += n
        t3 = now_ns()
        res.prepare_ns, res.forward_ns, res.sample_ns = t1 - t0, t2 - t1, t3 - t2
        return res


def _prompt_rows(batch: list[ScheduledSeq], query_lens: list[int]) -> list[tuple[Sequence, int, int, int]]:
    """Per sequence that asked for prompt log-probabilities and computes prompt tokens this step:
    (sequence, first prompt token scored, how many, the step row whose logits score it). Row ``r``
    at position ``p`` scores token ``p + 1``; tokens already scored (before a recompute) are not
    scored again, and nor is any token past the prompt."""
    out = []
    row0 = 0
    for item, q in zip(batch, query_lens, strict=True):
        seq = item.seq
        if seq.params.prompt_logprobs is not None:
            start = seq.num_computed_tokens
            first = max(start + 1, len(seq.prompt_logprobs) + 1)  # prompt token index
            last = min(start + q, seq.num_prompt_tokens - 1)  # last token index scored by this chunk
            if last >= first:
                out.append((seq, first, last - first + 1, row0 + (first - 1 - start)))
        row0 += q
    return out
