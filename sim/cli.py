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
from bitmos.cliargs import positive_int
from bitmos.container import MemoryImage, Program, load_compiled_folder
from bitmos.errors import ConfigError, FormatError


#: Default bound on the external memory a functional run may grow to (--max-memory-mib).
DEFAULT_MAX_MEMORY_MIB = 2048


def load_programs(path: str | Path) -> tuple[list[tuple[str, Program]], MemoryImage | None, dict[str, Any]]:
    """[(name, Program)], the memory image (or None) and the manifest ({} for a single file)."""
    p = Path(path)
    if p.is_dir():
        folder = load_compiled_folder(p)
        return folder.programs, folder.memory, folder.manifest
    if not p.is_file():
        from bitmos.fileio import why_not_a_file
        raise FormatError(f"program {str(p)!r} {why_not_a_file(p)}")
    return [(p.stem, Program.load(p))], None, {}


def check_run_bounds(programs: list[tuple[str, Program]], cfg: AcceleratorConfig, *, memory_bytes: int,
                     functional: bool, max_memory_mib: int, max_cycles: int | None) -> None:
    """Refuse, before anything runs, a run whose external memory would grow past ``max_memory_mib`` or whose
    cycles exceed ``max_cycles``. Programs are straight-line, so the timing analysis gives the exact cycles
    and the highest byte every store writes without executing anything."""
    from bitmos.sim.analysis import analyze
    from bitmos.isa import Op

    limit = max_memory_mib << 20
    if functional and memory_bytes > limit:
        raise ConfigError(f"the memory image holds {memory_bytes / 2**20:.1f} MiB, above --max-memory-mib "
                          f"{max_memory_mib}")
    if not functional and max_cycles is None:
        return
    total = 0
    for name, prog in programs:
        an = analyze(prog.words, cfg, check_hazards=False)
        total += an.cycles
        if max_cycles is not None and total > max_cycles:
            raise ConfigError(f"{name}: the run takes more than --max-cycles {max_cycles} cycles "
                              f"({total} by the end of this program); raise the budget to run it")
        issued = an.decoded.op[:an.n_issued] == int(Op.STORE)
        top = int(an.ext_end[:an.n_issued][issued].max()) if issued.any() else 0
        if functional and top > limit:
            raise ConfigError(f"{name}: stores reach external byte {top:,} ({top / 2**20:.0f} MiB); the "
                              f"simulated memory would grow past --max-memory-mib {max_memory_mib} "
                              f"(config ext_mem_mib {cfg.ext_mem_mib}); raise the limit or use --timing-only")


def cmd_simulate(args) -> int:
    from bitmos.fileio import atomic_folder
    from bitmos.sim.energy import EnergyTable, default_table
    from bitmos.sim.machine import Simulator
    from bitmos.sim.report import format_text, summarize, write_json, write_plots

    programs, memory_image, manifest = load_programs(args.program)
    if args.memory:
        memory_image = MemoryImage.load(args.memory)
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
        if memory_image is None:
            if manifest.get("timing_only"):
                raise FormatError(f"{args.program}: compiled timing-only (no memory image); use --timing-only")
            memory = bytearray()
        else:
            if memory_image.config_fingerprint != cfg.fingerprint():
                raise ConfigError(f"{args.memory or args.program}: memory image is for config fingerprint "
                                  f"{memory_image.config_fingerprint}, the program's config is {cfg.fingerprint()}")
            memory = memory_image.data
    check_run_bounds(programs, cfg, memory_bytes=len(memory or b""), functional=functional,
                     max_memory_mib=args.max_memory_mib, max_cycles=args.max_cycles)
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
        with atomic_folder(args.plots, marker="report.json") as out:
            write_json(summary, out / "report.json")
            written = write_plots(summary, out, trace_runs=results[:8])
        for path in written:
            print(f"wrote {Path(args.plots) / Path(path).name}", file=sys.stderr)
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
    p.add_argument("--tokens", type=positive_int,
                   help="tokens the run processes (for tokens/s and energy per token)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plots", metavar="DIR", help="write report.json, roofline.png, energy.png, timeline.png")
    p.add_argument("--memory-out", metavar="FILE", help="write the final external memory (.bmmem)")
    p.add_argument("--no-hazard-check", action="store_true", help="do not stop on DMA hazards")
    p.add_argument("--max-memory-mib", type=positive_int, default=DEFAULT_MAX_MEMORY_MIB,
                   help="refuse a functional run whose external memory would grow past this many MiB "
                        f"(default {DEFAULT_MAX_MEMORY_MIB}); checked before the run")
    p.add_argument("--max-cycles", type=positive_int, default=None,
                   help="refuse a run that takes more cycles than this (all programs together); "
                        "checked before the run from the exact timing analysis")
    p.set_defaults(func=cmd_simulate)
