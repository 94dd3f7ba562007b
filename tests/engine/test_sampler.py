import math

import pytest
import torch

from fireplace.engine.sampler import Sampler, SamplingRow, _apply_penalties, top_k_top_p
from fireplace.engine.sampling_params import SamplingParams
from fireplace.engine.sequence import Sequence

V = 32


def _row(**params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params))


def _logits(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_rows_take_argmax():
    logits = _logits(4)
    out = Sampler()(logits, [_row(temperature=0.0)] * 4)
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()
    assert out.token_ids.dtype == torch.int64 and out.logprobs is None


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = _logits(3, seed=1)
    rows = [_row(top_k=1), _row(top_p=1e-6), _row(min_p=1.0)]
    for _ in range(5):
        assert Sampler()(logits, rows).token_ids.tolist() == logits.argmax(-1).tolist()


def _frequencies(logits_row, row, draws=3000):
    sampler = Sampler()
    batch = logits_row.expand(draws, -1)
    tokens = sampler(batch, [row] * draws).token_ids
    return torch.bincount(tokens, minlength=logits_row.shape[-1]).float() / draws


def test_sampling_follows_tempered_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    for temperature in (0.5, 1.0, 1.5):
        expected = torch.softmax(logits[0] / temperature, -1)
        observed = _frequencies(logits, _row(temperature=temperature))
        assert torch.allclose(observed, expected, atol=0.04), (temperature, observed, expected)


def test_top_p_top_k_and_min_p_cut_the_tail():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert set(_frequencies(logits, _row(top_p=0.7)).nonzero().flatten().tolist()) == {0, 1}
    assert set(_frequencies(logits, _row(top_k=3)).nonzero().flatten().tolist()) == {0, 1, 2}
    observed = _frequencies(logits, _row(min_p=0.5))  # keeps p >= 0.25
    assert set(observed.nonzero().flatten().tolist()) == {0, 1}
    assert math.isclose(observed[0].item(), 0.5 / 0.8, abs_tol=0.04)


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = _logits(2, seed=2)
    prompt, output = [1, 2, 3], [3, 4]
    rows = [SamplingRow(SamplingParams(repetition_penalty=1.3), prompt, output),
            SamplingRow(SamplingParams(), prompt, output)]
    ours = logits.clone()
    _apply_penalties(ours, rows)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + output]), logits[:1].clone())
    assert torch.allclose(ours[0], theirs[0])
    assert torch.equal(ours[1], logits[1])  # a row without penalties is untouched


def test_frequency_and_presence_penalties_follow_openai():
    logits = torch.zeros(1, V)
    row = SamplingRow(SamplingParams(frequency_penalty=0.5, presence_penalty=1.0), [7, 7, 7], [5, 5, 6])
    ours = logits.clone()
    _apply_penalties(ours, [row])
    ours = ours[0]
    assert ours[5].item() == pytest.approx(-(0.5 * 2 + 1.0))
    assert ours[6].item() == pytest.approx(-(0.5 + 1.0))
    assert ours[7].item() == 0.0  # prompt tokens are not penalised


def test_banned_tokens_before_min_tokens():
    seq = Sequence("r", [1, 2], SamplingParams(min_tokens=2, stop_token_ids=[9], temperature=0.0))
    logits = torch.zeros(1, V)
    logits[0, 0] = 10.0  # EOS would win
    logits[0, 9] = 9.0
    logits[0, 3] = 1.0
    row = SamplingRow.for_sequence(seq, eos_token_ids=[0])
    assert Sampler()(logits, [row]).token_ids.tolist() == [3]
    seq.append_token(3)
    seq.append_token(3)
    assert Sampler()(logits, [SamplingRow.for_sequence(seq, eos_token_ids=[0])]).token_ids.tolist() == [0]


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = _logits(1, seed=3)
    seeded = SamplingRow(SamplingParams(seed=1234, temperature=1.5), [1], [])
    alone = [Sampler()(logits, [seeded]).token_ids.item() for _ in range(3)]
    assert len(set(alone)) == 1
    for others in (1, 5):
        batch = torch.cat([_logits(others, seed=others), logits])
        rows = [_row(temperature=1.0)] * others + [seeded]
        assert Sampler()(batch, rows).token_ids[-1].item() == alone[0]
    nucleus = SamplingRow(SamplingParams(seed=7, top_p=0.8), [1], [])
    wide = torch.randn(3, 1000, generator=torch.Generator().manual_seed(8))
    alone = Sampler()(wide[:1], [nucleus]).token_ids.item()
    mixed = Sampler()(wide, [nucleus, _row(top_k=600), _row(temperature=0.0)]).token_ids[0].item()
    assert alone == mixed
    # a stream over positions, and siblings with other sample indexes, differ
    stream = [Sampler()(logits, [SamplingRow(seeded.params, [1], [0] * i)]).token_ids.item() for i in range(20)]
    sibling = [Sampler()(logits, [SamplingRow(seeded.params, [1], [0] * i, sample_index=1)]).token_ids.item()
               for i in range(20)]
    assert len(set(stream)) > 1 and stream != sibling


