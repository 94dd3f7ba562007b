"""LLMEngine: add_request / abort / step over the scheduler, model runner and sampler.

One step: schedule -> (pin adapters) -> build the varlen batch -> forward -> sample ->
scheduler.update -> detokenize (stop strings) -> per-request incremental outputs.
Not thread-safe by itself; `AsyncEngine` drives it from one thread.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable

import torch

from fireplace.engine import host_allocator
from fireplace.engine.backend import Backend
from fireplace.engine.detokenizer import IncrementalDetokenizer
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import (AdapterError, AdapterLoadError, AdapterUnavailableError, EngineOverloadedError,
                                     InvalidRequestError)
from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.layers.linear import prepack_weights
from fireplace.engine.loader import load_model
from fireplace.engine.logits_processors import LogitsProcessors
from fireplace.engine.model_runner import ModelRunner
from fireplace.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from fireplace.engine.sampler import Sampler, SamplingRow
from fireplace.engine.sampling_params import SamplingParams
from fireplace.engine.scheduler import Scheduler, SchedulerOutput
from fireplace.engine.scheduler_config import SchedulerConfig
from fireplace.engine.sequence import Sequence, SequenceStatus
from fireplace.engine.stats import EngineStats, ThroughputMeter

_log = logging.getLogger(__name__)
_request_counter = itertools.count()


class _Request:
    """Per-request bookkeeping the scheduler does not need."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival: float):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.metrics = RequestMetrics(arrival_time=arrival)
        self.exception: Exception | None = None  # the typed error behind `error`
        self.detokenizers: dict[int, IncrementalDetokenizer] = {}  # sample index -> detokenizer
        self.num_tokens: dict[int, int] = {}                         # sample index -> generated
        self.finish: dict[int, tuple[str, int | str | None]] = {}    # sample index -> (reason, stop)
        self.num_cached_tokens = 0
        self.error: str | None = None
        # prompt logprobs, filled by position as prefill chunks run (a recompute does not redo them)
        self.prompt_logprobs: list[TokenLogprob | None] | None = (
            [None] * len(prompt_token_ids) if params.prompt_logprobs is not None else None)
        self.prompt_logprobs_sent = False

    @property
    def finished(self) -> bool:
        return len(self.finish) >= self.params.n or self.error is not None


