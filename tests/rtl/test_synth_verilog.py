# amaranth: UnusedElaboratable=no
"""Synthesis maps the Verilog the benches simulate: one road from the Amaranth design to Verilog."""

from bitmos.config import preset_config
from bitmos.explore import rtlbridge
from bitmos.explore.synth import rtl_verilog
from bitmos.rtl.emit import TOP_NAME, emit


def test_synthesis_verilog_is_the_emitted_verilog(tmp_path):
    cfg = preset_config("tiny")
    vpath, _ = emit(cfg, tmp_path)
    text, top = rtl_verilog(cfg, "accelerator")
    assert top == TOP_NAME
    assert text == vpath.read_text()


def test_components_take_the_same_converter():
    # a PE alone goes through bitmos.rtl.emit.to_verilog too: no `always @*` (see rtl/emit.py)
    text, top = rtlbridge.emit(preset_config("tiny"), "pe")
    assert top == rtlbridge.COMPONENT_TOP and f"module {top}(" in text
    assert "always @*" not in text and "always @(*)" not in text