def test_logprobs_are_raw_and_trimmed_per_row():
    logits = _logits(3, seed=4)
    rows = [_row(temperature=0.0, logprobs=2), _row(temperature=0.0, logprobs=0), _row(temperature=0.5)]
    out = Sampler()(logits, rows)
    raw = torch.log_softmax(logits, -1)
    chosen = out.token_ids
    # rows 0 and 1 asked (row 2 did not: its logprob is not computed, left 0)
    assert torch.allclose(out.logprobs[:2], raw[:2].gather(1, chosen[:2].unsqueeze(1)).squeeze(1))
    assert out.logprobs[2] == 0
    top = out.row_top_logprobs(0)
    assert [t for t, _ in top] == raw[0].topk(2).indices.tolist()
    assert top[0][1] == pytest.approx(raw[0].max().item())
    assert out.row_top_logprobs(1) == [] and out.row_top_logprobs(2) == []


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_candidates_equal_torch_topk(k):
    """The block search (CPU, small k) finds each row's k largest as torch.topk, also when they
    crowd into one block or spread over many."""
    from fireplace.engine.sampler import top_candidates

    g = torch.Generator().manual_seed(k)
    logits = torch.randn(6, 49152, generator=g)
    logits[1, 256:256 + 64] += 10  # row 1: the best all in one block
    logits[2, ::1024] += 10  # row 2: one per block, far apart
    values, ids = top_candidates(logits, k)
    expected_values, expected_ids = logits.topk(k, dim=-1)
    assert torch.equal(values, expected_values) and torch.equal(ids, expected_ids)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        Sampler()(torch.zeros(2, V), [_row()])


@pytest.mark.parametrize("scale", [4.0, 0.05])  # peaked: candidates suffice; flat: full-sort fallback
def test_top_k_top_p_match_transformers_warpers(scale):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    vocab = 2000
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(5)) * scale
    settings = [dict(top_k=5), dict(top_p=0.9), dict(top_k=300, top_p=0.8), dict(top_p=0.5),
                dict(top_k=40, top_p=0.95), dict()]
    values, token_ids, keep = top_k_top_p(
        logits, [s.get("top_k", -1) for s in settings], [s.get("top_p", 1.0) for s in settings])
    assert torch.equal(values, logits.gather(1, token_ids))
    for i, s in enumerate(settings[:-1]):
        expected = logits[i:i + 1].clone()
        if "top_k" in s:
            expected = TopKLogitsWarper(s["top_k"])(None, expected)
        if "top_p" in s:
            expected = TopPLogitsWarper(s["top_p"])(None, expected)
        assert set(token_ids[i][keep[i]].tolist()) == set(torch.isfinite(expected[0]).nonzero().flatten().tolist()), s
    assert keep.shape[1] == (2000 if scale < 1 else 300)  # widened only for the flat rows
    assert bool(keep[5].all())  # unfiltered row keeps every candidate


def test_sampling_never_picks_a_masked_token():
    logits = torch.full((200, V), float("-inf"))
    logits[:, 7] = 0.0
    logits[:, 11] = 0.0
    tokens = Sampler()(logits, [_row(temperature=1.0)] * 200).token_ids
    assert set(tokens.tolist()) == {7, 11}


def test_callers_logits_are_not_modified():
    logits = _logits(2, seed=6)
    before = logits.clone()
    rows = [SamplingRow(SamplingParams(repetition_penalty=1.5, presence_penalty=1.0), [1, 2], [3]),
            SamplingRow(SamplingParams(temperature=0.0), banned_token_ids=[int(logits[1].argmax())])]
    out = Sampler()(logits, rows)
    assert torch.equal(logits, before)
    assert out.token_ids[1].item() != int(logits[1].argmax())


