"""Core subcommands: inspect and validate accelerator configs, assemble listings."""

from __future__ import annotations

import json
import sys

from bitmos.config import PRESETS, AcceleratorConfig


def add_commands(sub) -> None:
    p = sub.add_parser("config", help="show or validate an accelerator config (TOML/JSON file or preset)")
    p.add_argument("config", nargs="?", default="small",
                   help=f"a .toml/.json file or a preset ({', '.join(PRESETS)}); default: small")
    p.add_argument("--json", action="store_true", help="print the config as JSON")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.set_defaults(func=_config)

    p = sub.add_parser("asm", help="assemble a listing (text) into a program file for a config")
    p.add_argument("listing", help="assembly text file ('-' for standard input)")
    p.add_argument("--config", default="small", help="accelerator config file or preset")
    p.add_argument("-o", "--output", required=True, help="program file to write (.bmprog)")
    p.set_defaults(func=_asm)


def _config(args) -> int:
    if args.list:
        for name in PRESETS:
            c = AcceleratorConfig.load(name)
            print(f"{name:8s} {c.rows}x{c.cols} PEs x {c.lanes} lanes, A{c.act_bits}, "
                  f"{c.experts} experts, {c.ext_bw_bits} bit/cycle, {c.clock_mhz:g} MHz")
        return 0
    cfg = AcceleratorConfig.load(args.config)
    if args.json:
        print(json.dumps(dict(cfg.to_dict(), fingerprint=cfg.fingerprint(),
                              depths={b: cfg.depth(b) for b in "XWSQO"}), indent=2))
        return 0
    print(cfg.to_toml(), end="")
    print(f"# derived: depths (lines) X={cfg.depth('X')} W={cfg.depth('W')} S={cfg.depth('S')} "
          f"Q={cfg.depth('Q')} O={cfg.depth('O')}; peak {cfg.binary_ops_per_cycle()} binary ops/cycle; "
          f"fingerprint {cfg.fingerprint()}")
    return 0


def _asm(args) -> int:
    from bitmos.container import Program
    from bitmos.errors import BitmosUserError
    from bitmos.isa import assemble

    from bitmos.fileio import read_text_file

    text = sys.stdin.read() if args.listing == "-" else read_text_file(args.listing, "listing")
    try:
        words = assemble(text)
    except ValueError as exc:
        raise BitmosUserError(str(exc)) from None
    cfg = AcceleratorConfig.load(args.config)
    Program(words, cfg, {"source": args.listing}).save(args.output)
    print(f"wrote {args.output}: {len(words)} instructions for config {cfg.name!r}")
    return 0
