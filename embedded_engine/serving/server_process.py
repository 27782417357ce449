"""The engine core in its own process, for ``bottleneck-map serve`` (vLLM's ``EngineCoreProc`` layout).

The HTTP process (uvicorn's event loop: parsing, tokenization, detokenization, SSE
writes, ``/metrics``) and the engine process (scheduling, the model, sampling, the
bundle's ``requests`` and ``steps`` rows, the spans) talk over one duplex pipe, so the
HTTP event loop never waits for a GIL held by the engine loop between torch calls.

Into the engine process: ``add`` (prompt ids, sampling parameters and the request's
trace with the arrival and tokenize stamps taken in the HTTP process), ``abort``,
``complete`` (a streamed request's delivery stamps, sent when its last chunk went out),
``call`` (``flush``, ``snapshot``) and ``stop``. Out of it, once per engine step: the
step's outputs (new tokens, their ``token_ns``, finish reasons), the engine's gauges,
and the rows the vLLM metrics observe. Times are ``CLOCK_MONOTONIC`` ns, which both
processes share.

In the engine process, one input thread receives messages and queues them on the
engine (``add_request`` and ``abort`` are thread-safe), so the HTTP process never
blocks on a full pipe; the main thread steps the engine and sends its outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams

log = logging.getLogger("bottleneck_map.serve")

# Fields of a steps row the vLLM metrics observe (the rest stays in the bundle).
_STEP_FIELDS = ("num_prefill_tokens", "num_decode_seqs", "num_preempted", "query_lens", "context_lens")


@dataclass
class EngineSpec:
    """What the engine process needs to build its engine, sink and bundle (all picklable)."""

    model: str
    engine_config: EngineConfig
    served_model_name: str | None
    instance: str
    bundle: Path | None = None
    record_prompts: bool = False
    samples: bool = False  # the HTTP process samples the agent into the same bundle
    measure_device: bool = True
    injection: Any = None
    threads: int | None = None
    flush_interval_s: float = 2.0


@dataclass
class EngineInfo:
    """What the engine process reports once ready."""

    pid: int
    served_model_name: str
    max_model_len: int
    vocab_size: int
    num_kv_blocks: int
    tokenizer: Any
    facts: Any = None  # vllm_metrics.EngineFacts


@dataclass
class EngineState:
    """The engine's gauges and counters after its latest step (sent with every output batch)."""

    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    num_kv_blocks: int = 1
    unfinished: bool = False
    delivering: int = 0
    num_finished: int = 0
    num_steps: int = 0


# -- the engine process -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGTERM when the parent dies, so a killed server leaves no engine behind."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Forwarding:
    """Collects what the HTTP process's vLLM metrics observe, to ship with the next message."""

    def __init__(self) -> None:
        self.steps: list[tuple] = []
        self.requests: list[dict[str, Any]] = []


def serve_meta(
    loaded: Any,
    engine: Any,
    name: str,
    *,
    instance: str,
    engine_process: bool,
    samples: bool,
    measure_device: bool,
    injection: Any,
) -> dict[str, Any]:
    """``meta.json`` of a bundle ``serve`` writes (either layout)."""
    import torch

    from bottleneck_map.bundle import new_meta
    from bottleneck_map.embedded_engine.workloads.cli import device_meta

    device = device_meta(engine.device, engine.dtype) if measure_device else {"kind": engine.device.type}
    return new_meta(
        "bottleneck-map serve",
        model=loaded.config.to_meta(engine.dtype),
        engine=engine.config.to_meta(),
        device=device,
        workload={"description": "OpenAI-compatible API traffic", "served_model_name": name},
        capabilities={"steps": True, "samples": samples, "streaming": True},
        instance=instance,
        serve={"engine_process": engine_process, "torch_threads": torch.get_num_threads()},
        **({"injected": injection.to_meta()} if injection is not None and injection.active else {}),
    )


