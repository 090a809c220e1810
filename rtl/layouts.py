"""Bit layouts of the records the RTL decodes, generated from the contract so no position is retyped.

* :func:`instruction_layout`: the 64-bit word of one opcode, each field at its ``bitmos.isa.SPECS``
  position (``Field.lo``, ``Field.width``).
* :data:`INSTRUCTION`: one word seen as every opcode at once (``word.matmul.ntiles``,
  ``word.load.buf``) plus ``word.opcode`` at ``bitmos.isa.OPCODE_LO``; the controller decodes
  through it and the top level hands its fields to the units.
* :func:`meta_layout`: the per-token META record, D, one gate per expert and (E >= 2) the token's bias
  (``bitmos.formats`` widths), laid out as ``AcceleratorConfig.meta_bits`` says.
"""

from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data

from bitmos import formats as F
from bitmos import isa
from bitmos.config import AcceleratorConfig

__all__ = ["INSTRUCTION", "instruction_layout", "meta_layout"]


def instruction_layout(op: isa.Op) -> data.FlexibleLayout:
    """The fields of ``op`` in a 64-bit word (reserved bits and the opcode are not fields)."""
    return data.FlexibleLayout(isa.WORD_BITS, {
        f.name: data.Field(signed(f.width) if f.signed else unsigned(f.width), f.lo) for f in isa.SPECS[op]})


#: A 64-bit instruction word: ``opcode`` and, overlaid at bit 0, one view per opcode the RTL decodes
#: (``Op.name.lower()``): every one but the vector unit's, which it does not build yet (``check_config``).
INSTRUCTION = data.FlexibleLayout(isa.WORD_BITS, {
    "opcode": data.Field(unsigned(isa.WORD_BITS - isa.OPCODE_LO), isa.OPCODE_LO),
    **{op.name.lower(): data.Field(instruction_layout(op), 0) for op in isa.Op if op not in isa.VECTOR_OPS},
})


def meta_layout(cfg: AcceleratorConfig) -> data.StructLayout:
    """META[t] of ``cfg``: ``d`` (D, ``formats.D_BITS``), ``gates`` (E x ``formats.GATE_BITS``) and, with a
    router (E >= 2), ``bias`` (signed ``formats.OUT_BITS``: register BIAS's beta . x, else 0).

    E = 0 has no ``gates`` field (a zero-width one would be a ``[-1:0]`` wire in the Verilog).

    Raises
    ------
    ValueError
        The layout's size is not ``cfg.meta_bits`` (the contract's record and this one disagree).
    """
    gates = {"gates": data.ArrayLayout(unsigned(F.GATE_BITS), cfg.experts)} if cfg.experts else {}
    bias = {"bias": signed(F.OUT_BITS)} if cfg.experts >= 2 else {}
    layout = data.StructLayout({"d": unsigned(F.D_BITS), **gates, **bias})
    if layout.size != cfg.meta_bits:
        raise ValueError(f"META layout of {layout.size} bits does not match cfg.meta_bits = {cfg.meta_bits}")
    return layout
