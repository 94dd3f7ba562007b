"""Continuous batching: each step decides which sequences run and how many new tokens each.

Policy, in order, for one step (token budget = max_num_batched_tokens):
 1. Running sequences: decodes first (1 token each, in arrival order), then prefills in progress
    (chunks of at most the remaining budget). When KV blocks run out, the most recently arrived
    running sequence is preempted by recompute: its blocks are freed and it goes back to the
    front of the waiting queue, keeping its output tokens (a later prefill covers prompt + output).
 2. Admission (skipped in a step that preempted): waiting sequences in FCFS order take
    prefix-cache hits and a prefill chunk while the budget, max_num_seqs and KV blocks allow. The
    first one that does not fit stops admission, so none starves. While anything runs, a
    sequence is admitted only if the blocks for its *whole* prompt (+ its first decode token),
    on top of what the running prefills still need to finish theirs, leave `watermark_blocks`
    free: admitted prefills then never preempt each other chunk by chunk, and decodes have
    headroom before a preemption is needed. With max_loras, one needing an
    adapter slot while all are taken is passed over by requests for active adapters at most
    max_adapter_bypass times, then it blocks admission until a slot frees.
 A sequence that can never run (prompt >= max_model_len, or more blocks than the pool) is
 rejected at admission with a FINISHED_REJECTED status rather than blocking the queue; so is
 one never admitted whose `deadline` has passed (DeadlineExceededError), checked every step.

After the model ran, update() appends the sampled tokens, forks n > 1 requests after prefill,
applies EOS / stop token / length limits and frees finished sequences' blocks. Stop strings are
the detokenizer's job; the engine then calls finish().
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from fireplace.engine.block_manager import BlockManager
from fireplace.engine.errors import ContextLengthExceededError, DeadlineExceededError, InvalidRequestError
from fireplace.engine.scheduler_config import SchedulerConfig
from fireplace.engine.scheduler_output import ScheduledSeq, SchedulerOutput
from fireplace.engine.sequence import Sequence, SequenceStatus

__all__ = ["ScheduledSeq", "Scheduler", "SchedulerOutput"]


class Scheduler:
    def __init__(self, config: SchedulerConfig, *, eos_token_ids: Iterable[int] = ()):
        self.config = config
        self.eos_token_ids = frozenset(eos_token_ids)
        self.block_manager = BlockManager(
            config.num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._requests: dict[str, list[Sequence]] = {}  # live sequences of each request
        self._num_bypassed: dict[int, int] = {}  # seq_id -> admissions that passed it (adapter limit)
        self.num_preemptions = 0
        self.num_deadline_rejections = 0

    # -- requests --------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new request's (parent) sequence. Raises InvalidRequestError for bad input."""
        if seq.request_id in self._requests:
            raise InvalidRequestError(f"request {seq.request_id!r} is already running", "request_id")
        if seq.num_prompt_tokens < 1:
            raise InvalidRequestError("the prompt must contain at least one token", "prompt")
        if seq.status is not SequenceStatus.WAITING or seq.block_table:
            raise ValueError(f"only a fresh sequence can be added: {seq!r}")
        seq.params.validate()
        if seq.params.n > self.config.max_num_seqs:
            raise InvalidRequestError(
                f"n must be at most {self.config.max_num_seqs} on this deployment", "n")
        self._requests[seq.request_id] = [seq]
        self.waiting.append(seq)

    def abort(self, request_id: str) -> list[Sequence]:
        """Finish every live sequence of the request and free its KV now; unknown ids are a no-op."""
        seqs = list(self._requests.get(request_id, ()))
        for seq in seqs:
            self.finish(seq, SequenceStatus.FINISHED_ABORTED)
        return seqs

    def finish(self, seq: Sequence, status: SequenceStatus, stop_reason: int | str | None = None) -> None:
        """End a sequence (stop string found, abort, ...) and release its blocks."""
        if not status.is_finished:
            raise ValueError(f"{status} is not a finished status")
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.block_manager.free(seq)
        else:
            self.waiting.remove(seq)
        seq.status = status
        seq.stop_reason = stop_reason
        self._num_bypassed.pop(seq.seq_id, None)
        live = self._requests.get(seq.request_id)
        if live is not None and seq in live:
            live.remove(seq)
            if not live:
                del self._requests[seq.request_id]

    # -- state -----------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def active_adapter_ids(self) -> set[str]:
        """Adapter versions (Sequence.lora_key) among running sequences: each needs its own slot."""
        return {s.lora_key for s in self.running if s.lora_key is not None}

    def sequences(self, request_id: str) -> list[Sequence]:
        """The request's live sequences (children appear once forked)."""
        return list(self._requests.get(request_id, ()))

    # -- one step --------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> SchedulerOutput:
        """now: monotonic seconds, for deadlines (default: time.monotonic())."""
        out = SchedulerOutput()
        self._expire_deadlines(time.monotonic() if now is None else now, out)
        scheduled: dict[int, ScheduledSeq] = {}
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager

        # 1. running: decodes, then prefills in progress; arrival order within each
        for seq in sorted(self.running, key=lambda s: (s.is_prefill, s.sort_key)):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted as a victim earlier in this loop
            while True:
                num_new = min(seq.num_uncomputed_tokens, budget)
                if bm.can_allocate(seq, num_new):
                    break
                victim = max(self.running, key=lambda s: s.sort_key)
                self._preempt(victim)
                out.preempted.append(victim)
                undone = scheduled.pop(victim.seq_id, None)
                if undone is not None:
                    budget += undone.num_new_tokens  # an already scheduled decode gives back its token
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            bm.allocate(seq, num_new)
            scheduled[seq.seq_id] = self._entry(seq, num_new)
            budget -= num_new

        # 2. admission, FCFS
        if not out.preempted:
            budget = self._admit(budget, scheduled, out)

        out.scheduled = list(scheduled.values())
        return out

    def _admit(self, budget: int, scheduled: dict[int, ScheduledSeq], out: SchedulerOutput) -> int:
        cfg, bm = self.config, self.block_manager
        num_seq_slots = sum(1 + s.num_pending_forks for s in self.running)
        adapters = self.active_adapter_ids
        # blocks the running prefills still need to finish their prompt and take a first token
        reserved = sum(self._blocks_to_finish_prefill(s) for s in self.running if s.is_prefill)
        passed_over: list[Sequence] = []  # waiting for an adapter slot, ahead of later admissions
        i = 0
        while i < len(self.waiting) and budget > 0:
            seq = self.waiting[i]
            if self._can_never_run(seq):
                del self.waiting[i]
                self._reject(seq)
                out.rejected.append(seq)
                continue
            if num_seq_slots + 1 + seq.num_pending_forks > cfg.max_num_seqs:
                break
            if (cfg.max_loras is not None and seq.lora_key is not None
                    and seq.lora_key not in adapters and len(adapters) >= cfg.max_loras):
                passed_over.append(seq)
                i += 1
                continue
            if any(self._num_bypassed.get(o.seq_id, 0) >= cfg.max_adapter_bypass for o in passed_over):
                break  # an older request waited long enough for an adapter slot
            # prompt logprobs need every prompt position computed, so no prefix hits then
            hits = bm.lookup_prefix(seq) if seq.params.prompt_logprobs is None else []
            num_cached = len(hits) * bm.block_size
            num_new = min(seq.num_tokens - num_cached, budget)
            if not bm.can_allocate(seq, num_new, hits):
                break
            if self.running and not self._leaves_watermark(seq, hits, reserved):
                break
            bm.allocate(seq, num_new, hits)
            bm.record_admission(seq, num_cached)
            del self.waiting[i]
            for other in passed_over:
                self._num_bypassed[other.seq_id] = self._num_bypassed.get(other.seq_id, 0) + 1
            self._num_bypassed.pop(seq.seq_id, None)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num_seq_slots += 1 + seq.num_pending_forks
            if seq.lora_key is not None:
                adapters.add(seq.lora_key)
            reserved += self._blocks_to_finish_prefill(seq)
            scheduled[seq.seq_id] = self._entry(seq, num_new)
            budget -= num_new
        return budget

    def _entry(self, seq: Sequence, num_new: int) -> ScheduledSeq:
        start = seq.num_computed_tokens
        return ScheduledSeq(seq, start, num_new, needs_logits=start + num_new == seq.num_tokens)

    def _blocks_to_finish_prefill(self, seq: Sequence) -> int:
        """Fresh blocks seq still needs for all its tokens plus the first one it samples."""
        return max(0, self.block_manager.num_blocks_for(seq.num_tokens + 1) - len(seq.block_table))

    def _leaves_watermark(self, seq: Sequence, hits: list[int], reserved: int) -> bool:
        """Admitting seq (whole prompt) keeps watermark_blocks free beyond the reservations."""
        bm = self.block_manager
        need = max(0, bm.num_blocks_for(seq.num_tokens + 1) - len(hits))
        taken = sum(1 for b in hits if bm.ref_counts[b] == 0)  # evictable hits stop being free
        return bm.num_free_blocks - taken - need - reserved >= self.config.watermark_blocks

    def _expire_deadlines(self, now: float, out: SchedulerOutput) -> None:
        expired = [s for s in self.waiting if s.deadline is not None and now > s.deadline
                   and s.status is SequenceStatus.WAITING]  # a preempted one has started: it stays
        for seq in expired:
            self.waiting.remove(seq)
            self.num_deadline_rejections += 1
            waited = max(0.0, now - seq.arrival_time)
            self._reject(seq, DeadlineExceededError(
                f"request {seq.request_id!r} waited {waited:.3f}s in the queue and passed its deadline "
                "before it could start; retry later or with a longer timeout", waited_s=waited))
            out.rejected.append(seq)

    def _can_never_run(self, seq: Sequence) -> bool:
        return (seq.num_prompt_tokens >= self.config.max_model_len
                or self.block_manager.num_blocks_for(seq.num_tokens) > self.config.num_blocks)

    def _reject(self, seq: Sequence, error: Exception | None = None) -> None:
        seq.status = SequenceStatus.FINISHED_REJECTED
        seq.error = error or ContextLengthExceededError(
            f"the prompt has {seq.num_prompt_tokens} tokens; this deployment fits at most "
            f"{self.config.max_model_len - 1} prompt tokens", "prompt")
        self._num_bypassed.pop(seq.seq_id, None)
        self._requests.pop(seq.request_id, None)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.PREEMPTED
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # -- after the model ran ---------------------------------------------------------------
    def update(self, output: SchedulerOutput, sampled_token_ids: Iterable[int]) -> list[Sequence]:
        """Record a step's results; sampled_token_ids align with output.logits_seqs.

        Returns the sequences that finished (their blocks are already free). Sequences aborted
        while the step ran are skipped. Children forked here are scheduled from the next step.
        """
        tokens = list(sampled_token_ids)
        if len(tokens) != output.num_generated_tokens:
            raise ValueError(f"expected {output.num_generated_tokens} sampled tokens, got {len(tokens)}")
        finished: list[Sequence] = []
        next_token = iter(tokens)
        for entry in output.scheduled:
            token = int(next(next_token)) if entry.needs_logits else None
            seq = entry.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens = entry.context_len
            self.block_manager.cache_computed_blocks(seq)
            if token is None:
                continue
            seq.append_token(token)
            if seq.num_pending_forks:
                self._fork(seq)
            status, stop_reason = self._check_finished(seq, token)
            if status is not None:
                self.finish(seq, status, stop_reason)
                finished.append(seq)
        return finished

    def _fork(self, parent: Sequence) -> None:
        # Children share the full prompt blocks and recompute the rest (1..block_size tokens)
        # themselves, so the last, partly filled block is never shared and needs no copy.
        num_shared = (parent.num_prompt_tokens - 1) // self.config.block_size
        live = self._requests.setdefault(parent.request_id, [])
        for index in range(1, parent.params.n):
            child = parent.fork(index)
            self.block_manager.fork(parent, child, num_shared)
            child.status = SequenceStatus.RUNNING
            self.running.append(child)
            live.append(child)
        parent.num_pending_forks = 0

    def _check_finished(self, seq: Sequence, token: int) -> tuple[SequenceStatus | None, int | None]:
        """(status, stop_reason): stop_reason is the stop token id, None for EOS or length."""
        params = seq.params
        if seq.num_output_tokens > params.min_tokens:  # the token was sampled after min_tokens
            if token in params.stop_token_ids:
                return SequenceStatus.FINISHED_STOPPED, token
            if not params.ignore_eos and token in self.eos_token_ids:
                return SequenceStatus.FINISHED_STOPPED, None
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return SequenceStatus.FINISHED_LENGTH, None
        if seq.num_tokens >= self.config.max_model_len:
            return SequenceStatus.FINISHED_LENGTH, None
        return None, None
