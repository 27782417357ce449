"""LLMEngine: the loop a server (or the workload runner) drives.

``add_request`` and ``abort`` may be called from any thread (an HTTP server thread);
they are queued and applied at the start of the next ``step``, which one loop thread
calls. Each step schedules a batch, runs the model, samples, and hands each request
its new tokens, through the outputs ``step`` returns and through an optional
per-request callback. Every step and every finished request becomes a trace record.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bottleneck_map.bundle import now_ns
from bottleneck_map.embedded_engine.core.block_manager import BlockManager
from bottleneck_map.embedded_engine.core.engine_config import GIB, EngineConfig
from bottleneck_map.embedded_engine.core.inject import Injection, spin
from bottleneck_map.embedded_engine.core.model_runner import ModelRunner, StepResult
from bottleneck_map.embedded_engine.core.sampler import stop_status
from bottleneck_map.embedded_engine.core.scheduler import Scheduler
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams, Sequence, SequenceStatus
from bottleneck_map.embedded_engine.core.tracing import TraceSink, parent_from_traceparent
from bottleneck_map.embedded_engine.model.kv_cache import allocate_kv_cache, block_bytes

log = logging.getLogger("bottleneck_map.engine")


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    token_ns: list[int]
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    logprobs: list | None = None  # per new token, when the request asked: sampler.TokenLogprobs
    # with the first output of a request that asked: one per prompt token after the first
    prompt_logprobs: list | None = None


@dataclass
class _Submission:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    trace: RequestTrace
    callback: Callable[[RequestOutput], Any] | None
    deliver: bool


@dataclass
class EngineStats:
    num_steps: int = 0
    num_finished: int = 0
    num_rejected: int = 0
    num_aborted: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    forward_ns: int = 0
    step_ns: int = 0
    extra: dict = field(default_factory=dict)


class LLMEngine:
    def __init__(
        self,
        loaded,
        config: EngineConfig | None = None,
        *,
        sink: TraceSink | None = None,
        injection: Injection | None = None,
    ) -> None:
        """``loaded``: a ``loader.LoadedModel`` (config, model, tokenizer)."""
        self.loaded = loaded
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        param = next(loaded.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = config or EngineConfig()
        bytes_per_block = block_bytes(self.model_config, cfg.block_size, self.dtype)
        self.config = cfg.resolved(self.model_config.max_position_embeddings, bytes_per_block)
        self.config.device, self.config.dtype = str(self.device), str(self.dtype).removeprefix("torch.")
        num_swap = (
            int(self.config.swap_space_gib * GIB) // bytes_per_block if self.config.preemption_mode == "swap" else 0
        )
        self.kv = allocate_kv_cache(
            self.model_config, self.config.num_kv_blocks, cfg.block_size, self.device, self.dtype
        )
        self.block_manager = BlockManager(
            self.config.num_kv_blocks,
            cfg.block_size,
            self.config.enable_prefix_caching,
            num_swap_blocks=num_swap,
            bytes_per_block=self.kv.bytes_per_block,
        )
        self.scheduler = Scheduler(self.config, self.block_manager)
        self.runner = ModelRunner(loaded.model, self.kv, self.device, num_swap)
        self.sink = sink or TraceSink(model_name=self.model_config.name)
        self.injection = injection or Injection()
        self.eos_token_ids = tuple(self.model_config.eos_token_ids) or tuple(self.tokenizer.eos_token_ids)
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._inbox: deque[_Submission | str | tuple[str, str]] = deque()
        self._work = threading.Event()
        self._order = itertools.count()
        self._callbacks: dict[str, Callable[[RequestOutput], Any]] = {}
        self._delivering: dict[str, Sequence] = {}
        self._known: set[str] = set()
        self._step_id = 0
        torch.manual_seed(self.config.seed)

    # -- submission (any thread) -----------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        arrival_ns: int | None = None,
        trace: RequestTrace | None = None,
        workload_class: str | None = None,
        traceparent: str | None = None,
        parent_context: Any = None,
        on_output: Callable[[RequestOutput], Any] | None = None,
        deliver: bool = False,
    ) -> None:
        """Queue a request. A text prompt is tokenized here (stamped as the tokenize stage).

        With ``deliver=True`` the caller streams the output and owns the end of the
        request's record: it stamps ``first_byte_ns``/``last_byte_ns``/``delivered_ns``
        through :meth:`record_delivery` and then calls :meth:`complete`.
        """
        if trace is None:
            trace = RequestTrace(arrival_ns=arrival_ns if arrival_ns is not None else now_ns())
        trace.workload_class = workload_class or trace.workload_class
        if parent_context is None and traceparent:
            parent_context = parent_from_traceparent(traceparent)
        trace.parent_context = parent_context or trace.parent_context
        if isinstance(prompt, str):
            if self.sink.record_prompts:
                trace.prompt_text = prompt
            trace.tokenize_start_ns = now_ns()
            ids = self.tokenizer.encode(prompt)
            spin(int(self.injection.tokenize_us_per_token * 1000 * len(ids)))
            trace.tokenize_end_ns = now_ns()
        else:
            ids = list(prompt)
        sub = _Submission(request_id, ids, params or SamplingParams(), trace, on_output, deliver)
        with self._lock:
            if request_id in self._known:
                raise ValueError(f"request id {request_id!r} already in use")
            self._known.add(request_id)
            self._inbox.append(sub)
        self._work.set()

    def abort(self, request_id: str, *, stopped: bool = False) -> None:
        """End a request at the next step: aborted, or with ``stopped=True`` finished as ``stop``
        (a stop string matched in the detokenized text, which the server checks)."""
        with self._lock:
            self._inbox.append(("stop", request_id) if stopped else request_id)
        self._work.set()

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block the loop thread until a submission arrives or there is work queued."""
        if self.has_unfinished():
            return True
        got = self._work.wait(timeout)
        return got

    def has_unfinished(self) -> bool:
        with self._lock:
            pending = bool(self._inbox)
        return pending or self.scheduler.has_unfinished()

    @property
    def num_requests_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_requests_running(self) -> int:
        return len(self.scheduler.running)

    # -- the loop (one thread) ------------------------------------------------
    def _drain_inbox(self, outputs: list[RequestOutput]) -> None:
        with self._lock:
            items, self._inbox = list(self._inbox), deque()
            self._work.clear()
        for item in items:
            if isinstance(item, tuple):  # ("stop", request_id): finished by a stop string
                seq = self.scheduler.abort(item[1])
                if seq is not None:
                    seq.status = SequenceStatus.FINISHED_STOPPED
                    self._finish(seq, outputs, [], [])
                continue
            if isinstance(item, str):
                seq = self.scheduler.abort(item)
                if seq is not None:
                    self.stats.num_aborted += 1
                    self._finish(seq, outputs, [], [])
                continue
            seq = Sequence(item.request_id, item.prompt_token_ids, item.params, item.trace, next(self._order))
            now = now_ns()
            seq.trace.queued_ns = now
            if item.callback is not None:
                self._callbacks[seq.request_id] = item.callback
            if item.deliver:
                self._delivering[seq.request_id] = seq
            reason = self._reject_reason(seq)
            if reason:
                seq.status = SequenceStatus.FINISHED_REJECTED
                seq.trace.error = reason
                self.stats.num_rejected += 1
                self._finish(seq, outputs, [], [])
            else:
                self.scheduler.add(seq)

    def _reject_reason(self, seq: Sequence) -> str | None:
        n, limit = seq.num_prompt_tokens, self.config.max_model_len
        if n == 0:
            return "empty prompt"
        if n >= limit:
            return f"prompt of {n} tokens leaves no room to generate within max_model_len {limit}"
        if any(t < 0 or t >= self.model_config.vocab_size for t in seq.token_ids):
            return "prompt holds token ids outside the vocabulary"
        return None

    def step(self) -> list[RequestOutput]:
        """One engine iteration; returns the outputs it produced (possibly none)."""
        outputs: list[RequestOutput] = []
        start = now_ns()
        self._drain_inbox(outputs)
        sched = self.scheduler.schedule()
        t_sched = now_ns()
        if sched.is_empty and not sched.swap and not sched.preempted:
            return outputs
        if sched.scheduled:
            res = self.runner.run(sched.scheduled, sched.swap)
        else:  # only preemptions (and their swap copies) happened
            res = StepResult()
            if sched.swap:
                res.swap_ns, res.swap_out_bytes, res.swap_in_bytes = self.runner.swap(sched.swap)
        t_post = now_ns()
        for item in sched.scheduled:
            seq = item.seq
            scored = res.prompt_logprobs.get(seq.request_id)
            if scored is not None and scored[0] == len(seq.prompt_logprobs) + 1:
                seq.prompt_logprobs.extend(scored[1])
            seq.num_computed_tokens += item.num_tokens
            self.block_manager.register_full_blocks(seq)
            error = res.failed.get(seq.request_id)
            if error is None:
                try:
                    self._postprocess(
                        seq, res.sampled.get(seq.request_id), t_post, outputs, res.logprobs.get(seq.request_id)
                    )
                except Exception as exc:  # this request's own processing: it fails, the others go on
                    error = f"processing the sampled token failed: {type(exc).__name__}: {exc}"
            if error is not None and not seq.is_finished:
                self._fail(seq, error, outputs)
        spin(int(self.injection.step_host_ms * 1e6))
        end = now_ns()
        self._record_step(sched, res, start, t_sched, t_post, end)
        return outputs

    def _postprocess(
        self, seq: Sequence, token: int | None, t_post: int, outputs: list[RequestOutput], logprobs: Any = None
    ) -> None:
        """Append one sampled token (None: this step computed a prompt chunk only) and end the request if due."""
        if token is None:
            return
        if seq.trace.prefill_end_ns is None:
            seq.trace.prefill_end_ns = t_post
        seq.token_ids.append(token)
        seq.trace.token_ns.append(t_post)
        if seq.trace.first_token_ns is None:
            seq.trace.first_token_ns = t_post
        status = stop_status(seq, token, self.eos_token_ids, self.config.max_model_len)
        if status is not None:
            self.scheduler.finish(seq, status)
            self._finish(seq, outputs, [token], [t_post], logprobs)
        else:
            out = RequestOutput(seq.request_id, [token], [t_post], logprobs=None if logprobs is None else [logprobs])
            self._emit(seq, out, outputs)

    def _fail(self, seq: Sequence, error: str, outputs: list[RequestOutput]) -> None:
        """End one running request with finish reason ``error`` and free its KV blocks."""
        log.warning("request %s failed: %s", seq.request_id, error)
        self.scheduler.finish(seq, SequenceStatus.FINISHED_ERROR)
        seq.trace.error = error
        self._finish(seq, outputs, [], [])

    def _emit(self, seq: Sequence, out: RequestOutput, outputs: list[RequestOutput]) -> None:
        out.num_prompt_tokens, out.num_output_tokens = seq.num_prompt_tokens, seq.num_output_tokens
        out.num_cached_tokens = seq.num_cached_tokens
        if seq.params.prompt_logprobs is not None and seq.num_output_tokens <= len(out.new_token_ids):
            out.prompt_logprobs = list(seq.prompt_logprobs)  # the request's first output
        outputs.append(out)
        cb = self._callbacks.get(seq.request_id)
        if cb is not None:
            try:
                cb(out)
            except Exception:  # the consumer's fault: the engine and the other requests go on
                log.exception("the output callback of request %s failed", seq.request_id)

    def _finish(
        self, seq: Sequence, outputs: list[RequestOutput], tokens: list[int], stamps: list[int], logprobs: Any = None
    ) -> None:
        seq.trace.finished_ns = now_ns()
        self.stats.num_finished += 1
        self.stats.prompt_tokens += seq.num_prompt_tokens
        self.stats.output_tokens += seq.num_output_tokens
        out = RequestOutput(seq.request_id, tokens, stamps, True, seq.finish_reason, seq.trace.error)
        if logprobs is not None:
            out.logprobs = [logprobs]
        self._emit(seq, out, outputs)
        self._callbacks.pop(seq.request_id, None)
        if seq.request_id not in self._delivering:
            self._close(seq)

    def _close(self, seq: Sequence) -> None:
        self.sink.request(seq)
        with self._lock:
            self._known.discard(seq.request_id)

    # -- delivery (the streaming consumer's thread) ------------------------------
    def record_delivery(self, request_id: str, ns: int | None = None) -> None:
        """Stamp one streamed chunk of ``request_id`` as written to the client."""
        seq = self._delivering[request_id]
        ns = now_ns() if ns is None else ns
        t = seq.trace
        if t.first_byte_ns is None:
            t.first_byte_ns = ns
        t.last_byte_ns = ns
        t.delivered_ns.append(ns)

    def complete(self, request_id: str, output_text: str | None = None) -> None:
        """The consumer delivered the last byte: write the request's record."""
        seq = self._delivering.pop(request_id)
        if output_text is not None and self.sink.record_prompts:
            seq.trace.output_text = output_text
        self._close(seq)

    def flush_delivering(self) -> None:
        """Write the records of requests whose consumer never completed them."""
        for request_id in list(self._delivering):
            seq = self._delivering[request_id]
            if seq.is_finished:
                self.complete(request_id)

    # -- records ----------------------------------------------------------------
    def _record_step(self, sched, res, start: int, t_sched: int, t_post: int, end: int) -> None:
        self._step_id += 1
        items = sched.scheduled
        self.stats.num_steps += 1
        self.stats.num_preemptions += len(sched.preempted)
        self.stats.swap_out_bytes += res.swap_out_bytes
        self.stats.swap_in_bytes += res.swap_in_bytes
        self.stats.forward_ns += res.forward_ns or 0
        self.stats.step_ns += end - start
        if not self.sink.enabled:
            return
        prefill = [i for i in items if i.is_prefill]
        self.sink.step(
            {
                "step_id": self._step_id,
                "start_ns": start,
                "end_ns": end,
                "schedule_ns": t_sched - start,
                "prepare_ns": res.prepare_ns,
                "forward_ns": res.forward_ns,
                "sample_ns": res.sample_ns,
                "postprocess_ns": end - t_post,
                "swap_ns": res.swap_ns,
                "num_prefill_tokens": sum(i.num_tokens for i in prefill),
                "num_prefill_seqs": len(prefill),
                "num_decode_seqs": len(items) - len(prefill),
                "num_running": len(self.scheduler.running),
                "num_waiting": len(self.scheduler.waiting),
                "num_swapped": len(self.scheduler.swapped),
                "num_preempted": len(sched.preempted),
                "kv_blocks_used": self.block_manager.num_used,
                "kv_blocks_free": self.block_manager.num_free,
                "swap_out_bytes": res.swap_out_bytes,
                "swap_in_bytes": res.swap_in_bytes,
                "request_ids": [i.seq.request_id for i in items],
                "query_lens": [i.num_tokens for i in items],
                "context_lens": [i.seq.num_computed_tokens for i in items],
                "is_prefill": [i.is_prefill for i in items],
            }
        )

    # -- conveniences -----------------------------------------------------------
    def run_until_done(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        while self.has_unfinished():
            outputs.extend(self.step())
        return outputs

    def generate(
        self, prompts: list[list[int]] | list[str], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[list[int]]:
        """Submit all prompts at once, run to completion, return the output token ids in order."""
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        base = f"gen{next(self._order)}-"
        tokens: dict[str, list[int]] = {}
        for i, (p, sp) in enumerate(zip(prompts, params_list, strict=True)):
            tokens[base + str(i)] = []
            self.add_request(base + str(i), p, sp)
        for out in self.run_until_done():
            if out.request_id in tokens:
                tokens[out.request_id].extend(out.new_token_ids)
        return [tokens[base + str(i)] for i in range(len(prompts))]

    def abort_unfinished(self) -> None:
        """End every request still queued or in the scheduler as aborted (shutdown), so each
        request a step row names has its record in the bundle."""
        outputs: list[RequestOutput] = []
        self._drain_inbox(outputs)
        sched = self.scheduler
        for seq in [*sched.waiting, *sched.running, *sched.swapped]:
            sched.abort(seq.request_id)
            self.stats.num_aborted += 1
            self._finish(seq, outputs, [], [])

    def close(self) -> None:
        self.abort_unfinished()
        self.flush_delivering()
        self.sink.close()
