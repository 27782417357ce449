"""Drive a workload through the engine in real time, in-process, as a server would.

Three threads: a *front end* that waits for each request's arrival time, tokenizes
its prompt with the real tokenizer and submits it; the *engine loop* that steps the
engine; and a *streaming consumer* that detokenizes each new token incrementally
and delivers the text chunk to the request's (simulated) client, stamping when each
chunk was delivered. An injected slow client takes ``client_read_ms`` to read each
chunk, so later chunks of that request wait for it, independently of other requests.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bottleneck_map.bundle import now_ns
from bottleneck_map.embedded_engine.core.engine import LLMEngine, RequestOutput
from bottleneck_map.embedded_engine.core.inject import spin
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams
from bottleneck_map.embedded_engine.workloads.workload import WorkloadRequest


@dataclass
class RunResult:
    num_requests: int
    num_finished: int
    num_rejected: int
    num_aborted: int
    duration_s: float
    output_tokens: int
    prompt_tokens: int
    num_steps: int
    num_preemptions: int
    delivered_bytes: int

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0


class _Consumer:
    """The streaming side: incremental detokenization and per-client delivery."""

    def __init__(self, engine: LLMEngine, read_ns: int, on_done: Callable[[str], None]) -> None:
        self.engine = engine
        self.read_ns = read_ns
        self.on_done = on_done
        self.inbox: queue.Queue[list[RequestOutput] | None] = queue.Queue()
        self.detok: dict[str, object] = {}
        self.text: dict[str, list[str]] = {}
        self.client_free: dict[str, int] = {}
        self.pending: dict[str, deque[tuple[str, bool]]] = {}  # chunks produced, not yet read, per request
        self.due: list[tuple[int, int, str]] = []  # (deliver_at, tiebreak, request_id): one per request
        self.seq = 0
        self.delivered_bytes = 0
        self.thread = threading.Thread(target=self._loop, name="stream-consumer", daemon=True)

    def _accept(self, out: RequestOutput) -> None:
        rid = out.request_id
        if rid not in self.detok:
            self.detok[rid] = self.engine.tokenizer.detokenizer()
            self.text[rid] = []
            self.pending[rid] = deque()
        chunk = "".join(self.detok[rid].push(t) for t in out.new_token_ids)
        if out.finish_reason == "rejected" or (out.finished and not out.num_output_tokens):
            self._complete(rid)
            return
        if not chunk and not out.finished:
            return  # inside a multi-byte character: nothing to send yet
        queue_ = self.pending[rid]
        queue_.append((chunk, out.finished))
        if len(queue_) == 1:  # the client is idle or busy reading: due when it is free
            self._push(rid, max(now_ns(), self.client_free.get(rid, 0)))

    def _push(self, rid: str, at: int) -> None:
        self.seq += 1
        heapq.heappush(self.due, (at, self.seq, rid))

    def _deliver_due(self) -> None:
        while self.due and self.due[0][0] <= now_ns():
            _, _, rid = heapq.heappop(self.due)
            chunk, last = self.pending[rid].popleft()
            self.text[rid].append(chunk)
            self.delivered_bytes += len(chunk.encode())
            now = now_ns()
            self.engine.record_delivery(rid, now)
            self.client_free[rid] = now + self.read_ns  # the client reads this chunk before the next
            if last:
                self._complete(rid)
            elif self.pending[rid]:
                self._push(rid, self.client_free[rid])

    def _complete(self, rid: str) -> None:
        text = "".join(self.text.pop(rid, []))
        self.detok.pop(rid, None)
        self.client_free.pop(rid, None)
        self.pending.pop(rid, None)
        self.engine.complete(rid, text)
        self.on_done(rid)

    def _loop(self) -> None:
        closing = False
        while not (closing and not self.due):
            timeout = None
            if self.due:
                timeout = max(0.0, (self.due[0][0] - now_ns()) / 1e9)
            elif closing:
                break
            try:
                item = self.inbox.get(timeout=timeout)
            except queue.Empty:
                item = []
            if item is None:
                closing = True
            else:
                for out in item:
                    self._accept(out)
            self._deliver_due()


def run_workload(
    engine: LLMEngine,
    requests: list[WorkloadRequest],
    *,
    params: Callable[[WorkloadRequest], SamplingParams] | None = None,
    on_request_done: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Replay ``requests`` against ``engine`` in real time; returns when every request is delivered."""
    inj = engine.injection
    make_params = params or (lambda r: SamplingParams(max_tokens=r.max_tokens, ignore_eos=True))
    total = len(requests)
    done = [0]

    def finished(_: str) -> None:
        done[0] += 1
        if on_request_done is not None:
            on_request_done(done[0], total)

    consumer = _Consumer(engine, int(inj.client_read_ms * 1e6), finished)
    submitted = threading.Event()
    t0 = now_ns()

    failure: list[BaseException] = []

    def front_end() -> None:
        try:
            for r in sorted(requests, key=lambda r: r.arrival_s):
                arrival = t0 + int(r.arrival_s * 1e9)
                delay = (arrival - now_ns()) / 1e9
                if delay > 0:
                    time.sleep(delay)
                trace = RequestTrace(arrival_ns=arrival, workload_class=r.workload_class)
                trace.tokenize_start_ns = now_ns()
                ids = engine.tokenizer.encode(r.prompt_text or "")
                spin(int(inj.tokenize_us_per_token * 1000 * len(ids)))
                trace.tokenize_end_ns = now_ns()
                if engine.sink.record_prompts:
                    trace.prompt_text = r.prompt_text
                engine.add_request(r.request_id, ids, make_params(r), trace=trace, deliver=True)
        except BaseException as exc:  # surface it on the loop thread instead of hanging the run
            failure.append(exc)
        finally:
            submitted.set()

    consumer.thread.start()
    feeder = threading.Thread(target=front_end, name="front-end", daemon=True)
    feeder.start()
    while not (submitted.is_set() and not engine.has_unfinished()):
        if not engine.has_unfinished():
            engine.wait_for_work(0.01)
            continue
        outputs = engine.step()
        if outputs:
            consumer.inbox.put(outputs)
    feeder.join()
    consumer.inbox.put(None)
    consumer.thread.join()
    engine.flush_delivering()
    if failure:
        raise failure[0]
    s = engine.stats
    return RunResult(
        num_requests=total,
        num_finished=s.num_finished - s.num_rejected - s.num_aborted,
        num_rejected=s.num_rejected,
        num_aborted=s.num_aborted,
        duration_s=(now_ns() - t0) / 1e9,
        output_tokens=s.output_tokens,
        prompt_tokens=s.prompt_tokens,
        num_steps=s.num_steps,
        num_preemptions=s.num_preemptions,
        delivered_bytes=consumer.delivered_bytes,
    )
