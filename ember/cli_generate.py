"""`ember generate` and `ember models`."""

from __future__ import annotations

import argparse
import sys

from ember.cli_args import add_engine_args, engine_kwargs
from ember.errors import InvalidInputError

# NOTE: --seed here seeds the request; the engine's default seed keeps its default.
_NOT_ENGINE_FLAGS = ("model", "seed")


def register(subparsers) -> None:
    gen = subparsers.add_parser("generate", help="generate a continuation of a prompt")
    gen.add_argument("prompt", nargs="?", help="prompt text")
    gen.add_argument("--model", help="HF checkpoint directory, hub id, or built-in name (see `ember models`)")
    gen.add_argument("--prompt-token-ids", help="comma-separated token ids instead of text")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    s = gen.add_argument_group("sampling")
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--min-tokens", type=int, default=0)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--min-p", type=float, default=0.0)
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--presence-penalty", type=float, default=0.0)
    s.add_argument("--frequency-penalty", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    s.add_argument("--stop-token-ids", default=None, help="comma-separated stop token ids")
    s.add_argument("--ignore-eos", action="store_true")
    s.add_argument("-n", "--n", type=int, default=1, help="completions per prompt")
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
    from ember.sampling_params import SamplingParams

    params = SamplingParams(
        n=args.n,
        max_tokens=args.max_tokens,
        min_tokens=args.min_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        stop=args.stop,
        stop_token_ids=_int_list(args.stop_token_ids, "--stop-token-ids"),
        ignore_eos=args.ignore_eos,
    )
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
