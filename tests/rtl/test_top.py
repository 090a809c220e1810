"""cocotb benches of the emitted Accelerator on Verilator (or Icarus with SIM=icarus).

Each config is emitted and built once per session into ``tmp/sim_build/<sim>/<config>``; one
simulation run executes all of a test's programs (clear, load IMEM, start, wait for done), with the
external memory model of tests/rtl/cocotb_top.py. Expected memory, cycles, error and cause come from
``bitmos.sim`` (tests/rtl/golden.py stands in if it is missing). ``BITMOS_WAVES=1`` dumps waveforms
(FST on Verilator, VCD on Icarus) into the build folder.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from bitmos import isa
from bitmos.config import preset_config
from bitmos.rtl.emit import TOP_NAME, emit
from bitmos.rtl.tools import available_simulators

from . import golden
from .programs import error_programs, layer_program

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tmp" / "sim_build"
SIMS = available_simulators()
SIM = os.environ.get("SIM", "verilator")

pytestmark = pytest.mark.skipif(SIM not in SIMS, reason=f"simulator {SIM!r} not available ({SIMS})")

try:
    from bitmos.sim import Simulator
except ImportError:  # pragma: no cover - until bitmos.sim lands
    Simulator = None


def reference(cfg, words, memory):
    """(cycles, error, cause, final memory) from bitmos.sim, or the naive golden model."""
    if Simulator is not None:
        r = Simulator(cfg).run(list(words), bytearray(memory))
        return r.cycles, bool(r.error), int(r.cause), bytes(r.memory)
    r = golden.run(cfg, words, memory)
    return r.cycles, r.error, r.cause, bytes(r.memory)


_built: dict[tuple[str, str], object] = {}


def build(cfg):
    """Emit and build the Verilog for ``cfg`` once per session; returns (runner, build_dir)."""
    from cocotb_tools.runner import get_runner
    key = (SIM, cfg.name)
    bdir = BUILD / SIM / cfg.name
    if key not in _built:
        vdir = bdir / "src"
        vdir.mkdir(parents=True, exist_ok=True)
        vpath = vdir / f"{TOP_NAME}_{cfg.name}.v"
        old = vpath.read_text() if vpath.exists() else None
        tmp = bdir / "emit"
        new_v, _ = emit(cfg, tmp)
        text = new_v.read_text()
        if text != old:
            vpath.write_text(text)
        runner = get_runner(SIM)
        waves = os.environ.get("BITMOS_WAVES") == "1"
        args = {}
        if SIM == "verilator":
            # Waivers: see docs/rtl.md (Amaranth output trips -Wall width/unused warnings).
            args["build_args"] = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2",
                                  "--x-assign", "fast", "--x-initial", "fast"]
            if waves:
                args["build_args"].append("--trace-fst")
        else:
            args["timescale"] = ("1ns", "1ps")
        runner.build(sources=[vpath], hdl_toplevel=TOP_NAME, build_dir=bdir, always=False,
                     waves=waves, **args)
        _built[key] = runner
    return _built[key], bdir


def run_cases(cfg, cases, tmp_path):
    """Run ``cases`` (name, words, memory) on the RTL and compare with the reference."""
    runner, bdir = build(cfg)
    job = {"config": cfg.to_dict(), "cases": [], "report": str(tmp_path / "report.json")}
    for name, words, memory in cases:
        cycles, error, cause, final = reference(cfg, words, memory)
        job["cases"].append({"name": name, "words": list(words), "memory": bytes(memory).hex(),
                             "expect": {"cycles": cycles, "error": error, "cause": cause,
                                        "memory": final.hex()}})
    jpath = tmp_path / "job.json"
    jpath.write_text(json.dumps(job))
    results = runner.test(test_module="tests.rtl.cocotb_top", hdl_toplevel=TOP_NAME, build_dir=bdir,
                          test_dir=tmp_path, extra_env={"BITMOS_JOBS": str(jpath)},
                          waves=os.environ.get("BITMOS_WAVES") == "1")
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["failures"], "\n".join(report["failures"])
    from cocotb_tools.runner import get_results
    tests, fails = get_results(results)
    assert fails == 0
    return report


PRESETS = ["tiny", "small", "medium"]


@pytest.mark.parametrize("preset", PRESETS)
def test_hand_programs(preset, tmp_path):
    cfg = preset_config(preset)
    cases = layer_program(cfg, seed=1) + error_programs(cfg)
    run_cases(cfg, cases, tmp_path)


@pytest.mark.parametrize("preset", PRESETS)
def test_random_programs(preset, tmp_path):
    progen = pytest.importorskip("tests.progen")
    cfg = preset_config(preset)
    n = int(os.environ.get("BITMOS_RTL_PROGRAMS", "8"))
    cases = []
    for seed in range(n):
        words, mem = progen.random_program(cfg, seed, length=12, mem_bytes=1 << 13, faults=(seed % 4 == 3))
        cases.append((f"progen seed {seed}", words, mem))
    run_cases(cfg, cases, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_random_programs_many(preset, tmp_path):
    progen = pytest.importorskip("tests.progen")
    cfg = preset_config(preset)
    cases = []
    for seed in range(1000, 1000 + int(os.environ.get("BITMOS_RTL_PROGRAMS_SLOW", "1000")) // len(PRESETS)):
        words, mem = progen.random_program(cfg, seed, length=30, mem_bytes=1 << 14, faults=(seed % 5 == 4))
        cases.append((f"progen seed {seed}", words, mem))
    run_cases(cfg, cases, tmp_path)
