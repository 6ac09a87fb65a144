import pytest

from ember.core.sampling_params import SamplingParams
from ember.errors import InvalidInputError


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.max_tokens, p.min_tokens, p.logprobs, p.seed) == (16, 0, None, None)
    assert p.stop == [] and p.stop_token_ids == []
    assert not p.is_greedy


def test_keyword_only():
    with pytest.raises(TypeError):
        SamplingParams(2)


def test_normalisation():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop_token_ids=(7, 9)).stop_token_ids == [7, 9]
    assert SamplingParams(top_k=-1).top_k == 0
    p = SamplingParams(temperature=1, top_p=1)
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)


def test_is_greedy():
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.8, top_k=1).is_greedy
    assert not SamplingParams(temperature=1e-3).is_greedy
    assert not SamplingParams(top_k=2).is_greedy


@pytest.mark.parametrize(
    "field, value",
    [
        ("n", 0),
        ("n", 1.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("temperature", "1"),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_k", -2),
        ("top_k", 2.0),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("presence_penalty", 2.5),
        ("presence_penalty", -2.01),
        ("frequency_penalty", -3),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("logprobs", -1),
        ("logprobs", 21),
        ("prompt_logprobs", 21),
        ("seed", "42"),
        ("seed", 1.0),
        ("seed", True),
        ("seed", 2**64),
        ("stop", ""),
        ("stop", ["ok", 3]),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", ["2"]),
        ("ignore_eos", "yes"),
    ],
)
def test_bad_value_names_the_field(field, value):
    with pytest.raises(InvalidInputError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field
    assert field in str(info.value) and repr(value) in str(info.value)


def test_min_tokens_above_max_tokens():
    with pytest.raises(InvalidInputError) as info:
        SamplingParams(max_tokens=4, min_tokens=5)
    assert info.value.param == "min_tokens"
    assert SamplingParams(max_tokens=None, min_tokens=1000).min_tokens == 1000


def test_boundary_values_accepted():
    SamplingParams(
        temperature=0.0,
        top_p=1.0,
        min_p=1.0,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        repetition_penalty=0.5,
        logprobs=20,
        prompt_logprobs=0,
        max_tokens=1,
        min_tokens=1,
        seed=0,
    )
    SamplingParams(min_p=0.0, logprobs=0, max_tokens=None, seed=-5)
