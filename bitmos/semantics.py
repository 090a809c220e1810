"""What each instruction does, defined once: the buffer lines it touches, when it faults, how long it takes.

Every definition here is a plain function of an instruction's fields, the layer registers at its
issue and the config, written so that ONE text serves three kinds of values:

* Python integers — the functional simulator's messages, the compiler, the tests' oracle checks;
* NumPy arrays (one entry per instruction) — the timing-only simulator decodes and checks a whole
  program at once;
* Amaranth values — the RTL controller builds its fault logic and busy counters from them.

``+ - *``, ``//`` by a constant, comparisons and ``&``/``|`` of conditions mean the same on all three;
the one primitive that differs, a two-way choice, comes in as :class:`Ops` (``PY`` here; the simulator
and the RTL pass their own). Config values are Python integers, so ``if cfg.experts >= 2`` is decided
at elaboration time, never in the datapath.

Contents: :func:`footprint` (buffer accesses), :func:`faults` (the fault causes 2-4 of docs/isa.md in
priority order), :func:`controller_cycles` / :func:`dma_busy_cycles` and the per-unit formulas, and
:class:`Timeline`, the timing rule of an in-order controller with one DMA engine (and its queue of transfers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bitmos.config import AcceleratorConfig
from bitmos.isa import (BUFFERS, CAUSE_BUFFER_RANGE, CAUSE_EXT_RANGE, CAUSE_ILLEGAL_FIELD, REG_RANGE,
                        RESERVED_MASK, SPECS, VECTOR_OPS, VECTOR_REGS, WORD_BITS, Instruction, Op, Reg)

Value = Any  # an int, a NumPy array or an Amaranth value


@dataclass(frozen=True)
class Ops:
    """The primitives a definition needs beyond operators: ``select(c, a, b)`` is ``a`` where ``c``."""
    select: Callable[[Value, Value, Value], Value]


#: Python integers.
PY = Ops(select=lambda c, a, b: a if c else b)


def _any(conds: list[Value]) -> Value:
    out = conds[0]
    for c in conds[1:]:
        out = out | c
    return out


def lookup(ops: Ops, index: Value, table: list[Value]) -> Value:
    """``table[index]`` for a small table of constants or values, built from selects (a mux in the RTL)."""
    out = table[-1]
    for i in range(len(table) - 2, -1, -1):
        out = ops.select(index == i, table[i], out)
    return out


def legal_ops(cfg: AcceleratorConfig) -> tuple[Op, ...]:
    """The opcodes ``cfg`` executes; any other opcode faults with cause 1 (illegal opcode). The vector unit's
    (``isa.VECTOR_OPS``) only where ``cfg.vector_unit`` = 1."""
    return tuple(op for op in Op if cfg.vector_unit or op not in VECTOR_OPS)


def legal_regs(cfg: AcceleratorConfig) -> tuple[Reg, ...]:
    """The layer registers ``cfg`` has; a SETR of any other faults with cause 2 (illegal field)."""
    return tuple(r for r in Reg if cfg.vector_unit or r not in VECTOR_REGS)


# ---- geometry ----------------------------------------------------------------------------------


def nchunks(cfg: AcceleratorConfig, k_features: Value) -> Value:
    """K-chunks of ``lanes`` inputs a length-K dot product takes (ceil(K / L))."""
    return (k_features + (cfg.lanes - 1)) // cfg.lanes


def xlines(cfg: AcceleratorConfig, k_features: Value) -> Value:
    """XBUF (and SBUF expert) lines one token's K inputs occupy, padded to whole chunks."""
    return nchunks(cfg, k_features) * (cfg.lanes // cfg.cols)


def weight_planes(cfg: AcceleratorConfig, w_bits: Value, ops: Ops = PY) -> Value:
    """Weight planes per chunk of a MATMUL under register WBITS: 1 for sign weights (WBITS = 0), else
    WBITS (one plane per bit of the two's complement integer). A sign-only config has no choice."""
    if cfg.weight_bits == 1:
        return 1
    return ops.select(w_bits == 0, 1, w_bits)


def times_weight_planes(cfg: AcceleratorConfig, x: Value, w_bits: Value, ops: Ops = PY) -> Value:
    """``x * weight_planes(cfg, w_bits)``, as a choice among the constant multiples of the legal WBITS
    values (shifts and adds in the RTL, no multiplier); an illegal WBITS never reaches a MATMUL."""
    if cfg.weight_bits == 1:
        return x
    out = x
    for b in range(2, cfg.weight_bits + 1):
        out = ops.select(w_bits == b, x * b, out)
    return out


def olines(cfg: AcceleratorConfig, k_features: Value) -> Value:
    """OBUF lines one token's K int32 values occupy (ceil(K / C)): a linear's output tiles, a residual."""
    return (k_features + (cfg.cols - 1)) // cfg.cols


def plane_lines(cfg: AcceleratorConfig, k_features: Value, mode: Value, ops: Ops = PY) -> Value:
    """QBUF lines of one token's (or one row block's) activation planes: nch * (k or P)."""
    return nchunks(cfg, k_features) * ops.select(mode, cfg.planes_per_row, cfg.act_bits)


def register_counts(cfg: AcceleratorConfig, regs: Mapping[Reg, Value], ops: Ops = PY) -> dict[str, Value]:
    """The line counts the footprints take from registers K and WBITS alone: ``xlines`` (one token's
    XBUF lines), ``plane_lines`` (QBUF lines of one token's planes, token and plane mode) and
    ``weight_lines`` (WBUF lines of one tile: nch times the weight planes). They change only when a
    SETR writes K or WBITS, so a checker can hold them in registers, found as the registers are, and
    multiply a count field by a register (tiny's critical path was K -> ceil(K/L) -> that product,
    docs/fpga.md)."""
    K = regs[Reg.K]
    nch = nchunks(cfg, K)
    counts = {"xlines": xlines(cfg, K),
              "plane_lines_token": nch * cfg.act_bits, "plane_lines_plane": nch * cfg.planes_per_row,
              "weight_lines": times_weight_planes(cfg, nch, regs[Reg.WBITS], ops)}
    if cfg.vector_unit:
        counts["olines"] = olines(cfg, K)
    return counts


# ---- footprint ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Lines ``base + n*stride + [0, width)`` for ``n < count`` of one buffer, read or written.

    ``buffer`` is 'X', 'W', 'S', 'Q', 'O' or 'META' (META records, ``cfg.meta_tokens`` deep); ``when``
    guards an access that only some field values make (the buffer a load/store names).
    """
    buffer: str
    write: bool
    base: Value
    width: Value
    stride: Value = 1
    count: Value = 1
    when: Value = True
    what: str = ""

    @property
    def end(self) -> Value:
        """One past the last line touched."""
        return self.base + (self.count - 1) * self.stride + self.width


def _per_mode_obuf(f: Mapping[str, Value], token: tuple[Value, Value, Value], plane_lines: Value) -> list[Access]:
    """The OBUF lines a MATMUL or SCALEOUT touches from ``o``, as one access per mode (each guarded by it):
    ``token`` = (width, stride, count) of token mode, ``plane_lines`` the width of plane mode. Not one access
    whose extent selects between the modes: each end line is then adds of fields and constant multiples of
    them, with no multiplier behind a mode select in the RTL's legality check (tiny's critical path,
    docs/fpga.md)."""
    width, stride, count = token
    return [Access("O", True, f["o"], width, stride, count, when=f["mode"] == 0, what="OBUF lines"),
            Access("O", True, f["o"], plane_lines, when=f["mode"] == 1, what="OBUF lines")]


def _token_lines(buffer: str, write: bool, base: Value, f: Mapping[str, Value], nl: Value, R: int,
                 what: str) -> list[Access]:
    """A vector instruction's lines of ``nl`` per token laid out as a linear's output tiles from ``base``:
    token mode line ``base + n*R + t`` (n < nl, t < ntok), plane mode ``base + n`` (ntok = 1); one access per
    mode, each guarded by it."""
    return [Access(buffer, write, base, f["ntok"], R, nl, when=f["mode"] == 0, what=what),
            Access(buffer, write, base, nl, when=f["mode"] == 1, what=what)]


def rope_table_lines(cfg: AcceleratorConfig, head_dim: Value) -> Value:
    """SBUF lines of one token's rotary table: cos, then sin, of its position's head_dim / 2 frequencies, C a line
    (value (0, j % C) of line j // C); (head_dim / 2) is a multiple of C (register HDIM's legality)."""
    return 2 * (head_dim // 2 // cfg.cols)


def rope_unaligned(cfg: AcceleratorConfig, raw: Value) -> Value:
    """A HDIM value the rope instruction cannot take: odd, or half of it not a multiple of C (a rotated pair's two
    values would sit in different lanes)."""
    return ((raw % 2) != 0) | (((raw // 2) % cfg.cols) != 0)


def kv_page(cfg: AcceleratorConfig) -> int:
    """Positions of one page of a KV-cache region (``formats.kv_offsets``): a WBUF line's bytes, so that a page's
    exponents fill a line and its rows whole lines."""
    return cfg.wbuf_line_bits // 8


def kv_half_lines(cfg: AcceleratorConfig, kv_max: Value, head_dim: Value) -> Value:
    """WBUF lines of one half (keys or values) of a kv head's cache region of KVMAX positions: KVMAX / page pages
    of HDIM + 1 lines (KVMAX is a whole number of pages: register KVMAX's legality); also an attn tile's lines."""
    return kv_max // kv_page(cfg) * (head_dim + 1)


def kv_region_lines(cfg: AcceleratorConfig, kv_max: Value, head_dim: Value) -> Value:
    """WBUF lines of one kv head's cache region of KVMAX positions: its key half, then its value half."""
    return 2 * kv_half_lines(cfg, kv_max, head_dim)


def kv_unaligned(cfg: AcceleratorConfig, raw: Value) -> Value:
    """A KVMAX or TPOS value that is no whole number of pages."""
    return (raw % kv_page(cfg)) != 0


def score_lines(cfg: AcceleratorConfig, positions: Value) -> Value:
    """OBUF lines of one query row's score scratch for ``positions`` positions (C a line)."""
    return (positions + (cfg.cols - 1)) // cfg.cols


def attn_positions(f: Mapping[str, Value], regs: Mapping[Reg, Value], ops: Ops = PY) -> tuple[Value, Value]:
    """(n, m) of an attn: n = QPOS + ntok, the positions the block's rows see (the scratch's row length); m the
    positions of its region or tile it reads, TPOS .. min(TPOS + KVMAX, n) - 1 (the whole attention: TPOS = 0
    and n <= KVMAX, so m = n)."""
    n = regs[Reg.QPOS] + f["ntok"]
    end = regs[Reg.TPOS] + regs[Reg.KVMAX]
    return n, ops.select(end < n, end, n) - regs[Reg.TPOS]


def attn_last_tile(f: Mapping[str, Value], regs: Mapping[Reg, Value]) -> Value:
    """An attn values part whose tile reaches the block's last position (TPOS + KVMAX >= QPOS + ntok): it writes
    the output."""
    return regs[Reg.TPOS] + regs[Reg.KVMAX] >= regs[Reg.QPOS] + f["ntok"]


def _attn_footprint(f: Mapping[str, Value], regs: Mapping[Reg, Value], cfg: AcceleratorConfig,
                    counts: Mapping[str, Value]) -> list[Access]:
    """attn's accesses by part (each guarded by it): the group's query lines (whole, scores); the region (whole:
    both halves) or tile (one half) at KVW; the score scratch (every row's, row r = t * HGRP + g at SCR + r * SL);
    the accumulators (values: 2 HL lines a row from ACC); the output (whole; the values part whose tile is the
    last)."""
    hd, part = regs[Reg.HDIM], f["part"]
    hl = hd // cfg.cols
    gl = regs[Reg.HGRP] * hl
    rows = f["ntok"] * regs[Reg.HGRP]
    sl = score_lines(cfg, regs[Reg.QPOS] + f["ntok"])
    half = kv_half_lines(cfg, regs[Reg.KVMAX], hd)
    query = [dataclasses.replace(a, when=a.when & (part != 2))
             for a in _token_lines("O", False, f["q"], f, gl, R=cfg.rows, what="OBUF query lines")]
    return query + [
        Access("W", False, regs[Reg.KVW], 2 * half, when=part == 0, what="WBUF KV-cache region lines"),
        Access("W", False, regs[Reg.KVW], half, when=part != 0, what="WBUF KV-cache tile lines"),
        Access("O", True, regs[Reg.SCR], rows * sl, what="OBUF score scratch lines"),
        Access("O", True, regs[Reg.ACC], rows * 2 * hl, when=part == 2, what="OBUF accumulator lines"),
        Access("X", True, f["x"], gl, counts["xlines"], f["ntok"],
               when=(part == 0) | ((part == 2) & attn_last_tile(f, regs)), what="XBUF lines")]


def depth(cfg: AcceleratorConfig, buffer: str) -> int:
    return cfg.meta_tokens if buffer == "META" else cfg.depth(buffer)


def footprint(op: Op, f: Mapping[str, Value], regs: Mapping[Reg, Value], cfg: AcceleratorConfig,
              ops: Ops = PY, counts: Mapping[str, Value] | None = None) -> list[Access]:
    """Every buffer range instruction ``op`` reads or writes, in the order docs/isa.md checks them.
    ``counts``: :func:`register_counts` of ``regs``, if the caller holds them (found here if not)."""
    R, E = cfg.rows, cfg.experts
    if op in (Op.LOAD, Op.STORE):
        return [Access(b, op is Op.LOAD, f["line"], f["nlines"], when=f["buf"] == i, what=f"{b}BUF lines")
                for i, b in enumerate(BUFFERS)]
    if op not in COMPUTE_OPS:
        return []
    if counts is None:
        counts = register_counts(cfg, regs, ops)
    if op is Op.KVPACK:          # one kv head's values of each token; its rows of the region written
        hd = regs[Reg.HDIM]
        return (_token_lines("O", False, f["o"], f, hd // cfg.cols, R, "OBUF key/value lines")
                + [Access("W", True, regs[Reg.KVW], kv_region_lines(cfg, regs[Reg.KVMAX], hd),
                          what="WBUF KV-cache region lines")])
    if op is Op.ATTN:
        return _attn_footprint(f, regs, cfg, counts)
    if op in VECTOR_OPS:
        nl, xl = counts["olines"], counts["xlines"]
        x_lines = ([] if op in (Op.RESADD, Op.ROPE) else
                   [Access("X", True, f["x"], f["ntok"] * xl, what="XBUF lines")])
        if op is Op.RESADD:   # in place: the residual's lines are read and written, the addend's read
            return (_token_lines("O", True, f["r"], f, nl, R, "OBUF residual lines")
                    + _token_lines("O", False, f["o"], f, nl, R, "OBUF addend lines"))
        if op is Op.SILU:
            return (_token_lines("O", False, f["g"], f, nl, R, "OBUF gate lines")
                    + _token_lines("O", False, f["u"], f, nl, R, "OBUF up lines") + x_lines)
        if op is Op.LAYERNORM:   # unit gains: no SBUF line
            return _token_lines("O", False, f["r"], f, nl, R, "OBUF input lines") + x_lines
        if op is Op.ROPE:        # in place; each token's cos and sin lines of its position
            return (_token_lines("O", True, f["q"], f, nl, R, "OBUF q/k lines")
                    + [Access("S", False, f["s"], f["ntok"] * rope_table_lines(cfg, regs[Reg.HDIM]),
                              what="SBUF rotary table lines")])
        return (_token_lines("O", False, f["r"], f, nl, R, "OBUF residual lines")
                + [Access("S", False, f["s"], nl, what="SBUF gain lines")] + x_lines)
    planes = ops.select(f["mode"], counts["plane_lines_plane"], counts["plane_lines_token"])
    if op is Op.QUANT:
        xl = counts["xlines"]
        acc = [Access("Q", True, f["q"], planes, what="QBUF lines"),
               Access("X", False, f["x"], f["ntok"] * xl, what="XBUF lines"),
               Access("META", True, f["meta"], f["ntok"], what="META records")]
        if E >= 2:
            acc.append(Access("S", False, regs[Reg.ROUTER], xl, what="SBUF router lines"))
        if E >= 1:
            acc.append(Access("S", False, regs[Reg.SIN], xl, what="SBUF s_in lines"))
        return acc
    if op is Op.MATMUL:
        return [Access("Q", False, f["q"], planes, what="QBUF lines"),
                Access("W", False, f["w"], f["ntiles"] * counts["weight_lines"], what="WBUF lines"),
                *_per_mode_obuf(f, (f["ntiles"] * R, 1, 1), f["ntiles"])]
    if op is Op.SCALEOUT:
        # token mode: each tile's accumulators are R lines apart, of which ntok are used
        acc = _per_mode_obuf(f, (f["ntok"], R, f["ntiles"]), f["ntiles"])
        if E >= 1:
            acc.append(Access("S", False, f["s"], f["ntiles"], what="SBUF s_out lines"))
        acc.append(Access("META", False, f["meta"], f["ntok"], what="META records"))
        return acc
    return []


# ---- legality ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault condition of an instruction: ``cause`` (docs/isa.md, Errors) when ``cond`` holds."""
    cause: int
    cond: Value
    access: Access | None = None  # the out-of-range access, for buffer faults


def ext_end(f: Mapping[str, Value], regs: Mapping[Reg, Value], cfg: AcceleratorConfig, ops: Ops = PY) -> Value:
    """One past the last external byte a load/store touches: EBASE*64 + ext + nlines * line bytes."""
    # the buffer's select chooses among nlines times each constant (shifts for power-of-two lines), not the
    # constant a product then takes: no multiply behind a select in the RTL's legality stage (tiny's
    # critical path, docs/fpga.md)
    line_bytes = [cfg.line_bits(b) // 8 for b in BUFFERS]
    return regs[Reg.EBASE] * 64 + f["ext"] + lookup(ops, f["buf"], [f["nlines"] * b for b in line_bytes])


def field_faults(op: Op, word: Value, f: Mapping[str, Value], cfg: AcceleratorConfig) -> list[Value]:
    """Cause 2 (illegal field): reserved bits set, a field outside its range, or an illegal combination."""
    conds = [(word & RESERVED_MASK[op]) != 0]
    for fl in SPECS[op]:
        # SETR's register field: the registers this config has (the vector unit's only with it)
        hi = max(legal_regs(cfg)) if op is Op.SETR and fl.name == "reg" else fl.max_value
        if fl.minimum > 0:
            conds.append(f[fl.name] < fl.minimum)
        if hi < (1 << fl.width) - 1:
            conds.append(f[fl.name] > hi)
    if op is Op.SETR:
        raw, top = f["value"], (1 << 32) - 1   # the 32-bit value field
        for r in legal_regs(cfg):
            lo, hi = REG_RANGE[r]
            if lo < 0:  # signed register (SMUL): the 32-bit field is two's complement
                bad = [(raw > hi) & (raw < top + 1 + lo)]
            else:       # only the comparisons that can hold (no constant-false logic in the RTL)
                bad = ([raw < lo] if lo > 0 else []) + ([raw > hi] if hi < top else [])
            if bad:
                conds.append((f["reg"] == int(r)) & _any(bad))
        # WBITS: 0 (sign) or 2..weight_bits (a 1-bit two's complement weight, {0, -1}, is no format)
        wb = f["reg"] == int(Reg.WBITS)
        conds.append(wb & ((raw == 1) | (raw > cfg.weight_bits)) if cfg.weight_bits >= 2 else wb & (raw != 0))
        # BIAS: the bias is router row 0's sum, so a config without a router (E < 2) has only BIAS = 0
        if cfg.experts < 2:
            conds.append((f["reg"] == int(Reg.BIAS)) & (raw != 0))
        if cfg.vector_unit:   # HDIM: even, half of it a whole number of lines (0, the reset value, is legal)
            conds.append((f["reg"] == int(Reg.HDIM)) & rope_unaligned(cfg, raw))
            conds.append((f["reg"] == int(Reg.KVMAX)) & kv_unaligned(cfg, raw))
            conds.append((f["reg"] == int(Reg.TPOS)) & kv_unaligned(cfg, raw))
    if op is Op.WAIT:   # transfers left in flight: fewer than the engine keeps (a v2 engine: none)
        conds.append(f["keep"] >= cfg.dma_slots)
    if op in (Op.QUANT, Op.SCALEOUT, *VECTOR_OPS):
        # plane mode handles one token; token mode up to one per array row
        conds.append(((f["mode"] == 1) & (f["ntok"] != 1)) | ((f["mode"] == 0) & (f["ntok"] > cfg.rows)))
    return conds


def resadd_overlap(f: Mapping[str, Value], regs: Mapping[Reg, Value], cfg: AcceleratorConfig, ops: Ops = PY,
                   counts: Mapping[str, Value] | None = None) -> Value:
    """A RESADD whose addend lines (from ``o``) and residual lines (from ``r``) overlap, other than r = o (each
    line added to itself): an illegal field, so that every line's sum is of values from before the
    instruction whatever the unit's pipeline (the line spans are compared, strides included)."""
    res_t, res_p, add_t, add_p = footprint(Op.RESADD, f, regs, cfg, ops, counts)
    r_end = ops.select(f["mode"] == 1, res_p.end, res_t.end)
    o_end = ops.select(f["mode"] == 1, add_p.end, add_t.end)
    return (f["r"] != f["o"]) & (f["r"] < o_end) & (f["o"] < r_end)


def kv_block_outside(op: Op, f: Mapping[str, Value], regs: Mapping[Reg, Value]) -> Value:
    """An illegal field of kvpack or attn: no head (HDIM = 0; attn: HGRP = 0); kvpack's tokens' positions QPOS ..
    QPOS + ntok - 1 not all inside the region's TPOS .. TPOS + KVMAX - 1; the whole attention's region not the
    positions 0 .. KVMAX - 1 of every one its rows see (TPOS != 0 or QPOS + ntok > KVMAX); a part's tile starting
    past the block's last position (TPOS >= QPOS + ntok: no row sees it)."""
    n = regs[Reg.QPOS] + f["ntok"]
    if op is Op.KVPACK:
        return ((regs[Reg.HDIM] == 0) | (regs[Reg.QPOS] < regs[Reg.TPOS])
                | (n > regs[Reg.TPOS] + regs[Reg.KVMAX]))
    whole = (f["part"] == 0) & ((regs[Reg.TPOS] != 0) | (n > regs[Reg.KVMAX]))
    return (regs[Reg.HDIM] == 0) | (regs[Reg.HGRP] == 0) | whole | ((f["part"] != 0) & (regs[Reg.TPOS] >= n))


def _same(v: Value) -> Value:
    return v


def faults(op: Op, word: Value, f: Mapping[str, Value], regs: Mapping[Reg, Value], cfg: AcceleratorConfig,
           ops: Ops = PY, stage: Callable[[Value], Value] = _same,
           counts: Mapping[str, Value] | None = None) -> list[Fault]:
    """The fault conditions of a legal opcode, highest priority first (the first that holds is reported).

    Cause 1 (illegal opcode) and 5 (pc past IMEM) are not per instruction; see docs/isa.md.

    ``stage`` marks where a pipelined checker may cut: every value it is applied to (the field-fault
    condition, each access's guard and end line, a load/store's external end) is computed from the
    fields and registers only, and everything after it is a comparison with a constant. The identity
    by default; the RTL controller passes a register, so the products of count fields and registers
    are found one cycle before the comparisons. ``counts``: as :func:`footprint` takes them.
    """
    field = field_faults(op, word, f, cfg)
    if op is Op.RESADD:
        field.append(resadd_overlap(f, regs, cfg, ops, counts))
    if op is Op.ROPE:     # whole heads: HDIM set (not 0) and dividing K
        hd = regs[Reg.HDIM]
        field.append((hd == 0) | ((regs[Reg.K] % ops.select(hd == 0, 1, hd)) != 0))
    if op in (Op.KVPACK, Op.ATTN):   # HDIM (and attn's HGRP) set, the block's positions inside the region
        field.append(kv_block_outside(op, f, regs))
    out = [Fault(CAUSE_ILLEGAL_FIELD, stage(_any(field)))]
    for a in footprint(op, f, regs, cfg, ops, counts):
        past = stage(a.end) > depth(cfg, a.buffer)
        out.append(Fault(CAUSE_BUFFER_RANGE, past if a.when is True else stage(a.when) & past, a))
    if op in (Op.LOAD, Op.STORE):
        out.append(Fault(CAUSE_EXT_RANGE, stage(ext_end(f, regs, cfg, ops)) > cfg.ext_mem_bytes))
    return out


# ---- cycles ------------------------------------------------------------------------------------


def dma_beats(nlines: Value, line_bits: int, cfg: AcceleratorConfig) -> Value:
    """Beats of one load/store of ``nlines`` lines of ``line_bits`` bits: ceil(nlines * line_bits /
    ext_bw_bits), the cycles of its data phase."""
    bw = cfg.ext_bw_bits
    if line_bits % bw == 0:  # whole beats per line (every preset): no divider in the RTL
        return nlines * (line_bits // bw)
    return (nlines * line_bits + (bw - 1)) // bw


def dma_cycles(nlines: Value, line_bits: int, cfg: AcceleratorConfig) -> Value:
    """Cycles the DMA engine is busy for one load/store of ``nlines`` lines of ``line_bits`` bits after
    its issue cycle when nothing is ahead of it: ext_latency + :func:`dma_beats`."""
    return cfg.ext_latency + dma_beats(nlines, line_bits, cfg)


def transfer_beats(f: Mapping[str, Value], cfg: AcceleratorConfig, ops: Ops = PY) -> Value:
    """:func:`dma_beats` of a load/store's fields (the buffer it names sets the line width)."""
    out = None
    for i in range(len(BUFFERS) - 1, -1, -1):
        c = dma_beats(f["nlines"], cfg.line_bits(BUFFERS[i]), cfg)
        out = c if out is None else ops.select(f["buf"] == i, c, out)
    return out


def dma_busy_cycles(f: Mapping[str, Value], cfg: AcceleratorConfig, ops: Ops = PY) -> Value:
    """:func:`dma_cycles` of a load/store's fields: ext_latency + :func:`transfer_beats`."""
    return cfg.ext_latency + transfer_beats(f, cfg, ops)


# ---- the scale-expert unit's pipeline (contract v2: every long arithmetic path is registered) ----
#: The scale unit registers every XBUF and SBUF line it reads before any arithmetic on it (a block RAM's
#: output straight into a multiplier was the small chip's critical path, docs/fpga.md): one cycle on the
#: router, mixing and quantize passes.
SCALE_LINE_REGISTER = 1
#: Cycles from a scale-unit read issue until the line's |v| is folded into the running max: the read,
#: the line register, the E gate x scale products, their sum s_in = mix_scale(...), v = x * s_in
#: (docs/isa.md "Cycles").
MIX_LATENCY = 4 + SCALE_LINE_REGISTER
#: Cycles from a read issue in the quantize pass until its q bits are in the plane bank: the mixing
#: stages above, the product v * RQ in two stages (limb products, their sum: ``pipelined_product``), then
#: round/clamp into the bank (one cycle more: the bank is read the cycle after).
GATHER_LATENCY = 7 + SCALE_LINE_REGISTER
#: Quotient bits of the sequential divider for RQ = floor(Q * 2^RQ_SHIFT / m): Q <= 127, so 39.
RQ_QUOTIENT_BITS = 39
#: Quotient bits of the softmax reciprocal floor(2^SOFTMAX_RCP_SHIFT / sum p) <= 2^15 (sum p >= 2^15).
RCP_QUOTIENT_BITS = 16
#: Cycles of the GATES window until the router's sums are final, after its last line's read: the line
#: register, the registered products, their add.
ROUTER_DRAIN = 2 + SCALE_LINE_REGISTER
#: GATES window beyond the E exponent-table reads: router drain, logits, max, table latency,
#: reciprocal load + RCP_QUOTIENT_BITS iterations, gate products.
GATES_FIXED = ROUTER_DRAIN + 5 + RCP_QUOTIENT_BITS
#: Cycles from a scaleout read issue to its write-back: read, the line, D, the SBUF line and the gates
#: registered, the gate x scale products with acc * D's limb products, s_out with their sum, times
#: s_out's limb products, their sum, the rounding half added, the shift, saturate, write (each wide
#: product is two stages: one MULT18X18D per limb pair, then their sum).
SCALEOUT_PIPELINE = 9


def rq_cycles(cfg: AcceleratorConfig) -> int:
    """Cycles between the mixing pass and the quantize pass: D (one cycle) and, for k >= 2, the
    sequential divide for RQ (load + one quotient bit per cycle)."""
    return 1 + RQ_QUOTIENT_BITS if cfg.act_bits >= 2 else 1


def chunk_period(cfg: AcceleratorConfig, mode: Value, ops: Ops = PY) -> Value:
    """T = max(L/C, W): cycles between the quantize pass's chunks. The plane bits are double-banked, so
    chunk c's W plane writes overlap chunk c+1's L/C gathers."""
    g = cfg.lanes // cfg.cols
    return ops.select(mode, max(g, cfg.planes_per_row), max(g, cfg.act_bits))


def quant_token_cycles(cfg: AcceleratorConfig, k_features: Value, mode: Value, ops: Ops = PY) -> Value:
    """Scale-unit cycles for one token of a QUANT: router pass and GATES window (E >= 2), mixing pass
    (s_in, v, max|v|), D and RQ, quantize pass (chunks every T cycles, the last one's writes
    GATHER_LATENCY after its gathers), and the META write (docs/isa.md)."""
    nch, xl = nchunks(cfg, k_features), xlines(cfg, k_features)
    g = cfg.lanes // cfg.cols
    router = xl + cfg.experts + GATES_FIXED if cfg.experts >= 2 else 0
    writes = ops.select(mode, cfg.planes_per_row, cfg.act_bits)
    quantize = (nch - 1) * chunk_period(cfg, mode, ops) + g + GATHER_LATENCY - 1 + writes
    quantize = ops.select(nch == 0, 0, quantize)   # K = 0 (the reset value): no chunks, no quantize pass
    return router + xl + MIX_LATENCY + rq_cycles(cfg) + quantize + 1


#: The array registers the QBUF and WBUF words it reads before any logic: a block RAM's read data
#: has a long clock-to-output and routing of its own, and a popcount tree behind it was the whole
#: accelerator's critical path on an ECP5 (docs/fpga.md). One cycle (the last tile of a MATMUL pays it).
ARRAY_OPERAND_REGISTER = 1
#: The PE registers its popcount tree halfway and at its end: a step reaches the accumulator two
#: cycles after it enters the PE (only the last tile of a MATMUL pays it; tiles overlap).
ARRAY_PE_PIPELINE = 2
#: The array's drain: one cycle registers the selected row's accumulators and row term, one adds them
#: (plane mode: into the running column sum); the OBUF write follows from that register.
ARRAY_DRAIN_PIPELINE = 2


def matmul_drain_rows(cfg: AcceleratorConfig, mode: Value, ops: Ops = PY) -> Value:
    """Rows the drain visits per tile, one a cycle: R (token mode) or Ra (plane mode)."""
    return ops.select(mode, cfg.plane_rows, cfg.rows)


def matmul_steps(cfg: AcceleratorConfig, k_features: Value, mode: Value, ops: Ops = PY, *, w_bits: Value = 0) -> Value:
    """S, a MATMUL tile's steps (one QBUF and one WBUF line read each): for every chunk and weight
    plane, the k activation planes (token mode) or P plane groups (plane mode)."""
    nch = times_weight_planes(cfg, nchunks(cfg, k_features), w_bits, ops)
    # a choice of two constant multiples, not a product with a chosen constant: shifts in the RTL
    return ops.select(mode, nch * cfg.planes_per_row, nch * cfg.act_bits)


def matmul_tile_cycles(cfg: AcceleratorConfig, k_features: Value, mode: Value, ops: Ops = PY, *,
                       w_bits: Value = 0) -> Value:
    """T_tile, the interval at which a MATMUL starts its output tiles: max(S + C, D) with S steps
    (:func:`matmul_steps`) and D drain rows. A tile's steps enter every C + S cycles at the
    earliest (a PE row is drained and cleared C cycles after its last step left column 0), and the
    drain, one row a cycle, must be done before the next tile's starts."""
    steps = matmul_steps(cfg, k_features, mode, ops, w_bits=w_bits)
    rows = matmul_drain_rows(cfg, mode, ops)
    return ops.select(steps + cfg.cols >= rows, steps + cfg.cols, rows)


def matmul_drain_cycles(cfg: AcceleratorConfig, k_features: Value, mode: Value, ops: Ops = PY, *,
                        w_bits: Value = 0) -> Value:
    """T_drain, what the last tile adds after ntiles*T_tile: the operand register, the PE pipeline,
    the drain rows not overlapped (min(S + C, D)) and the drain pipeline. One tile alone takes
    S + C + 3 + D + 2."""
    steps = matmul_steps(cfg, k_features, mode, ops, w_bits=w_bits)
    rows = matmul_drain_rows(cfg, mode, ops)
    overlap = ops.select(steps + cfg.cols >= rows, rows, steps + cfg.cols)
    return ARRAY_OPERAND_REGISTER + ARRAY_PE_PIPELINE + overlap + ARRAY_DRAIN_PIPELINE


# ---- the vector unit (AcceleratorConfig.vector_unit): residual add, SiLU gate product, RMSNorm ----------------
#: It reads OBUF one line a cycle (a residual add and a SiLU read two lines per output line) and writes one
#: line a cycle through OBUF's or XBUF's other port; every wide product is two stages (limb products, their
#: sum), as in the scale unit. Its RTL is issue 19's; the contract below is what that RTL must meet.
#: Residual add: from the last read to its write-back: the line registered, the saturating sum registered.
RESADD_PIPELINE = 3
#: SiLU: the line registered, the table index (round, clamp), the sigmoid ROM, g x sigmoid (two stages),
#: h rounded and saturated, h x u (two stages), rounded, requantized and saturated to int16, written.
SILU_PIPELINE = 10
#: RMSNorm per token: pass 1 (max |r|) drains in 4 cycles (read, register, fold, e = its bit length); pass 2
#: (sum of r'^2) in 5 (read, register, shift-round by e, square, accumulate); then the sequential divide
#: K * 2^46 // (ss + K * eps'), load + one quotient bit a cycle (the quotient is at most 2^46: 47 bits), and
#: the integer square root of it, load + one root bit a cycle (24 bits).
NORM_PASS1_DRAIN = 4
NORM_PASS2_DRAIN = 5
NORM_DIV_CYCLES = 1 + 2 * 23 + 1       # formats.NORM_RSQ_SHIFT = 23
NORM_SQRT_CYCLES = 1 + 24
NORM_TOKEN_FIXED = NORM_PASS1_DRAIN + NORM_PASS2_DRAIN + NORM_DIV_CYCLES + NORM_SQRT_CYCLES
#: LayerNorm (BitNet's, parameter-free) is an RMSNorm of the centred values with unit gains: before it, a pass
#: for the sum (read, register, accumulate: drains in 3) and the signed divide by K for the rounded mean (load
#: + 33 quotient bits: |sum + K/2| < 2^47 and K >= 1, the mean is an int32); the centring is in the
#: RMSNorm's passes (a subtract and a saturation beside the max and the square).
NORM_MEAN_FIXED = 3 + 1 + 33
#: Rotary embedding: each line read once (a head's low-half line, then its high-half line, in place); from the
#: last read to its write: the line registered, x x cos and x x sin (two stages), their difference or sum,
#: rounded and saturated, written.
ROPE_PIPELINE = 6
#: RMSNorm's pass 3, from the last read to its write: the line registered, r' by shift-round, r' x RSQ (two
#: stages), x G (two stages), rounded and saturated to int16, written. The next token's pass 1 overlaps it.
NORM_PIPELINE = 8


#: Attention (one query row: a token's query head against the positions of its kv head's region): q's block
#: exponent (max drained, bit length: 2); the score pass's drain (the K line registered, the 8-bit products, their
#: sum tree in two stages, x ATT_SCALE in two stages, the shift, saturate, scratch write: 8); the exponent pass's
#: (read, register, the table, the sum: 4); the reciprocal floor(2^46 / P), load + 32 quotient bits (P >= 2^15, so
#: the quotient < 2^31); the value pass's (the V line and weight registered, w x v << e in two stages, the
#: accumulate, 8 wide adds in two stages: 8 in all).
ATT_Q_FIXED = 2
ATT_SCORE_DRAIN = 8
ATT_EXP_DRAIN = 4
ATT_RCP_CYCLES = 1 + 32
ATT_VALUE_DRAIN = 8
ATT_ROW_FIXED = ATT_Q_FIXED + ATT_SCORE_DRAIN + ATT_EXP_DRAIN + ATT_RCP_CYCLES + ATT_VALUE_DRAIN
#: From the last row's last value to its XBUF write: rounded, requantized, saturated, written.
ATTN_PIPELINE = 4
#: The values part's softmax over a row's scratch (its first tile, TPOS = 0): the max pass's drain (read,
#: register, the compare: 3), the exponent pass's (ATT_EXP_DRAIN), the reciprocal (ATT_RCP_CYCLES), the weight
#: pass's (read, register, p x RCP in two stages, the rounding shift, written: 5).
ATT_MAX_DRAIN = 3
ATT_WEIGHT_DRAIN = 5
ATT_SOFTMAX_FIXED = ATT_MAX_DRAIN + ATT_EXP_DRAIN + ATT_RCP_CYCLES + ATT_WEIGHT_DRAIN
#: kvpack per token: the block exponent (2) between its max pass and its quantize pass; the last row's
#: mantissas and exponent rounded, saturated and written: 4.
KVPACK_FIXED = 2
KVPACK_PIPELINE = 4


def attn_row_groups(cfg: AcceleratorConfig, rows: Value) -> Value:
    """Groups of up to P = ``cfg.attn_rows`` (0 counts as 1) query rows the attention unit runs together: each
    WBUF line a pass reads serves every row of its group (P dot products, P weighted sums beside each other)."""
    p = max(1, cfg.attn_rows)
    return (rows + (p - 1)) // p


def kv_pass_lines(cfg: AcceleratorConfig, head_dim: Value, positions: Value) -> Value:
    """WBUF lines a pass over ``positions`` positions of a half reads: their mantissa lines (ceil(positions *
    head_dim / WB)) and exponent lines (ceil(positions / WB)), WB a WBUF line's bytes."""
    wb = cfg.wbuf_line_bits // 8
    return (positions * head_dim + (wb - 1)) // wb + (positions + (wb - 1)) // wb


def attn_cycles(cfg: AcceleratorConfig, part: Value, head_dim: Value, seen: Value, positions: Value, first: Value,
                rows: Value, ops: Ops = PY) -> Value:
    """Cycles of an attn's ``rows`` query rows (ntok x HGRP) over ``positions`` positions of its region or tile
    (m; ``seen``: N = QPOS + ntok, the scratch's row length; ``first``: TPOS = 0), issue and tail excluded: a
    part's per-row terms (through OBUF, one line a cycle) for every row, its shared terms (the passes over WBUF
    lines and the fixed drains) once per row group (:func:`attn_row_groups`):

    * whole (part 0): per row 3 HL (q read twice, its output written) + SL (the exponent pass over its scratch);
      per group 2 (KL + EL) (the key pass, the value pass) + ATT_ROW_FIXED;
    * scores (1): per row 2 HL (q twice); per group KL + EL + ATT_Q_FIXED + ATT_SCORE_DRAIN;
    * values (2): per row 4 HL (the accumulators read and written) and, in the first tile, 3 SL (the max, exponent
      and weight passes over its scratch); per group KL + EL + ATT_VALUE_DRAIN and, in the first tile,
      ATT_SOFTMAX_FIXED (the softmax's drains and its reciprocal: a group's rows divide side by side).

    With one row a group (attn_rows 0 or 1) a row costs T_row of docs/isa.md."""
    hl, sl, kv = head_dim // cfg.cols, score_lines(cfg, seen), kv_pass_lines(cfg, head_dim, positions)
    groups = attn_row_groups(cfg, rows)
    whole = rows * (3 * hl + score_lines(cfg, positions)) + groups * (2 * kv + ATT_ROW_FIXED)
    scores = rows * 2 * hl + groups * (kv + ATT_Q_FIXED + ATT_SCORE_DRAIN)
    values = (rows * (4 * hl + ops.select(first, 3 * sl, 0))
              + groups * (kv + ATT_VALUE_DRAIN + ops.select(first, ATT_SOFTMAX_FIXED, 0)))
    return ops.select(part == 0, whole, ops.select(part == 1, scores, values))


def vector_token_cycles(op: Op, cfg: AcceleratorConfig, k_features: Value) -> Value:
    """Vector-unit cycles per token of K features (NL = ceil(K / C) OBUF lines, XL XBUF lines): a residual add
    reads two lines per output line (2 NL); a SiLU reads two per output line and writes the token's XL - NL
    padding lines as zeros (NL + XL); an RMSNorm makes three passes, two over its NL lines and one writing
    XL lines, around its divide and square root (2 NL + XL + NORM_TOKEN_FIXED); a LayerNorm first reads the NL
    lines once more for the mean (NL + NORM_MEAN_FIXED more); a rotary embedding reads each line once (NL)."""
    nl, xl = olines(cfg, k_features), xlines(cfg, k_features)
    if op is Op.RESADD:
        return 2 * nl
    if op is Op.SILU:
        return nl + xl
    if op is Op.LAYERNORM:
        return nl + NORM_MEAN_FIXED + 2 * nl + xl + NORM_TOKEN_FIXED
    if op is Op.ROPE:
        return nl
    return 2 * nl + xl + NORM_TOKEN_FIXED


VECTOR_PIPELINE = {Op.RESADD: RESADD_PIPELINE, Op.SILU: SILU_PIPELINE, Op.RMSNORM: NORM_PIPELINE,
                   Op.LAYERNORM: NORM_PIPELINE, Op.ROPE: ROPE_PIPELINE}


def compute_items(op: Op, f: Mapping[str, Value]) -> Value:
    """How many items a compute instruction processes: tokens (QUANT and the vector unit's), tiles (MATMUL),
    tile x token accumulator lines (SCALEOUT)."""
    if op is Op.QUANT or op in VECTOR_OPS:
        return f["ntok"]
    if op is Op.MATMUL:
        return f["ntiles"]
    return f["ntiles"] * f["ntok"]


def item_cycles(op: Op, k_features: Value, mode: Value, cfg: AcceleratorConfig, ops: Ops = PY, *,
                w_bits: Value = 0) -> tuple[Value, Value]:
    """(cycles per item, cycles after the last item) of a compute instruction: functions of registers K
    and WBITS and the mode only, so a controller can hold them ready in registers before the
    instruction comes."""
    if op is Op.QUANT:
        return quant_token_cycles(cfg, k_features, mode, ops), 0
    if op is Op.MATMUL:
        return (matmul_tile_cycles(cfg, k_features, mode, ops, w_bits=w_bits),
                matmul_drain_cycles(cfg, k_features, mode, ops, w_bits=w_bits))
    if op in VECTOR_OPS:
        return vector_token_cycles(op, cfg, k_features), VECTOR_PIPELINE[op]
    return 1, SCALEOUT_PIPELINE


def controller_cycles(op: Op, f: Mapping[str, Value], regs: Mapping[Reg, Value], cfg: AcceleratorConfig,
                      ops: Ops = PY) -> Value:
    """Cycles a compute instruction holds the controller, its issue cycle included:
    1 + items * per-item + tail (:func:`compute_items`, :func:`item_cycles`); 1 for the others
    (load/store/wait/halt stalls come from the DMA timeline, see :class:`Timeline`)."""
    if op not in COMPUTE_OPS:
        return 1
    if op is Op.ATTN:        # ntok x HGRP rows over the region's or tile's m positions (attn_positions)
        n, m = attn_positions(f, regs, ops)
        return 1 + attn_cycles(cfg, f["part"], regs[Reg.HDIM], n, m, regs[Reg.TPOS] == 0,
                               f["ntok"] * regs[Reg.HGRP], ops) + ATTN_PIPELINE
    if op is Op.KVPACK:      # per token: its head's HL lines read twice around the block exponent
        return 1 + f["ntok"] * (2 * (regs[Reg.HDIM] // cfg.cols) + KVPACK_FIXED) + KVPACK_PIPELINE
    per_item, tail = item_cycles(op, regs[Reg.K], f["mode"], cfg, ops, w_bits=regs[Reg.WBITS])
    return 1 + compute_items(op, f) * per_item + tail


#: Instructions that synchronise with the DMA engine (wait for it to be idle before issuing).
DMA_OPS = (Op.LOAD, Op.STORE)
SYNC_OPS = (Op.LOAD, Op.STORE, Op.WAIT, Op.HALT)
COMPUTE_OPS = (Op.QUANT, Op.MATMUL, Op.SCALEOUT, *VECTOR_OPS)


# ---- Python-integer conveniences ---------------------------------------------------------------


def compute_cycles(ins: Instruction, cfg: AcceleratorConfig, k_features: int, w_bits: int = 0,
                   regs: Mapping[Reg, int] | None = None) -> int:
    """:func:`controller_cycles` of a decoded instruction with registers K = ``k_features`` and WBITS =
    ``w_bits`` (0, the reset value: sign weights); ``regs``: the other registers (all 0 if not given)."""
    r = {x: 0 for x in Reg}
    r.update(regs or {})
    r[Reg.K], r[Reg.WBITS] = k_features, w_bits
    return controller_cycles(ins.op, dict(ins.args), r, cfg)


def first_fault(ins: Instruction, word: int, regs: Mapping[Reg, int], cfg: AcceleratorConfig) -> Fault | None:
    """The fault a decoded instruction raises at issue with these register values, or None."""
    f = dict(ins.args)
    for flt in faults(ins.op, word, f, regs, cfg):
        if flt.cond:
            return flt
    return None


# ---- timing ------------------------------------------------------------------------------------


class Timeline:
    """The timing rule shared by simulator and RTL: an in-order controller and one DMA engine with a queue of
    ``queue`` transfers (config ``dma_queue``; 1 is the v2 engine, one transfer at a time).

    ``now`` is the cycle at which the next instruction issues. A compute instruction holds the controller for
    ``controller_cycles``. LOAD/STORE wait for a free queue slot (the transfer ``queue`` places back is done),
    issue in one cycle and go on; the transfer's data phase (its beats, one per cycle) starts ``latency`` cycles
    after its issue cycle or when the previous transfer's data phase ends, whichever is later, so transfers move
    their data in issue order and a queued transfer's latency overlaps the transfers ahead of it; it is done when
    its data phase ends. WAIT keep=n waits until all but the latest n transfers are done, HALT until every
    transfer is, then one cycle. With ``queue`` = 1 a transfer waits for the previous one to be done
    (``dma_free``) and is done ``latency`` + beats after its issue cycle, the v2 rule. A run's cycle count is the
    cycle after HALT. :meth:`compute`, :meth:`transfer` and :meth:`sync` are the three moves; the timing-only
    simulator calls them once per synchronising instruction and once per run of compute between.
    """

    def __init__(self, queue: int = 1, latency: int = 0) -> None:
        if queue < 1:
            raise ValueError(f"a DMA queue holds at least one transfer, not {queue}")
        self.queue, self.latency = queue, latency
        self.now = 0
        self.done: list[int] = []   # the last ``queue`` transfers' done cycles, oldest first (they only grow)
        self.stall_cycles = 0  # cycles the controller waited for the DMA engine

    @classmethod
    def of(cls, cfg: AcceleratorConfig) -> "Timeline":
        """The timeline of ``cfg``'s DMA engine (its ``dma_slots`` and ``ext_latency``)."""
        return cls(cfg.dma_slots, cfg.ext_latency)

    @property
    def dma_free(self) -> int:
        """The first cycle every transfer issued so far is done (the engine is idle)."""
        return self.done[-1] if self.done else 0

    @property
    def dma_ready(self) -> int:
        """The first cycle the next load/store can issue: a queue slot is free."""
        return self.done[0] if len(self.done) == self.queue else 0

    def _wait_until(self, cycle: int) -> None:
        if cycle > self.now:
            self.stall_cycles += cycle - self.now
            self.now = cycle

    def compute(self, cycles: int) -> int:
        """Hold the controller for ``cycles`` (one or more non-synchronising instructions); returns issue."""
        issue = self.now
        self.now += cycles
        return issue

    def transfer(self, busy: int) -> int:
        """A load/store of ``busy`` - ``latency`` beats (``dma_busy_cycles``: latency + beats): wait for a slot,
        issue; returns the issue cycle."""
        self._wait_until(self.dma_ready)
        issue = self.now
        start = max(issue + 1 + self.latency, self.dma_free)     # its data phase, after the previous one's
        self.done.append(start + busy - self.latency)
        if len(self.done) > self.queue:
            del self.done[0]
        self.now = issue + 1
        return issue

    def sync(self, keep: int = 0) -> int:
        """wait/halt: wait until at most ``keep`` transfers (the latest ones; ``wait keep``) are not done, then one
        cycle (transfers are done in issue order, so that is the one ``keep`` + 1 places back)."""
        if len(self.done) > keep:
            self._wait_until(self.done[-1 - keep])
        issue = self.now
        self.now += 1
        return issue

    def step(self, ins: Instruction, cfg: AcceleratorConfig, k_features: int, w_bits: int = 0) -> tuple[int, int]:
        """Advance past ``ins``; returns (issue cycle, cycles the instruction's unit is busy)."""
        op = ins.op
        if op in DMA_OPS:
            busy = dma_busy_cycles(dict(ins.args), cfg)
            return self.transfer(busy), busy
        if op in (Op.WAIT, Op.HALT):
            return self.sync(ins["keep"] if op is Op.WAIT else 0), 0
        cycles = compute_cycles(ins, cfg, k_features, w_bits)
        return self.compute(cycles), cycles - 1


__all__ = ["Ops", "PY", "Access", "Fault", "footprint", "faults", "field_faults", "first_fault", "ext_end",
           "depth", "lookup", "nchunks", "xlines", "plane_lines", "register_counts", "weight_planes", "times_weight_planes", "matmul_steps", "dma_busy_cycles", "dma_cycles", "dma_beats", "transfer_beats",
           "quant_token_cycles", "matmul_tile_cycles", "matmul_drain_cycles", "matmul_drain_rows",
           "ARRAY_OPERAND_REGISTER", "ARRAY_PE_PIPELINE", "ARRAY_DRAIN_PIPELINE", "controller_cycles", "compute_items", "item_cycles", "compute_cycles",
           "rq_cycles", "chunk_period", "SCALE_LINE_REGISTER", "ROUTER_DRAIN", "MIX_LATENCY", "GATHER_LATENCY", "RQ_QUOTIENT_BITS",
           "RCP_QUOTIENT_BITS", "GATES_FIXED", "SCALEOUT_PIPELINE", "DMA_OPS", "SYNC_OPS", "COMPUTE_OPS",
           "Timeline", "WORD_BITS", "resadd_overlap", "legal_ops", "legal_regs", "olines", "vector_token_cycles", "VECTOR_PIPELINE",
           "RESADD_PIPELINE", "SILU_PIPELINE", "NORM_PIPELINE", "NORM_TOKEN_FIXED", "NORM_MEAN_FIXED", "ROPE_PIPELINE", "rope_table_lines",
           "rope_unaligned", "kv_page", "kv_half_lines", "kv_region_lines", "kv_unaligned", "score_lines", "kv_block_outside", "attn_cycles",
           "attn_row_groups", "kv_pass_lines", "attn_positions", "attn_last_tile", "ATT_SOFTMAX_FIXED",
           "ATT_ROW_FIXED", "ATTN_PIPELINE", "KVPACK_FIXED", "KVPACK_PIPELINE"]