def _build_engine(spec: EngineSpec, fwd: _Forwarding):
    import torch

    from bottleneck_map.bundle import BundleWriter
    from bottleneck_map.embedded_engine.core.engine import LLMEngine
    from bottleneck_map.embedded_engine.core.tracing import Clock, TraceSink, request_row
    from bottleneck_map.embedded_engine.model.loader import load_model
    from bottleneck_map.embedded_engine.serving.server_cli import tracer_provider_from_env
    from bottleneck_map.embedded_engine.serving.vllm_metrics import engine_facts

    class Sink(TraceSink):
        @property
        def enabled(self) -> bool:
            return True

        def request(self, seq) -> None:
            super().request(seq)
            fwd.requests.append(request_row(seq, None, False))

        def step(self, row: dict[str, Any]) -> None:
            fwd.steps.append(tuple(row[k] for k in _STEP_FIELDS))
            super().step(row)

    ecfg = spec.engine_config
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    loaded = load_model(spec.model, device=ecfg.device, dtype=ecfg.dtype, seed=ecfg.seed)
    name = spec.served_model_name or loaded.config.name
    provider = tracer_provider_from_env(spec.instance)
    sink = Sink(None, provider, model_name=name, instance=spec.instance, record_prompts=spec.record_prompts)
    engine = LLMEngine(loaded, ecfg, sink=sink, injection=spec.injection)
    writer = None
    if spec.bundle is not None:
        meta = serve_meta(
            loaded,
            engine,
            name,
            instance=spec.instance,
            engine_process=True,
            samples=spec.samples,
            measure_device=spec.measure_device,
            injection=spec.injection,
        )
        writer = BundleWriter(spec.bundle, meta, flush_interval_s=spec.flush_interval_s)
        sink.writer, sink.clock = writer, Clock.from_meta(writer.meta)
    info = EngineInfo(
        os.getpid(),
        name,
        engine.config.max_model_len,
        loaded.config.vocab_size,
        engine.config.num_kv_blocks,
        loaded.tokenizer,
        engine_facts(engine),
    )
    return engine, writer, provider, info


def _describe(exc: BaseException) -> tuple[str, str | None, str]:
    """A start-up error as plain data: (kind, ConfigError field, message)."""
    from bottleneck_map.embedded_engine.core.engine_config import ConfigError
    from bottleneck_map.embedded_engine.model.loader import CheckpointError

    if isinstance(exc, ConfigError):
        return "config", exc.field, str(exc).removeprefix(f"{exc.field}: ")
    if isinstance(exc, CheckpointError):
        return "checkpoint", None, str(exc)
    if isinstance(exc, ValueError):
        return "value", None, str(exc)
    return "other", None, f"{type(exc).__name__}: {exc}"


def _raise_start_error(kind: str, field: str | None, message: str, tb: str) -> None:
    from bottleneck_map.embedded_engine.core.engine_config import ConfigError
    from bottleneck_map.embedded_engine.model.loader import CheckpointError

    if kind == "config":
        raise ConfigError(field or "engine", message)
    if kind == "checkpoint":
        raise CheckpointError(message)
    if kind == "value":
        raise ValueError(message)
    raise EngineStartError(f"the engine process failed to start: {message}\n{tb}")


