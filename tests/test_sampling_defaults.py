"""SamplingParams is the one source of the sampling options' defaults and help: `ember
generate`'s flags and the server's request models take theirs from it."""

import argparse
import dataclasses

import pytest

from ember.core.sampling_params import SamplingParams

FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams)}


def _generate_parser() -> argparse.ArgumentParser:
    from ember.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["generate"]


def test_every_field_has_help():
    for name, f in FIELDS.items():
        assert f.metadata.get("help", "").strip(), name


def test_generate_offers_every_field_with_its_default():
    from ember import cli_generate

    parser = _generate_parser()
    help_text = parser.format_help()
    actions = parser._option_string_actions
    assert set(cli_generate._CLI_DEFAULTS) == {"max_tokens", "temperature"}
    offered = set(FIELDS) - set(cli_generate._NO_FLAG)
    assert offered == {
        "n",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
    }
    for name in offered:
        flag = "--" + name.replace("_", "-")
        assert flag in help_text, flag
        action = actions[flag]
        assert action.dest == name
        expected = cli_generate._CLI_DEFAULTS.get(name, FIELDS[name].default)
        assert action.default == expected, name
        assert FIELDS[name].metadata["help"].split()[0] in action.help, name
    assert actions["-n"] is actions["--n"]
    for name in cli_generate._NO_FLAG:
        assert "--" + name.replace("_", "-") not in actions


def test_generate_defaults_build_samplingparams_with_the_two_overrides():
    from ember.cli_generate import sampling_params_from_args

    params = sampling_params_from_args(_generate_parser().parse_args(["x"]))
    assert params == dataclasses.replace(SamplingParams(), max_tokens=64, temperature=0.0)
    assert params.is_greedy


def test_generate_flags_build_samplingparams():
    from ember.cli_generate import sampling_params_from_args

    args = _generate_parser().parse_args(
        [
            "x",
            "--top-k",
            "5",
            "--presence-penalty",
            "0.5",
            "--stop",
            "a",
            "--stop",
            "b",
            "--stop-token-ids",
            "1,2",
            "-n",
            "2",
            "--seed",
            "7",
            "--no-skip-special-tokens",
            "--ignore-eos",
        ]
    )
    params = sampling_params_from_args(args)
    assert (params.top_k, params.presence_penalty) == (5, 0.5)
    assert params.stop == ["a", "b"] and params.stop_token_ids == [1, 2]
    assert (params.n, params.seed, params.skip_special_tokens, params.ignore_eos) == (2, 7, False, True)
    assert (params.max_tokens, params.temperature) == (64, 0.0)
    # --seed seeds the request; the engine's seed flag is not offered.
    assert args.seed == 7


def test_generate_bad_stop_token_ids_names_the_flag():
    from ember.cli_generate import sampling_params_from_args
    from ember.errors import InvalidInputError

    args = _generate_parser().parse_args(["x", "--stop-token-ids", "1,a"])
    with pytest.raises(InvalidInputError, match="--stop-token-ids"):
        sampling_params_from_args(args)


# Request fields named like a SamplingParams field whose default differs on purpose
# (OpenAI's API): None = "generation_config, else SamplingParams'", OpenAI's max_tokens, and
# chat's logprobs switch.
_OWN_DEFAULTS = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens"}


@pytest.mark.parametrize("model_name", ["SamplingRequest", "CompletionRequest", "ChatCompletionRequest"])
def test_request_models_mirror_samplingparams_defaults(model_name):
    from ember.server import protocol

    model = getattr(protocol, model_name)
    own = _OWN_DEFAULTS | ({"logprobs"} if model_name == "ChatCompletionRequest" else set())
    mirrored = (set(model.model_fields) & set(FIELDS)) - own
    assert {"n", "presence_penalty", "frequency_penalty", "stop", "seed", "min_tokens"} <= mirrored
    for name in mirrored:
        assert model.model_fields[name].default == FIELDS[name].default, name
    for name in _OWN_DEFAULTS - {"max_tokens"}:
        assert model.model_fields[name].default is None, name
    assert protocol.CompletionRequest.model_fields["max_tokens"].default == 16
    assert protocol.ChatCompletionRequest.model_fields["max_tokens"].default is None


def test_server_falls_back_to_samplingparams_defaults():
    from ember.server.protocol import CompletionRequest
    from ember.server.serving import ServingContext

    ctx = ServingContext.__new__(ServingContext)  # only the two attributes sampling_params reads
    ctx.max_model_len, ctx.defaults = 64, {}
    kwargs = {"num_prompt_tokens": 4, "max_tokens": 8, "logprobs": None, "prompt_param": "prompt"}
    params = ctx.sampling_params(CompletionRequest(prompt="hi"), **kwargs)
    assert params == dataclasses.replace(SamplingParams(), max_tokens=8)

    ctx.defaults = {"temperature": 0.6, "top_k": 20}
    params = ctx.sampling_params(CompletionRequest(prompt="hi", top_k=3), **kwargs)
    assert (params.temperature, params.top_k, params.top_p) == (0.6, 3, SamplingParams().top_p)
