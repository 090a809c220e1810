"""``bitmos simulate``: run a program (or a compiler output directory) on the simulator and report.

Inputs: a ``.bmprog`` file (+ ``--memory image.bmmem``), or a directory written by the compiler
(``manifest.json``, one ``.bmprog`` per layer program, ``memory.bmmem`` unless timing-only); the
layer programs run in manifest order on one external memory, each starting from reset on-chip state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.container import MemoryImage, Program
from bitmos.errors import ConfigError, FormatError


def load_programs(path: str | Path) -> tuple[list[tuple[str, Program]], Path | None, dict[str, Any]]:
    """[(name, Program)], the memory image path (or None) and the manifest ({} for a single file)."""
    p = Path(path)
    if p.is_dir():
        man_path = p / "manifest.json"
        if not man_path.is_file():
            raise FormatError(f"{p}: a program directory needs manifest.json (written by 'bitmos compile')")
        try:
            man = json.loads(man_path.read_text(encoding="utf-8"))
            progs = [(f"{layer['name']}" + (f".p{i}" if len(layer["programs"]) > 1 else ""), p / entry["file"])
                     for layer in man["layers"] for i, entry in enumerate(layer["programs"])]
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"{man_path}: not a compiler manifest ({exc!r})") from None
        mem = man.get("memory_image")
        return [(n, Program.load(f)) for n, f in progs], (p / mem) if mem else None, man
    if not p.is_file():
        raise FormatError(f"program {str(p)!r} does not exist")
    return [(p.stem, Program.load(p))], None, {}


def cmd_simulate(args) -> int:
    from bitmos.sim.energy import EnergyTable, default_table
    from bitmos.sim.machine import Simulator
    from bitmos.sim.report import format_text, summarize, write_json, write_plots

    programs, mem_path, manifest = load_programs(args.program)
    if args.memory:
        mem_path = Path(args.memory)
    cfg = programs[0][1].config
    if args.config:
        want = AcceleratorConfig.load(args.config)
        if want.fingerprint() != cfg.fingerprint():
            raise ConfigError(f"--config {args.config!r} differs from the config the program was compiled for "
                              f"({cfg.name!r}); recompile, or omit --config")
    table = EnergyTable.load(args.energy_table or default_table(cfg))
    functional = not args.timing_only
    memory = None
    if functional:
        if mem_path is None:
            if manifest.get("timing_only"):
                raise FormatError(f"{args.program}: compiled timing-only (no memory image); use --timing-only")
            memory = bytearray()
        else:
            memory = MemoryImage.load(mem_path)
            if memory.config_fingerprint != cfg.fingerprint():
                raise ConfigError(f"{mem_path}: memory image is for config fingerprint "
                                  f"{memory.config_fingerprint}, the program's config is {cfg.fingerprint()}")
            memory = memory.data
    sim = Simulator(cfg, check_hazards=not args.no_hazard_check)
    results = []
    for name, prog in programs:
        r = sim.run(prog, memory, functional=functional, trace=bool(args.plots))
        if functional:
            memory = r.memory
        results.append(r)
        if r.error:
            break
    tokens = args.tokens or manifest.get("tokens")
    summary = summarize(results, table, tokens=tokens, names=[n for n, _ in programs])
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_text(summary))
    if args.plots:
        out = Path(args.plots)
        write_json(summary, out / "report.json")
        for path in write_plots(summary, out, trace_runs=results[:8]):
            print(f"wrote {path}", file=sys.stderr)
    if functional and args.memory_out:
        fp = cfg.fingerprint()
        MemoryImage(memory, fp, {"written_by": "bitmos simulate"}).save(args.memory_out)
    return 1 if any(r.error for r in results) else 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="run programs on the cycle-accurate simulator; report "
                              "cycles, throughput, energy", description=__doc__)
    p.add_argument("program", metavar="PROG_DIR_OR_FILE", help="a .bmprog file or a compiler output directory")
    p.add_argument("--memory", help="initial external memory (.bmmem); default: the directory's memory.bmmem")
    p.add_argument("--config", help="accelerator config (preset name or file); must match the program's")
    p.add_argument("--energy-table", help="shipped table name (e.g. horowitz45_hbm2) or a TOML file")
    p.add_argument("--timing-only", action="store_true", help="cycles and counts without data (fast)")
    p.add_argument("--tokens", type=int, help="tokens the run processes (for tokens/s and energy per token)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plots", metavar="DIR", help="write report.json, roofline.png, energy.png, timeline.png")
    p.add_argument("--memory-out", metavar="FILE", help="write the final external memory (.bmmem)")
    p.add_argument("--no-hazard-check", action="store_true", help="do not stop on DMA hazards")
    p.set_defaults(func=cmd_simulate)
