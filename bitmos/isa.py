"""The bitmos instruction set: fields, 64-bit binary encoding, assembly syntax and cycle costs.

One table (``SPECS``) defines every instruction's encoding; the encoder, decoder, assembler,
disassembler and docs/isa.md are all checked against it. What each instruction touches, when it
faults and how long it takes is defined once in :mod:`bitmos.semantics`; prose in docs/isa.md.

Word layout: bits [63:58] opcode, then the instruction's fields; every bit not covered by a field is
reserved and must be zero (a decoder rejects a word that sets one, naming the bits).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from bitmos.errors import DecodeError

WORD_BITS = 64
OPCODE_LO = 58


class Op(enum.IntEnum):
    NOP = 0x00
    HALT = 0x01
    SETR = 0x02
    LOAD = 0x03
    STORE = 0x04
    WAIT = 0x05
    QUANT = 0x06
    MATMUL = 0x07
    SCALEOUT = 0x08
    # the vector unit (AcceleratorConfig.vector_unit = 1): the decoder layer's elementwise and norm operations
    RESADD = 0x09
    SILU = 0x0A
    RMSNORM = 0x0B
    LAYERNORM = 0x0C
    ROPE = 0x0D
    KVPACK = 0x0E
    ATTN = 0x0F


class Reg(enum.IntEnum):
    """Layer registers written by SETR (all reset to 0)."""
    K = 0        # input features of the current layer, 1..65535
    RSHIFT = 1   # router logit shift, 0..63
    OSHIFT = 2   # output shift, 0..63
    ROUTER = 3   # SBUF line of the router weights
    SIN = 4      # SBUF line of the input scale experts
    SMUL = 5     # output multiplier (signed 16-bit) used when experts = 0
    EBASE = 6    # external base address in 64-byte units
    WBITS = 7    # weight format of matmul: 0 = sign (1 plane, +-1), 2..8 = two's complement int, one plane per bit
    BIAS = 8     # 1 = quant's router row 0 is a per-token bias (FBI-LLM's beta . x) added at scaleout; needs E >= 2
    # the vector unit's registers (legal only where AcceleratorConfig.vector_unit = 1)
    XFRAC = 9    # fraction bits of the int16 XBUF values silu and rmsnorm write (the consumer linear's x_frac)
    GEXP = 10    # rmsnorm: exponent of the int16 gains (g ~ G * 2^-GEXP, formats.gain_exponent)
    EPS = 11     # rmsnorm / layernorm: epsilon in the input's squared units, round(eps * 2^(2 * its fraction bits))
    HDIM = 12    # rope, kvpack, attn: the head dimension (even; half of it a multiple of cols, so rotated pairs share a lane)
    QPOS = 13    # kvpack, attn: the position of the block's first token in the sequence
    KVMAX = 14   # kvpack, attn: positions a kv head's cache region holds (a multiple of WBUF's line bytes)
    KVW = 15     # kvpack, attn: WBUF line of the kv head's cache region (formats.kv_offsets)
    HGRP = 16    # attn: query heads per kv head (grouped-query attention; 1 = multi-head)
    SCR = 17     # attn: OBUF line of its score scratch (ceil((QPOS + ntok) / cols) lines a query row)
    TPOS = 18    # kvpack, attn: the first position the WBUF region (or tile) at KVW holds (a multiple of a WBUF line's bytes)
    ACC = 19     # attn (values part): OBUF line of the query rows' 64-bit value accumulators (2 HDIM / cols lines a row)


#: (min, max) of each register's value; SMUL is signed.
REG_RANGE: dict[Reg, tuple[int, int]] = {
    Reg.K: (1, 65535), Reg.RSHIFT: (0, 63), Reg.OSHIFT: (0, 63), Reg.ROUTER: (0, 65535),
    Reg.SIN: (0, 65535), Reg.SMUL: (-32768, 32767), Reg.EBASE: (0, (1 << 32) - 1), Reg.WBITS: (0, 8),
    Reg.BIAS: (0, 1), Reg.XFRAC: (0, 15), Reg.GEXP: (0, 31), Reg.EPS: (0, (1 << 32) - 1), Reg.HDIM: (0, 1024),
    Reg.QPOS: (0, 65535), Reg.KVMAX: (0, 65535), Reg.KVW: (0, 65535), Reg.HGRP: (0, 255), Reg.SCR: (0, 65535),
    Reg.TPOS: (0, 65535), Reg.ACC: (0, 65535),
}

#: Instructions and registers of the vector unit: illegal (opcode, or SETR's register field) on a config without
#: it (``AcceleratorConfig.vector_unit`` = 0), as on every config before the unit existed.
VECTOR_OPS = (Op.RESADD, Op.SILU, Op.RMSNORM, Op.LAYERNORM, Op.ROPE, Op.KVPACK, Op.ATTN)
VECTOR_REGS = (Reg.XFRAC, Reg.GEXP, Reg.EPS, Reg.HDIM, Reg.QPOS, Reg.KVMAX, Reg.KVW, Reg.HGRP, Reg.SCR,
               Reg.TPOS, Reg.ACC)

#: DMA buffer codes (the on-chip buffers the DMA engine can reach).
BUFFERS = ("X", "W", "S", "O")

#: Mode field of QUANT / MATMUL / SCALEOUT.
MODES = ("token", "plane")

#: Kind field of KVPACK: which half of a kv head's cache region it writes.
KV_KINDS = ("k", "v")

#: Part field of ATTN: the whole attention against a region of every position it sees, or, for a cache longer
#: than WBUF holds, one tile's part of it (its scores; its weighted values) with the scores kept in OBUF between.
ATTN_PARTS = ("whole", "scores", "values")

#: Error cause codes the controller reports (its error flag is set and it stops).
CAUSE_NONE = 0
CAUSE_ILLEGAL_OPCODE = 1
CAUSE_ILLEGAL_FIELD = 2
CAUSE_BUFFER_RANGE = 3
CAUSE_EXT_RANGE = 4
CAUSE_PC_RANGE = 5
CAUSE_NAMES = {CAUSE_NONE: "none", CAUSE_ILLEGAL_OPCODE: "illegal opcode",
               CAUSE_ILLEGAL_FIELD: "illegal field", CAUSE_BUFFER_RANGE: "buffer address out of range",
               CAUSE_EXT_RANGE: "external address out of range",
               CAUSE_PC_RANGE: "program counter ran past instruction memory"}


@dataclass(frozen=True)
class Field:
    name: str
    hi: int
    lo: int
    minimum: int = 0
    maximum: int | None = None  # None: the full width
    signed: bool = False
    enum: tuple[str, ...] | None = None  # symbolic values (index = code)

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def max_value(self) -> int:
        if self.maximum is not None:
            return self.maximum
        if self.enum is not None:
            return len(self.enum) - 1
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


def _f(name, hi, lo, minimum=0, maximum=None, enum=None):
    return Field(name, hi, lo, minimum, maximum, False, enum)


#: Every instruction: opcode -> its fields, most significant first.
SPECS: dict[Op, tuple[Field, ...]] = {
    Op.NOP: (),
    Op.HALT: (),
    Op.SETR: (_f("reg", 57, 52, 0, max(Reg)), _f("value", 31, 0)),
    Op.LOAD: (_f("buf", 57, 56, enum=BUFFERS), _f("line", 55, 40), _f("nlines", 39, 24, 1),
              _f("ext", 23, 0)),
    Op.STORE: (_f("buf", 57, 56, enum=BUFFERS), _f("line", 55, 40), _f("nlines", 39, 24, 1),
               _f("ext", 23, 0)),
    Op.WAIT: (_f("keep", 5, 0),),
    Op.QUANT: (_f("mode", 57, 57, enum=MODES), _f("x", 56, 41), _f("q", 40, 25), _f("meta", 24, 15),
               _f("ntok", 14, 8, 1)),
    Op.MATMUL: (_f("mode", 57, 57, enum=MODES), _f("q", 56, 41), _f("w", 40, 25), _f("o", 24, 9),
                _f("ntiles", 8, 0, 1)),
    Op.SCALEOUT: (_f("mode", 57, 57, enum=MODES), _f("o", 56, 41), _f("s", 40, 25), _f("meta", 24, 15),
                  _f("ntok", 14, 8, 1), _f("ntiles", 7, 0, 1)),
    Op.RESADD: (_f("mode", 57, 57, enum=MODES), _f("r", 56, 41), _f("o", 40, 25), _f("ntok", 24, 18, 1)),
    Op.SILU: (_f("mode", 57, 57, enum=MODES), _f("g", 56, 41), _f("u", 40, 25), _f("x", 24, 9),
              _f("ntok", 8, 2, 1)),
    Op.RMSNORM: (_f("mode", 57, 57, enum=MODES), _f("r", 56, 41), _f("x", 40, 25), _f("s", 24, 9),
                 _f("ntok", 8, 2, 1)),
    Op.LAYERNORM: (_f("mode", 57, 57, enum=MODES), _f("r", 56, 41), _f("x", 40, 25), _f("ntok", 24, 18, 1)),
    Op.ROPE: (_f("mode", 57, 57, enum=MODES), _f("q", 56, 41), _f("s", 40, 25), _f("ntok", 24, 18, 1)),
    Op.KVPACK: (_f("mode", 57, 57, enum=MODES), _f("o", 56, 41), _f("kind", 40, 40, enum=KV_KINDS),
                _f("ntok", 39, 33, 1)),
    Op.ATTN: (_f("mode", 57, 57, enum=MODES), _f("q", 56, 41), _f("x", 40, 25), _f("ntok", 24, 18, 1),
              _f("part", 17, 16, enum=ATTN_PARTS)),
}


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction: opcode plus integer field values (enum fields hold their code)."""
    op: Op
    args: tuple[tuple[str, int], ...] = ()

    def __getitem__(self, name: str) -> int:
        for k, v in self.args:
            if k == name:
                return v
        raise KeyError(f"{self.op.name} has no field {name!r}")

    def get(self, name: str, default: int = 0) -> int:
        try:
            return self[name]
        except KeyError:
            return default

    @classmethod
    def make(cls, op: Op | str, **fields: int | str) -> "Instruction":
        """Build and range-check an instruction; enum fields accept their names ('W', 'plane')."""
        op = Op[op.upper()] if isinstance(op, str) else Op(op)
        spec = SPECS[op]
        names = {f.name for f in spec}
        unknown = set(fields) - names
        if unknown:
            raise ValueError(f"{op.name} has no field(s) {sorted(unknown)}; fields: {[f.name for f in spec]}")
        args = []
        for f in spec:
            if f.name not in fields:
                if f.enum is not None or f.minimum == 0:
                    value: int | str = 0
                else:
                    raise ValueError(f"{op.name} needs field {f.name!r}")
            else:
                value = fields[f.name]
            if f.enum is not None and isinstance(value, str):
                if value not in f.enum:
                    raise ValueError(f"{op.name}.{f.name} = {value!r}; allowed {f.enum}")
                value = f.enum.index(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{op.name}.{f.name} must be an integer, got {value!r}")
            if not f.minimum <= value <= f.max_value:
                raise ValueError(f"{op.name}.{f.name} = {value} out of range {f.minimum}..{f.max_value}")
            args.append((f.name, value))
        return cls(op, tuple(args))

    def encode(self) -> int:
        return encode(self)

    def __str__(self) -> str:
        return format_instruction(self)


def encode(ins: Instruction) -> int:
    """The 64-bit word of an instruction."""
    word = int(ins.op) << OPCODE_LO
    for f in SPECS[ins.op]:
        value = ins[f.name]
        if not f.minimum <= value <= f.max_value:
            raise ValueError(f"{ins.op.name}.{f.name} = {value} out of range {f.minimum}..{f.max_value}")
        word |= (value & ((1 << f.width) - 1)) << f.lo
    return word


def _reserved_mask(op: Op) -> int:
    used = ((1 << (WORD_BITS - OPCODE_LO)) - 1) << OPCODE_LO
    for f in SPECS[op]:
        used |= ((1 << f.width) - 1) << f.lo
    return ((1 << WORD_BITS) - 1) & ~used


RESERVED_MASK: dict[Op, int] = {op: _reserved_mask(op) for op in Op}


def decode(word: int, *, pc: int | None = None) -> Instruction:
    """Decode one word; raises DecodeError naming the opcode, field or reserved bits at fault."""
    where = f" at pc {pc}" if pc is not None else ""
    if not 0 <= word < (1 << WORD_BITS):
        raise DecodeError(f"word {word:#x}{where} is not a 64-bit value")
    code = word >> OPCODE_LO
    try:
        op = Op(code)
    except ValueError:
        raise DecodeError(f"illegal opcode {code:#04x} in word {word:#018x}{where}") from None
    bad = word & RESERVED_MASK[op]
    if bad:
        bits = [i for i in range(WORD_BITS) if bad >> i & 1]
        raise DecodeError(f"{op.name} word {word:#018x}{where}: reserved bit(s) {bits} must be zero")
    args = []
    for f in SPECS[op]:
        value = (word >> f.lo) & ((1 << f.width) - 1)
        if not f.minimum <= value <= f.max_value:
            raise DecodeError(f"{op.name} word {word:#018x}{where}: field {f.name!r} = {value} "
                              f"is illegal; allowed {f.minimum}..{f.max_value}")
        args.append((f.name, value))
    ins = Instruction(op, tuple(args))
    if op is Op.SETR:
        reg = Reg(ins["reg"])
        lo, hi = REG_RANGE[reg]
        value = ins["value"]
        if reg is Reg.SMUL:
            value = value - (1 << 32) if value >> 31 else value
        if not lo <= value <= hi:
            raise DecodeError(f"SETR word {word:#018x}{where}: value {value} for register {reg.name} "
                              f"is illegal; allowed {lo}..{hi}")
    return ins


def setr(reg: Reg | str, value: int) -> Instruction:
    """SETR with range checking; SMUL may be negative (stored as 32-bit two's complement)."""
    reg = Reg[reg.upper()] if isinstance(reg, str) else Reg(reg)
    lo, hi = REG_RANGE[reg]
    if not lo <= value <= hi:
        raise ValueError(f"register {reg.name} value {value} out of range {lo}..{hi}")
    return Instruction.make(Op.SETR, reg=int(reg), value=value & 0xFFFFFFFF)


def reg_value(reg: Reg, raw: int) -> int:
    """The value a SETR word's 32-bit field means for ``reg`` (SMUL is signed)."""
    if reg is Reg.SMUL and raw >> 31:
        return raw - (1 << 32)
    return raw


# ---- assembly text --------------------------------------------------------------------------------

def format_instruction(ins: Instruction) -> str:
    """Assembly text: ``MNEMONIC field=value ...``; enum fields by name, SETR by register name."""
    parts = [ins.op.name.lower()]
    for f in SPECS[ins.op]:
        v = ins[f.name]
        if ins.op is Op.SETR and f.name == "reg":
            parts.append(Reg(v).name)
            continue
        if ins.op is Op.SETR and f.name == "value":
            parts.append(str(reg_value(Reg(ins["reg"]), v)))
            continue
        if ins.op is Op.WAIT and v == 0:      # the whole drain, as ``wait`` read before the DMA queue
            continue
        if f.enum is not None:
            parts.append(f"{f.name}={f.enum[v]}")
        elif f.name == "ext":
            parts.append(f"{f.name}={v:#x}")
        else:
            parts.append(f"{f.name}={v}")
    return " ".join(parts)


_TOKEN = re.compile(r"^([a-z_]+)=(\S+)$")


def parse_instruction(text: str, *, line_no: int | None = None) -> Instruction:
    """Parse one line of assembly (comments after ';' are ignored)."""
    where = f"line {line_no}: " if line_no is not None else ""
    code = text.split(";", 1)[0].strip()
    if not code:
        raise ValueError(f"{where}empty instruction")
    words = code.split()
    try:
        op = Op[words[0].upper()]
    except KeyError:
        raise ValueError(f"{where}unknown mnemonic {words[0]!r}; known: "
                         f"{', '.join(o.name.lower() for o in Op)}") from None
    try:
        if op is Op.SETR:
            if len(words) != 3:
                raise ValueError("setr takes a register name and a value, e.g. 'setr K 128'")
            try:
                reg = Reg[words[1].upper()]
            except KeyError:
                raise ValueError(f"unknown register {words[1]!r}; registers: "
                                 f"{', '.join(r.name for r in Reg)}") from None
            return setr(reg, int(words[2], 0))
        fields: dict[str, int | str] = {}
        for w in words[1:]:
            m = _TOKEN.match(w)
            if not m:
                raise ValueError(f"expected field=value, got {w!r}")
            name, value = m.groups()
            spec = {f.name: f for f in SPECS[op]}
            if name not in spec:
                raise ValueError(f"{op.name} has no field {name!r}")
            fields[name] = value if spec[name].enum is not None else int(value, 0)
        return Instruction.make(op, **fields)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None


def assemble(text: str) -> list[int]:
    """Assemble a listing (one instruction per line, ';' comments, blank lines ignored) to words."""
    words = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.split(";", 1)[0].strip():
            words.append(encode(parse_instruction(line, line_no=n)))
    return words


def disassemble(words: Iterable[int], comments: Mapping[int, str] | None = None) -> str:
    """A listing of words; ``comments`` maps a pc to a comment written after that instruction."""
    lines = []
    for pc, w in enumerate(words):
        text = format_instruction(decode(w, pc=pc))
        note = (comments or {}).get(pc)
        lines.append(f"{pc:6d}: {text:<64s}" + (f" ; {note}" if note else ""))
    return "\n".join(l.rstrip() for l in lines) + ("\n" if lines else "")


def parse_listing(text: str) -> list[int]:
    """Inverse of :func:`disassemble`: accepts the ``pc:`` prefixes it writes."""
    body = []
    for line in text.splitlines():
        m = re.match(r"^\s*\d+:\s*(.*)$", line)
        body.append(m.group(1) if m else line)
    return assemble("\n".join(body))
