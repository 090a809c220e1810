import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from bitmos import isa, semantics
from bitmos.config import AcceleratorConfig, preset_config
from bitmos.errors import DecodeError
from bitmos.isa import Instruction, Op, Reg

DOC = Path(__file__).resolve().parents[2] / "docs" / "isa.md"


@st.composite
def instructions(draw):
    op = draw(st.sampled_from(list(Op)))
    if op is Op.SETR:
        reg = draw(st.sampled_from(list(Reg)))
        lo, hi = isa.REG_RANGE[reg]
        return isa.setr(reg, draw(st.integers(lo, hi)))
    fields = {f.name: draw(st.integers(f.minimum, f.max_value)) for f in isa.SPECS[op]}
    return Instruction.make(op, **fields)


@settings(max_examples=500)
@given(instructions())
def test_encode_decode_round_trip(ins):
    word = isa.encode(ins)
    assert 0 <= word < 1 << 64
    assert isa.decode(word) == ins


@settings(max_examples=300)
@given(st.lists(instructions(), min_size=1, max_size=40))
def test_assembler_disassembler_round_trip(program):
    words = [isa.encode(i) for i in program]
    listing = isa.disassemble(words)
    assert isa.parse_listing(listing) == words
    text = "\n".join(isa.format_instruction(i) for i in program)
    assert isa.assemble(text) == words


def test_fields_do_not_overlap_and_fit():
    for op, spec in isa.SPECS.items():
        used = set()
        for f in spec:
            bits = set(range(f.lo, f.hi + 1))
            assert not bits & used, f"{op.name}.{f.name} overlaps"
            assert f.hi < isa.OPCODE_LO
            used |= bits


def test_decode_names_illegal_opcode():
    with pytest.raises(DecodeError, match=r"illegal opcode 0x3f in word 0xfc00000000000000 at pc 7"):
        isa.decode(0x3F << 58, pc=7)


def test_decode_names_reserved_bits():
    word = (int(Op.WAIT) << 58) | (1 << 9)     # above wait's keep field [5:0]
    with pytest.raises(DecodeError, match=r"WAIT word .*: reserved bit\(s\) \[9\] must be zero"):
        isa.decode(word)


def test_decode_names_illegal_field():
    word = isa.encode(Instruction.make(Op.LOAD, buf="W", line=1, nlines=1, ext=0))
    word &= ~(((1 << 16) - 1) << 24)  # nlines = 0
    with pytest.raises(DecodeError, match=r"LOAD word .*: field 'nlines' = 0 is illegal; allowed 1\.\.65535"):
        isa.decode(word)
    word = (int(Op.SETR) << 58) | (20 << 52)
    with pytest.raises(DecodeError, match=r"field 'reg' = 20 is illegal; allowed 0\.\.19"):
        isa.decode(word)
    word = (int(Op.SETR) << 58) | (int(Reg.RSHIFT) << 52) | 64
    with pytest.raises(DecodeError, match=r"value 64 for register RSHIFT is illegal; allowed 0\.\.63"):
        isa.decode(word)
    with pytest.raises(DecodeError, match=r"not a 64-bit value"):
        isa.decode(1 << 64)


def test_make_and_parse_errors():
    with pytest.raises(ValueError, match=r"MATMUL.ntiles = 600 out of range 1\.\.511"):
        Instruction.make("matmul", q=0, w=0, o=0, ntiles=600)
    with pytest.raises(ValueError, match=r"MATMUL needs field 'ntiles'"):
        Instruction.make("matmul", q=0, w=0, o=0)
    with pytest.raises(ValueError, match=r"LOAD.buf = 'Z'; allowed"):
        Instruction.make("load", buf="Z", nlines=1)
    with pytest.raises(ValueError, match=r"line 2: unknown mnemonic 'jump'"):
        isa.assemble("nop\njump x=1\n")
    with pytest.raises(ValueError, match=r"line 1: QUANT has no field 'foo'"):
        isa.assemble("quant foo=1")
    with pytest.raises(ValueError, match=r"unknown register 'R9'"):
        isa.assemble("setr R9 1")
    with pytest.raises(ValueError, match=r"register SMUL value 40000 out of range"):
        isa.assemble("setr SMUL 40000")


def test_smul_is_signed():
    w = isa.assemble("setr SMUL -3")[0]
    ins = isa.decode(w)
    assert isa.reg_value(Reg.SMUL, ins["value"]) == -3
    assert "setr SMUL -3" in isa.disassemble([w])


def _doc_table():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| (0x[0-9a-f]{2}) \| `(\w+)` \| ([^|]*) \|", line)
        if m:
            rows[int(m.group(1), 16)] = (m.group(2), m.group(3).strip())
    return rows


