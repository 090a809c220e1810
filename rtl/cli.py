"""``bitmos rtl emit --config CFG -o DIR``: write the accelerator's Verilog and manifest."""

from __future__ import annotations

import argparse

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError


def _emit(args: argparse.Namespace) -> int:
    from bitmos.rtl.emit import emit
    cfg = AcceleratorConfig.load(args.config)
    try:
        vpath, jpath = emit(cfg, args.output)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, BitmosUserError):   # a bad config field or output folder, already one line
            raise
        raise ConfigError(f"config {cfg.name!r} is not supported by the RTL: {exc}") from None
    print(f"wrote {vpath}")
    print(f"wrote {jpath}")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("rtl", help="generate the accelerator RTL (Verilog + manifest)")
    sub = p.add_subparsers(dest="rtl_command", metavar="RTL_COMMAND", required=True)
    e = sub.add_parser("emit", help="write Verilog and a JSON manifest of ports and parameters")
    e.add_argument("--config", default="small", help="config file (.toml/.json) or preset name (default small)")
    e.add_argument("-o", "--output", default="out", help="output folder (default out/)")
    e.set_defaults(func=_emit)
