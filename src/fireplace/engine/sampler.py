"""Choose the next token of each row from logits [B, V].

Order per row (HF/vLLM): penalties -> banned tokens -> temperature -> top-k -> top-p -> min-p
-> sample. Greedy rows (temperature 0) take the argmax after penalties.

Sampling inverts each row's CDF at one uniform point (cheaper on CPU than a random number per
vocabulary entry). A seeded row draws its point from its own generator, reseeded per token from
(seed, sample_index, output position), so its tokens do not depend on the rest of the batch and
survive preemption.

Rows with top-k / top-p sample among their best candidates only: TOP_CANDIDATES tokens when those
already hold the nucleus (the usual case), widened x8 up to the whole vocabulary when not.

Logprobs are of the model's raw distribution (log_softmax of the logits before any processing),
as vLLM reports them by default.
"""
from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field

import torch

from fireplace.engine.sampling_params import SamplingParams
from fireplace.engine.sequence import Sequence

__all__ = ["Sampler", "SamplerOutput", "SamplingRow", "top_k_top_p"]

_MASK64 = (1 << 64) - 1
TOP_CANDIDATES = 256


@dataclass
class SamplingRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    prompt_token_ids: SequenceOf[int] = ()
    output_token_ids: SequenceOf[int] = ()
    sample_index: int = 0  # sibling index for n > 1, so seeded siblings differ
    banned_token_ids: SequenceOf[int] = ()  # e.g. EOS and stop tokens before min_tokens

    @classmethod
    def for_sequence(cls, seq: Sequence, eos_token_ids: SequenceOf[int] = ()) -> "SamplingRow":
        params = seq.params
        banned: list[int] = []
        if seq.num_output_tokens < params.min_tokens:
            banned = list(params.stop_token_ids)
            if not params.ignore_eos:
                banned += list(eos_token_ids)
        return cls(params, seq.prompt_token_ids, seq.output_token_ids, seq.sample_index, banned)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] float32, raw logprob of the chosen token
    top_logprobs: torch.Tensor | None = None  # [B, K] float32, K = largest request in the batch
    top_token_ids: torch.Tensor | None = None  # [B, K] int64
    num_top_logprobs: list[int] = field(default_factory=list)  # K_b wanted by each row

    def row_top_logprobs(self, row: int) -> list[tuple[int, float]]:
        """(token id, logprob) of row's requested alternatives, most likely first."""
        k = self.num_top_logprobs[row] if self.num_top_logprobs else 0
        if self.top_logprobs is None or k == 0:
            return []
        ids = self.top_token_ids[row, :k].tolist()
        values = self.top_logprobs[row, :k].tolist()
        return list(zip(ids, values))


def _seed_for(seed: int, sample_index: int, position: int) -> int:
    # splitmix64-style mixing: distinct (seed, index, position) give unrelated streams
    x = (seed + 0x9E3779B97F4A7C15 * (sample_index + 1) + 0xBF58476D1CE4E5B9 * (position + 1)) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Sampler:
    def __init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> SamplerOutput:
        # logits: [B, V], any float dtype; rows: B entries
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows")
        device = logits.device
        raw_logprobs = None
        if any(r.params.logprobs is not None for r in rows):
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)
        if any(_edits_logits(r) for r in rows):
            # one private fp32 copy to edit in place; the caller's logits stay untouched
            logits = logits.float() if logits.dtype != torch.float32 else logits.clone()
            _apply_penalties(logits, rows)
            _apply_banned(logits, rows)
        else:
            logits = logits.float()

        temperature = torch.tensor([r.params.temperature for r in rows], device=device)
        is_greedy = temperature == 0
        if bool(is_greedy.all()):
            token_ids = logits.argmax(dim=-1)
        elif not bool(is_greedy.any()):
            token_ids = self._sample(logits, temperature, rows)
        else:
            token_ids = logits.argmax(dim=-1)
            sampled = (~is_greedy).nonzero().squeeze(1)
            token_ids[sampled] = self._sample(
                logits[sampled], temperature[sampled], [rows[i] for i in sampled.tolist()])

        out = SamplerOutput(token_ids=token_ids)
        if raw_logprobs is not None:
            out.logprobs = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            out.num_top_logprobs = [r.params.logprobs or 0 for r in rows]
            k = max(out.num_top_logprobs)
            if k > 0:
                out.top_logprobs, out.top_token_ids = raw_logprobs.topk(k, dim=-1)
        return out

    def _sample(self, logits: torch.Tensor, temperature: torch.Tensor, rows: SequenceOf[SamplingRow]) -> torch.Tensor:
        # logits [B', V], temperature [B'] > 0 -> token ids [B']
        if bool((temperature != 1.0).any()):
            logits = logits / temperature.unsqueeze(1)
        uniform = self._uniforms(rows, logits.device)
        vocab = logits.shape[1]
        filtered = [i for i, r in enumerate(rows) if 1 <= r.params.top_k < vocab or r.params.top_p < 1.0]
        if len(filtered) == len(rows):
            return _draw_from_candidates(logits, rows, uniform)
        if not filtered:
            return _draw_from_vocabulary(logits, rows, uniform)
        token_ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        plain = sorted(set(range(len(rows))) - set(filtered))
        for picked, draw in ((filtered, _draw_from_candidates), (plain, _draw_from_vocabulary)):
            index = torch.tensor(picked, device=logits.device)
            token_ids[index] = draw(logits[index], [rows[i] for i in picked], uniform[index])
        return token_ids

    def _uniforms(self, rows: SequenceOf[SamplingRow], device: torch.device) -> torch.Tensor:
        # [B] float64 in [0, 1); seeded rows from their own stream
        uniform = torch.rand(len(rows), dtype=torch.float64, device=device)
        for i, row in enumerate(rows):
            if row.params.seed is not None:
                generator = self._generator(device)
                generator.manual_seed(_seed_for(row.params.seed, row.sample_index, len(row.output_token_ids)))
                uniform[i] = torch.rand(1, dtype=torch.float64, generator=generator, device=device)
        return uniform

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator


