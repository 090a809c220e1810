"""Benchmark: the LLaMA-2-7B design-space sweep (explore/sweeps/llama7b.toml), timed.

    python benchmarks/bench_sweep.py [--workers N] [--out DIR] [--fresh]

Prints points, points/s and the Pareto front; docs/dse.md records a run.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bitmos.explore.sweep import SweepSpec, run_sweep

SPEC = Path(__file__).resolve().parent.parent / "explore" / "sweeps" / "llama7b.toml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench-sweep-llama7b")
    ap.add_argument("--fresh", action="store_true", help="delete earlier results first (no resume)")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_sweep(SweepSpec.load(SPEC), out=args.out, workers=args.workers)
    dt = time.perf_counter() - t0
    print(f"{s['points']} points, {s['computed']} computed in {dt:.1f} s "
          f"({s['computed'] / dt:.2f} points/s, {args.workers} workers, backend {s['backend']}); "
          f"Pareto front: {s['pareto']} points; {s['csv']}")


if __name__ == "__main__":
    main()
