"""`ember train` (also `python -m ember.train`): train a recipe of Ember's model family.

Every ``TrainConfig`` field is a flag (help = the field's doc) that overrides the recipe.
Values are parsed here, not by argparse, so that a bad one is an InvalidInputError: a clear
message and exit status 1, like every other user error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

from ember.errors import InvalidInputError
from ember.train.config import TrainConfig

_RUN_FLAGS = (
    ("--out", "run folder: checkpoints, metrics.jsonl, hf/ (required)"),
    ("--max-minutes", "stop cleanly (checkpoint + export) within this many minutes"),
    ("--stop-at-step", "pause at this step (checkpoint + export); the schedule is unchanged"),
    ("--corpus-root", "train on the .py files under this folder instead of the stdlib"),
    ("--tokenizer", "use the tokenizer.json in this folder instead of training one"),
    ("--export-dir", "where to write the HF checkpoint (default: <out>/hf)"),
    ("--cache-dir", "corpus/tokenizer/token cache (default: $EMBER_CACHE/train)"),
    ("--distill-from", "teacher HF checkpoint: add the KL to its distribution to the loss"),
    ("--plan", "hybrid-parallel plan JSON (`ember plan`); run under torchrun, one rank per device of the plan"),
)
_RUN_SWITCHES = (
    ("--resume", "continue from the newest checkpoint in --out"),
    ("--prepare-only", "build corpus, tokenizer and token cache, print their stats, exit"),
    ("--no-progress", "no progress bar"),
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model of Ember's tiny family on this machine's Python stdlib",
        description="Train a recipe (see --list-recipes), checkpointing under --out and "
        "exporting a Hugging Face checkpoint to <out>/hf at every stop.",
    )
    parser.add_argument("--recipe", default="ember-tiny", help="recipe name (default: ember-tiny)")
    parser.add_argument("--list-recipes", action="store_true", help="list recipes and exit")
    for flag, help_text in _RUN_FLAGS:
        parser.add_argument(flag, help=help_text)
    for flag, help_text in _RUN_SWITCHES:
        parser.add_argument(flag, action="store_true", help=help_text)
    group = parser.add_argument_group("training settings (default: the recipe's)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if _field_type(f) is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, default=None, metavar=f.name.upper(), help=help_text)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ember.train.recipes import RECIPES, get_recipe
    from ember.train.run import RunOptions, prepare_data, run_training, with_overrides

    if args.list_recipes:
        for name, factory in RECIPES.items():
            recipe = factory()
            print(f"{name:<14} {recipe.description}")
        return 0
    recipe = with_overrides(get_recipe(args.recipe), train_overrides(args))
    if not args.out and not args.prepare_only:
        raise InvalidInputError("--out is required: the folder for checkpoints and the export")
    try:
        options = RunOptions(
            out_dir=Path(args.out or ".").expanduser(),
            corpus_root=_path(args.corpus_root),
            cache_root=_path(args.cache_dir),
            tokenizer_dir=_path(args.tokenizer),
            export_dir=_path(args.export_dir),
            resume=args.resume,
            max_minutes=_number(args.max_minutes, float, "--max-minutes"),
            stop_at_step=_number(args.stop_at_step, int, "--stop-at-step"),
            distill_from=_existing_dir(args.distill_from, "--distill-from"),
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if args.plan and not args.prepare_only:
        from ember.train.parallel.run import run_planned

        run_planned(recipe, options, Path(args.plan).expanduser())
        return 0
    if args.prepare_only:
        data = prepare_data(recipe, options)
        num_tokens = {s: int(a.size) for s, a in data.tokens.items()}
        stats = {
            **data.corpus.summary(),
            "tokenizer_dir": str(data.tokenizer_dir),
            "vocab_size": data.vocab_size,
            "num_tokens": num_tokens,
            "bytes_per_token": {s: data.corpus.num_bytes(s) / max(n, 1) for s, n in num_tokens.items()},
            "num_params": recipe.model.num_params(data.vocab_size),
        }
        print(json.dumps(stats, indent=2))
        return 0
    result = run_training(recipe, options)
    fit = result.fit
    val = "n/a"
    if fit.last_eval is not None:
        val = f"{fit.last_eval.loss:.4f} (ppl {fit.last_eval.perplexity:.2f})"
    print(f"{recipe.name}: stopped ({fit.stop_reason}) at step {fit.step}; val loss {val}")
    print(f"exported to {result.export_dir}; try: ember generate --model {result.export_dir} 'def '")
    return 0


def train_overrides(args: argparse.Namespace) -> dict:
    """The ``TrainConfig`` fields given on the command line, converted to their types."""
    overrides = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        overrides[f.name] = value if kind in (bool, str) else _number(value, kind, flag)
    return overrides


def _number(text: str | None, kind: type, flag: str):
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        kind_name = "an integer" if kind is int else "a number"
        raise InvalidInputError(f"{flag} must be {kind_name}, got {text!r}") from None


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text).expanduser()


def _existing_dir(text: str | None, flag: str) -> Path | None:
    path = _path(text)
    if path is not None and not path.is_dir():
        raise InvalidInputError(f"{flag} {text}: no such directory")
    return path


def _field_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
