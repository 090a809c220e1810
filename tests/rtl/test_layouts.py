# amaranth: UnusedElaboratable=no
"""The RTL's instruction and META layouts and its layer-register signature agree with the contract."""

import random

import pytest
from amaranth import Const, signed
from amaranth.lib import wiring

from bitmos import formats as F
from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.rtl.array import SystolicArray
from bitmos.rtl.controller import Controller
from . import golden
from bitmos.rtl.layouts import INSTRUCTION, instruction_layout, meta_layout
from bitmos.rtl.scale_unit import ScaleExpertUnit
from bitmos.rtl.signatures import REGISTERS, LayerRegistersSignature, register_shape


def random_instruction(rng, op):
    """A legal instruction of ``op`` with every field at a random legal value."""
    if op is isa.Op.SETR:
        reg = isa.Reg(rng.randrange(len(isa.Reg)))
        lo, hi = isa.REG_RANGE[reg]
        return isa.setr(reg, rng.randint(lo, hi))
    return isa.Instruction.make(op, **{f.name: rng.randint(f.minimum, f.max_value) for f in isa.SPECS[op]})


@pytest.mark.parametrize("op", [op for op in isa.Op if op not in isa.VECTOR_OPS], ids=lambda op: op.name)
def test_instruction_view_reads_every_field(op):
    """Every opcode the RTL decodes (the vector unit's are not built yet: no view, so no wire in the Verilog)."""
    rng = random.Random(int(op))
    for _ in range(50):
        ins = random_instruction(rng, op)
        view = INSTRUCTION(Const(ins.encode(), isa.WORD_BITS))
        assert Const.cast(view.opcode).value == int(op)
        for f in isa.SPECS[op]:
            assert Const.cast(view[op.name.lower()][f.name]).value == ins[f.name], f.name


def test_layout_positions_are_the_specs():
    for op in isa.Op:
        layout = instruction_layout(op)
        assert layout.size == isa.WORD_BITS
        assert [(name, fl.offset, fl.width) for name, fl in layout] == \
               [(f.name, f.lo, f.width) for f in isa.SPECS[op]]
    assert {name for name, _ in INSTRUCTION} == {"opcode"} | {op.name.lower() for op in isa.Op
                                                              if op not in isa.VECTOR_OPS}
    assert INSTRUCTION["opcode"].offset == isa.OPCODE_LO
    assert INSTRUCTION["opcode"].width == isa.WORD_BITS - isa.OPCODE_LO


def test_load_and_store_share_fields():
    # the DMA engine and the controller's external-range check read both through the load view
    assert instruction_layout(isa.Op.LOAD) == instruction_layout(isa.Op.STORE)


@pytest.mark.parametrize("experts", range(9))
def test_meta_layout(experts):
    cfg = AcceleratorConfig(experts=experts)
    layout = meta_layout(cfg)
    assert layout.size == cfg.meta_bits
    rng = random.Random(experts)
    d, gates = rng.getrandbits(F.D_BITS), [rng.getrandbits(F.GATE_BITS) for _ in range(experts)]
    bias = rng.randint(-(1 << 31), (1 << 31) - 1) if experts >= 2 else 0
    word = golden.pack_meta(cfg, (d, gates, bias))
    view = layout(Const(word, cfg.meta_bits))
    assert Const.cast(view.d).value == d
    if experts >= 2:   # the bias only exists beside a router: a signed 32-bit field where pack_meta puts it
        assert layout["bias"].shape == signed(F.OUT_BITS) and layout["bias"].offset == F.D_BITS + F.GATE_BITS * experts
        assert (word >> layout["bias"].offset) & 0xFFFFFFFF == bias & 0xFFFFFFFF
    if experts:
        assert [Const.cast(view.gates[e]).value for e in range(experts)] == gates
        assert ("bias" in [name for name, _ in layout]) == (experts >= 2)
    else:
        assert [name for name, _ in layout] == ["d"]   # no zero-width field


def test_layer_registers_hold_exactly_their_range():
    sig = LayerRegistersSignature()
    # every register but the vector unit's (the RTL does not build that unit yet)
    assert [name for name, _ in sig.members.items()] == [reg.name.lower() for reg in isa.Reg
                                                         if reg not in isa.VECTOR_REGS]
    for reg in REGISTERS:
        lo, hi = isa.REG_RANGE[reg]
        shape = register_shape(reg)
        assert sig.members[reg.name.lower()].shape == shape
        first, last = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
            else (0, (1 << shape.width) - 1)
        assert first <= lo and hi <= last, reg.name
        narrower = shape.width - 1   # one bit less no longer holds an end of the range
        assert (lo < -(1 << (narrower - 1)) or hi >= 1 << (narrower - 1)) if shape.signed else hi >= 1 << narrower
    # the widths the controller and the units had before the signature was generated from REG_RANGE
    assert {name: (m.shape.width, m.shape.signed) for name, m in sig.members.items()} == {
        "k": (16, False), "rshift": (6, False), "oshift": (6, False), "router": (16, False),
        "sin": (16, False), "smul": (16, True), "ebase": (32, False), "wbits": (4, False),
            "bias": (1, False)}


def test_units_share_the_register_signature():
    cfg = AcceleratorConfig(rows=2, cols=2, lanes=8, act_bits=2, experts=2, ext_bw_bits=16)
    ctl, arr, su = Controller(cfg), SystolicArray(cfg), ScaleExpertUnit(cfg)
    assert ctl.signature.members["regs"] == wiring.Out(LayerRegistersSignature())
    for unit in (arr, su):
        assert unit.signature.members["regs"] == wiring.In(LayerRegistersSignature())
    # the names the unit benches drive are the shared registers themselves
    assert arr.k_features is arr.regs.k and su.smul is su.regs.smul and su.rshift is su.regs.rshift
