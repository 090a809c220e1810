"""Whole-program analysis without data: vectorized decode, legality checks, DMA hazards, timing, counts.

This is the timing-only simulator (``Simulator.run(..., functional=False)``) and the action counter
both modes share. Every instruction word is decoded at once with NumPy; register values at each pc
come from a forward fill over the ``setr`` instructions; the first faulting pc and the first ``halt``
bound the run; the timing recurrence of :class:`bitmos.isa.Timeline` is evaluated with one Python step
per DMA-synchronising instruction (``load``/``store``/``wait``/``halt``) and prefix sums in between.
Per-instruction cycle costs come from :func:`bitmos.isa.compute_cycles` and :func:`bitmos.isa.dma_cycles`
evaluated once per distinct (opcode, mode, counts, K) key, so the cycle formulas have one definition.

The functional simulator (:mod:`bitmos.sim.machine`) checks and times instruction by instruction with
:class:`bitmos.isa.Timeline`; tests run both on random programs and require identical results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError
from bitmos.isa import (BUFFERS, CAUSE_BUFFER_RANGE, CAUSE_EXT_RANGE, CAUSE_ILLEGAL_FIELD,
                        CAUSE_ILLEGAL_OPCODE, CAUSE_NONE, CAUSE_PC_RANGE, REG_RANGE, RESERVED_MASK,
                        SPECS, Instruction, Op, Reg, compute_cycles, dma_cycles)

#: Execution unit of each opcode, for traces and Gantt charts.
UNIT = {Op.NOP: "ctrl", Op.HALT: "ctrl", Op.SETR: "ctrl", Op.WAIT: "ctrl", Op.LOAD: "dma",
        Op.STORE: "dma", Op.QUANT: "scale", Op.MATMUL: "array", Op.SCALEOUT: "scale"}
UNIT_CODES = ("ctrl", "dma", "scale", "array")
_UNIT_OF_OP = np.zeros(64, dtype=np.int8)
for _op, _u in UNIT.items():
    _UNIT_OF_OP[int(_op)] = UNIT_CODES.index(_u)

_FIELD_NAMES = sorted({f.name for spec in SPECS.values() for f in spec})
_RESERVED = np.zeros(64, dtype=np.uint64)
for _op in Op:
    _RESERVED[int(_op)] = RESERVED_MASK[_op]
_LEGAL = np.zeros(64, dtype=bool)
_LEGAL[[int(o) for o in Op]] = True


class DMAHazardError(BitmosUserError):
    """A program touched buffer lines of a DMA transfer still in flight (no ``wait`` in between).

    A simulator-only check (docs/isa.md, load/store): the RTL does not interlock, so such a program
    reads or writes data at a time that depends on memory latency. Disable with ``check_hazards=False``.
    """

    def __init__(self, message: str, pc: int, dma_pc: int):
        super().__init__(message)
        self.pc = pc
        self.dma_pc = dma_pc


@dataclass
class Decoded:
    """Every instruction word decoded into parallel int64 arrays (0 where a field does not apply)."""
    words: np.ndarray                   # uint64 [n]
    op: np.ndarray                      # int64 [n], the 6-bit opcode (may be illegal)
    f: dict[str, np.ndarray]            # field name -> int64 [n]
    regs: dict[Reg, np.ndarray] = field(default_factory=dict)  # register value at each pc's issue

    def __len__(self) -> int:
        return len(self.op)


def decode_all(words, cfg: AcceleratorConfig) -> Decoded:
    """Decode all words (no checks) and forward-fill the register values each instruction sees."""
    w = np.asarray(words, dtype=np.uint64).reshape(-1)
    op = (w >> np.uint64(58)).astype(np.int64)
    f = {name: np.zeros(len(w), dtype=np.int64) for name in _FIELD_NAMES}
    for o, spec in SPECS.items():
        sel = op == int(o)
        if not sel.any():
            continue
        ws = w[sel]
        for fl in spec:
            f[fl.name][sel] = ((ws >> np.uint64(fl.lo)) & np.uint64((1 << fl.width) - 1)).astype(np.int64)
    dec = Decoded(w, op, f)
    n = len(w)
    idx = np.arange(n)
    is_setr = op == int(Op.SETR)
    value = f["value"].copy()
    smul = is_setr & (f["reg"] == int(Reg.SMUL)) & (value >= (1 << 31))
    value[smul] -= 1 << 32
    for r in Reg:
        mark = np.where(is_setr & (f["reg"] == int(r)), idx, -1)
        last = np.maximum.accumulate(mark) if n else mark
        last_excl = np.concatenate(([-1], last[:-1])) if n else last
        dec.regs[r] = np.where(last_excl >= 0, value[np.maximum(last_excl, 0)], 0)
    return dec


def _geometry(cfg: AcceleratorConfig, k_feat: np.ndarray):
    nch = (k_feat + cfg.lanes - 1) // cfg.lanes
    xl = nch * (cfg.lanes // cfg.cols)
    return nch, xl


def check_all(dec: Decoded, cfg: AcceleratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cause code of each instruction (0 = legal), assuming all earlier instructions executed."""
    op, f, regs = dec.op, dec.f, dec.regs
    n = len(op)
    cause = np.zeros(n, dtype=np.int64)
    legal = _LEGAL[op]
    is_ = {o: op == int(o) for o in Op}
    R, E, k = cfg.rows, cfg.experts, cfg.act_bits
    # cause 2: reserved bits, zero counts, setr register/value, mode/ntok combinations
    c2 = (dec.words & _RESERVED[op]) != 0
    c2 |= (is_[Op.LOAD] | is_[Op.STORE]) & (f["nlines"] == 0)
    c2 |= (is_[Op.QUANT] | is_[Op.SCALEOUT]) & (f["ntok"] == 0)
    c2 |= (is_[Op.MATMUL] | is_[Op.SCALEOUT]) & (f["ntiles"] == 0)
    setr = is_[Op.SETR]
    c2 |= setr & (f["reg"] > max(Reg))
    for r in Reg:
        lo, hi = REG_RANGE[r]
        v = f["value"]
        if r is Reg.SMUL:
            v = np.where(v >= (1 << 31), v - (1 << 32), v)
        c2 |= setr & (f["reg"] == int(r)) & ((v < lo) | (v > hi))
    qs = is_[Op.QUANT] | is_[Op.SCALEOUT]
    c2 |= qs & (f["mode"] == 1) & (f["ntok"] != 1)
    c2 |= qs & (f["mode"] == 0) & (f["ntok"] > R)
    # cause 3: buffer ranges
    nch, xl = _geometry(cfg, regs[Reg.K])
    planes = np.where(f["mode"] == 0, k, cfg.planes_per_row) * nch
    dX, dW, dS, dQ, dO = (cfg.depth(b) for b in "XWSQO")
    depth_of_buf = np.array([cfg.depth(b) for b in BUFFERS])
    dma = is_[Op.LOAD] | is_[Op.STORE]
    c3 = dma & (f["line"] + f["nlines"] > depth_of_buf[f["buf"] & 3])
    qu = is_[Op.QUANT]
    bad_q = (f["x"] + f["ntok"] * xl > dX) | (f["q"] + planes > dQ) | (f["meta"] + f["ntok"] > cfg.meta_tokens)
    if E >= 2:
        bad_q |= regs[Reg.ROUTER] + xl > dS
    if E >= 1:
        bad_q |= regs[Reg.SIN] + xl > dS
    c3 |= qu & bad_q
    mm = is_[Op.MATMUL]
    o_end = np.where(f["mode"] == 0, f["o"] + f["ntiles"] * R, f["o"] + f["ntiles"])
    c3 |= mm & ((f["q"] + planes > dQ) | (f["w"] + f["ntiles"] * nch > dW) | (o_end > dO))
    so = is_[Op.SCALEOUT]
    so_end = np.where(f["mode"] == 0, f["o"] + (f["ntiles"] - 1) * R + f["ntok"], f["o"] + f["ntiles"])
    bad_s = (so_end > dO) | (f["meta"] + f["ntok"] > cfg.meta_tokens)
    if E >= 1:
        bad_s |= f["s"] + f["ntiles"] > dS
    c3 |= so & bad_s
    # cause 4: external range
    line_bytes = np.array([cfg.line_bits(b) // 8 for b in BUFFERS])
    ext_end = regs[Reg.EBASE] * 64 + f["ext"] + f["nlines"] * line_bytes[f["buf"] & 3]
    c4 = dma & (ext_end > cfg.ext_mem_bytes)
    cause[c4] = CAUSE_EXT_RANGE
    cause[c3] = CAUSE_BUFFER_RANGE
    cause[c2] = CAUSE_ILLEGAL_FIELD
    cause[~legal] = CAUSE_ILLEGAL_OPCODE
    return cause, ext_end


# ---- DMA hazards ------------------------------------------------------------------------------------

def _strided_overlap(base: int, stride: int, width: int, count: int, a: int, b: int) -> bool:
    """Do lines base + n*stride + [0, width) for n < count meet [a, b)?"""
    if count <= 0 or width <= 0 or b <= a:
        return False
    # n must satisfy base + n*stride < b and base + n*stride + width > a
    n_hi = min(count - 1, -(-(b - base) // stride) - 1)
    n_lo = max(0, (a - base - width) // stride + 1)
    return n_lo <= n_hi


def touched_lines(cfg: AcceleratorConfig, op: int, f, regs) -> list[tuple[str, int, int, int, int]]:
    """DMA-reachable lines a compute instruction touches, as (buffer, base, stride, width, count).

    ``f`` maps field names to ints, ``regs`` maps :class:`Reg` to ints (values at issue).
    """
    K = regs[Reg.K]
    nch = -(-K // cfg.lanes)
    xl = nch * (cfg.lanes // cfg.cols)
    R, E = cfg.rows, cfg.experts
    out = []
    if op == Op.QUANT:
        out.append(("X", f["x"], 1, f["ntok"] * xl, 1))
        if E >= 2:
            out.append(("S", regs[Reg.ROUTER], 1, xl, 1))
        if E >= 1:
            out.append(("S", regs[Reg.SIN], 1, xl, 1))
    elif op == Op.MATMUL:
        out.append(("W", f["w"], 1, f["ntiles"] * nch, 1))
        out.append(("O", f["o"], 1, f["ntiles"] * (R if f["mode"] == 0 else 1), 1))
    elif op == Op.SCALEOUT:
        if f["mode"] == 0:
            out.append(("O", f["o"], R, f["ntok"], f["ntiles"]))
        else:
            out.append(("O", f["o"], 1, f["ntiles"], 1))
        if E >= 1:
            out.append(("S", f["s"], 1, f["ntiles"], 1))
    return out


def hazard_message(pc: int, op: int, dma_pc: int, dma_op: int, buf: str, a: int, b: int) -> str:
    return (f"DMA hazard: {Op(op).name.lower()} at pc {pc} touches {buf}BUF lines that the "
            f"{Op(dma_op).name.lower()} at pc {dma_pc} (lines {a}..{b - 1}) may still be transferring; "
            f"put a 'wait' between them")


def find_hazard(dec: Decoded, cfg: AcceleratorConfig, stop: int) -> tuple[int, int, str] | None:
    """First compute instruction in [0, stop) that touches the lines of an in-flight transfer."""
    op = dec.op[:stop]
    n = len(op)
    if n == 0:
        return None
    idx = np.arange(n)
    is_dma = (op == int(Op.LOAD)) | (op == int(Op.STORE))
    is_sync = is_dma | (op == int(Op.WAIT)) | (op == int(Op.HALT))
    last_sync = np.maximum.accumulate(np.where(is_sync, idx, -1))
    last_dma = np.maximum.accumulate(np.where(is_dma, idx, -1))
    compute = (op == int(Op.QUANT)) | (op == int(Op.MATMUL)) | (op == int(Op.SCALEOUT))
    # in flight: the most recent sync instruction is a load/store
    cand = compute & (last_dma >= 0) & (last_dma == last_sync)
    if not cand.any():
        return None
    f = dec.f
    pcs = np.nonzero(cand)[0]
    d = last_dma[pcs]
    dbuf, da = f["buf"][d], f["line"][d]
    db = da + f["nlines"][d]
    K = dec.regs[Reg.K][pcs]
    nch, xl = _geometry(cfg, K)
    o = {name: v[pcs] for name, v in f.items()}
    cop = op[pcs]
    R, E = cfg.rows, cfg.experts
    bX, bW, bS, bO = (BUFFERS.index(b) for b in "XWSO")
    isq, ism, iss = cop == int(Op.QUANT), cop == int(Op.MATMUL), cop == int(Op.SCALEOUT)
    # line hulls of everything a compute instruction touches: (mask, buffer, lo, hi)
    hulls = [
        (isq, bX, o["x"], o["x"] + o["ntok"] * xl),
        (ism, bW, o["w"], o["w"] + o["ntiles"] * nch),
        (ism, bO, o["o"], o["o"] + o["ntiles"] * np.where(o["mode"] == 0, R, 1)),
        (iss, bO, o["o"], o["o"] + np.where(o["mode"] == 0, (o["ntiles"] - 1) * R + o["ntok"], o["ntiles"])),
    ]
    if E >= 2:
        r0 = dec.regs[Reg.ROUTER][pcs]
        hulls.append((isq, bS, r0, r0 + xl))
    if E >= 1:
        s0 = dec.regs[Reg.SIN][pcs]
        hulls.append((isq, bS, s0, s0 + xl))
        hulls.append((iss, bS, o["s"], o["s"] + o["ntiles"]))
    hit = np.zeros(len(pcs), dtype=bool)
    for m, b, lo, hi in hulls:
        hit |= m & (dbuf == b) & (lo < db) & (hi > da)
    for i in np.nonzero(hit)[0].tolist():   # exact check (scaleout's token rows are strided)
        pc, dd = int(pcs[i]), int(d[i])
        buf = BUFFERS[int(dbuf[i])]
        a, b = int(da[i]), int(db[i])
        fields = {k: int(v[pc]) for k, v in f.items()}
        regs = {r: int(v[pc]) for r, v in dec.regs.items()}
        for tb, base, stride, width, count in touched_lines(cfg, int(op[pc]), fields, regs):
            if tb == buf and _strided_overlap(base, stride, width, count, a, b):
                return pc, dd, hazard_message(pc, int(op[pc]), dd, int(op[dd]), buf, a, b)
    return None


# ---- timing -----------------------------------------------------------------------------------------

@dataclass
class Timing:
    cycles: int
    stall_cycles: int
    issue: np.ndarray       # int64 [n], issue cycle of each executed instruction (Timeline's 'issue')
    busy: np.ndarray        # int64 [n], cycles the instruction's unit stays busy after issue
    end_now: int            # the controller's 'now' after the last timed instruction


def cycle_costs(dec: Decoded, cfg: AcceleratorConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Controller cycles (compute_cycles) and DMA busy cycles (dma_cycles) of the first n instructions."""
    op = dec.op[:n]
    f = dec.f
    ctl = np.ones(n, dtype=np.int64)
    busy = np.zeros(n, dtype=np.int64)
    comp = (op == int(Op.QUANT)) | (op == int(Op.MATMUL)) | (op == int(Op.SCALEOUT))
    if comp.any():
        K = dec.regs[Reg.K][:n]
        key = (op << 40) | (f["mode"][:n] << 39) | (f["ntok"][:n] << 30) | (f["ntiles"][:n] << 20) | K
        uniq, inv = np.unique(key[comp], return_inverse=True)
        vals = np.empty(len(uniq), dtype=np.int64)
        for i, kk in enumerate(uniq.tolist()):
            o = Op(kk >> 40)
            args = {"mode": (kk >> 39) & 1, "ntok": (kk >> 30) & 0x1FF, "ntiles": (kk >> 20) & 0x3FF}
            ins = Instruction(o, tuple((fl.name, args.get(fl.name, 0)) for fl in SPECS[o]))
            vals[i] = compute_cycles(ins, cfg, kk & 0xFFFFF)
        ctl[comp] = vals[inv.reshape(-1)]
    dma = (op == int(Op.LOAD)) | (op == int(Op.STORE))
    if dma.any():
        key = (f["buf"][:n] << 20) | f["nlines"][:n]
        uniq, inv = np.unique(key[dma], return_inverse=True)
        vals = np.array([dma_cycles(kk & 0xFFFFF, cfg.line_bits(BUFFERS[kk >> 20]), cfg)
                         for kk in uniq.tolist()], dtype=np.int64)
        busy[dma] = vals[inv.reshape(-1)]
    busy[comp] = ctl[comp] - 1
    return ctl, busy


def timeline(dec: Decoded, cfg: AcceleratorConfig, n: int) -> Timing:
    """The Timeline recurrence over the first n instructions (all of which issue)."""
    op = dec.op[:n]
    ctl, busy = cycle_costs(dec, cfg, n)
    is_dma = (op == int(Op.LOAD)) | (op == int(Op.STORE))
    is_sync = is_dma | (op == int(Op.WAIT)) | (op == int(Op.HALT))
    add = np.where(is_sync, 0, ctl)
    S = np.concatenate(([0], np.cumsum(add)))
    sync_idx = np.nonzero(is_sync)[0]
    seg_start = np.concatenate(([0], sync_idx + 1))
    seg_base = np.empty(len(sync_idx) + 1, dtype=np.int64)
    issue = np.empty(n, dtype=np.int64)
    now = 0
    dma_free = 0
    stall = 0
    prev = 0
    S_l = S.tolist()
    dmab = busy[sync_idx].tolist()
    isd = is_dma[sync_idx].tolist()
    sync_issue = []
    seg_base[0] = 0
    for j, p in enumerate(sync_idx.tolist()):
        now += S_l[p] - S_l[prev]
        if dma_free > now:
            stall += dma_free - now
            now = dma_free
        sync_issue.append(now)
        if isd[j]:
            dma_free = now + 1 + dmab[j]
        now += 1
        prev = p + 1
        seg_base[j + 1] = now
    now += S_l[n] - S_l[prev]
    # issue cycles of the non-sync instructions: segment base + prefix sum within the segment
    seg_id = np.cumsum(is_sync) - is_sync  # number of sync instructions strictly before i
    issue[:] = seg_base[seg_id] + S[:n] - S[seg_start[seg_id]]
    if len(sync_idx):
        issue[sync_idx] = sync_issue
    return Timing(cycles=now, stall_cycles=stall, issue=issue, busy=busy, end_now=now)


# ---- the whole timing-only run ------------------------------------------------------------------------

@dataclass
class Analysis:
    """Outcome of a run derived without data (shared by both simulator modes)."""
    decoded: Decoded
    n_issued: int          # instructions that issued without fault (including halt)
    done: bool
    cause: int
    error_pc: int | None
    error_message: str
    cycles: int
    timing: Timing
    nop_tail: int          # implicit nops past the program's end that issued (run-past-imem case)
    ext_end: np.ndarray    # end byte address of each load/store


def fault_message(dec: Decoded, cfg: AcceleratorConfig, pc: int, cause: int) -> str:
    """A one-line description of why instruction ``pc`` faulted (reuses the ISA decoder's wording)."""
    from bitmos.errors import DecodeError
    from bitmos.isa import CAUSE_NAMES, decode
    w = int(dec.words[pc])
    head = f"pc {pc}: {CAUSE_NAMES[cause]}"
    if cause in (CAUSE_ILLEGAL_OPCODE, CAUSE_ILLEGAL_FIELD):
        try:
            ins = decode(w, pc=pc)
        except DecodeError as exc:
            return f"{head}: {exc}"
        return f"{head}: {ins}: mode {'plane' if ins.get('mode') else 'token'} with ntok={ins['ntok']} " \
               f"(token mode allows 1..{cfg.rows}, plane mode exactly 1)"
    from bitmos.isa import format_instruction
    ins = decode(w, pc=pc)
    regs = {r.name: int(v[pc]) for r, v in dec.regs.items()}
    return f"{head}: {format_instruction(ins)} with registers {regs}"


def analyze(words, cfg: AcceleratorConfig, *, check_hazards: bool = True) -> Analysis:
    """Decode, check and time a program without touching data (the timing-only simulator)."""
    dec = decode_all(words, cfg)
    n = len(dec)
    cause, ext_end = check_all(dec, cfg)
    fault = np.nonzero(cause)[0]
    halts = np.nonzero(dec.op == int(Op.HALT))[0]
    first_fault = int(fault[0]) if len(fault) else None
    first_halt = int(halts[0]) if len(halts) else None
    if first_halt is not None and (first_fault is None or first_halt < first_fault):
        n_issued = first_halt + 1
        stop_cause, err_pc = CAUSE_NONE, None
    elif first_fault is not None:
        n_issued = first_fault
        stop_cause, err_pc = int(cause[first_fault]), first_fault
    else:
        n_issued = n
        stop_cause, err_pc = CAUSE_PC_RANGE, cfg.imem_words
    if check_hazards:
        hz = find_hazard(dec, cfg, n_issued)
        if hz is not None:
            raise DMAHazardError(hz[2], hz[0], hz[1])
    tim = timeline(dec, cfg, n_issued)
    nop_tail = 0
    if stop_cause == CAUSE_NONE:
        cycles, msg = tim.cycles, ""
    elif stop_cause == CAUSE_PC_RANGE:
        nop_tail = cfg.imem_words - n
        cycles = tim.end_now + nop_tail + 1
        msg = f"pc {cfg.imem_words}: program counter ran past instruction memory " \
              f"({cfg.imem_words} words) without halt"
    else:
        cycles = tim.end_now + 1
        msg = fault_message(dec, cfg, err_pc, stop_cause)
    return Analysis(dec, n_issued, stop_cause == CAUSE_NONE, stop_cause, err_pc, msg, cycles, tim,
                    nop_tail, ext_end)
