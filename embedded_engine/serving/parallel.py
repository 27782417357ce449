"""Parallel sampling (``n`` > 1) on ``serve``, as vLLM v1 does it: the request fans out into ``n``
sequences of the same prompt (ids ``{i}_{request id}``; with a ``seed``, sequence ``i`` uses
``seed + i``), and their outputs come back as choices ``0 .. n-1`` of one response.

The first sequence is submitted alone; the others follow once it has produced its first token,
when the prompt's full KV blocks are in the prefix cache, so they share those blocks instead of
computing the prompt again (with prefix caching on; only the prompt's last, partial block is
computed again per sequence). Each sequence is its own request in the bundle and the metrics.
Usage counts the prompt once and the completion tokens of every choice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from bottleneck_map.bundle import now_ns
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams
from bottleneck_map.embedded_engine.serving import openai_protocol as oai
from bottleneck_map.embedded_engine.serving.logprobs import LogprobsBuilder


class ChoiceFailed(Exception):
    """One sequence was rejected or failed in the engine: the whole response fails."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def child_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """The sampling parameters of each of the ``n`` sequences (ValueError for a seed that would
    leave the 64-bit range)."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]


def child_trace(trace: RequestTrace) -> RequestTrace:
    """A sequence's own trace: the request's arrival and tokenization, nothing shared."""
    return RequestTrace(
        arrival_ns=trace.arrival_ns,
        workload_class=trace.workload_class,
        tokenize_start_ns=trace.tokenize_start_ns,
        tokenize_end_ns=trace.tokenize_end_ns,
    )


class Choice:
    """One sequence as the HTTP side sees it: detokenized, stop strings applied, logprobs."""

    def __init__(self, index: int, stream: Any, tokenizer: Any, req: oai.GenerationRequest) -> None:
        self.index, self.st = index, stream
        self.detok = tokenizer.detokenizer()
        self.stop = oai.StopChecker(req.stop)
        self.lps = None if req.logprobs is None else LogprobsBuilder(tokenizer, req.kind, req.logprobs)
        self.n_out, self.parts, self.reason, self.done = 0, [], None, False

    def push(self, out: Any, core: Any) -> str:
        """Take one engine output; return the text that can go out now."""
        if isinstance(out, Exception):
            raise ChoiceFailed(str(out), 500)
        if out.finish_reason == "rejected":
            raise ChoiceFailed(out.error or "request rejected", 400)
        if out.finish_reason == "error":
            raise ChoiceFailed(out.error or "request failed", 500)
        self.n_out += len(out.new_token_ids)
        if self.lps is not None:
            self.lps.add(out.new_token_ids, out.logprobs)
        piece = self.stop.push("".join(self.detok.push(t) for t in out.new_token_ids), final=out.finished)
        if self.stop.stopped and not out.finished:
            core.abort(self.st.request_id, stopped=True)
        self.done = self.stop.stopped or out.finished
        if self.done:
            self.reason = "stop" if self.stop.stopped else (out.finish_reason or "stop")
        self.parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Fanout:
    """The ``n`` sequences of one request, submitted the way the module docstring describes."""

    def __init__(
        self,
        state: Any,
        req: oai.GenerationRequest,
        rid: str,
        ids: list[int],
        params: SamplingParams,
        trace: RequestTrace,
        traceparent: str | None,
    ) -> None:
        self.core, self.req, self.rid, self.ids = state.loop, req, rid, ids
        self.params = child_params(params, req.n)  # before anything is submitted: a bad seed is a 400
        self.trace, self.traceparent = trace, traceparent
        self.choices: list[Choice] = []
        self.first: Any = None  # the first sequence's first output, taken before the others started
        self._tasks: list[asyncio.Future] = []

    def _submit(self, i: int) -> Choice:
        st = self.core.submit(
            self.sequence_id(i),
            self.ids,
            self.params[i],
            child_trace(self.trace),
            deliver=self.req.stream,
            traceparent=self.traceparent,
        )
        choice = Choice(i, st, self.core.tokenizer, self.req)
        self.choices.append(choice)
        return choice

    def sequence_id(self, i: int) -> str:
        """Sequence ``i``'s request id, as vLLM names a parallel-sampling child."""
        return f"{i}_{self.rid}"

    async def start(self) -> None:
        """Submit the first sequence, wait for its first output, then submit the others."""
        metrics = getattr(self.core, "metrics", None)
        if metrics is not None:
            metrics.expect_parallel([self.sequence_id(i) for i in range(self.req.n)])
        first = self._submit(0)
        self.first = await first.st.queue.get()
        for i in range(1, self.req.n):
            self._submit(i)

    def close(self) -> None:
        """Stop listening and hand every sequence back (a running one is aborted)."""
        for t in self._tasks:
            t.cancel()
        metrics = getattr(self.core, "metrics", None)
        if metrics is not None and len(self.choices) < self.req.n:
            metrics.forget_parallel([self.sequence_id(i) for i in range(len(self.choices), self.req.n)])
        for c in self.choices:
            if self.req.stream:
                self.core.detach(c.st, c.text)
            else:
                self.core.detach(c.st)

    def usage(self) -> dict[str, int]:
        return oai.usage(len(self.ids), sum(c.n_out for c in self.choices))

    async def outputs(self) -> AsyncIterator[tuple[Choice, Any]]:
        """Every sequence's outputs as they come, the first sequence's first output first."""
        merged: asyncio.Queue = asyncio.Queue()

        async def forward(c: Choice) -> None:
            while True:
                out = await c.st.queue.get()
                await merged.put((c, out))
                if isinstance(out, Exception) or out.finished:
                    return

        yield self.choices[0], self.first
        self._tasks = [asyncio.ensure_future(forward(c)) for c in self.choices]
        while not all(c.done for c in self.choices):
            c, out = await merged.get()
            if not c.done:  # a choice ended by a stop string still gets the engine's final output: not news
                yield c, out


