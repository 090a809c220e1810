"""`bitmos compile` and `bitmos disasm`."""

from __future__ import annotations

import argparse
import sys

from bitmos.cliargs import positive_int
from bitmos.config import AcceleratorConfig
from bitmos.container import Program
from bitmos.errors import ConfigError, FormatError
from bitmos.isa import disassemble


def _compile(args: argparse.Namespace) -> int:
    from bitmos.compiler.api import compile_model

    cfg = AcceleratorConfig.load(args.config)
    if args.tokens < 1:
        raise ConfigError(f"--tokens must be >= 1, got {args.tokens}")
    timing = True if args.timing_only else None
    model = compile_model(args.model, cfg, args.tokens, timing_only=timing, seed=args.seed)
    out = model.save(args.output, listings=not args.no_listings)
    n_prog = sum(len(l.programs) for l in model.layers)
    kind = "timing-only (no memory image)" if model.memory is None else f"memory image {len(model.memory)} bytes"
    print(f"compiled {len(model.layers)} binarized linears ({n_prog} programs) for {cfg.name} at "
          f"{args.tokens} token(s): {model.cycles} cycles, {kind}, in {model.info['compile_seconds']} s -> {out}")
    return 0


def _disasm(args: argparse.Namespace) -> int:
    prog = Program.load(args.program)
    raw = prog.meta.get("comments", {})
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k.isdigit() and isinstance(v, str)
                                            for k, v in raw.items()):
        raise FormatError(f"{args.program}: header field meta.comments must map instruction numbers to text")
    comments = {int(k): v for k, v in raw.items()}
    layer = prog.meta.get("layer")
    if layer is not None:
        print(f"; layer {layer} part {prog.meta.get('part', 0)}, config {prog.config.name} "
              f"({prog.config.fingerprint()}), {len(prog.words)} words")
    sys.stdout.write(disassemble(prog.words, comments))
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "compile", help="compile a model's binarized linears to programs, a memory image and a manifest",
        description="MODEL is a bitmos export (.safetensors), a Hugging Face LLaMA-family config.json or a "
                    "bitmos model config JSON (shape only: seeded synthetic weights).")
    p.add_argument("model", help="export file, HF config.json or bitmos model config JSON")
    p.add_argument("--config", required=True, help="accelerator config (.toml/.json) or a preset name")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--tokens", type=positive_int, default=1, help="tokens per call: 1 = decode (default), >1 = prefill")
    p.add_argument("--timing-only", action="store_true",
                   help="do not materialize weights or the memory image (programs, layout sizes and cycles only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights of shape-only models")
    p.add_argument("--no-listings", action="store_true", help="skip the .lst listings")
    p.set_defaults(func=_compile)

    d = subparsers.add_parser("disasm", help="print the listing of a compiled program (.bmprog)")
    d.add_argument("program", help="program file")
    d.set_defaults(func=_disasm)