def top_k_top_p(logits: torch.Tensor, top_k: SequenceOf[int], top_p: SequenceOf[float]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's candidates, best first, and which survive top-k then top-p.

    logits [B, V]; top_k [B] (< 1 or >= V: off); top_p [B] (1: off)
    -> values [B, C], token ids [B, C], keep [B, C] bool (at least the best token kept).
    Top-p keeps the smallest set of top-k survivors whose renormalised mass reaches top_p.
    """
    vocab = logits.shape[1]
    device = logits.device
    k = torch.tensor([t if 1 <= t < vocab else vocab for t in top_k], device=device)
    # rows without top-p get an unreachable bound, immune to cumsum rounding
    p = torch.tensor([t if t < 1.0 else 2.0 for t in top_p], device=device).unsqueeze(1)
    num_candidates = min(vocab, max([TOP_CANDIDATES] + [t for t in k.tolist() if t < vocab]))
    row_norm = None
    while True:
        values, token_ids = logits.topk(num_candidates, dim=-1)
        rank = torch.arange(num_candidates, device=device).unsqueeze(0)
        in_top_k = rank < k.unsqueeze(1)
        masked = values.masked_fill(~in_top_k, float("-inf"))
        # top-p mass is relative to the top-k survivors, or the whole row when top-k is off
        k_within = k <= num_candidates
        norm = masked.logsumexp(dim=-1)
        if not bool(k_within.all()):
            row_norm = logits.logsumexp(dim=-1) if row_norm is None else row_norm
            norm = torch.where(k_within, norm, row_norm)
        probs = (masked - norm.unsqueeze(1)).exp()
        before = probs.cumsum(dim=-1) - probs  # mass of the better candidates
        keep = in_top_k & (before < p)
        keep[:, 0] = True
        reached = probs.sum(dim=-1, keepdim=True) >= p
        if num_candidates == vocab or bool((k_within.unsqueeze(1) | (p > 1.0) | reached).all()):
            return values, token_ids, keep
        num_candidates = vocab if num_candidates * 8 >= vocab else num_candidates * 8


def _draw_from_candidates(logits: torch.Tensor, rows: SequenceOf[SamplingRow], uniform: torch.Tensor) -> torch.Tensor:
    # rows with top-k / top-p: logits [B, V], uniform [B] -> token ids [B]
    values, token_ids, keep = top_k_top_p(
        logits, [r.params.top_k for r in rows], [r.params.top_p for r in rows])
    probs = _apply_min_p(torch.softmax(values.masked_fill(~keep, float("-inf")), dim=-1), rows)
    return token_ids.gather(1, _invert_cdf(probs, uniform).unsqueeze(1)).squeeze(1)


def _draw_from_vocabulary(logits: torch.Tensor, rows: SequenceOf[SamplingRow], uniform: torch.Tensor) -> torch.Tensor:
    # logits [B, V], uniform [B] -> token ids [B]
    return _invert_cdf(_apply_min_p(torch.softmax(logits, dim=-1), rows), uniform)


def _invert_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    # probs [B, N] (need not sum to 1), uniform [B] in [0, 1) -> [B] indexes drawn by probs
    cdf = probs.cumsum(dim=-1)
    point = (uniform.unsqueeze(1) * cdf[:, -1:].double()).to(cdf.dtype)
    # right=True: the first entry whose CDF passes the point has probability > 0
    index = torch.searchsorted(cdf, point, right=True).squeeze(1)
    return index.clamp_(max=probs.shape[1] - 1)


def _edits_logits(row: SamplingRow) -> bool:
    p = row.params
    return (p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
            or bool(row.banned_token_ids))


def _apply_penalties(logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> None:
    # in place on logits [B, V]; touches only the tokens each row has seen
    device = logits.device
    for i, row in enumerate(rows):
        p = row.params
        if p.repetition_penalty != 1.0:
            # HF: a token seen in prompt or output has its logit divided (if > 0) or multiplied
            seen = set(row.prompt_token_ids)
            seen.update(row.output_token_ids)
            if seen:
                ids = torch.tensor(sorted(seen), device=device)
                values = logits[i, ids]
                logits[i, ids] = torch.where(values > 0, values / p.repetition_penalty,
                                             values * p.repetition_penalty)
        if (p.frequency_penalty != 0.0 or p.presence_penalty != 0.0) and len(row.output_token_ids):
            # OpenAI: logit -= frequency * count + presence * (count > 0), over output tokens
            ids, counts = torch.tensor(list(row.output_token_ids), device=device).unique(return_counts=True)
            logits[i, ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty


def _apply_banned(logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> None:
    # in place on logits [B, V]
    vocab = logits.shape[1]
    for i, row in enumerate(rows):
        banned = [t for t in row.banned_token_ids if 0 <= t < vocab]
        if banned:
            logits[i, banned] = float("-inf")


def _apply_min_p(probs: torch.Tensor, rows: SequenceOf[SamplingRow]) -> torch.Tensor:
    # probs [B, N]: drop entries below min_p x the row's best; the draw renormalises
    min_p = [r.params.min_p for r in rows]
    if not any(m > 0 for m in min_p):
        return probs
    threshold = torch.tensor(min_p, device=probs.device).unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
    return probs.masked_fill(probs < threshold, 0.0)
