"""OpenAI-compatible HTTP server over the embedded engine (``bottleneck-map serve``).

uvicorn's event loop handles HTTP (parsing, tokenization in its thread pool,
incremental detokenization, SSE writes). The engine runs apart from it, in one of
two ways behind the same interface (``ServerState.loop``):

- :class:`~bottleneck_map.embedded_engine.serving.server_process.EngineProcess` (the
  default): the engine core in its own process, talking over a pipe, so the HTTP
  event loop never waits for the engine loop's GIL;
- :class:`EngineLoop`: one engine thread in this process (a model already loaded
  here, and tests that reach into the engine).

A request's arrival is stamped when its first bytes are read from the socket
(:class:`ArrivalH11Protocol`, which ``serve`` runs uvicorn with), or else when the
ASGI app is first called for it. A streamed chunk is stamped as delivered once the ASGI
server accepted it, and the request's record (with ``first_byte_ns``,
``last_byte_ns`` and ``delivered_ns``) is written once the last chunk went out. A
client that disconnects mid-stream aborts its request, which frees its KV blocks.

``GET /metrics`` serves vLLM's metric names (see :mod:`vllm_metrics`), plus the
node agent's when it samples in-process.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bottleneck_map.bundle import now_ns
from bottleneck_map.embedded_engine.core.engine import LLMEngine, RequestOutput
from bottleneck_map.embedded_engine.core.inject import spin
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams
from bottleneck_map.embedded_engine.core.tracing import TraceSink, request_row
from bottleneck_map.embedded_engine.serving import openai_protocol as oai
from bottleneck_map.embedded_engine.serving import parallel
from bottleneck_map.embedded_engine.serving.limits import GuardedH11Protocol, ServeLimits, prompt_char_limit
from bottleneck_map.embedded_engine.serving.logprobs import LogprobsBuilder
from bottleneck_map.embedded_engine.serving.vllm_metrics import VllmMetrics, engine_facts, instrument_http

log = logging.getLogger("bottleneck_map.serve")

ARRIVAL_KEY = "bottleneck_map.arrival_ns"  # ASGI scope key: when the app was first called for the request


class MetricsSink(TraceSink):
    """The engine's trace sink, also feeding the vLLM metrics (even with no bundle or tracer)."""

    metrics: VllmMetrics | None = None

    @property
    def enabled(self) -> bool:
        return True

    def request(self, seq) -> None:
        super().request(seq)
        if self.metrics is not None:
            self.metrics.observe_request(request_row(seq, None, False))

    def step(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.observe_step(row)
        super().step(row)


@dataclass
class _Stream:
    """One in-flight request as the HTTP side sees it."""

    request_id: str
    loop: asyncio.AbstractEventLoop
    deliver: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: bool = False  # the engine emitted the final output
    detached: bool = False  # the HTTP side is done with it (response sent, or client gone)
    echo: Any = None  # _Echo: the prompt to write before the completion


class EngineLoop:
    """Owns the engine thread; the bridge between the engine and asyncio handlers."""

    metrics: VllmMetrics | None = None

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._streams: dict[str, _Stream] = {}
        self._to_complete: deque[tuple[str, str | None]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.error: str | None = None

    # -- engine thread -----------------------------------------------------------
    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.config.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing to attach: the engine thread posts outputs with ``call_soon_threadsafe``."""

    def abort(self, request_id: str, *, stopped: bool = False) -> None:
        self.engine.abort(request_id, stopped=stopped)

    def record_delivery(self, st: _Stream, ns: int) -> None:
        self.engine.record_delivery(st.request_id, ns)

    def _run(self) -> None:
        engine = self.engine
        while not self._stop.is_set():
            try:
                if engine.has_unfinished():
                    engine.step()
                else:
                    engine.wait_for_work(0.02)
            except Exception as exc:  # a failed step fails its requests and marks the server unhealthy
                log.error("engine step failed:\n%s", traceback.format_exc())
                self.error = f"engine error: {exc}"
                self._fail_all(self.error)
                self._stop.wait(0.5)  # no hot loop of failing steps
            self._complete_detached()
        self._complete_detached()

    def _complete_detached(self) -> None:
        """Write the records of streamed requests the HTTP side is done with.

        Runs on the engine thread, after ``step`` returned, so it never races the
        engine's own end-of-request bookkeeping."""
        while self._to_complete:
            rid, text = self._to_complete.popleft()
            try:
                self.engine.complete(rid, text)
            except KeyError:
                pass

    def _fail_all(self, message: str) -> None:
        for st in self._streams.copy().values():  # copy: the event loop adds and removes streams
            st.loop.call_soon_threadsafe(st.queue.put_nowait, RuntimeError(message))
            self.engine.abort(st.request_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.flush_delivering()

    # -- HTTP side ---------------------------------------------------------------
    def submit(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        trace: RequestTrace,
        *,
        deliver: bool,
        traceparent: str | None,
    ) -> _Stream:
        st = _Stream(request_id, asyncio.get_running_loop(), deliver)
        self._streams[request_id] = st

        def on_output(out: RequestOutput) -> None:  # engine thread
            with st.lock:
                if out.finished:
                    st.finished = True
                detached = st.detached
            if detached:
                if out.finished and st.deliver:
                    self._to_complete.append((request_id, None))
                return
            st.loop.call_soon_threadsafe(st.queue.put_nowait, out)

        self.engine.add_request(
            request_id, prompt_ids, params, trace=trace, traceparent=traceparent, on_output=on_output, deliver=deliver
        )
        return st

    def detach(self, st: _Stream, text: str | None = None) -> None:
        """The HTTP side is done: abort the request if still running, and have its
        record written once the engine has finished it."""
        with st.lock:
            st.detached = True
            finished = st.finished
        self._streams.pop(st.request_id, None)
        if not finished:
            self.engine.abort(st.request_id)
        elif st.deliver:
            self._to_complete.append((st.request_id, text))


_DONE = oai.sse("[DONE]")


class _SSEResponse(StreamingResponse):
    """Streams while watching for the client to go away; on disconnect the body
    generator is closed (its ``finally`` aborts the request).

    ``data: [DONE]`` goes out as the last body message (the chunked terminator right after
    it), so a client that sends its next request on the connection as soon as it reads
    ``[DONE]`` finds the response cycle already complete instead of waiting behind it."""

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            last = chunk == _DONE
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch)
        finally:
            await self.body_iterator.aclose()


class ArrivalH11Protocol(GuardedH11Protocol):
    """uvicorn's h11 protocol with ``serve``'s connection limits (see :mod:`limits`), stamping a
    request's arrival when its first bytes are read from the socket, into the ASGI scope
    (``ARRIVAL_KEY``). A request that comes in on a keep-alive
    connection while the previous response is still being sent waits in h11's buffer until that
    response is complete; its arrival is still when it was read."""

    _arrival_ns: int | None = None  # when the next request's first bytes were read
    _read_ns: int = 0  # the latest read

    def data_received(self, data: bytes) -> None:
        self._read_ns = now_ns()
        if self._arrival_ns is None and self.conn.their_state in (h11.IDLE, h11.DONE):
            self._arrival_ns = self._read_ns  # the first bytes of a new request, not a body's continuation
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request was parsed; its task has not started yet
            if self._arrival_ns is not None:
                self.cycle.scope[ARRIVAL_KEY] = self._arrival_ns
            # bytes left over in h11's buffer: a pipelined request, read with this one
            self._arrival_ns = self._read_ns if self.conn.trailing_data[0] else None


class _AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message that quotes a client's string stays valid
    JSON even when that string holds a lone surrogate (which UTF-8 cannot encode)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def _error(exc: oai.ApiError) -> JSONResponse:
    # a refused body may still be arriving: close the connection rather than read the rest
    headers = {"Connection": "close"} if exc.status == 413 else None
    return _AsciiJSONResponse(exc.body(), status_code=exc.status, headers=headers)


@dataclass
class ServerState:
    engine: LLMEngine | None  # None when the engine runs in its own process
    loop: Any  # EngineLoop or server_process.EngineProcess
    served_model: str
    registry: CollectorRegistry
    started: float = field(default_factory=time.time)
    extra_registries: list[CollectorRegistry] = field(default_factory=list)
    tokenize_us_per_token: float = 0.0  # fault injection: extra CPU per prompt token on the tokenizing thread
    limits: ServeLimits = field(default_factory=ServeLimits)

    @property
    def max_prompt_chars(self) -> int:
        return prompt_char_limit(self.limits, self.loop.max_model_len, self.loop.tokenizer.max_token_chars)


def _sampling_params(req: oai.GenerationRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        stop_token_ids=tuple(req.stop_token_ids),
        ignore_eos=req.ignore_eos,
        logprobs=req.logprobs,
        prompt_logprobs=req.logprobs if req.echo else None,  # as vLLM: echo with logprobs scores the prompt
    )


async def _prepare(state: ServerState, req: oai.GenerationRequest, trace: RequestTrace) -> tuple[list[int], int]:
    """Tokenize (in the thread pool) and check the request against the context; returns ids and max_tokens."""
    tok = state.loop.tokenizer
    max_len = state.loop.max_model_len
    vocab = state.loop.vocab_size
    extra_us = state.tokenize_us_per_token

    def encode(text: str, add_special_tokens: bool = True) -> list[int]:
        ids = tok.encode(text, add_special_tokens)
        spin(int(extra_us * 1000 * len(ids)))
        return ids

    max_chars = state.max_prompt_chars
    trace.tokenize_start_ns = now_ns()
    if req.kind == "chat":
        if len(req.messages or []) > max_len:  # each renders to tokens: refused before rendering them all
            raise oai.ApiError(
                f"{len(req.messages or [])} messages cannot fit this model's maximum context length of "
                f"{max_len} tokens.",
                param="messages",
            )
        _check_chars(sum(len(m["content"]) for m in req.messages or []), max_chars, max_len, "messages")
        try:
            text = tok.apply_chat_template(req.messages or [], add_generation_prompt=True)
        except Exception as exc:  # a template that raises on these messages
            raise oai.ApiError(f"cannot apply the chat template: {exc}", param="messages") from None
        _check_chars(len(text), max_chars, max_len, "messages")
        ids = await run_in_threadpool(encode, text, False)
        param = "messages"
    elif req.prompt is not None:
        _check_chars(len(req.prompt), max_chars, max_len, "prompt")
        ids = await run_in_threadpool(encode, req.prompt)
        param = "prompt"
    else:
        ids = list(req.prompt_token_ids or [])
        param = "prompt"
        if len(ids) >= max_len:
            raise oai.context_error(len(ids), req.max_tokens, max_len, param)
        bad = [t for t in ids if t < 0 or t >= vocab]
        if bad:
            raise oai.ApiError(f"token id {bad[0]} is outside the vocabulary (size {vocab}).", param="prompt")
    trace.tokenize_end_ns = now_ns()
    if not ids:
        raise oai.ApiError("The prompt is empty after tokenization.", param=param)
    err = oai.context_error(len(ids), req.max_tokens, max_len, param)
    if err is not None:
        raise err
    max_tokens = req.max_tokens if req.max_tokens is not None else max_len - len(ids)
    return ids, max_tokens


def _check_chars(n: int, max_chars: int, max_model_len: int, param: str) -> None:
    """Refuse, before tokenizing it, a prompt too long in characters to fit the context."""
    if n > max_chars:
        raise oai.ApiError(
            f"This model's maximum context length is {max_model_len} tokens, which no text longer than "
            f"{max_chars} characters fits; your {param} has {n} characters. Please reduce the length of the {param}.",
            param=param,
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is known to exceed ``limit`` bytes: from its
    ``Content-Length`` before any of it is read, else as it streams in."""
    too_large = oai.ApiError(
        f"The request body is larger than this server's limit of {limit} bytes.",
        status=413,
        type="RequestEntityTooLarge",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        body.append(chunk)
    return b"".join(body)


def _finish_reason(out: RequestOutput, stopped: bool) -> str:
    if stopped:
        return "stop"
    return out.finish_reason or "stop"


async def _generate(state: ServerState, request: Request, kind: str) -> Response:
    arrival = request.scope.get(ARRIVAL_KEY) or now_ns()
    try:
        doc = oai.parse_json(await _read_body(request, state.limits.max_body_bytes))
        req = (
            oai.parse_chat(doc, state.served_model) if kind == "chat" else oai.parse_completion(doc, state.served_model)
        )
        trace = RequestTrace(arrival_ns=arrival, workload_class=kind)
        ids, max_tokens = await _prepare(state, req, trace)
        params = _sampling_params(req, max_tokens)
    except oai.ApiError as exc:
        return _error(exc)
    except ValueError as exc:  # SamplingParams' own checks
        return _error(oai.ApiError(str(exc)))
    except ClientDisconnect:  # the client left (or was timed out) while sending its body
        return Response(status_code=499)
    if not state.loop.alive:
        return _error(oai.ApiError("the engine is not running", status=503, type="ServiceUnavailableError"))
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    if req.n > 1:
        return await parallel.respond(state, request, req, rid, ids, params, trace)
    st = state.loop.submit(rid, ids, params, trace, deliver=req.stream, traceparent=request.headers.get("traceparent"))
    created = int(time.time())
    if req.echo:
        st.echo = _Echo(req.prompt if req.prompt is not None else state.loop.tokenizer.decode(ids), ids)
    if req.stream:
        return _SSEResponse(
            _stream_body(state, st, req, len(ids), created),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": rid},
        )
    return await _full_body(state, st, req, len(ids), created, request)


@dataclass
class _Echo:
    """A completion's prompt, written before its completion (``echo``)."""

    text: str
    ids: list[int]
    done: bool = False

    def take(self, out: RequestOutput, lps: LogprobsBuilder | None) -> str:
        """The prompt text with the request's first output (its tokens' log-probabilities into
        ``lps``: none for the first token, which nothing before it predicts); '' after that."""
        if self.done:
            return ""
        self.done = True
        if lps is not None:
            lps.add(self.ids, [None, *(out.prompt_logprobs or [None] * (len(self.ids) - 1))])
        return self.text


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _full_body(
    state: ServerState, st: _Stream, req: oai.GenerationRequest, n_prompt: int, created: int, request: Request
) -> Response:
    """A non-streaming answer; a client that disconnects before it is ready aborts its request."""
    detok = state.loop.tokenizer.detokenizer()
    stop = oai.StopChecker(req.stop)
    n_out, text, reason = 0, "", "stop"
    lps = None if req.logprobs is None else LogprobsBuilder(state.loop.tokenizer, req.kind, req.logprobs)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            get = asyncio.ensure_future(st.queue.get())
            await asyncio.wait((get, gone), return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return Response(status_code=499)  # nobody is listening; detach aborts the request
            out = get.result()
            if isinstance(out, Exception):
                return _error(oai.ApiError(str(out), status=500, type="InternalServerError"))
            if out.finish_reason == "rejected":
                return _error(oai.ApiError(out.error or "request rejected"))
            if out.finish_reason == "error":  # this request failed in the engine; the others go on
                return _error(oai.ApiError(out.error or "request failed", status=500, type="InternalServerError"))
            n_out += len(out.new_token_ids)
            if st.echo is not None:
                st.echo.take(out, lps)
            if lps is not None:
                lps.add(out.new_token_ids, out.logprobs)
            text += stop.push("".join(detok.push(t) for t in out.new_token_ids), final=out.finished)
            if stop.stopped and not out.finished:
                state.loop.abort(st.request_id, stopped=True)
            if stop.stopped or out.finished:
                reason = _finish_reason(out, stop.stopped)
                break
    finally:
        gone.cancel()
        state.loop.detach(st)
    if st.echo is not None:
        text = st.echo.text + text
    use = oai.usage(n_prompt, n_out)
    lp = None if lps is None else lps.take()
    body = (
        oai.chat_body(st.request_id, req.model, created, text, reason, use, lp)
        if req.kind == "chat"
        else oai.completion_body(st.request_id, req.model, created, text, reason, use, lp)
    )
    return JSONResponse(body)


async def _stream_body(
    state: ServerState, st: _Stream, req: oai.GenerationRequest, n_prompt: int, created: int
) -> AsyncIterator[bytes]:
    core = state.loop
    detok = core.tokenizer.detokenizer()
    stop = oai.StopChecker(req.stop)
    rid, model, chat = st.request_id, req.model, req.kind == "chat"
    n_out, sent = 0, []
    lps = None if req.logprobs is None else LogprobsBuilder(core.tokenizer, req.kind, req.logprobs)
    try:
        if chat:
            yield oai.sse(oai.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None))
        while True:
            out = await st.queue.get()
            if isinstance(out, Exception) or out.finish_reason in ("rejected", "error"):
                message = str(out) if isinstance(out, Exception) else (out.error or f"request {out.finish_reason}")
                yield oai.sse(
                    {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}
                )
                break
            n_out += len(out.new_token_ids)
            echoed = st.echo.take(out, lps) if st.echo is not None else ""
            if lps is not None:  # a chunk carries the tokens since the last chunk
                lps.add(out.new_token_ids, out.logprobs)
            piece = echoed + stop.push("".join(detok.push(t) for t in out.new_token_ids), final=out.finished)
            done = stop.stopped or out.finished
            if stop.stopped and not out.finished:
                core.abort(rid, stopped=True)
            reason = _finish_reason(out, stop.stopped) if done else None
            if piece or done:
                lp = None if lps is None else lps.take()
                if chat:
                    chunk = oai.chat_chunk(rid, model, created, {"content": piece} if piece else {}, reason, lp)
                else:
                    chunk = oai.completion_chunk(rid, model, created, piece, reason, lp)
                if req.continuous_usage:
                    chunk["usage"] = oai.usage(n_prompt, n_out)
                yield oai.sse(chunk)
                core.record_delivery(st, now_ns())
                sent.append(piece)
            if done:
                if req.include_usage:
                    yield oai.sse(oai.usage_chunk(req.kind, rid, model, created, oai.usage(n_prompt, n_out)))
                yield _DONE
                break
    finally:
        state.loop.detach(st, "".join(sent))


def warm_up(state: ServerState) -> None:
    """First-use costs paid before serving rather than by the first requests, each tens of
    milliseconds of CPU on the event loop: anyio's asyncio backend (imported on the first
    ``run_in_threadpool`` or task group) and the chat template's Jinja compilation; then the
    tokenizer and the detokenizer, and the longest vocabulary entry (the prompt-length bound)."""
    importlib.import_module("anyio._backends._asyncio")
    tok = state.loop.tokenizer
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "warm up"}], add_generation_prompt=True)
    except Exception:  # a template that needs other messages fails later with the request's own error
        text = "warm up"
    detok = tok.detokenizer()
    for t in tok.encode(text, False):
        detok.push(t)
    tok.max_token_chars  # noqa: B018 - computed once, here


