"""`ember generate` and `ember models`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from ember.cli_args import add_engine_args, engine_kwargs
from ember.core.sampling_params import SamplingParams
from ember.errors import InvalidInputError

# NOTE: --seed here seeds the request; the engine's default seed keeps its default.
_NOT_ENGINE_FLAGS = ("model", "seed")

# The CLI's own defaults, where it differs from SamplingParams on purpose: a short, greedy
# (reproducible) continuation is what a quick look at a model from the shell wants. Every
# other sampling flag defaults to SamplingParams' value.
_CLI_DEFAULTS = {"max_tokens": 64, "temperature": 0.0}

# SamplingParams fields with no flag: the CLI prints text only, so it has nowhere to show
# logprobs (asking for them would only cost compute).
_NO_FLAG = ("logprobs", "prompt_logprobs")

_SHORT_FLAGS = {"n": ("-n",)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_kind(hint) -> tuple[str, type]:
    """("bool" | "repeat" | "csv" | "scalar", element type) for a SamplingParams annotation.

    Lists of strings are repeatable flags (a stop string may hold a comma); lists of numbers
    are one comma-separated flag."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
    else:
        args = [hint]
    for arg in args:
        if typing.get_origin(arg) is list:
            (elem,) = typing.get_args(arg)
            if elem is str:
                return "repeat", str
            if elem is int:
                return "csv", int
            raise TypeError(f"no command-line syntax for {hint}")
    if args[0] is bool:
        return "bool", bool
    return "scalar", args[0]


def _sampling_flags() -> list[tuple[dataclasses.Field, str, type]]:
    hints = typing.get_type_hints(SamplingParams)
    return [(f, *_cli_kind(hints[f.name])) for f in dataclasses.fields(SamplingParams) if f.name not in _NO_FLAG]


def _add_sampling_args(group) -> None:
    for f, kind, elem in _sampling_flags():
        default = _CLI_DEFAULTS.get(f.name, f.default)
        names = (*_SHORT_FLAGS.get(f.name, ()), _flag(f.name))
        help_text = f.metadata["help"]
        if kind == "bool":
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif kind == "repeat":
            group.add_argument(*names, action="append", default=default, help=f"{help_text} (repeatable)")
        elif kind == "csv":
            group.add_argument(*names, default=default, help=f"{help_text} (comma-separated)")
        else:
            group.add_argument(*names, type=elem, default=default, help=f"{help_text} (default: {default})")


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    """The SamplingParams that `ember generate`'s sampling flags ask for."""
    kwargs = {}
    for f, kind, _ in _sampling_flags():
        value = getattr(args, f.name)
        kwargs[f.name] = _int_list(value, _flag(f.name)) if kind == "csv" else value
    return SamplingParams(**kwargs)


def register(subparsers) -> None:
    gen = subparsers.add_parser("generate", help="generate a continuation of a prompt")
    gen.add_argument("prompt", nargs="?", help="prompt text")
    gen.add_argument("--model", help="HF checkpoint directory, hub id, or built-in name (see `ember models`)")
    gen.add_argument("--prompt-token-ids", help="comma-separated token ids instead of text")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    s = gen.add_argument_group("sampling")
    _add_sampling_args(s)
    s.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    add_engine_args(gen, skip=_NOT_ENGINE_FLAGS)
    gen.set_defaults(func=run_generate)

    models = subparsers.add_parser("models", help="list the built-in models")
    models.set_defaults(func=run_models)


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise InvalidInputError(f"{flag} must be comma-separated integers, got {text!r}") from None


def run_generate(args: argparse.Namespace) -> int:
    from ember.zoo import default_model

    args.model = args.model or default_model()
    if not args.model:
        raise InvalidInputError(
            "--model is required: pass an HF checkpoint directory, a hub id, or a built-in "
            "name from `ember models` (e.g. --model debug-llama)"
        )
    token_ids = _int_list(args.prompt_token_ids, "--prompt-token-ids")
    if (args.prompt is None) == (token_ids is None):
        raise InvalidInputError("give exactly one of PROMPT or --prompt-token-ids")

    from ember.engine.llm import LLM

    params = sampling_params_from_args(args)
    llm = LLM(args.model, **engine_kwargs(args, skip=_NOT_ENGINE_FLAGS))
    if args.chat:
        if llm.tokenizer is None or token_ids is not None:
            raise InvalidInputError("--chat needs a text PROMPT and a model with a tokenizer")
        text = llm.tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
        prompt = {"prompt": text, "prompt_token_ids": llm.tokenizer.encode(text, add_special_tokens=False)}
    else:
        prompt = {"prompt_token_ids": token_ids} if token_ids is not None else args.prompt

    if args.stream:
        if args.n != 1:
            raise InvalidInputError("--stream prints one completion; use -n 1")
        printed = 0
        for output in llm.stream(prompt, params):
            text = output.outputs[0].text
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)
        sys.stdout.write("\n")
        return 0

    (result,) = llm.generate(prompt, params)
    for completion in result.outputs:
        if args.n > 1:
            print(f"--- completion {completion.index} ({completion.finish_reason})")
        text = completion.text if llm.tokenizer is not None else " ".join(map(str, completion.token_ids))
        print(text)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ember.zoo import BUILTIN_MODELS, DEFAULT_MODEL

    width = max(len(name) for name in BUILTIN_MODELS)
    for name, entry in BUILTIN_MODELS.items():
        if entry.materialize is not None:
            where = "written on first use"
        elif (path := entry.shipped_path(name)) is not None:
            size_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            where = f"shipped, {size_mb:.1f} MB" + (", default" if name == DEFAULT_MODEL else "")
        else:
            where = "not shipped in this installation"
        print(f"{name:<{width}}  {entry.description} [{where}]")
    return 0