def test_doc_table_matches_encoder():
    rows = _doc_table()
    assert set(rows) == {int(op) for op in Op}
    for op in Op:
        mnemonic, fields = rows[int(op)]
        assert mnemonic == op.name.lower()
        documented = re.findall(r"(\w+) \[(\d+)(?::(\d+))?\]", fields)
        got = [(n, int(hi), int(lo or hi)) for n, hi, lo in documented]
        assert got == [(f.name, f.hi, f.lo) for f in isa.SPECS[op]], op.name


def test_doc_register_table_matches():
    text = DOC.read_text()
    for reg in Reg:
        lo, hi = isa.REG_RANGE[reg]
        assert re.search(rf"^\| {int(reg)} \| {reg.name} \|", text, re.M), reg.name


def test_cycle_formulas_by_hand():
    c = preset_config("small")  # R=C=4, L=32, k=8, E=4, latency 20, 64 bit/cycle
    K = 70  # nch = 3, XL = 24
    q_tok = Instruction.make("quant", mode="token", x=0, q=0, meta=0, ntok=2)
    # router pass 24 + GATES window 4 + 24; mix 24 + 5 drain; D and the 39-bit divide 40;
    # quantize: chunks every T = max(8, 8) = 8 cycles, the last one's 8 writes after its 8 gathers
    # and 8 - 1 latency: 2 * 8 + 8 + 7 + 8 = 39; meta 1: 52 + 29 + 40 + 39 + 1 = 161 per token
    assert semantics.quant_token_cycles(c, K, 0) == 161
    assert semantics.compute_cycles(q_tok, c, K) == 1 + 2 * 161
    # plane mode: P = 2 writes per chunk, T = max(8, 2) = 8: 52 + 29 + 40 + (16 + 8 + 7 + 2) + 1 = 155
    assert semantics.quant_token_cycles(c, K, 1) == 155
    # k = 1 needs no divide: tiny (R=C=2, L=16, E=0, G=8) at K=40 (nch=3, XL=24):
    # mix 24 + 5, D 1, quantize 2 * 8 + 8 + 7 + 1 = 32, meta 1 = 63; K = 0: 5 + 1 + 0 + 1 = 7
    tiny = preset_config("tiny")
    assert semantics.quant_token_cycles(tiny, 40, 0) == 63
    assert semantics.quant_token_cycles(tiny, 0, 0) == 7
    # matmul token: S = 3*8 = 24, T_tile = max(S + C, R) = max(28, 4) = 28, T_drain = 3 + min(28, 4) + 2 = 9
    assert semantics.matmul_tile_cycles(c, K, 0) == 28
    assert semantics.matmul_drain_cycles(c, K, 0) == 9
    # plane: S = 3*P = 6, T_tile = max(6 + 4, Ra = 4) = 10, T_drain = 3 + 4 + 2 = 9
    assert semantics.matmul_tile_cycles(c, K, 1) == 10
    assert semantics.matmul_drain_cycles(c, K, 1) == 9
    mm = Instruction.make("matmul", mode="token", q=0, w=0, o=0, ntiles=3)
    assert semantics.compute_cycles(mm, c, K) == 1 + 3 * 28 + 9
    # drain-bound interval: R = 8, C = 2, k = 1, K = 3: S = 1, S + C = 3 < 8, so T_tile = 8, T_drain = 3 + 3 + 2
    d = AcceleratorConfig(rows=8, cols=2, lanes=8, act_bits=1, experts=0, acc_bits=16, ext_bw_bits=16)
    mm2 = Instruction.make("matmul", mode="token", q=0, w=0, o=0, ntiles=2)
    assert semantics.compute_cycles(mm2, d, 3) == 1 + 2 * 8 + 8
    so = Instruction.make("scaleout", mode="token", o=0, s=0, meta=0, ntok=4, ntiles=3)
    assert semantics.compute_cycles(so, c, K) == 1 + 12 + 9   # read, eight stages, write-back
    assert semantics.dma_cycles(10, 128, c) == 20 + 20


def test_timeline_overlap_and_stalls():
    c = preset_config("small")
    t = semantics.Timeline()
    load = Instruction.make("load", buf="W", line=0, nlines=100, ext=0)  # 100 lines x 128 bits
    busy = 20 + 200
    assert t.step(load, c, 70) == (0, busy)
    assert (t.now, t.dma_free) == (1, 1 + busy)
    mm = Instruction.make("matmul", mode="token", q=0, w=0, o=0, ntiles=1)
    t.step(mm, c, 70)  # 1 + 28 + 9 = 38 cycles, fully hidden under the DMA
    assert t.now == 39
    t.step(load, c, 70)  # must wait for the first transfer
    assert t.now == 1 + busy + 1 and t.stall_cycles == busy + 1 - 39
    t.step(Instruction.make("wait"), c, 70)
    assert t.now == (1 + busy + 1 + busy) + 1
    end = t.step(Instruction.make("halt"), c, 70)
    assert end[0] == 2 + 2 * busy + 1 and t.now == end[0] + 1
