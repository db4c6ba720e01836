"""The ``prunekit`` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prunekit import __version__
from prunekit.errors import PrunekitError

# sub-command modules; each defines add_parser(subparsers) and sets args.func
_COMMANDS = (
    "prunekit.cli.demo",
    "prunekit.cli.prune_cmd",
    "prunekit.cli.sparsify_cmd",
    "prunekit.cli.profile_cmd",
    "prunekit.cli.llm_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune PyTorch networks and measure what it gained and what it cost.",
        epilog="Run 'prunekit demo' for the end-to-end example, "
               "'prunekit <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in _COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (PrunekitError, TypeError) as exc:
        print(f"prunekit {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
