"""The OpenAI API surface ``serve`` speaks: request parsing and validation, response bodies.

Parsing is strict about what would change the answer (``best_of`` other than 1, bad
sampling values, ``max_tokens`` out of range) and lenient about fields that do
not (``user``, ``logprobs: null``), as vLLM's OpenAI server is. Every problem is
an :class:`ApiError` that renders in OpenAI's error shape::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bottleneck_map.embedded_engine.core.sequence import INT64_MAX, INT64_MIN, PENALTY_RANGE, REPETITION_PENALTY_RANGE
from bottleneck_map.embedded_engine.serving.logprobs import LogprobsError, requested

# Largest accepted max_tokens when the model's context is not the limit (guards absurd values).
MAX_TOKENS_CEILING = 1 << 20
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024  # per stop string: the streamed text held back is as long as the longest one
MAX_STOP_TOKEN_IDS = 1024
MAX_N = 128  # most sequences one request may sample in parallel (OpenAI's limit)


class ApiError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: Any = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param = message, status, type, param
        self.code = code if code is not None else status

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found_model(model: Any, served: str) -> ApiError:
    return ApiError(
        f"The model `{model}` does not exist. This server serves `{served}`.",
        status=404,
        type="NotFoundError",
        param="model",
        code="model_not_found",
    )


@dataclass
class GenerationRequest:
    """What both endpoints reduce to."""

    kind: str  # "completion" | "chat"
    model: str
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage in every chunk
    echo: bool = False  # completions: the prompt before the completion, and with logprobs its tokens' log-probabilities
    logprobs: int | None = None  # alternatives per token with its log-probability (None: none asked)
    n: int = 1  # sequences sampled in parallel, returned as choices 0 .. n-1


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"Invalid JSON in request body: {exc}") from None
    except RecursionError:
        raise ApiError("Invalid JSON in request body: nested too deeply.") from None
    if not isinstance(doc, dict):
        raise ApiError("The request body must be a JSON object.")
    return doc


def _number(doc: Mapping[str, Any], key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    v = doc.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(f"`{key}` must be a number, got {_show(v)}.", param=key)
    if isinstance(v, float) and not math.isfinite(v):
        raise ApiError(f"`{key}` must be a finite number, got {v}.", param=key)
    if v > hi or v < lo or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ApiError(f"`{key}` must be in {bound}, got {v}.", param=key)
    return float(v)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(doc: Mapping[str, Any], key: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(f"`{key}` must be an integer, got {_show(v)}.", param=key)
    if not lo <= v <= hi:
        raise ApiError(f"`{key}` must be in [{lo}, {hi}], got {_show(v)}.", param=key)
    return v


def text(v: str, param: str) -> str:
    """``v`` if it is valid Unicode (JSON's ``\\ud800`` escapes can give a lone surrogate, which no
    tokenizer can encode)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(
            f"`{param}` is not valid Unicode: a lone surrogate at character {exc.start}.", param=param
        ) from None
    return v


def _bool(doc: Mapping[str, Any], key: str, default: bool = False) -> bool:
    v = doc.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(f"`{key}` must be a boolean, got {v!r}.", param=key)
    return v


