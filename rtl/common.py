"""Helpers every block uses: config checking and the round-half-up shift of bitmos.formats."""

from __future__ import annotations

from amaranth import Mux, Value
from amaranth.utils import ceil_log2

from bitmos import isa
from bitmos.config import AcceleratorConfig

__all__ = ["check_config", "rshift_round", "sat", "addr_bits"]


def check_config(cfg, name: str = "cfg") -> AcceleratorConfig:
    """Return ``cfg`` if it is an AcceleratorConfig the RTL supports, else raise naming ``name``.

    Raises
    ------
    TypeError
        ``cfg`` is not an :class:`AcceleratorConfig`.
    ValueError
        ``ext_latency`` is 0 (the external port answers a request no earlier than the next cycle), or
        a DMA-reachable line width (X, W, S, O) is not a multiple of ``ext_bw_bits`` (the DMA engine
        assembles one line from whole beats).
    """
    if not isinstance(cfg, AcceleratorConfig):
        raise TypeError(f"{name} must be an AcceleratorConfig, not {cfg!r}")
    if cfg.ext_latency < 1:
        raise ValueError(f"{name}.ext_latency must be at least 1 for the RTL, not {cfg.ext_latency!r}")
    for buf in "XWSO":
        if cfg.line_bits(buf) % cfg.ext_bw_bits:
            raise ValueError(f"{name}.ext_bw_bits = {cfg.ext_bw_bits!r} must divide the {buf} line width "
                             f"{cfg.line_bits(buf)} for the RTL DMA engine")
    return cfg


def instruction_field(word: Value, op: isa.Op, name: str) -> Value:
    """The bits of field ``name`` of instruction ``op`` in a 64-bit ``word`` (positions from bitmos.isa.SPECS)."""
    for f in isa.SPECS[op]:
        if f.name == name:
            return word[f.lo:f.hi + 1]
    raise KeyError(f"{op.name} has no field {name!r}")


def addr_bits(depth: int) -> int:
    """Address width of a memory of ``depth`` rows (at least 1)."""
    return max(1, ceil_log2(depth))


def rshift_round(v: Value, s: Value, width: int) -> Value:
    """formats.rshift_round for a signed ``v`` and a variable shift ``s`` >= 0; result ``width`` bits."""
    half = (Value.cast(1).as_unsigned() << s) >> 1
    return ((v.as_signed() + half) >> s)[:width].as_signed()


def sat(v: Value, bits: int) -> Value:
    """formats.sat: clamp a signed value to ``bits`` bits."""
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    return Mux(v > hi, hi, Mux(v < lo, lo, v))[:bits].as_signed()
