"""`ember` command line: generate | models | serve | bench | spot (more as they land)."""

from __future__ import annotations

import argparse
import sys

from ember.errors import EmberError

# Each module provides `register(subparsers)`, which adds its subcommand and sets
# `func(args) -> int` on the parser defaults.
_COMMAND_MODULES = (
    "ember.cli_generate",
    "ember.bench.cli",
    "ember.spot.cli",
    "ember.server.cli",
    "ember.train.cli",
    "ember.planner.cli",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="ember", description="Ember LLM engine")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EmberError as exc:
        print(f"ember {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
