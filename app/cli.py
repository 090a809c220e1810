"""The `bitmos` command line.

Each area (model, compiler, sim, rtl, explore) owns a ``cli`` module with ``add_commands(subparsers)``;
the runs that join areas (demo, verify, estimate) live beside this file. This file only collects them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# Areas that contribute subcommands, in the order they appear in --help.
_AREAS = ("bitmos.app.corecli", "bitmos.model.cli", "bitmos.compiler.cli", "bitmos.sim.cli",
          "bitmos.rtl.cli", "bitmos.explore.cli", "bitmos.app.codesign", "bitmos.app.demo", "bitmos.app.verify",
          "bitmos.app.estimate")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``bitmos CMD: error: ...``, exit 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`bitmos config small | head`): stop quietly, as Unix tools do; stdout is
        # pointed at /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BitmosUserError as exc:
        print(f"bitmos {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the machine refused a read or a write (disk full, read-only folder, no permission, missing path):
        # the user's environment, not a bug, so one line like any other user error
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"bitmos {args.command}: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                       errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG,
                       errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.EIO, errno.EXDEV, errno.ELOOP}


from bitmos.errors import BitmosUserError  # noqa: E402  (kept below main for readability)

if __name__ == "__main__":
    sys.exit(main())