async def full_body(fan: Fanout, created: int, disconnected: Any) -> dict[str, Any] | None:
    """All choices of a non-streaming answer (None: the client went away; ChoiceFailed: a sequence
    failed)."""
    gone = asyncio.ensure_future(disconnected)

    async def collect() -> None:
        await fan.start()
        async for c, out in fan.outputs():
            c.push(out, fan.core)

    work = asyncio.ensure_future(collect())
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            return None
        work.result()
    finally:
        gone.cancel()
        fan.close()
    req = fan.req
    choices = []
    for c in fan.choices:
        lp = None if c.lps is None else c.lps.take()
        body = (
            oai.chat_body(fan.rid, req.model, created, c.text, c.reason, {}, lp)
            if req.kind == "chat"
            else oai.completion_body(fan.rid, req.model, created, c.text, c.reason, {}, lp)
        )
        choices.append({**body["choices"][0], "index": c.index})
    return {**body, "choices": choices, "usage": fan.usage()}


async def stream_body(fan: Fanout, created: int, done_event: bytes) -> AsyncIterator[bytes]:
    """Server-sent events of all choices, each chunk naming its choice's ``index``."""
    req, rid, chat, core = fan.req, fan.rid, fan.req.kind == "chat", fan.core

    def indexed(chunk: dict[str, Any], i: int) -> bytes:
        chunk["choices"][0]["index"] = i
        if req.continuous_usage:
            chunk["usage"] = fan.usage()
        return oai.sse(chunk)

    try:
        if chat:
            for i in range(req.n):
                yield indexed(oai.chat_chunk(rid, req.model, created, {"role": "assistant", "content": ""}, None), i)
        await fan.start()
        async for c, out in fan.outputs():
            try:
                piece = c.push(out, core)
            except ChoiceFailed as exc:
                yield oai.sse(
                    {"error": {"message": str(exc), "type": "InternalServerError", "param": None, "code": 500}}
                )
                return
            if piece or c.done:
                lp = None if c.lps is None else c.lps.take()
                reason = c.reason if c.done else None
                if chat:
                    chunk = oai.chat_chunk(rid, req.model, created, {"content": piece} if piece else {}, reason, lp)
                else:
                    chunk = oai.completion_chunk(rid, req.model, created, piece, reason, lp)
                yield indexed(chunk, c.index)
                core.record_delivery(c.st, now_ns())
        if req.include_usage:
            yield oai.sse(oai.usage_chunk(req.kind, rid, req.model, created, fan.usage()))
        yield done_event
    finally:
        fan.close()


async def respond(state: Any, request: Any, req: oai.GenerationRequest, rid: str, ids: list[int], params, trace) -> Any:
    """The response to a request with ``n`` > 1 (the server's own helpers, imported here: the
    server module imports this one)."""
    from starlette.responses import JSONResponse, Response

    from bottleneck_map.embedded_engine.serving import server as srv

    try:
        fan = Fanout(state, req, rid, ids, params, trace, request.headers.get("traceparent"))
    except ValueError as exc:  # a seed + i beyond 64 bits
        return srv._error(oai.ApiError(str(exc), param="seed"))
    created = int(time.time())
    if req.stream:
        return srv._SSEResponse(
            stream_body(fan, created, srv._DONE),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": rid},
        )
    try:
        body = await full_body(fan, created, srv._disconnected(request))
    except ChoiceFailed as exc:
        kind = "invalid_request_error" if exc.status == 400 else "InternalServerError"
        return srv._error(oai.ApiError(str(exc), status=exc.status, type=kind))
    return Response(status_code=499) if body is None else JSONResponse(body)
