"""Choose the next token of each row from logits [B, V], batched over rows.

Order per row (HF/vLLM): penalties -> banned tokens -> temperature -> top-k -> top-p -> min-p
-> sample. Greedy rows (temperature 0) take the argmax after penalties.

Batched: every row's parameters become [B] tensors in one pass over the rows, and each stage
is a few torch ops over the whole batch, whatever the mix of parameters. Penalties and banned
tokens touch only the (row, token) pairs they concern: the rows' token ids are concatenated
once and deduplicated / counted by torch.unique over row * V + token, then gathered, edited
and scattered back in one op each. The rows' token lists are read in place (`TokenSpan`, no
per-row copy), and only for rows that have a penalty.

Sampling inverts each row's CDF at one uniform point (cheaper on CPU than a random number per
vocabulary entry). A seeded row draws its point from a CPU generator reseeded per token from
(seed, sample_index, output position), so its tokens do not depend on the rest of the batch and
survive preemption (and are the same on every device).

Rows with top-k / top-p sample among their best candidates only: the largest top-k of the
batch when every such row has one, else TOP_CANDIDATES tokens when those already hold the
nucleus (the usual case), widened x8 up to the whole vocabulary when not. Candidates are
picked on the logits before temperature (the order is the same) and only they are divided.

Logprobs are of the model's raw distribution (logits minus the row's logsumexp, before any
processing), as vLLM reports them by default; only the rows that ask for them are computed.

Host syncs: every decision is taken from the rows' parameters, on the host, never from device
values; the one exception is the top-p widening check, which runs on CPU only (elsewhere the
candidates are the whole vocabulary at once). The result is moved to the host in one copy
(`SamplerOutput` holds CPU tensors), so a CUDA step syncs once, there.
"""
from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from itertools import islice

import torch

from fireplace.engine.sampling_params import SamplingParams
from fireplace.engine.sequence import Sequence

__all__ = ["Sampler", "SamplerOutput", "SamplingRow", "TokenSpan", "top_candidates", "top_k_top_p"]

_MASK64 = (1 << 64) - 1
TOP_CANDIDATES = 256


