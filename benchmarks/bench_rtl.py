"""RTL bench speed: the edge-by-edge cocotb bench, the fast bench and the native bench, on the same programs, in one run.

For each config (tiny, small) and simulator (Verilator, Icarus) the same batch of random legal
programs (``tests/progen.py``, every 4th with a planted fault; expected results from
``bitmos.sim``) runs once through each bench of ``bitmos.rtl.runner``:

* ``edge``: the bare accelerator, the Python external-memory model awaited on every clock edge;
* ``fast``: the verification wrapper (``bitmos.rtl.testbed``), memory model, host sequencer and
  clock inside the simulated model; cocotb loads each program and image through the backdoor and
  waits once per program.
* ``native`` (Verilator only): the same wrapper under a C++ main (``bitmos.rtl.native_bench``), no
  Python in the loop; the cleared model is restored from a snapshot before each program instead
  of the clear (1,024 cycles on tiny, 4,096 on small) the other benches simulate per program.
  ``native-xP`` (``--native-processes P``): the same N programs shared by P processes side by side
  (wall = the slowest process, CPU seconds summed).

Reported per row: program cycles (``host.cycles`` summed: the programs' own cycles, not the clear
phase or IMEM loading), the bench's wall seconds (from the first program to the report, build and
process start excluded), program cycles per second, all simulated cycles per second (clears
included; fast and native benches; the native bench also reports its CPU seconds, since on a
shared machine its wall time is mostly waiting for a core) and the ratios to the edge and the fast bench on the same programs.
Every row also checks that its bench agrees with the simulator on every program (a failed
comparison is printed and exits 1).

Builds are cached in the repository's ``tmp/sim_build`` (or ``BITMOS_RTL_BUILD``); the first run compiles up to eight
designs (the small Verilator builds take minutes each).

Run: python benchmarks/bench_rtl.py [--programs N] [--edge-programs M] [--configs tiny,small]
     [--sims verilator,icarus] [--benches edge,fast,native] [--native-processes P]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitmos.config import preset_config  # noqa: E402
from bitmos.rtl import runner  # noqa: E402
from bitmos.rtl.runner import Case  # noqa: E402
from bitmos.rtl.tools import available_simulators  # noqa: E402
from bitmos.sim import Simulator  # noqa: E402
from tests import progen  # noqa: E402


def cases_for(cfg, n, seed0=0):
    sim = Simulator(cfg)
    out = []
    for seed in range(seed0, seed0 + n):
        words, mem = progen.random_program(cfg, seed, length=12, mem_bytes=1 << 13, faults=(seed % 4 == 3))
        r = sim.run(list(words), bytearray(mem))
        out.append(Case(f"progen seed {seed}", list(words), bytes(mem), r.cycles, bool(r.error), int(r.cause),
                        bytes(r.memory)))
    return out


#: Issue 15's goal for the fast RTL benches: program cycles per second of the small config on Verilator.
GOAL_SMALL_CYCLES_PER_S = 1_000_000

HEADER = (f"{'config':6s} {'sim':9s} {'bench':11s} {'programs':>8s} {'prog cycles':>11s} {'bench s':>8s} "
          f"{'launch s':>8s} {'prog cycles/s':>13s} {'all cycles/s':>12s} {'vs edge':>8s} {'vs fast':>8s}")


def _ratio(x):
    return "-" if x is None else f"{x:,.1f}x" if x < 10 else f"{x:,.0f}x"


def _fmt(row) -> str:
    name, sim, tag, n, cyc, wall, launch, cps, all_cps, ratio, ratio_fast, phases, cpu = row
    line = (f"{name:6s} {sim:9s} {tag:11s} {n:>8d} {cyc:>11,d} {wall:>8.3f} {launch:>8.2f} {cps:>13,.0f} "
            f"{'-' if all_cps is None else f'{all_cps:,.0f}':>12s} {_ratio(ratio):>8s} {_ratio(ratio_fast):>8s}")
    if phases:
        line += (f"\n{'':28s} {tag.split('-')[0]} bench wall by phase: "
                 + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
    if cpu:
        line += f"; CPU {cpu:.3f} s: {cyc / max(cpu, 1e-9):,.0f} program cycles per CPU second"
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=200, help="programs per config for the fast bench")
    ap.add_argument("--edge-programs", type=int, default=20,
                    help="of those, how many also run on the edge bench (it is 20-100x slower)")
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--sims", default="verilator,icarus")
    ap.add_argument("--benches", default="edge,fast,native",
                    help="which benches to run (native: Verilator only)")
    ap.add_argument("--native-processes", type=int, default=1,
                    help="N > 1: one more native row, all N programs shared by N bench processes side by side")
    args = ap.parse_args(argv)
    benches = args.benches.split(",")
    build_root = runner.default_build_root(ROOT)   # the repository's, not the working folder's
    have = available_simulators()
    rows, bad = [], []
    for name in args.configs.split(","):
        cfg = preset_config(name)
        fast_cases = cases_for(cfg, args.programs)
        edge_cases = fast_cases[:args.edge_programs]
        for sim in args.sims.split(","):
            if sim not in have:
                print(f"skipping {sim}: not available ({have})", file=sys.stderr)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                res = {}
                # the same programs on every bench: edge on the first M, fast and native on those M and on all N
                runs = [("edge", edge_cases, "edge"), ("fast", edge_cases, "fast-same"),
                        ("fast", fast_cases, "fast-all"), ("native", edge_cases, "native-same"),
                        ("native", fast_cases, "native-all")]
                if args.native_processes > 1:
                    runs.append(("native", fast_cases, f"native-x{args.native_processes}"))
                runs = [r for r in runs if r[0] in benches and not (r[0] == "native" and sim != "verilator")]
                for mode, cases, tag in runs:
                    procs = args.native_processes if tag.startswith("native-x") else 1
                    t = time.perf_counter()
                    runner.build(cfg, sim=sim, build_root=build_root, mode=mode,
                                 mem_bytes=runner.model_bytes(cases))
                    t_build = time.perf_counter() - t
                    t = time.perf_counter()
                    rep = runner.run_cases(cfg, cases, Path(tmp) / tag, sim=sim, build_root=build_root, mode=mode,
                                           processes=procs)
                    t_launch = time.perf_counter() - t
                    bad += [f"{name} {sim} {mode}: {f}" for f in rep["failures"]]
                    res[tag] = dict(rep, build_s=t_build, launch_s=t_launch)
                print(HEADER, file=sys.stderr)

                def rate(tag):
                    r = res.get(tag)
                    return None if r is None else r["run_cycles"] / max(r["wall_s"], 1e-9)
                for _, _, tag in runs:
                    r = res[tag]
                    cps = rate(tag)
                    all_cps = r["sim_cycles"] / max(r["wall_s"], 1e-9) if r.get("sim_cycles") else None
                    same = tag.endswith("-same")
                    # against the edge bench on the same M programs; against fast on the same set (M or N)
                    ratio = cps / rate("edge") if rate("edge") and (same or tag == "edge") else None
                    fast_tag = "fast-same" if same or tag == "edge" else "fast-all"
                    ratio_fast = cps / rate(fast_tag) if rate(fast_tag) and tag != "edge" else None
                    rows.append((name, sim, tag, r["programs"], r["run_cycles"], r["wall_s"], r["launch_s"], cps,
                                 all_cps, ratio, ratio_fast, r.get("phases"), r.get("cpu_s")))
                    print(_fmt(rows[-1]), file=sys.stderr, flush=True)   # progress: the table so far
    print(HEADER)
    for row in rows:
        print(_fmt(row))
    print("'launch s' = simulator process start to report (per batch, build excluded); 'bench s' = inside "
          "the simulator, first program to last.")
    goal = [(row[7], row[2]) for row in rows if row[0] == "small" and row[1] == "verilator" and row[7]]
    if goal:
        best, tag = max(goal)
        print(f"goal (issue 15): >= {GOAL_SMALL_CYCLES_PER_S:,} program cycles/s on small with Verilator; best here "
              f"{best:,.0f} ({tag}), {best / GOAL_SMALL_CYCLES_PER_S:.2f} of it")
    for b in bad:
        print("FAIL", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
