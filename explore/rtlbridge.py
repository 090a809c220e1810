"""Verilog of a bitmos RTL component for a config, for synthesis.

``pe`` (one ``XnorPopcountPE``), ``array`` (the ``SystolicArray`` alone) or ``accelerator`` (the whole
``bitmos.rtl.top.Accelerator``). All go through ``bitmos.rtl.emit.to_verilog``; the accelerator is
exactly the Verilog ``bitmos rtl emit`` writes and the cocotb benches simulate (``bitmos.rtl.emit.verilog``,
module ``bitmos_accel``), so what is synthesized is what was verified. A component alone is module ``top``.
"""

from __future__ import annotations

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError

#: Module name of a component synthesized on its own (the accelerator keeps ``bitmos.rtl.emit.TOP_NAME``).
COMPONENT_TOP = "top"


def component(cfg: AcceleratorConfig, top: str):
    """The Amaranth component ``top`` of ``cfg``."""
    if top == "pe":
        from bitmos.rtl.pe import XnorPopcountPE

        return XnorPopcountPE(lanes=cfg.lanes, act_bits=cfg.act_bits, acc_bits=cfg.acc_bits,
                              weight_bits=cfg.weight_bits)
    if top == "array":
        from bitmos.rtl.array import SystolicArray

        return SystolicArray(cfg)
    if top == "accelerator":
        from bitmos.rtl.top import Accelerator

        return Accelerator(cfg)
    raise BitmosUserError(f"unknown top {top!r}; choose pe, array or accelerator")


def emit(cfg: AcceleratorConfig, top: str) -> tuple[str, str]:
    """(Verilog, top module name) for component ``top`` ('pe', 'array' or 'accelerator')."""
    from bitmos.rtl import emit as rtl_emit
    from bitmos.rtl.common import refuse_unsupported

    if top != "pe":    # a PE takes only its lane and bit widths
        refuse_unsupported(cfg)
    if top == "accelerator":
        return rtl_emit.verilog(cfg), rtl_emit.TOP_NAME
    return rtl_emit.to_verilog(component(cfg, top), COMPONENT_TOP), COMPONENT_TOP


def binary_ops_per_cycle(cfg: AcceleratorConfig, top: str) -> int:
    """Peak binary ops per cycle of the component: 2*L for a PE, 2*R*C*L for the array or top."""
    if top == "pe":
        return 2 * cfg.lanes
    return cfg.binary_ops_per_cycle()