class TokenSpan(SequenceOf[int]):
    """tokens[start:stop] of a list, without copying it (the list must not shrink meanwhile)."""

    __slots__ = ("_tokens", "_start", "_stop")

    def __init__(self, tokens: list[int], start: int, stop: int):
        self._tokens, self._start, self._stop = tokens, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.tolist()[index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("TokenSpan index out of range")
        return self._tokens[self._start + index]

    def __iter__(self):
        return islice(self._tokens, self._start, self._stop)

    def tolist(self) -> list[int]:
        return self._tokens[self._start:self._stop]


def _extend(out: list[int], tokens: SequenceOf[int]) -> None:
    """out += tokens, at list-copy speed for lists and TokenSpans."""
    if isinstance(tokens, TokenSpan):
        out += tokens._tokens[tokens._start:tokens._stop]
    else:
        out += tokens


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
        """The row of seq: its tokens as spans of seq.token_ids (no copy), fixed at their length now."""
        params = seq.params
        tokens, num_prompt = seq.token_ids, seq.num_prompt_tokens
        banned: list[int] | tuple = ()
        if len(tokens) - num_prompt < params.min_tokens:
            banned = list(params.stop_token_ids)
            if not params.ignore_eos:
                banned += list(eos_token_ids)
        return cls(params, TokenSpan(tokens, 0, num_prompt), TokenSpan(tokens, num_prompt, len(tokens)),
                   seq.sample_index, banned)


@dataclass
class SamplerOutput:
    """The step's choices, on the CPU (one device -> host copy for all of them)."""
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] float32, raw logprob of the chosen token
    top_logprobs: torch.Tensor | None = None  # [B, K] float32, K = largest request in the batch
    top_token_ids: torch.Tensor | None = None  # [B, K] int64 (rows that asked for none: unspecified)
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
        self._seeded = torch.Generator(device="cpu")  # reseeded for every seeded draw

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> SamplerOutput:
        # logits: [B, V], any float dtype; rows: B entries
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows")
        params = [r.params for r in rows]
        raw = _raw_logprobs(logits, params)
        if any(_edits_logits(r) for r in rows):
            # one private fp32 copy to edit in place; the caller's logits stay untouched
            logits = logits.float() if logits.dtype != torch.float32 else logits.clone()
            _apply_penalties(logits, rows)
            _apply_banned(logits, rows)
        else:
            logits = logits.float()

        sampled = [i for i, p in enumerate(params) if p.temperature != 0.0]
        if not sampled:
            token_ids = _argmax(logits)
        elif len(sampled) == len(rows):
            token_ids = self._sample(logits, rows)
        else:
            token_ids = _argmax(logits)
            index = torch.tensor(sampled).to(logits.device, non_blocking=True)
            token_ids[index] = self._sample(logits.index_select(0, index), [rows[i] for i in sampled])
        return _to_host(token_ids, raw, params)

    def _sample(self, logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> torch.Tensor:
        # logits [B', V] (before temperature), every row with temperature > 0 -> token ids [B']
        device = logits.device
        temps = [r.params.temperature for r in rows]
        temperature = None
        if any(t != 1.0 for t in temps):
            temperature = torch.tensor(temps, dtype=logits.dtype).to(device, non_blocking=True)
        uniform = self._uniforms(rows, device)
        vocab = logits.shape[1]
        filtered = [i for i, r in enumerate(rows) if 1 <= r.params.top_k < vocab or r.params.top_p < 1.0]
        if len(filtered) == len(rows):
            return _draw_from_candidates(logits, temperature, rows, uniform)
        if not filtered:
            return _draw_from_vocabulary(logits, temperature, rows, uniform)
        token_ids = torch.empty(len(rows), dtype=torch.long, device=device)
        picked_set = set(filtered)
        plain = [i for i in range(len(rows)) if i not in picked_set]
        for picked, draw in ((filtered, _draw_from_candidates), (plain, _draw_from_vocabulary)):
            index = torch.tensor(picked).to(device, non_blocking=True)
            group_temperature = temperature.index_select(0, index) if temperature is not None else None
            token_ids[index] = draw(logits.index_select(0, index), group_temperature, [rows[i] for i in picked],
                                    uniform.index_select(0, index))
        return token_ids

    def _uniforms(self, rows: SequenceOf[SamplingRow], device: torch.device) -> torch.Tensor:
        # [B] float64 in [0, 1); seeded rows from their own stream
        uniform = torch.rand(len(rows), dtype=torch.float64, device=device)
        seeded = [i for i, row in enumerate(rows) if row.params.seed is not None]
        if seeded:
            generator, points = self._seeded, []
            for i in seeded:
                row = rows[i]
                generator.manual_seed(_seed_for(row.params.seed, row.sample_index, len(row.output_token_ids)))
                points.append(torch.rand(1, dtype=torch.float64, generator=generator))
            uniform[torch.tensor(seeded).to(device, non_blocking=True)] = torch.cat(points).to(device, non_blocking=True)
        return uniform


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> argmax [B] (the first maximum, as torch.argmax).

    torch's CPU argmax is not vectorized (~5 ms for 64 x 49152 on one thread) while amax is
    (~0.3 ms): on CPU the row is cut into blocks, the first block holding the row's maximum is
    found from the blocks' maxima, and the argmax is taken within it. The first maximum of the
    row is the first maximum of that block, so the result is torch.argmax's (NaN included)."""
    num_rows, vocab = logits.shape
    block = next((b for b in (256, 128, 64) if vocab % b == 0), None)
    if logits.device.type != "cpu" or block is None or vocab < 16 * block or not logits.is_contiguous():
        return logits.argmax(dim=-1)
    blocks = logits.view(num_rows, vocab // block, block)
    best = blocks.amax(dim=-1).argmax(dim=-1)  # [B] first block holding the maximum
    within = blocks[torch.arange(num_rows), best].argmax(dim=-1)  # [B]
    return best * block + within


def _raw_logprobs(logits: torch.Tensor, params: SequenceOf[SamplingParams]):
    """(index [W] of the rows that want logprobs, or None when all do; their logits fp32 [W, V];
    their logsumexp [W]), or None when no row wants logprobs. Only those rows are read: the
    logsumexp over the vocabulary is most of the cost (~3.5 ms for 64 x 49152 on one thread)."""
    wanting = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not wanting:
        return None
    if len(wanting) == len(params):
        index, raw = None, logits.float()
    else:
        index = torch.tensor(wanting).to(logits.device, non_blocking=True)
        raw = logits.index_select(0, index).float()
    return index, raw, torch.logsumexp(raw, dim=-1)


def _to_host(token_ids: torch.Tensor, raw, params: SequenceOf[SamplingParams]) -> SamplerOutput:
    """The chosen tokens (and logprobs, for the rows that asked) as CPU tensors, in one device ->
    host copy. Rows that asked for none have logprob 0 and no alternatives (unread)."""
    if raw is None:
        return SamplerOutput(token_ids=token_ids.cpu())
    index, logits, lse = raw  # the wanting rows only (all when index is None)
    num_top = [p.logprobs or 0 for p in params]
    k = max(num_top)
    ids = token_ids if index is None else token_ids.index_select(0, index)
    chosen = logits.gather(1, ids.unsqueeze(1)).squeeze(1) - lse  # [W]
    if index is not None:
        chosen = chosen.new_zeros(len(params)).index_copy_(0, index, chosen)  # [B]
    if k == 0:
        if token_ids.device.type == "cpu":
            return SamplerOutput(token_ids=token_ids, logprobs=chosen, num_top_logprobs=num_top)
        host = torch.stack((token_ids.double(), chosen.double()), dim=1).cpu()
        return SamplerOutput(token_ids=host[:, 0].long(), logprobs=host[:, 1].float(), num_top_logprobs=num_top)
    # the top-k of the logits is the top-k of the logprobs (same order per row)
    top_values, top_ids = top_candidates(logits, k)
    top_values = top_values - lse.unsqueeze(1)
    if index is not None:
        top_values = top_values.new_zeros((len(params), k)).index_copy_(0, index, top_values)
        top_ids = top_ids.new_zeros((len(params), k)).index_copy_(0, index, top_ids)
    if token_ids.device.type == "cpu":
        return SamplerOutput(token_ids, chosen, top_values, top_ids, num_top)
    host = torch.cat((token_ids.double().unsqueeze(1), chosen.double().unsqueeze(1), top_values.double(),
                      top_ids.double()), dim=1).cpu()  # token ids < 2^53: exact in float64
    return SamplerOutput(host[:, 0].long(), host[:, 1].float(), host[:, 2:2 + k].float(), host[:, 2 + k:].long(),
                         num_top)


def top_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (values, token ids) [B, k], each row's k largest, largest first: torch.topk,
    except that on CPU a small k is searched within the k blocks (of _TOPK_BLOCK tokens) with the
    largest maxima, which hold every one of the row's k largest (a block holding one has a maximum
    at least that large, and at most k blocks do). torch's CPU topk over 64 x 49152 takes ~4 ms
    for k = 40 on one thread; the blocks' amax is vectorized (~0.3 ms) and the search then reads
    k x 128 entries. Among exactly tied values at the k-th place either may be chosen."""
    num_rows, vocab = logits.shape
    block = _TOPK_BLOCK
    if (logits.device.type != "cpu" or vocab % block or k * block * 4 > vocab or not logits.is_contiguous()
            or num_rows == 0):
        return logits.topk(k, dim=-1)
    blocks = logits.view(num_rows, vocab // block, block)
    best_blocks = blocks.amax(dim=-1).topk(k, dim=-1).indices  # [B, k]
    picked = blocks[torch.arange(num_rows).unsqueeze(1), best_blocks]  # [B, k, block]
    values, within = picked.view(num_rows, k * block).topk(k, dim=-1)  # [B, k]
    token_ids = best_blocks.gather(1, within // block) * block + within % block
    return values, token_ids


_TOPK_BLOCK = 128


def top_k_top_p(logits: torch.Tensor, top_k: SequenceOf[int], top_p: SequenceOf[float],
                temperature: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's candidates, best first, and which survive top-k then top-p.

    logits [B, V]; top_k [B] (< 1 or >= V: off); top_p [B] (1: off); temperature [B] or None:
    the logits are divided by it (only the candidates are, where that is all that is needed)
    -> values [B, C] (after temperature), token ids [B, C], keep [B, C] bool (at least the best
    token kept). Top-p keeps the smallest set of top-k survivors whose renormalised mass
    reaches top_p.
    """
    vocab = logits.shape[1]
    device = logits.device
    ks = [t if 1 <= t < vocab else vocab for t in top_k]
    k = torch.tensor(ks).to(device, non_blocking=True)
    # rows without top-p get an unreachable bound, immune to cumsum rounding
    p = torch.tensor([t if t < 1.0 else 2.0 for t in top_p], dtype=logits.dtype).to(device, non_blocking=True)
    p = p.unsqueeze(1)
    largest_k = max(ks)
    if largest_k < vocab:  # every row has a top-k: its survivors are all the candidates needed
        num_candidates = largest_k
    elif device.type != "cpu":  # no data-dependent widening (a host sync) off the CPU
        num_candidates = vocab
    else:
        num_candidates = min(vocab, max([TOP_CANDIDATES] + [t for t in ks if t < vocab]))
    rows_without_k = [i for i, t in enumerate(ks) if t == vocab]
    row_norm = None
    while True:
        values, token_ids = top_candidates(logits, num_candidates)
        if temperature is not None:
            values = values / temperature.unsqueeze(1)
        rank = torch.arange(num_candidates, device=device).unsqueeze(0)
        in_top_k = rank < k.unsqueeze(1)
        masked = values.masked_fill(~in_top_k, float("-inf"))
        # top-p mass is relative to the top-k survivors, or the whole row when top-k is off
        norm = masked.logsumexp(dim=-1)
        k_within = k <= num_candidates
        if rows_without_k and num_candidates < vocab:
            if row_norm is None:
                full = logits / temperature.unsqueeze(1) if temperature is not None else logits
                row_norm = full.logsumexp(dim=-1)
            norm = torch.where(k_within, norm, row_norm)
        probs = (masked - norm.unsqueeze(1)).exp()
        before = probs.cumsum(dim=-1) - probs  # mass of the better candidates
        keep = in_top_k & (before < p)
        keep[:, 0] = True
        if num_candidates == vocab or not rows_without_k:
            return values, token_ids, keep
        reached = probs.sum(dim=-1, keepdim=True) >= p
        if bool((k_within.unsqueeze(1) | (p > 1.0) | reached).all()):  # CPU only: see above
            return values, token_ids, keep
        num_candidates = vocab if num_candidates * 8 >= vocab else num_candidates * 8


def _draw_from_candidates(logits: torch.Tensor, temperature: torch.Tensor | None, rows: SequenceOf[SamplingRow],
                          uniform: torch.Tensor) -> torch.Tensor:
    # rows with top-k / top-p: logits [B, V] (before temperature), uniform [B] -> token ids [B]
    values, token_ids, keep = top_k_top_p(
        logits, [r.params.top_k for r in rows], [r.params.top_p for r in rows], temperature)
    probs = _apply_min_p(torch.softmax(values.masked_fill(~keep, float("-inf")), dim=-1), rows)
    return token_ids.gather(1, _invert_cdf(probs, uniform).unsqueeze(1)).squeeze(1)


def _draw_from_vocabulary(logits: torch.Tensor, temperature: torch.Tensor | None, rows: SequenceOf[SamplingRow],
                          uniform: torch.Tensor) -> torch.Tensor:
    # logits [B, V] (before temperature), uniform [B] -> token ids [B]
    if temperature is not None:
        logits = logits / temperature.unsqueeze(1)
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


def _pairs(rows: SequenceOf[SamplingRow], picked: SequenceOf[int], token_lists, vocab: int) -> torch.Tensor:
    """Flat keys row * V + token [N] (int64, CPU) of the tokens token_lists(row) of each picked row.
    Built and deduplicated on the host: torch.unique on a device would need a sync for its size."""
    tokens: list[int] = []
    row_ids: list[int] = []
    for i in picked:
        before = len(tokens)
        for part in token_lists(rows[i]):
            _extend(tokens, part)
        row_ids += [i] * (len(tokens) - before)
    return torch.tensor(row_ids, dtype=torch.int64) * vocab + torch.tensor(tokens, dtype=torch.int64)


def _apply_penalties(logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> None:
    # in place on logits [B, V]; touches only the tokens each row has seen
    vocab, device, dtype = logits.shape[1], logits.device, logits.dtype
    repeat = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
    if repeat:
        # HF: a token seen in prompt or output has its logit divided (if > 0) or multiplied
        keys = _pairs(rows, repeat, lambda r: (r.prompt_token_ids, r.output_token_ids), vocab).unique()
        if keys.numel():
            penalty = torch.tensor([r.params.repetition_penalty for r in rows], dtype=dtype)[keys // vocab]
            row, token, penalty = (t.to(device, non_blocking=True) for t in (keys // vocab, keys % vocab, penalty))
            values = logits[row, token]
            logits.index_put_((row, token), torch.where(values > 0, values / penalty, values * penalty))
    counted = [i for i, r in enumerate(rows)
               if (r.params.frequency_penalty != 0.0 or r.params.presence_penalty != 0.0) and len(r.output_token_ids)]
    if counted:
        # OpenAI: logit -= frequency * count + presence * (count > 0), over output tokens
        keys, counts = _pairs(rows, counted, lambda r: (r.output_token_ids,), vocab).unique(return_counts=True)
        per_row = torch.tensor([[r.params.frequency_penalty, r.params.presence_penalty] for r in rows], dtype=dtype)
        per_row = per_row[keys // vocab]  # [N, 2]
        delta = per_row[:, 0] * counts.to(dtype) + per_row[:, 1]
        row, token, delta = (t.to(device, non_blocking=True) for t in (keys // vocab, keys % vocab, delta))
        logits.index_put_((row, token), logits[row, token] - delta)


def _apply_banned(logits: torch.Tensor, rows: SequenceOf[SamplingRow]) -> None:
    # in place on logits [B, V]
    vocab = logits.shape[1]
    row_ids: list[int] = []
    tokens: list[int] = []
    for i, r in enumerate(rows):
        for t in r.banned_token_ids:
            if 0 <= t < vocab:
                row_ids.append(i)
                tokens.append(t)
    if tokens:
        index = torch.tensor([row_ids, tokens]).to(logits.device, non_blocking=True)
        logits.index_put_((index[0], index[1]), torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))


def _apply_min_p(probs: torch.Tensor, rows: SequenceOf[SamplingRow]) -> torch.Tensor:
    # probs [B, N]: drop entries below min_p x the row's best; the draw renormalises
    min_p = [r.params.min_p for r in rows]
    if not any(m > 0 for m in min_p):
        return probs
    threshold = torch.tensor(min_p, dtype=probs.dtype).to(probs.device, non_blocking=True).unsqueeze(1)
    return probs.masked_fill(probs < threshold * probs.max(dim=-1, keepdim=True).values, 0.0)
