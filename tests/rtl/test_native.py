"""The native batch bench (``bitmos.rtl.runner.run_cases(..., mode="native")``, Verilator only).

The verification wrapper under a C++ main (``bitmos.rtl.native_bench``): no Python in the
simulation loop, the cleared model restored from a snapshot before each program. Every program's
cycles, error, cause and final external memory are compared with ``bitmos.sim`` bit for bit, as in
tests/rtl/test_top.py: the hand programs, random legal programs with planted faults
(``BITMOS_RTL_NATIVE_PROGRAMS`` per config, default 300), a wrong expectation that must fail, and
the toolchain-failure paths (one-line errors naming the log).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitmos.config import preset_config
from bitmos.rtl import native_bench, runner
from bitmos.rtl.runner import Case
from bitmos.rtl.tools import RTLToolchainError, available_simulators
from bitmos.sim import Simulator

from .programs import error_programs, layer_program

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tmp" / "sim_build"

pytestmark = pytest.mark.skipif("verilator" not in available_simulators(), reason="Verilator not available")

# small's native C++ build takes ~10 min on a loaded 2-core machine (cached in tmp/sim_build afterwards)
PRESETS = ["tiny", "small"]


def _case(cfg, name, words, memory):
    r = Simulator(cfg).run(list(words), bytearray(memory))
    return Case(name, list(words), bytes(memory), r.cycles, bool(r.error), int(r.cause), bytes(r.memory))


def _random(cfg, n, seed0=0, *, length=12, mem_bytes=1 << 13):
    progen = pytest.importorskip("tests.progen")
    out = []
    for seed in range(seed0, seed0 + n):
        words, mem = progen.random_program(cfg, seed, length=length, mem_bytes=mem_bytes, faults=(seed % 4 == 3))
        out.append(_case(cfg, f"progen seed {seed}", words, mem))
    return out


def _run(cfg, cases, tmp_path):
    report = runner.run_cases(cfg, cases, tmp_path, sim="verilator", build_root=BUILD, mode="native")
    assert not report["failures"], "\n".join(report["failures"])
    assert [r["name"] for r in report["results"]] == [c.name for c in cases]
    assert all(r["ok"] for r in report["results"])
    assert report["mode"] == "native" and report["programs"] == len(cases)
    assert report["run_cycles"] == sum(c.cycles for c in cases)
    return report


@pytest.mark.parametrize("preset", PRESETS)
def test_native_hand_programs(preset, tmp_path):
    cfg = preset_config(preset)
    cases = [_case(cfg, *c) for c in layer_program(cfg, seed=1) + error_programs(cfg)]
    _run(cfg, cases, tmp_path)


# small-w8: small with 8-bit integer weight planes (PB-LLM's int8 salient part), random WBITS in 0, 2..8
@pytest.mark.parametrize("preset", [*PRESETS, "small-w8"])
def test_native_random_programs(preset, tmp_path):
    cfg = preset_config(preset)
    n = int(os.environ.get("BITMOS_RTL_NATIVE_PROGRAMS", "300"))
    cases = _random(cfg, n)
    report = _run(cfg, cases, tmp_path)
    faulted = sum(r["error"] for r in report["results"])
    assert 0 < faulted < n   # planted faults happened, and most programs ran to their halt
    # no clear per program: the simulated cycles are the programs' own plus the IMEM load and handshake
    assert report["sim_cycles"] < report["run_cycles"] + n * (cfg.imem_words + 16) + 2 * max(
        cfg.depth(b) for b in "XSWO") + 64


def test_native_hand_then_random_share_one_process(tmp_path):
    """Order independence: a layer program after faulting and random ones sees the cleared state."""
    cfg = preset_config("tiny")
    hand = [_case(cfg, *c) for c in layer_program(cfg, seed=2) + error_programs(cfg)]
    cases = _random(cfg, 20, seed0=500, length=20) + hand + _random(cfg, 5, seed0=900)
    _run(cfg, cases, tmp_path)


def test_native_catches_a_wrong_expectation(tmp_path):
    """One flipped output bit, or cycles + 1, fails naming the case (the comparison is live)."""
    cfg = preset_config("tiny")
    name, words, memory = layer_program(cfg, seed=1)[0]
    right = _case(cfg, "right", words, memory)
    wrong = bytearray(right.final_memory)
    wrong[-65] ^= 1   # one bit of the stored output
    jobs = [right,
            Case("bad memory", list(words), bytes(memory), right.cycles, right.error, right.cause, bytes(wrong)),
            Case("bad cycles", list(words), bytes(memory), right.cycles + 1, right.error, right.cause,
                 right.final_memory)]
    report = runner.run_cases(cfg, jobs, tmp_path, sim="verilator", build_root=BUILD, mode="native")
    assert [r["ok"] for r in report["results"]] == [True, False, False]
    assert report["results"][1]["memory_ok"] is False and report["results"][2]["cycles"] == right.cycles
    assert len(report["failures"]) == 2
    assert report["failures"][0].startswith("bad memory") and "differs from byte" in report["failures"][0]
    assert report["failures"][1].startswith("bad cycles") and f"'cycles': {right.cycles + 1}" in report["failures"][1]


def test_native_is_verilator_only(tmp_path):
    cfg = preset_config("tiny")
    with pytest.raises(ValueError, match="Verilator only"):
        runner.run_cases(cfg, [_case(cfg, "halt", *error_programs(cfg)[0][1:])], tmp_path, sim="icarus",
                         mode="native")


def test_native_bench_failure_is_one_line_with_the_log(tmp_path, monkeypatch):
    """A bench that dies (here: a corrupt job file) ends in one RTLToolchainError line naming sim.log."""
    cfg = preset_config("tiny")
    case = _case(cfg, *error_programs(cfg)[0])

    def corrupt(path, cases, mem_bytes, row_bytes):
        Path(path).write_bytes(b"not a job")
    monkeypatch.setattr(native_bench, "write_job", corrupt)
    with pytest.raises(RTLToolchainError) as exc:
        runner.run_cases(cfg, [case], tmp_path, sim="verilator", build_root=BUILD, mode="native")
    msg = str(exc.value)
    assert "\n" not in msg and "native Verilator bench" in msg and str(tmp_path / "sim.log") in msg
    assert "not a job file" in (tmp_path / "sim.log").read_text()


def test_native_build_failure_is_one_line_with_the_log(tmp_path, monkeypatch):
    """Verilator rejecting the design ends in one RTLToolchainError line naming build.log."""
    cfg = preset_config("tiny")

    def broken_emit(cfg, mode, mem_bytes, row_bytes, vpath):
        vpath.write_text("module bitmos_testbed(; endmodule\n")
        return "broken"
    monkeypatch.setattr(runner, "_emit", broken_emit)
    with pytest.raises(RTLToolchainError) as exc:
        runner.build(cfg, mode="native", build_root=tmp_path / "build")
    msg = str(exc.value)
    assert "\n" not in msg and "building the native Verilator model of config 'tiny' failed" in msg
    log = Path(msg.rsplit("log: ", 1)[1])
    assert log.name == "build.log" and "syntax error" in log.read_text()


def test_results_file_truncation_is_detected(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(native_bench.MAGIC_RESULTS + (1).to_bytes(4, "little") + bytes(10))
    with pytest.raises(native_bench.ResultsError):
        native_bench.read_results(path, 1)



def test_native_processes_side_by_side_give_the_same_report(tmp_path):
    """Two bench processes on shares of the batch: results in case order, failures still named."""
    cfg = preset_config("tiny")
    cases = _random(cfg, 41, seed0=2000)
    bad = cases[30]
    cases[30] = Case(bad.name, bad.words, bad.memory, bad.cycles + 1, bad.error, bad.cause, bad.final_memory)
    one = runner.run_cases(cfg, cases, tmp_path / "one", build_root=BUILD, mode="native")
    two = runner.run_cases(cfg, cases, tmp_path / "two", build_root=BUILD, mode="native", processes=2)
    assert two["processes"] == 2 and (tmp_path / "two" / "sim.1.log").exists()
    assert [r["name"] for r in two["results"]] == [c.name for c in cases]
    assert [r["ok"] for r in two["results"]] == [r["ok"] for r in one["results"]] == [i != 30 for i in range(41)]
    assert two["failures"] == one["failures"] and two["failures"][0].startswith(bad.name)
    assert two["run_cycles"] == one["run_cycles"]
    with pytest.raises(ValueError, match="needs mode 'native'"):
        runner.run_cases(cfg, cases, tmp_path / "x", build_root=BUILD, mode="fast", processes=2)
