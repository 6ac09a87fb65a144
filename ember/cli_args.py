"""Command-line flags generated from the engine's config dataclasses (help = the field's doc):
the flat vLLM-style names, sorted back into sections by ``EngineConfig.from_kwargs``."""

from __future__ import annotations

import argparse

from ember.config import engine_options


def add_engine_args(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ("model",)) -> None:
    group = parser.add_argument_group("engine options")
    for option in engine_options().values():
        if option.flag in skip:
            continue
        flag = "--" + option.flag.replace("_", "-")
        if option.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=option.default, help=option.help)
        else:
            shown = ",".join(map(str, option.default)) if isinstance(option.default, tuple) else option.default
            group.add_argument(flag, type=option.type, default=option.default, help=f"{option.help} (default: {shown})")


def engine_kwargs(args: argparse.Namespace, *, skip: tuple[str, ...] = ("model",)) -> dict:
    """The flat engine options parsed into ``args`` (for ``EngineConfig.from_kwargs``)."""
    return {flag: getattr(args, flag) for flag in engine_options() if flag not in skip and hasattr(args, flag)}