def build_app(state: ServerState) -> Starlette:
    async def completions(request: Request) -> Response:
        return await _generate(state, request, "completion")

    async def chat(request: Request) -> Response:
        return await _generate(state, request, "chat")

    async def models(request: Request) -> Response:
        return JSONResponse(oai.models_body(state.served_model, state.loop.max_model_len, int(state.started)))

    async def health(request: Request) -> Response:
        if state.loop.alive:
            return Response(status_code=200)
        return JSONResponse({"error": state.loop.error or "engine loop stopped"}, status_code=503)

    async def metrics(request: Request) -> Response:
        body = generate_latest(state.registry) + b"".join(generate_latest(r) for r in state.extra_registries)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(oai.ApiError(f"no route {request.method} {request.url.path}", status=404, type="NotFoundError"))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(
            oai.ApiError(
                f"method {request.method} not allowed on {request.url.path}", status=405, type="BadRequestError"
            )
        )

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    instrument_http(app, state.registry)
    warm_up(state)

    async def entry(scope, receive, send) -> None:
        # arrival: stamped by ArrivalH11Protocol when the request's first bytes were read, else now
        if scope["type"] == "http":
            scope.setdefault(ARRIVAL_KEY, now_ns())
            state.loop.attach(asyncio.get_running_loop())
        await app(scope, receive, send)

    return entry


