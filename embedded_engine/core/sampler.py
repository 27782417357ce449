"""Next-token sampling (penalties, greedy, temperature, top-k, top-p, min-p, per-request seed) and stop rules.

A row that cannot be sampled (a value the arithmetic cannot take, logits that are not
finite) yields a :class:`SamplingError` in its place, so one request's failure never
costs the others in the batch their tokens.
"""

from __future__ import annotations

import torch

from bottleneck_map.embedded_engine.core.sequence import MIN_TEMPERATURE, SamplingParams, Sequence, SequenceStatus


class SamplingError(Exception):
    """One row's sampling failed; the message says why."""


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
        drop[0] = False  # a top_p that underflows float32 to 0 still keeps the most likely token
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def apply_penalties(logits: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """vLLM's penalties on one row: repetition over prompt and output tokens, presence and
    frequency over output tokens."""
    p = seq.params
    logits = logits.clone()
    if p.repetition_penalty != 1:
        seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.int64, device=logits.device)
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and seq.num_output_tokens:
        out = torch.tensor(seq.output_token_ids, dtype=torch.int64, device=logits.device)
        counts = torch.bincount(out, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One token id from one row of float32 logits (penalties already applied)."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = _filter_top_k_top_p(logits / max(params.temperature, MIN_TEMPERATURE), params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


def _sample_row(logits: torch.Tensor, seq: Sequence) -> int:
    if not bool(torch.isfinite(logits).any()):
        raise SamplingError("the model produced no finite logit for this sequence")
    if seq.params.penalized:
        logits = apply_penalties(logits, seq)
    if seq.params.seed is not None and seq.generator is None and not seq.params.greedy:
        seq.generator = torch.Generator(device=logits.device).manual_seed(seq.params.seed)
    return sample_one(logits, seq.params, seq.generator)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int | SamplingError]:
    """One token per row of ``logits`` ([len(seqs), vocab]); plain greedy rows share one argmax.

    A row whose sampling fails holds a :class:`SamplingError` instead of a token id."""
    logits = logits.float()
    if all(s.params.greedy and not s.params.penalized for s in seqs):
        return torch.argmax(logits, dim=-1).tolist()
    greedy = torch.argmax(logits, dim=-1).tolist()
    out: list[int | SamplingError] = []
    for i, seq in enumerate(seqs):
        if seq.params.greedy and not seq.params.penalized:
            out.append(greedy[i])
            continue
        try:
            out.append(_sample_row(logits[i], seq))
        except SamplingError as exc:
            out.append(exc)
        except (RuntimeError, ValueError, OverflowError) as exc:  # torch's own checks (NaN or negative probs, ...)
            out.append(SamplingError(f"sampling failed: {exc}"))
    return out


TokenLogprobs = tuple[float, tuple[tuple[int, float], ...]]  # the token's, then the top k (id, logprob), best first


def token_logprobs(logits: torch.Tensor, token_id: int, k: int) -> TokenLogprobs:
    """Log-probability of ``token_id`` and the ``k`` most likely tokens under one row of the model's
    raw logits (before penalties and temperature: vLLM's default ``raw_logprobs``)."""
    return rows_logprobs(logits[None], [token_id], k)[0]


def rows_logprobs(logits: torch.Tensor, token_ids: list[int], k: int) -> list[TokenLogprobs]:
    """Log-probability of ``token_ids[i]`` and the ``k`` most likely tokens under row ``i`` of the
    model's raw logits (before penalties and temperature: vLLM's default ``raw_logprobs``), for
    every row at once: one log-softmax and one top-k."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    own = lp[torch.arange(len(token_ids), device=lp.device), torch.tensor(token_ids, device=lp.device)].tolist()
    if k == 0:
        return [(v, ()) for v in own]
    top = torch.topk(lp, k)
    ids, vals = top.indices.tolist(), top.values.tolist()
    return [(v, tuple(zip(i, t, strict=True))) for v, i, t in zip(own, ids, vals, strict=True)]


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
