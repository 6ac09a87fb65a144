"""Command-line flags generated from the config dataclasses (help = the field's doc)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from ember.config import EngineConfig


def _base_type(annotation):
    hint = annotation if not isinstance(annotation, str) else eval(annotation, {}, {})  # noqa: S307
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def add_engine_args(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ("model",)) -> None:
    group = parser.add_argument_group("engine options")
    for f in dataclasses.fields(EngineConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.type)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")


def engine_kwargs(args: argparse.Namespace, *, skip: tuple[str, ...] = ("model",)) -> dict:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EngineConfig)
        if f.name not in skip and hasattr(args, f.name)
    }