def _common(doc: Mapping[str, Any], kind: str, served_model: str) -> GenerationRequest:
    model = doc.get("model")
    if model is None:
        model = served_model
    if model != served_model:
        raise not_found_model(model, served_model)
    n = _int(doc, "n", 1, MAX_N) or 1
    best_of = doc.get("best_of")
    if best_of is not None and best_of != 1:
        raise ApiError(f"Only best_of=1 is supported, got {best_of!r}.", param="best_of")
    for key in ("logit_bias", "tools", "suffix", "prompt_logprobs"):
        if doc.get(key) not in (None, False, {}, []):
            raise ApiError(f"`{key}` is not supported by this server.", param=key)
    try:
        logprobs = requested(doc, kind)
    except LogprobsError as exc:
        raise ApiError(str(exc), param=exc.param) from None
    max_tokens = _int(doc, "max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = _int(doc, "max_tokens")
    param = "max_completion_tokens" if kind == "chat" and doc.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"`{param}` must be at least 1, got {max_tokens}.", param=param)
    if max_tokens is not None and max_tokens > MAX_TOKENS_CEILING:
        raise ApiError(f"`{param}` of {max_tokens} is absurdly large (limit {MAX_TOKENS_CEILING}).", param=param)
    stop = doc.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise ApiError(f"`stop` must be a string or a list of at most {MAX_STOP_STRINGS} strings.", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(f"each `stop` string must be at most {MAX_STOP_CHARS} characters.", param="stop")
    stop = [text(s, "stop") for s in stop]
    stop_ids = doc.get("stop_token_ids") or []
    if (
        not isinstance(stop_ids, list)
        or len(stop_ids) > MAX_STOP_TOKEN_IDS
        or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= INT64_MAX for t in stop_ids)
    ):
        raise ApiError(
            f"`stop_token_ids` must be a list of at most {MAX_STOP_TOKEN_IDS} non-negative integers.",
            param="stop_token_ids",
        )
    top_k = _int(doc, "top_k")
    if top_k is not None and top_k < -1:
        raise ApiError(f"`top_k` must be -1, 0 or positive, got {top_k}.", param="top_k")
    seed = _int(doc, "seed")
    stream = _bool(doc, "stream")
    opts = doc.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError("`stream_options` must be an object.", param="stream_options")
    if opts and not stream:
        raise ApiError("`stream_options` is only allowed when `stream` is true.", param="stream_options")
    return GenerationRequest(
        kind=kind,
        model=served_model,
        max_tokens=max_tokens,
        temperature=_number(doc, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(doc, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=top_k or 0,
        min_p=_number(doc, "min_p", 0.0, 0.0, 1.0),
        presence_penalty=_number(doc, "presence_penalty", 0.0, *PENALTY_RANGE),
        frequency_penalty=_number(doc, "frequency_penalty", 0.0, *PENALTY_RANGE),
        repetition_penalty=_number(doc, "repetition_penalty", 1.0, *REPETITION_PENALTY_RANGE),
        seed=seed,
        stop=[s for s in stop if s],
        stop_token_ids=list(stop_ids),
        ignore_eos=_bool(doc, "ignore_eos"),
        stream=stream,
        include_usage=bool(opts and _bool(opts, "include_usage")),
        continuous_usage=bool(opts and _bool(opts, "continuous_usage_stats")),
        logprobs=logprobs,
        n=n,
    )


def parse_completion(doc: Mapping[str, Any], served_model: str) -> GenerationRequest:
    req = _common(doc, "completion", served_model)
    req.echo = _bool(doc, "echo")
    if req.echo and req.n > 1:
        raise ApiError("`echo` with `n` > 1 is not supported by this server.", param="echo")
    if req.max_tokens is None:
        req.max_tokens = 16  # OpenAI's and vLLM's default for completions
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        req.prompt = text(prompt, "prompt")
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        req.prompt_token_ids = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError("Batched prompts are not supported; send one prompt per request.", param="prompt")
    else:
        raise ApiError("`prompt` must be a non-empty string or a list of token ids.", param="prompt")
    if req.prompt == "":
        raise ApiError("`prompt` must not be empty.", param="prompt")
    return req


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(f"messages[{i}].content: only text parts are supported.", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise ApiError(f"messages[{i}].content must be a string or a list of text parts.", param="messages")


def parse_chat(doc: Mapping[str, Any], served_model: str) -> GenerationRequest:
    req = _common(doc, "chat", served_model)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("`messages` must be a non-empty list.", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(f"messages[{i}] must be an object with a string `role`.", param="messages")
        out.append(
            {"role": text(m["role"], "messages"), "content": text(_content_text(m.get("content"), i), "messages")}
        )
    req.messages = out
    return req


def context_error(prompt_tokens: int, max_tokens: int | None, max_model_len: int, param: str) -> ApiError | None:
    """vLLM's check: the prompt and the completion must fit in the model's context."""
    if prompt_tokens >= max_model_len:
        return ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt has "
            f"{prompt_tokens} tokens, which leaves no room for a completion. Please reduce the length of the prompt.",
            param=param,
        )
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        return ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} in the completion). "
            "Please reduce the length of the prompt or the completion.",
            param="max_tokens",
        )
    return None


# -- responses ------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str | None,
    use: dict[str, int] | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": None}
        ],
        "usage": use,
    }


def chat_body(
    rid: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str | None,
    use: dict[str, int],
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": use,
    }


def completion_chunk(
    rid: str, model: str, created: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def chat_chunk(
    rid: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def usage_chunk(kind: str, rid: str, model: str, created: int, use: dict[str, int]) -> dict[str, Any]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def sse(doc: Mapping[str, Any] | str) -> bytes:
    data = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def models_body(model: str, max_model_len: int, created: int | None = None) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created or int(time.time()),
                "owned_by": "bottleneck-map",
                "root": model,
                "parent": None,
                "max_model_len": max_model_len,
            }
        ],
    }


class StopChecker:
    """Stop strings over streamed text, as vLLM applies them: the output ends just
    before the first stop string, and text that might begin one is held back."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, delta: str, final: bool = False) -> str:
        """Add newly decoded text; return what can be sent now."""
        if self.stopped:
            return ""
        self.text += delta
        if self.stops:
            start = max(0, self.sent - self.hold)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                final = True
        upto = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent : upto], upto
        return out
