"""Verilog of a bitmos RTL component for a config, for synthesis.

``pe`` (one ``XnorPopcountPE``), ``array`` (the ``SystolicArray`` alone) or ``accelerator`` (the whole
``bitmos.rtl.top.Accelerator``), converted with ``amaranth.back.verilog`` under the module name ``top``.
"""

from __future__ import annotations

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError


def component(cfg: AcceleratorConfig, top: str):
    """The Amaranth component ``top`` of ``cfg``."""
    if top == "pe":
        from bitmos.rtl.pe import XnorPopcountPE

        return XnorPopcountPE(lanes=cfg.lanes, act_bits=cfg.act_bits, acc_bits=cfg.acc_bits)
    if top == "array":
        from bitmos.rtl.array import SystolicArray

        return SystolicArray(cfg)
    if top == "accelerator":
        from bitmos.rtl.top import Accelerator

        return Accelerator(cfg)
    raise BitmosUserError(f"unknown top {top!r}; choose pe, array or accelerator")


def emit(cfg: AcceleratorConfig, top: str) -> tuple[str, str]:
    """(Verilog, top module name) for component ``top`` ('pe', 'array' or 'accelerator')."""
    from amaranth.back import verilog

    return verilog.convert(component(cfg, top), name="top", emit_src=False), "top"


def binary_ops_per_cycle(cfg: AcceleratorConfig, top: str) -> int:
    """Peak binary ops per cycle of the component: 2*L for a PE, 2*R*C*L for the array or top."""
    if top == "pe":
        return 2 * cfg.lanes
    return cfg.binary_ops_per_cycle()