def engine_main(conn, spec: EngineSpec) -> None:
    """Entry point of the engine process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the HTTP process stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _die_with_parent()
    fwd = _Forwarding()
    try:
        engine, writer, provider, info = _build_engine(spec, fwd)
    except BaseException as exc:  # reported to the HTTP process, which raises it again
        with contextlib.suppress(Exception):
            conn.send(("failed", _describe(exc), traceback.format_exc()))
        return
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            conn.send(msg)

    send(("ready", info))
    later: deque = deque()  # complete / call messages, applied on the loop thread between steps
    live: set[str] = set()  # requests added and not yet finished

    def receive() -> None:  # input thread
        try:
            while not stop.is_set():
                msg = conn.recv()
                kind = msg[0]
                if kind == "add":
                    _, rid, ids, params, trace, deliver, traceparent = msg
                    live.add(rid)
                    engine.add_request(rid, ids, params, trace=trace, traceparent=traceparent, deliver=deliver)
                elif kind == "abort":
                    engine.abort(msg[1], stopped=msg[2])
                elif kind == "stop":
                    stop.set()
                else:
                    later.append(msg)
        except (EOFError, OSError):  # the HTTP process is gone
            stop.set()

    threading.Thread(target=receive, name="engine-input", daemon=True).start()
    error: str | None = None

    def state() -> EngineState:
        bm = engine.block_manager
        return EngineState(
            engine.num_requests_running,
            engine.num_requests_waiting,
            bm.num_used,
            bm.num_free,
            max(1, engine.config.num_kv_blocks),
            engine.has_unfinished(),
            len(engine._delivering),
            engine.stats.num_finished,
            engine.stats.num_steps,
        )

    def apply_later() -> None:
        while later:
            msg = later.popleft()
            if msg[0] == "complete":
                _, rid, text, delivered = msg
                try:
                    for ns in delivered:
                        engine.record_delivery(rid, ns)
                    engine.complete(rid, text)
                except KeyError:
                    pass
            elif msg[0] == "call":
                _, call_id, name = msg
                if name == "flush" and writer is not None:
                    writer.flush()
                send(("reply", call_id, state() if name == "snapshot" else None))

    try:
        while not stop.is_set():
            outputs = []
            try:
                if engine.has_unfinished():
                    outputs = engine.step()
                else:
                    engine.wait_for_work(0.02)
            except Exception as exc:  # a failed step fails its requests and marks the server unhealthy
                error = f"engine error: {exc}"
                log.error("engine step failed:\n%s", traceback.format_exc())
                send(("error", error))
                for rid in list(live):
                    engine.abort(rid)
                stop.wait(0.5)  # no hot loop of failing steps
            for out in outputs:
                if out.finished:
                    live.discard(out.request_id)
            apply_later()
            if outputs or fwd.steps or fwd.requests:
                send(("out", outputs, state(), fwd.steps, fwd.requests))
                fwd.steps, fwd.requests = [], []
    except (BrokenPipeError, EOFError, OSError):
        pass  # the HTTP process is gone: close the bundle all the same
    finally:
        apply_later_safe = contextlib.suppress(Exception)
        with apply_later_safe:
            apply_later()
        engine.close()
        if writer is not None:
            writer.update_meta(
                result_summary={"num_steps": engine.stats.num_steps, "num_preemptions": engine.stats.num_preemptions}
            )
            writer.close()
        if provider is not None:
            provider.shutdown()
        with contextlib.suppress(Exception):
            send(("stopped", engine.stats.num_steps))


# -- the HTTP process's side ---------------------------------------------------------------------


class EngineStartError(RuntimeError):
    """The engine process failed before it was ready (its own exception is the cause)."""


@dataclass
class ProcStream:
    """One in-flight request as the HTTP side sees it."""

    request_id: str
    deliver: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    delivered: list[int] = field(default_factory=list)
    text: str | None = None
    finished: bool = False
    detached: bool = False
    echo: Any = None  # the HTTP side's: the prompt to write before the completion


class EngineProcess:
    """The HTTP process's handle on the engine process: submit, abort, stream outputs, gauges.

    Outputs are read on the asyncio event loop (``add_reader`` on the pipe), so no extra
    thread in the HTTP process competes for its GIL."""

    def __init__(self, spec: EngineSpec, *, start_timeout_s: float = 600.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=engine_main, args=(child, spec), name="bmap-engine", daemon=True)
        self.process.start()
        child.close()  # only the engine process holds that end: its death is EOF here
        self._send_lock = threading.Lock()
        self._streams: dict[str, ProcStream] = {}
        self._calls: dict[int, Future] = {}
        self._call_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: str | None = None
        self.state = EngineState()
        self.metrics = None  # VllmMetrics, set by the server
        self._stopping = False
        if not self._conn.poll(start_timeout_s):
            self._kill()
            raise EngineStartError(f"the engine process did not start within {start_timeout_s:.0f} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise EngineStartError(f"the engine process exited with code {self.process.exitcode}") from None
        if msg[0] == "failed":
            self.process.join(10)
            self._conn.close()
            _raise_start_error(*msg[1], msg[2])
        self.info: EngineInfo = msg[1]
        self.state.num_kv_blocks = max(1, self.info.num_kv_blocks)
        self.state.kv_blocks_free = self.info.num_kv_blocks

    # -- what the handlers use -----------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.info.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def alive(self) -> bool:
        return self.error is None and self.process.is_alive()

    def _send(self, msg) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the engine's messages on ``loop`` (the event loop serving HTTP)."""
        if self._loop is loop or self._stopping:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._conn.fileno())
        self._loop = loop
        loop.add_reader(self._conn.fileno(), self._on_readable)

    def submit(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        trace: RequestTrace,
        *,
        deliver: bool,
        traceparent: str | None,
    ) -> ProcStream:
        self.attach(asyncio.get_running_loop())
        st = ProcStream(request_id, deliver)
        self._streams[request_id] = st
        self._send(("add", request_id, prompt_ids, params, trace, deliver, traceparent))
        return st

    def abort(self, request_id: str, *, stopped: bool = False) -> None:
        with contextlib.suppress(OSError):
            self._send(("abort", request_id, stopped))

    def record_delivery(self, st: ProcStream, ns: int) -> None:
        st.delivered.append(ns)

    def detach(self, st: ProcStream, text: str | None = None) -> None:
        """The HTTP side is done: abort the request if still running; once finished, send its
        delivery stamps so the engine process writes its record."""
        st.detached = True
        st.text = text
        if st.finished:
            self._streams.pop(st.request_id, None)
            self._complete(st)
        elif self.alive:
            self.abort(st.request_id)  # the finished output arrives later and completes it
        else:
            self._streams.pop(st.request_id, None)

    def _complete(self, st: ProcStream) -> None:
        if st.deliver:
            with contextlib.suppress(OSError):
                self._send(("complete", st.request_id, st.text, st.delivered))

    # -- reading (event loop) ------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._dispatch(self._conn.recv())
        except (EOFError, OSError):
            self._engine_gone()

    def _dispatch(self, msg) -> None:
        kind = msg[0]
        if kind == "out":
            _, outputs, state, steps, requests = msg
            self.state = state
            # first tokens first: their streams' tasks wake (and write) before the others'
            outputs.sort(key=lambda o: o.num_output_tokens != 1)
            for out in outputs:
                st = self._streams.get(out.request_id)
                if st is None:
                    continue
                if out.finished:
                    st.finished = True
                if st.detached:
                    if out.finished:
                        self._streams.pop(out.request_id, None)
                        self._complete(st)
                    continue
                st.queue.put_nowait(out)
                if out.finished:
                    self._streams.pop(out.request_id, None)
            if self.metrics is not None:
                for step in steps:
                    self.metrics.observe_step(dict(zip(_STEP_FIELDS, step, strict=True)))
                for row in requests:
                    self.metrics.observe_request(row)
        elif kind == "reply":
            fut = self._calls.pop(msg[1], None)
            if fut is not None:
                fut.set_result(msg[2])
        elif kind == "error":
            self.error = msg[1]
            log.error("%s; in-flight requests fail, new ones get 503", msg[1])
            self._fail_all(msg[1])

    def _engine_gone(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._conn.fileno())
        if self._stopping:
            return
        self.process.join(1)
        code = self.process.exitcode
        self.error = self.error or f"the engine process (pid {self.process.pid}) exited with code {code}"
        log.error("%s; in-flight requests fail, new ones get 503", self.error)
        self._fail_all(self.error)

    def _fail_all(self, message: str) -> None:
        for st in list(self._streams.values()):
            if not st.detached:
                st.queue.put_nowait(RuntimeError(message))
        for fut in self._calls.values():
            fut.set_exception(RuntimeError(message))
        self._calls.clear()

    # -- control ---------------------------------------------------------------------------------
    def call(self, name: str, timeout_s: float = 10.0):
        """Ask the engine process between two steps: ``snapshot`` (an :class:`EngineState`) or
        ``flush`` (write its buffered bundle rows). Needs the event loop attached (it reads replies)."""
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("no event loop reads the engine process's replies")
        call_id = next(self._call_ids)
        fut: Future = Future()
        self._calls[call_id] = fut
        self._send(("call", call_id, name))
        return fut.result(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the engine process: it finishes its bundle and spans, then exits."""
        if self._stopping:
            return
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                if loop.is_running():  # another thread serves HTTP: stop reading there first
                    done: Future = Future()
                    loop.call_soon_threadsafe(lambda: (loop.remove_reader(self._conn.fileno()), done.set_result(1)))
                    done.result(2)
                else:
                    loop.remove_reader(self._conn.fileno())
        with contextlib.suppress(OSError):
            self._send(("stop",))
        # drain what it still sends (so it never blocks on a full pipe) until it has stopped
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(EOFError, OSError):
            while time.monotonic() < deadline:
                if self._conn.poll(0.1):
                    if self._conn.recv()[0] == "stopped":
                        break
                elif not self.process.is_alive():
                    break
        self.process.join(max(0.1, deadline - time.monotonic()))
        if self.process.is_alive():
            log.error("the engine process did not stop within %.0f s; terminating it", timeout_s)
            self._kill()
        self._conn.close()

    def _kill(self) -> None:
        self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
