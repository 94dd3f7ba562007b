import pytest

from fireplace.engine.errors import ContextLengthExceededError, EngineError, InvalidRequestError
from fireplace.engine.sampling_params import MAX_STOP_STRINGS, SamplingParams


def test_defaults_are_valid():
    params = SamplingParams().validate()
    assert params.max_tokens == 16 and params.n == 1 and not params.is_greedy


@pytest.mark.parametrize("changes", [
    dict(temperature=0.0), dict(temperature=2.0), dict(top_p=1.0), dict(top_p=1e-6),
    dict(top_k=-1), dict(top_k=0), dict(top_k=1), dict(min_p=0.0), dict(min_p=1.0),
    dict(repetition_penalty=1e-3), dict(frequency_penalty=-2), dict(presence_penalty=2.0),
    dict(seed=0), dict(seed=-(2**63)), dict(seed=2**64 - 1), dict(stop=["\n"] * MAX_STOP_STRINGS),
    dict(stop_token_ids=[0, 2]), dict(max_tokens=None), dict(max_tokens=1, min_tokens=1),
    dict(n=128), dict(logprobs=0), dict(logprobs=20), dict(prompt_logprobs=5), dict(echo=True),
])
def test_accepts_edges(changes):
    SamplingParams(**changes).validate()


@pytest.mark.parametrize("param, value", [
    ("temperature", -0.1), ("temperature", 2.01), ("temperature", float("nan")), ("temperature", "1"),
    ("top_p", 0.0), ("top_p", 1.1), ("top_k", -2), ("top_k", 1.5), ("min_p", -0.1), ("min_p", 1.5),
    ("repetition_penalty", 0.0), ("repetition_penalty", float("inf")),
    ("frequency_penalty", 2.5), ("presence_penalty", -3), ("seed", 2**64), ("seed", 1.0), ("seed", True),
    ("stop", "\n"), ("stop", [""]), ("stop", ["x"] * (MAX_STOP_STRINGS + 1)), ("stop", [3]),
    ("stop_token_ids", [-1]), ("stop_token_ids", 5), ("max_tokens", 0), ("max_tokens", True),
    ("min_tokens", -1), ("n", 0), ("n", 129), ("logprobs", 21), ("logprobs", -1),
    ("prompt_logprobs", 21), ("echo", 1), ("ignore_eos", "yes"),
])
def test_rejects_and_names_param(param, value):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{param: value}).validate()
    assert info.value.param == param
    assert isinstance(info.value, EngineError)


def test_min_tokens_above_max_tokens_is_refused():
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(max_tokens=4, min_tokens=5).validate()
    assert info.value.param == "min_tokens"


def test_max_new_tokens_fits_context():
    assert SamplingParams(max_tokens=10).max_new_tokens(90, 100) == 10
    assert SamplingParams(max_tokens=None).max_new_tokens(90, 100) == 10
    assert SamplingParams(max_tokens=50).max_new_tokens(90, 100, truncate=True) == 10
    with pytest.raises(ContextLengthExceededError) as info:
        SamplingParams(max_tokens=11).max_new_tokens(90, 100)
    assert info.value.param == "max_tokens" and "at most 10" in str(info.value)
    with pytest.raises(ContextLengthExceededError):
        SamplingParams(max_tokens=None).max_new_tokens(100, 100)
    with pytest.raises(InvalidRequestError):
        SamplingParams().max_new_tokens(0, 100)
