"""Iteration-level continuous batching (vLLM-class): FCFS, token budget, chunked prefill, preemption.

With chunked prefill (the default) one step holds the running decodes first, then
running prefill chunks, then swapped-in sequences, then new prompts, until
``max_num_batched_tokens`` or ``max_num_seqs`` is spent; a step that had to preempt
admits nothing new. Without it, a step is either
all prefills (whole prompts) or all decodes, prefills first, as vLLM's default
scheduler does. When a running sequence needs a KV block and none is free, the
newest running sequence is preempted: by recompute (its blocks are dropped, it goes
back to the head of the queue) or by swap (its blocks are copied to host memory).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bottleneck_map.bundle import now_ns
from bottleneck_map.embedded_engine.core.block_manager import BlockManager, SwapPlan
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step (the query length)
    is_prefill: bool


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    swap: SwapPlan = field(default_factory=SwapPlan)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.bm = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.swapped: deque[Sequence] = deque()
        self.watermark_blocks = max(1, block_manager.num_blocks // 100)
        self.num_preemptions = 0

    # -- queues ------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def abort(self, request_id: str) -> Sequence | None:
        for queue in (self.waiting, self.running, self.swapped):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self.release(seq)
                    seq.status = SequenceStatus.FINISHED_ABORTED
                    return seq
        return None

    def release(self, seq: Sequence) -> None:
        self.bm.free_seq(seq)
        self.bm.free_swapped(seq)

    def finish(self, seq: Sequence, status: SequenceStatus) -> None:
        self.running.remove(seq)
        self.release(seq)
        seq.status = status

    # -- the step plan -------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        now = now_ns()
        budget = self.config.max_num_batched_tokens
        assert budget is not None, "EngineConfig must be resolved"
        if self.config.chunked_prefill:
            budget = self._schedule_running(out, budget, now)
            if not out.preempted:  # as vLLM: a step that had to preempt admits nothing new
                budget = self._schedule_swapped(out, budget, now)
                self._schedule_waiting(out, budget, now)
        else:
            if not self.swapped:
                self._schedule_waiting(out, budget, now)
            if not out.scheduled:
                budget = self._schedule_running(out, budget, now)
                if not out.preempted:
                    self._schedule_swapped(out, budget, now)
        return out

    def _schedule(self, out: SchedulerOutput, seq: Sequence, n: int, now: int) -> None:
        out.scheduled.append(ScheduledSeq(seq, n, seq.in_prefill))
        seq.trace.scheduled_ns.append(now)
        if seq.trace.first_scheduled_ns is None:
            seq.trace.first_scheduled_ns = now

    def _schedule_running(self, out: SchedulerOutput, budget: int, now: int) -> int:
        pending = [s for s in self.running if not s.in_prefill] + [s for s in self.running if s.in_prefill]
        kept: list[Sequence] = []
        while pending:
            seq = pending.pop(0)
            n = seq.num_uncomputed_tokens
            if self.config.chunked_prefill:
                n = min(n, budget)
            if n == 0 or n > budget:
                kept.append(seq)
                continue
            while not self.bm.can_allocate(seq, n):
                victim = max([*pending, seq], key=lambda s: s.arrival_order)
                self._preempt(victim, out, now)
                if victim is seq:
                    break
                pending.remove(victim)
            else:
                self.bm.allocate(seq, n)
                self._schedule(out, seq, n, now)
                kept.append(seq)
                budget -= n
        self.running = sorted(kept, key=lambda s: s.arrival_order)
        return budget

    def _preempt(self, seq: Sequence, out: SchedulerOutput, now: int) -> None:
        self.num_preemptions += 1
        out.preempted.append(seq)
        seq.trace.preempted_ns.append(now)
        if self.config.preemption_mode == "swap" and self.bm.can_swap_out(seq):
            self.bm.swap_out(seq, out.swap)
            seq.status = SequenceStatus.SWAPPED
            self.swapped.append(seq)
            return
        seq.pending_recompute = seq.num_computed_tokens
        self.bm.free_seq(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def _schedule_swapped(self, out: SchedulerOutput, budget: int, now: int) -> int:
        while self.swapped and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.swapped[0]
            n = seq.num_uncomputed_tokens
            if self.config.chunked_prefill:
                n = min(n, budget)
            elif n > budget:
                break
            extra = -(-(seq.num_computed_tokens + n) // self.bm.block_size) - len(seq.swap_table)
            if len(seq.swap_table) + max(0, extra) > self.bm.num_free:
                break
            self.swapped.popleft()
            self.bm.swap_in(seq, out.swap)
            self.bm.allocate(seq, n)
            seq.status = SequenceStatus.RUNNING
            seq.trace.resumed_ns.append(now)
            self.running.append(seq)
            self._schedule(out, seq, n, now)
            budget -= n
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, now: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            reads_cache = seq.params.prompt_logprobs is None  # a cached prompt token has no logits
            hits = self.bm.match_prefix(seq) if reads_cache else 0
            n = seq.num_uncomputed_tokens
            if self.config.chunked_prefill:
                n = min(n, budget)
            watermark = self.watermark_blocks if self.running else 0
            if n > budget or self.bm.blocks_needed(seq, n) + watermark > self.bm.num_free:
                if reads_cache:
                    self.bm.unmatch_prefix(seq)
                break
            self.waiting.popleft()
            self.bm.allocate(seq, n)
            if seq.trace.preempted_ns:
                seq.trace.recomputed_tokens += max(0, seq.pending_recompute - hits)
                seq.pending_recompute = 0
                seq.trace.resumed_ns.append(now)
            else:
                seq.num_cached_tokens = hits
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self._schedule(out, seq, n, now)
            budget -= n
        return budget
