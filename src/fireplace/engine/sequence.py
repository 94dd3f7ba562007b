"""One generated completion and its place in the engine's life cycle.

A request with n > 1 starts as one parent Sequence (sample_index 0). After its prompt is
prefilled, n - 1 children are forked: they share the parent's full prompt KV blocks (ref counts)
and recompute only the prompt's last, partly filled block, so no KV copy is ever needed.

Token layout: token_ids = prompt_token_ids + output_token_ids; KV holds the first
num_computed_tokens of them. A decode step computes the last sampled token and samples the next.
"""
from __future__ import annotations

import enum
import itertools
import time

from fireplace.engine.sampling_params import SamplingParams

__all__ = ["Sequence", "SequenceStatus"]

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # waiting again; its KV was freed and will be recomputed
    FINISHED_STOPPED = "finished_stopped"  # EOS, a stop token or a stop string
    FINISHED_LENGTH = "finished_length"  # max_tokens or the context length
    FINISHED_ABORTED = "finished_aborted"
    FINISHED_REJECTED = "finished_rejected"  # could never run (e.g. larger than the KV pool)

    @property
    def is_finished(self) -> bool:
        return self.value.startswith("finished")


_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
    SequenceStatus.FINISHED_REJECTED: "error",
}


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        *,
        adapter_id: str | None = None,
        adapter_version: str | None = None,
        arrival_time: float | None = None,
        deadline: float | None = None,
        sample_index: int = 0,
    ):
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.params = params if params is not None else SamplingParams()
        self.adapter_id = adapter_id  # the name the request used (messages, stats)
        # The content version of the adapter's weights when the request was accepted (see
        # AdapterManager.version_of): it keys prefix-cached KV and the LoRA slot, so a reload
        # under the same id never mixes old and new weights.
        self.adapter_version = adapter_version
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        # monotonic time after which a sequence never admitted is rejected (None: no deadline)
        self.deadline = deadline
        self.sample_index = sample_index  # which of the request's n completions
        self.num_prompt_tokens = len(prompt_token_ids)
        self._token_ids = list(prompt_token_ids)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose KV is written
        self.num_cached_tokens = 0  # tokens found in the prefix cache at the last admission
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # content hash of each full block of token_ids
        self.num_pending_forks = self.params.n - 1 if sample_index == 0 else 0
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        self.error: Exception | None = None  # why a rejected sequence could not run

    # -- tokens ----------------------------------------------------------------------------
    @property
    def token_ids(self) -> list[int]:
        """Prompt then output tokens; read-only view by convention (do not mutate)."""
        return self._token_ids

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self._token_ids[self.num_prompt_tokens:]

    @property
    def num_tokens(self) -> int:
        return len(self._token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self._token_ids) - self.num_prompt_tokens

    @property
    def last_token_id(self) -> int:
        return self._token_ids[-1]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self._token_ids) - self.num_computed_tokens

    @property
    def is_prefill(self) -> bool:
        """More than the last sampled token still needs computing (prompt or recompute)."""
        return self.num_uncomputed_tokens > 1

    def append_token(self, token_id: int) -> None:
        self._token_ids.append(token_id)

    @property
    def lora_key(self) -> str | None:
        """What identifies the adapter weights: the version when known, else the id; None = base."""
        if self.adapter_id is None:
            return None
        return self.adapter_version or self.adapter_id

    # -- life cycle ------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        """OpenAI-style: "stop", "length", "abort", "error", or None while unfinished."""
        return _FINISH_REASONS.get(self.status)

    @property
    def sort_key(self) -> tuple[float, int]:
        """Arrival order; ties (siblings) broken by creation."""
        return (self.arrival_time, self.seq_id)

    def fork(self, sample_index: int) -> "Sequence":
        """A sibling with the same prompt and no output; blocks are shared by the block manager."""
        child = Sequence(
            self.request_id,
            self.prompt_token_ids,
            self.params,
            adapter_id=self.adapter_id,
            adapter_version=self.adapter_version,
            arrival_time=self.arrival_time,
            sample_index=sample_index,
        )
        child.num_pending_forks = 0
        return child

    def __repr__(self) -> str:
        return (f"Sequence(seq_id={self.seq_id}, request_id={self.request_id!r}, "
                f"status={self.status.name}, tokens={self.num_prompt_tokens}+{self.num_output_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})")