def make_state(engine: LLMEngine, served_model: str, *, registry: CollectorRegistry | None = None) -> ServerState:
    """Attach vLLM metrics to ``engine`` (its sink must be a :class:`MetricsSink`) and start its loop."""
    disable_created_metrics()  # as vLLM does: no *_created series
    registry = registry or CollectorRegistry()
    bm = engine.block_manager
    total = max(1, engine.config.num_kv_blocks)
    metrics = VllmMetrics(
        served_model,
        max_model_len=engine.config.max_model_len,
        registry=registry,
        running=lambda: engine.num_requests_running,
        waiting=lambda: engine.num_requests_waiting,
        kv_usage=lambda: bm.num_used / total,
        facts=engine_facts(engine),
    )
    if isinstance(engine.sink, MetricsSink):
        engine.sink.metrics = metrics
    loop = EngineLoop(engine)
    loop.metrics = metrics  # the HTTP side's: parallel sampling registers its groups there
    return ServerState(engine, loop.start(), served_model, registry)


def make_process_state(proc, *, registry: CollectorRegistry | None = None) -> ServerState:
    """vLLM metrics for an engine in its own process (``server_process.EngineProcess``): its
    gauges read the engine state that came with the latest step, its counters and histograms
    observe the rows the engine process sends along."""
    disable_created_metrics()
    registry = registry or CollectorRegistry()
    name = proc.info.served_model_name
    proc.metrics = VllmMetrics(
        name,
        max_model_len=proc.max_model_len,
        registry=registry,
        running=lambda: proc.state.running,
        waiting=lambda: proc.state.waiting,
        kv_usage=lambda: proc.state.kv_blocks_used / max(1, proc.state.num_kv_blocks),
        facts=proc.info.facts,
    )
    return ServerState(None, proc, name, registry)
