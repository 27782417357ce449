"""Next-token sampling (greedy, temperature, top-k, top-p, per-request seed) and stop rules."""

from __future__ import annotations

import torch

from bottleneck_map.embedded_engine.core.sequence import SamplingParams, Sequence, SequenceStatus


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the top-k and outside the top-p nucleus of one row."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (the first token always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One token id from one row of float32 logits."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = _filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of ``logits`` ([len(seqs), vocab]); greedy rows share one argmax."""
    logits = logits.float()
    if all(s.params.greedy for s in seqs):
        return torch.argmax(logits, dim=-1).tolist()
    greedy = torch.argmax(logits, dim=-1).tolist()
    out = []
    for i, seq in enumerate(seqs):
        if seq.params.greedy:
            out.append(greedy[i])
            continue
        if seq.params.seed is not None and seq.generator is None:
            seq.generator = torch.Generator(device=logits.device).manual_seed(seq.params.seed)
        out.append(sample_one(logits[i], seq.params, seq.generator))
    return out


def stop_status(
    seq: Sequence, token_id: int, eos_token_ids: tuple[int, ...], max_model_len: int
) -> SequenceStatus | None:
    """Why ``seq`` stops after appending ``token_id``, or None to go on."""
    if not seq.params.ignore_eos and token_id in eos_token_ids:
        return SequenceStatus.FINISHED_STOPPED
    if token_id in seq.params.stop_token_ids:
        return SequenceStatus.FINISHED_STOPPED
    if seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= max_model_len:
        return SequenceStatus.FINISHED_LENGTH
    return None