def test_argmax_on_cpu_blocks_equals_torch_argmax():
    from fireplace.engine.sampler import _argmax

    x = torch.randn(6, 4096, generator=torch.Generator().manual_seed(9)).round()  # many ties
    x[1] = float("-inf")
    x[2, 100] = x[2, 3000] = float("nan")
    x[3] = 5.0
    x[4, 4095] = 100.0  # the last block
    assert torch.equal(_argmax(x), x.argmax(-1))
    assert torch.equal(_argmax(x[:, :4000].contiguous()), x[:, :4000].argmax(-1))  # no block size divides


def test_batched_penalties_equal_the_per_row_definition():
    g = torch.Generator().manual_seed(10)
    vocab = 50
    logits = torch.randn(6, vocab, generator=g) * 3
    settings = [dict(repetition_penalty=1.3), dict(frequency_penalty=0.7, presence_penalty=-0.4), dict(),
                dict(repetition_penalty=0.8, frequency_penalty=-0.5), dict(presence_penalty=1.5),
                dict(repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.1)]
    rows = []
    for i, s in enumerate(settings):
        prompt = torch.randint(0, vocab, (7 + i,), generator=g).tolist()
        output = torch.randint(0, vocab, (i * 3,), generator=g).tolist()
        rows.append(SamplingRow(SamplingParams(**s), prompt, output))
    expected = logits.clone()
    for i, row in enumerate(rows):  # HF repetition penalty, then OpenAI frequency/presence, per token
        p = row.params
        for t in set(row.prompt_token_ids) | set(row.output_token_ids):
            if p.repetition_penalty != 1.0:
                v = expected[i, t]
                expected[i, t] = v / p.repetition_penalty if v > 0 else v * p.repetition_penalty
        for t in set(row.output_token_ids):
            count = list(row.output_token_ids).count(t)
            expected[i, t] -= p.frequency_penalty * count + p.presence_penalty
    ours = logits.clone()
    _apply_penalties(ours, rows)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert torch.equal(ours[2], logits[2])


def test_rows_of_a_sequence_read_its_tokens_without_copies():
    seq = Sequence("r", [4, 5, 6], SamplingParams(repetition_penalty=2.0, temperature=0.0))
    seq.append_token(7)
    row = SamplingRow.for_sequence(seq)
    assert list(row.prompt_token_ids) == [4, 5, 6] and list(row.output_token_ids) == [7]
    assert len(row.output_token_ids) == 1 and row.output_token_ids[0] == 7 and row.prompt_token_ids[-1] == 6
    seq.append_token(8)  # a row is the sequence as it was when the row was made
    assert list(row.output_token_ids) == [7]
    logits = torch.zeros(1, V)
    logits[0, 4] = 1.0
    logits[0, 9] = 0.6  # 4 is seen: 1.0 / 2 < 0.6
    assert Sampler()(logits, [row]).token_ids.tolist() == [9]


def test_sampling_reads_no_device_value_back_on_the_way():
    """Every decision comes from the rows' parameters (host): no scalar read of a tensor (a host
    sync on CUDA) while sampling, whatever the mix, except top-p's candidate widening (CPU only)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten  # the ops that hand a tensor's value to Python (under inference mode too)
    SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default, aten.equal.default}

    class ScalarReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in SCALAR_READS:
                self.count += 1
            return func(*args, **(kwargs or {}))

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(11)) * 3
    rows = [SamplingRow(SamplingParams(temperature=0.0, repetition_penalty=1.2, logprobs=3), [1, 2], [2]),
            SamplingRow(SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=5, frequency_penalty=0.3), [4], [5, 5]),
            SamplingRow(SamplingParams(temperature=1.0, min_p=0.1, presence_penalty=0.5), [7], [8]),
            SamplingRow(SamplingParams(temperature=1.3, top_k=50), banned_token_ids=[0, 1]),
            SamplingRow(SamplingParams(temperature=0.0)),
            SamplingRow(SamplingParams(temperature=0.5, logprobs=1))]
    with ScalarReads() as reads:
        Sampler()(logits, rows)
    assert reads.count == 0
    with ScalarReads() as reads:  # the counter does see a read: top-p without top-k may widen (CPU)
        Sampler()(logits[:1], [SamplingRow(SamplingParams(top_p=0.5))])
    assert reads.count == 1
