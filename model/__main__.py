"""``python -m bitmos.model COMMAND``: the model subcommands alone (same handlers as ``bitmos COMMAND``)."""

import argparse
import sys

from bitmos.errors import BitmosUserError
from bitmos.model.cli import add_commands


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitmos.model")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BitmosUserError as exc:
        print(f"bitmos {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