class LLMEngine:
    def __init__(self, config: EngineConfig, *, tokenizer=None):
        self.config = config.validate()
        if config.num_threads and config.device == "cpu":
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            host_allocator.tune()  # big activation buffers stay in the heap (see host_allocator)
        self.backend = Backend.select(self.device, config.torch_dtype, config.backend,  # kernels vs torch, once
                                      config.backend_config)
        # the model's dtype is the backend's: fp32 for a CPU bf16 model whose projections alone
        # compute in bf16 (Backend.matmul_dtype)
        self.model, self.model_config = load_model(config.model, self.backend.dtype, self.device, backend=self.backend)
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.tokenizer = tokenizer
        # model_config.max_model_len is the context capped at a sliding window (which we serve
        # exactly only inside the window: see model_config)
        model_limit = self.model_config.max_model_len
        if config.max_model_len and config.max_model_len > model_limit:
            _log.warning("max_model_len %d capped at %d (the model's %s)", config.max_model_len, model_limit,
                         "sliding window" if self.model_config.sliding_window else "context length")
        self.max_model_len = min(config.max_model_len or min(model_limit, 4096), model_limit)
        spec = KVCacheSpec.for_model(self.model_config, config.block_size, self.backend.kv_dtype)
        num_blocks = config.num_kv_blocks or spec.num_blocks_for_budget(config.kv_cache_bytes)
        kv_caches = spec.allocate(num_blocks, self.device)
        self.max_model_len = min(self.max_model_len, num_blocks * config.block_size)
        self.eos_token_ids = tuple(self.model_config.eos_token_ids) or (
            (tokenizer.eos_token_id,) if getattr(tokenizer, "eos_token_id", None) is not None else ())
        self.adapters = None
        if config.merged_adapter:
            from fireplace.engine.lora.adapter import LoRAAdapter
            from fireplace.engine.lora.merge import merge_adapter
            merge_adapter(self.model, LoRAAdapter.from_dir(config.merged_adapter, self.model_config))
        self.quantization = None  # a QuantizationSummary when the base weights are quantized
        if config.quantization:  # after any merge: a merge writes the fp32 weights
            from fireplace.engine.quantize_model import quantize_model
            self.quantization = quantize_model(self.model, config.quantization, config.quantization_group_size,
                                               lm_head=config.quantize_lm_head)
        elif config.gguf_file:  # the GGUF's Q4_1 / Q8_0 blocks as stored
            from fireplace.engine.gguf_weights import apply_gguf_weights
            self.quantization = apply_gguf_weights(self.model, config.gguf_file)
        prepack_weights(self.model)  # oneDNN's copies of the final weights, before the first step
        if config.enable_lora:
            from fireplace.engine.lora.manager import AdapterManager
            self.adapters = AdapterManager(self.model, self.model_config, max_loras=config.max_loras,
                                           max_lora_rank=config.max_lora_rank, max_cpu_loras=config.max_cpu_loras,
                                           target_modules=config.lora_target_modules)
        self.scheduler = Scheduler(SchedulerConfig(
            num_blocks=num_blocks, max_model_len=self.max_model_len, block_size=config.block_size,
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
            max_loras=config.max_loras if config.enable_lora else None,
            enable_prefix_caching=config.enable_prefix_caching,
            watermark_blocks=config.watermark_blocks(num_blocks)), eos_token_ids=self.eos_token_ids)
        self.runner = ModelRunner(self.model, kv_caches, config.block_size, self.device, self.backend)
        if config.compile:
            self.runner.compile()
        self.sampler = Sampler()
        self.logits_processors = LogitsProcessors(self.eos_token_ids)  # per-sample constraints
        self.meter = ThroughputMeter()
        self._requests: dict[str, _Request] = {}
        self._num_overloaded = 0
        self._load_failures: dict[str, str] = {}  # adapter id -> why its last load failed (none serving)

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request_id: str | None, prompt: str | list[int], params: SamplingParams | None = None,
                    *, adapter_id: str | None = None, truncate_prompt: bool = False,
                    arrival_time: float | None = None, deadline: float | None = None,
                    add_special_tokens: bool = True) -> str:
        """Queue a request. Raises InvalidRequestError (HTTP 400) for bad input (its subclass
        AdapterUnavailableError for an adapter not loaded here) and EngineOverloadedError when
        `max_waiting_requests` requests already wait.

        A string prompt is tokenized with the tokenizer's special tokens (BOS for Llama/Mistral),
        as transformers and vLLM do by default; pass add_special_tokens=False for text that
        already has them (a rendered chat template). Token ids are used as given.
        arrival_time / deadline: time.monotonic() seconds. A request not yet admitted at its
        deadline (default: arrival + queue_timeout_s, if configured) ends with an error output
        whose exception is DeadlineExceededError.
        """
        limit = self.config.max_waiting_requests
        if limit is not None and self.scheduler.num_waiting >= limit:
            self._num_overloaded += 1
            raise EngineOverloadedError(
                f"the engine has {self.scheduler.num_waiting} requests waiting (max_waiting_requests={limit}); "
                "retry later", num_waiting=self.scheduler.num_waiting, max_waiting=limit)
        params = (params or SamplingParams()).validate()
        request_id = request_id or f"req-{next(_request_counter)}"
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        if isinstance(prompt, str):
            token_ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        else:
            token_ids = [int(t) for t in prompt]
        vocab = self.model_config.vocab_size
        if any(t < 0 or t >= vocab for t in token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
        if truncate_prompt and len(token_ids) >= self.max_model_len:
            token_ids = token_ids[-(self.max_model_len - 1):]
        max_tokens = params.max_new_tokens(len(token_ids), self.max_model_len, truncate=truncate_prompt)
        params = params.replace(max_tokens=max_tokens) if params.max_tokens != max_tokens else params
        version = self._adapter_version(adapter_id) if adapter_id is not None else None
        arrival = time.monotonic() if arrival_time is None else arrival_time
        if deadline is None and self.config.queue_timeout_s is not None:
            deadline = arrival + self.config.queue_timeout_s
        self.scheduler.add(Sequence(request_id, token_ids, params, adapter_id=adapter_id, adapter_version=version,
                                    arrival_time=arrival, deadline=deadline))
        self._requests[request_id] = _Request(request_id, token_ids, params, arrival)
        return request_id

    def _adapter_version(self, adapter_id: str) -> str:
        if self.adapters is None:
            raise AdapterUnavailableError("this engine serves no LoRA addons", adapter_id)
        try:
            return self.adapters.version_of(adapter_id)
        except AdapterError:
            failure = self._load_failures.get(adapter_id)
            why = f"its load failed: {failure}" if failure else "it is not loaded on this deployment"
            raise AdapterUnavailableError(f"LoRA adapter {adapter_id!r} cannot serve requests: {why}",
                                          adapter_id) from None

    def abort(self, request_id: str) -> None:
        """Stop a request now; its KV blocks are freed before this returns."""
        request = self._requests.pop(request_id, None)
        self.scheduler.abort(request_id)
        if request is not None:
            for index in range(request.params.n):
                request.finish.setdefault(index, ("abort", None))

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        step = self.scheduler.schedule()
        outputs = self._rejected_outputs(step)
        if step.is_empty:
            return outputs
        now = time.monotonic()
        for entry in step.scheduled:
            request = self._requests.get(entry.seq.request_id)
            if request is not None and request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = now
                request.num_cached_tokens = entry.seq.num_cached_tokens
        lora = self.adapters.prepare_batch(step) if self.adapters is not None else None
        try:
            ctx = self.runner.prepare(step, lora)
            logits, prompt_logprobs = self.runner.execute(ctx)
        finally:
            if self.adapters is not None:
                self.adapters.finish_batch(step)
        for item in prompt_logprobs:
            request = self._requests.get(item.request_id)
            if request is not None and request.prompt_logprobs is not None:
                request.prompt_logprobs[item.position] = TokenLogprob(item.token_id, item.logprob, item.top)
        sampled_seqs = step.logits_seqs
        rows = [SamplingRow.for_sequence(e.seq, self.eos_token_ids) for e in sampled_seqs]
        if rows:
            logits = self.logits_processors.apply(logits, sampled_seqs)
        sampled = self.sampler(logits, rows) if rows else None
        token_ids = sampled.token_ids.tolist() if sampled is not None else []
        self.scheduler.update(step, token_ids)
        self.meter.record(step.num_prompt_tokens, step.num_generated_tokens)
        outputs += self._collect(sampled_seqs, token_ids, sampled)
        if self.adapters is not None and self.adapters.has_orphans:
            self._drop_unused_adapter_versions()
        return outputs

    def _collect(self, entries, token_ids: list[int], sampled) -> list[RequestOutput]:
        """Detokenize the new tokens, apply stop strings, group per request."""
        now = time.monotonic()
        per_request: dict[str, list[CompletionOutput]] = {}
        wants_logprobs = sampled is not None and sampled.logprobs is not None
        for row, (entry, token) in enumerate(zip(entries, token_ids)):
            seq = entry.seq
            request = self._requests.get(seq.request_id)
            if request is None or (seq.status is not SequenceStatus.RUNNING and not seq.is_finished):
                continue  # aborted while the step ran
            if seq.status is SequenceStatus.FINISHED_ABORTED:
                continue
            index = seq.sample_index
            request.metrics.first_token_time = request.metrics.first_token_time or now
            detok = request.detokenizers.get(index)
            if detok is None:
                params = request.params
                detok = request.detokenizers[index] = IncrementalDetokenizer(
                    self.tokenizer, request.prompt_token_ids, stop=params.stop,
                    skip_special_tokens=params.skip_special_tokens, min_tokens=params.min_tokens)
            # a stop token ends the sequence but is not part of its text (as in the OpenAI API)
            is_stop_token = seq.is_finished and seq.stop_reason == token
            delta = detok.step([] if is_stop_token else [token], is_final=seq.is_finished)
            text = delta.text
            if request.params.echo and request.num_tokens.get(index, 0) == 0:
                text = self.tokenizer.decode(request.prompt_token_ids,  # echo: prompt first
                                             skip_special_tokens=request.params.skip_special_tokens) + text
            out = CompletionOutput(index=index, token_ids=[token], text=text)
            request.num_tokens[index] = request.num_tokens.get(index, 0) + 1
            out.num_tokens = request.num_tokens[index]
            if wants_logprobs and request.params.logprobs is not None:
                out.logprobs = [TokenLogprob(token, float(sampled.logprobs[row]), sampled.row_top_logprobs(row))]
            if delta.stop_string is not None and not seq.is_finished:
                self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED, delta.stop_string)
            if seq.is_finished:
                out.finish_reason = seq.finish_reason
                out.stop_reason = delta.stop_string if delta.stop_string is not None else seq.stop_reason
                request.finish[index] = (out.finish_reason, out.stop_reason)
            per_request.setdefault(seq.request_id, []).append(out)
        results = []
        for request_id, outs in per_request.items():
            request = self._requests[request_id]
            finished = request.finished
            if finished:
                request.metrics.finished_time = now
                del self._requests[request_id]
            result = RequestOutput(request_id, outs, request.prompt_token_ids, finished, request.metrics,
                                   request.num_cached_tokens)
            if request.prompt_logprobs is not None and not request.prompt_logprobs_sent:
                result.prompt_logprobs = request.prompt_logprobs  # complete once a token was sampled
                request.prompt_logprobs_sent = True
            results.append(result)
        return results

    def _rejected_outputs(self, step: SchedulerOutput) -> list[RequestOutput]:
        results = []
        for seq in step.rejected:
            request = self._requests.pop(seq.request_id, None)
            if request is None:
                continue
            request.error = str(seq.error) if seq.error else "request can never fit in the KV cache"
            request.exception = seq.error
            request.metrics.finished_time = time.monotonic()
            outs = [CompletionOutput(index=i, finish_reason="error") for i in range(request.params.n)]
            results.append(RequestOutput(seq.request_id, outs, request.prompt_token_ids, True, request.metrics,
                                         error=request.error, exception=request.exception))
        return results

    # -- adapters and stats -------------------------------------------------------------------
    def prepare_adapter(self, adapter_id: str, source):
        """Read and check an adapter source without touching the engine's state: safe on any
        thread (AsyncEngine.load_adapter runs it in a worker). Returns a PreparedAdapter for
        load_adapter; raises AdapterLoadError."""
        if self.adapters is None:
            raise AdapterLoadError("LoRA is not enabled on this engine", adapter_id)
        try:
            return self.adapters.prepare(adapter_id, source)
        except Exception as exc:  # a corrupt file, a failing download: typed, never the engine's end
            message = str(exc) or type(exc).__name__
            raise AdapterLoadError(f"LoRA adapter {adapter_id!r} could not be loaded: {message}",
                                   adapter_id) from exc

    def load_adapter(self, adapter_id: str, source) -> str:
        """Read, check and register an adapter: a PEFT directory, or a mapping {filename: bytes}
        (the blob store's files), a callable returning either, or prepare_adapter's result.
        Returns its content version.

        The files are read here, once, and kept in host memory: a step never reads them again.
        Loading an id again replaces its version for new requests (identical files: the same
        version, prefix cache kept); queued and running requests finish on the version they
        started with. Raises AdapterLoadError (nothing changed; other adapters and requests are
        unaffected); requests for an id whose only load failed get AdapterUnavailableError.
        """
        try:
            prepared = self.prepare_adapter(adapter_id, source)
        except AdapterLoadError as exc:
            self.note_adapter_load_failure(adapter_id, exc)
            raise
        self.adapters.load_adapter(adapter_id, prepared)
        self._load_failures.pop(adapter_id, None)
        self._drop_unused_adapter_versions()
        return prepared.version

    def note_adapter_load_failure(self, adapter_id: str, error: AdapterLoadError) -> None:
        """Remember why an id has no version, for the error its requests get."""
        if self.adapters is not None and not self.adapters.is_registered(adapter_id):
            cause = error.__cause__
            self._load_failures[adapter_id] = str(cause) if cause is not None else error.message

    def unload_adapter(self, adapter_id: str) -> None:
        """New requests for the adapter are refused at once (AdapterUnavailableError); requests
        already queued or running (preempted ones included) finish on it, then it is dropped."""
        if self.adapters is None:
            raise AdapterUnavailableError("LoRA is not enabled on this engine", adapter_id)
        self._load_failures.pop(adapter_id, None)
        try:
            self.adapters.unload_adapter(adapter_id)
        except AdapterError as exc:
            raise AdapterUnavailableError(str(exc), adapter_id) from None
        self._drop_unused_adapter_versions()

    def _drop_unused_adapter_versions(self) -> None:
        """Free the bytes, slot and cached KV of adapter versions no live sequence needs."""
        in_use = {s.adapter_version for s in (*self.scheduler.running, *self.scheduler.waiting)}
        for version in self.adapters.drop_unused(in_use):
            self.scheduler.block_manager.drop_adapter_blocks(version)

    def stats(self) -> EngineStats:
        used = total = 0
        if self.adapters is not None:
            used, total = self.adapters.num_slots_used, self.adapters.num_slots
        return EngineStats.collect(self.scheduler, self.meter, adapter_slots_used=used, adapter_slots_total=total,
                                   num_overloaded_rejections=self._num_overloaded)

    # -- offline ----------------------------------------------------------------------------
    def generate(self, prompts: Iterable[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 *, adapter_ids: list[str | None] | None = None) -> list[RequestOutput]:
        """Run prompts to completion; returns one merged RequestOutput per prompt, in order."""
        prompts = list(prompts)
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        adapter_ids = adapter_ids or [None] * len(prompts)
        ids = [self.add_request(None, p, sp, adapter_id=a) for p, sp, a in zip(prompts, params_list, adapter_ids)]
        merged: dict[str, RequestOutput] = {}
        while self.has_unfinished_requests():
            for out in self.step():
                merged[out.request_id] = merge_output(merged.get(out.request_id), out)
        return [merged[i] for i in ids]


def merge_output(acc: RequestOutput | None, new: RequestOutput) -> RequestOutput:
    """Fold an incremental output into the running total (offline use, tests)."""
    if acc is None:
        acc = RequestOutput(new.request_id, [], new.prompt_token_ids, False, new.metrics, new.num_cached_tokens)
    by_index = {o.index: o for o in acc.outputs}
    for o in new.outputs:
        cur = by_index.get(o.index)
        if cur is None:
            cur = by_index[o.index] = CompletionOutput(index=o.index, logprobs=[] if o.logprobs is not None else None)
        cur.token_ids = cur.token_ids + o.token_ids
        cur.text += o.text
        if o.logprobs is not None:
            cur.logprobs = (cur.logprobs or []) + o.logprobs
        cur.finish_reason = o.finish_reason or cur.finish_reason
        cur.stop_reason = o.stop_reason if o.stop_reason is not None else cur.stop_reason
        cur.num_tokens = max(cur.num_tokens, o.num_tokens)
    acc.outputs = [by_index[i] for i in sorted(by_index)]
    acc.prompt_logprobs = new.prompt_logprobs if new.prompt_logprobs is not None else acc.prompt_logprobs
    acc.finished = new.finished
    acc.error = new.error or acc.error
    acc.metrics = new.metrics
    return acc
