"""Verilog of a bitmos RTL component for a config, for synthesis.

Prefers the RTL's own emitter (``bitmos.rtl.emit``) when it has landed; until then converts the
components that exist (``bitmos.rtl.pe.XnorPopcountPE``, ``bitmos.rtl.array.SystolicArray``,
``bitmos.rtl.top``) with ``amaranth.back.verilog``. The top module is always named ``top``.
"""

from __future__ import annotations

import importlib
import inspect

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError


def _component(cfg: AcceleratorConfig, top: str):
    if top == "pe":
        from bitmos.rtl.pe import XnorPopcountPE

        return XnorPopcountPE(lanes=cfg.lanes, act_bits=cfg.act_bits, acc_bits=cfg.acc_bits)
    if top == "array":
        from bitmos.rtl.array import SystolicArray

        return SystolicArray(cfg)
    if top == "accelerator":
        try:
            mod = importlib.import_module("bitmos.rtl.top")
        except ModuleNotFoundError:
            raise BitmosUserError("the accelerator top (bitmos.rtl.top) has not landed yet; "
                                  "use --top pe or --top array") from None
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and getattr(obj, "__module__", "") == mod.__name__ and \
                    hasattr(obj, "elaborate"):
                try:
                    return obj(cfg)
                except TypeError:
                    continue
        raise BitmosUserError("bitmos.rtl.top has no component class that takes a config")
    raise BitmosUserError(f"unknown top {top!r}")


def emit(cfg: AcceleratorConfig, top: str) -> tuple[str, str]:
    """(Verilog, top module name) for component ``top`` ('pe', 'array' or 'accelerator')."""
    try:
        em = importlib.import_module("bitmos.rtl.emit")
    except ModuleNotFoundError:
        em = None
    fn = getattr(em, "emit_verilog", None) if em is not None else None
    if fn is not None:
        try:
            out = fn(cfg, top=top)
        except TypeError:
            out = None
        if isinstance(out, str):
            return out, "top"
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str):
            return out[0], out[1]
    from amaranth.back import verilog

    comp = _component(cfg, top)
    return verilog.convert(comp, name="top", emit_src=False), "top"


def binary_ops_per_cycle(cfg: AcceleratorConfig, top: str) -> int:
    """Peak binary ops per cycle of the component: 2*L for a PE, 2*R*C*L for the array or top."""
    if top == "pe":
        return 2 * cfg.lanes
    return cfg.binary_ops_per_cycle()
