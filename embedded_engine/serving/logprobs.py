"""Token log-probabilities in the OpenAI API's shapes, as vLLM's OpenAI server writes them.

The engine gives, per generated token, its log-probability and the ``k`` most likely tokens
(``sampler.TokenLogprobs``). vLLM orders a token's entries as the sampled token first, then the
top ``k`` (a token in both appears once, first); completions list the first ``k + 1`` of them,
chat the first ``k``. Token strings are each id decoded on its own, special tokens kept;
log-probabilities below -9999 are written as -9999 (JSON has no -inf).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bottleneck_map.embedded_engine.core.sequence import MAX_LOGPROBS

FLOOR = -9999.0


class LogprobsError(ValueError):
    """A ``logprobs``/``top_logprobs`` value the API does not take; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _count(doc: Mapping[str, Any], key: str) -> int | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_LOGPROBS:
        raise LogprobsError(f"`{key}` must be an integer in [0, {MAX_LOGPROBS}], got {v!r}.", key)
    return v


def requested(doc: Mapping[str, Any], kind: str) -> int | None:
    """How many alternatives per token the request asks for (None: no logprobs).

    Completions: ``logprobs`` is that number. Chat: ``logprobs`` is a boolean and
    ``top_logprobs`` the number (0 when absent), allowed only with ``logprobs: true``."""
    if kind != "chat":
        return _count(doc, "logprobs")
    on = doc.get("logprobs")
    if on is not None and not isinstance(on, bool):
        raise LogprobsError(f"`logprobs` must be a boolean, got {on!r}.", "logprobs")
    top = _count(doc, "top_logprobs")
    if top is not None and not on:
        raise LogprobsError("`top_logprobs` needs `logprobs` set to true.", "top_logprobs")
    return (top or 0) if on else None


def _entries(token_id: int, lp: Any) -> list[tuple[int, float]]:
    """The sampled token first, then the top alternatives not already listed."""
    own, top = lp
    out = [(token_id, own)]
    out += [(t, v) for t, v in top if t != token_id]
    return out


class LogprobsBuilder:
    """Collects one choice's token log-probabilities and renders them for a body or a chunk.

    ``take()`` renders what was added since the last ``take()`` (streaming: each chunk carries its
    own tokens'); completions' ``text_offset`` continues across takes."""

    def __init__(self, tokenizer: Any, kind: str, k: int) -> None:
        self.tokenizer, self.chat, self.k = tokenizer, kind == "chat", k
        self._pending: list[tuple[int, Any]] = []
        self._offset = 0
        self._names: dict[int, str] = {}

    def add(self, token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> None:
        for token_id, lp in zip(token_ids, logprobs or [None] * len(token_ids), strict=True):
            self._pending.append((token_id, lp))

    def _name(self, token_id: int) -> str:
        name = self._names.get(token_id)
        if name is None:
            name = self._names[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return name

    def take(self) -> dict[str, Any] | None:
        """The pending tokens' log-probabilities (None when there are none)."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        return self._chat(pending) if self.chat else self._completion(pending)

    def _chat(self, pending: list[tuple[int, Any]]) -> dict[str, Any]:
        content = []
        for token_id, lp in pending:
            token = self._name(token_id)
            item: dict[str, Any] = {"token": token, "logprob": FLOOR, "bytes": list(token.encode("utf-8", "replace"))}
            if lp is not None:
                entries = _entries(token_id, lp)
                item["logprob"] = max(lp[0], FLOOR)
                item["top_logprobs"] = [
                    {
                        "token": (n := self._name(t)),
                        "logprob": max(v, FLOOR),
                        "bytes": list(n.encode("utf-8", "replace")),
                    }
                    for t, v in entries[: self.k]
                ]
            else:
                item["top_logprobs"] = []
            content.append(item)
        return {"content": content}

    def _completion(self, pending: list[tuple[int, Any]]) -> dict[str, Any]:
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for token_id, lp in pending:
            token = self._name(token_id)
            tokens.append(token)
            offsets.append(self._offset)
            self._offset += len(token)
            if lp is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(max(lp[0], FLOOR))
            top_logprobs.append({self._name(t): max(v, FLOOR) for t, v in _entries(token_id, lp)[: self.k + 1]})
        return {
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "tokens": tokens,
            "top_logprobs": top_logprobs,
        }
