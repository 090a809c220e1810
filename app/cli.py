"""The `bitmos` command line.

Each area (model, compiler, sim, rtl, explore) owns a ``cli`` module with ``add_commands(subparsers)``;
the runs that join areas (demo, verify, estimate) live beside this file. This file only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Areas that contribute subcommands, in the order they appear in --help.
_AREAS = ("bitmos.app.corecli", "bitmos.model.cli", "bitmos.compiler.cli", "bitmos.sim.cli",
          "bitmos.rtl.cli", "bitmos.explore.cli", "bitmos.app.demo", "bitmos.app.verify",
          "bitmos.app.estimate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitmos",
        description="Co-design toolkit for 1-bit LLM accelerators: binarized transformer, "
                    "compiler, cycle-accurate simulator with energy model, Amaranth RTL.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # this area has no commands yet
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BitmosUserError as exc:
        print(f"bitmos {args.command}: error: {exc}", file=sys.stderr)
        return 2


from bitmos.errors import BitmosUserError  # noqa: E402  (kept below main for readability)

if __name__ == "__main__":
    sys.exit(main())
