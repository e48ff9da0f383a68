"""The ``step1x-edit`` command line: one entry point whose subcommands are thin clients of the Python API.

``edit``, ``convert`` and ``info`` live here; ``data`` and ``bench`` register themselves from their
packages (``step1x_edit.data.cli``, ``step1x_edit.bench.cli``). Heavy imports happen inside handlers so
``step1x-edit --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from .errors import Step1XEditError


def build_parser() -> argparse.ArgumentParser:
    from .bench.cli import register as register_bench
    from .data.cli import register as register_data

    parser = argparse.ArgumentParser(
        prog="step1x-edit",
        description="Instruction-based image editing with Step1X-Edit.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (register_data, register_bench):
        register(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except Step1XEditError as error:
        print(f"step1x-edit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"step1x-edit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
