"""Whole-program analysis without data: vectorized decode, legality, DMA hazards, timing, counts.

This is the timing-only simulator (``Simulator.run(..., functional=False)``) and the first half of the
functional one, which executes the data effects of the prefix this analysis lets issue (data never
changes legality, hazards or timing). Every instruction word is decoded at once with NumPy; register
values at each pc come from a forward fill over the ``setr`` instructions; the first faulting pc and
the first ``halt`` bound the run. What each instruction touches, when it faults and how long it takes
are the contract's definitions in :mod:`bitmos.semantics`, evaluated here on arrays (``NP``); the
timing recurrence is :class:`bitmos.semantics.Timeline` itself, moved once per DMA-synchronising
instruction (``load``/``store``/``wait``/``halt``) and once per run of compute instructions between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, DecodeError
from bitmos.isa import (BUFFERS, CAUSE_BUFFER_RANGE, CAUSE_ILLEGAL_FIELD, CAUSE_ILLEGAL_OPCODE, CAUSE_NAMES,
                        CAUSE_NONE, CAUSE_PC_RANGE, OPCODE_LO, SPECS, VECTOR_OPS, VECTOR_REGS, Op, Reg,
                        decode)
from bitmos.semantics import (COMPUTE_OPS, DMA_OPS, SYNC_OPS, Ops, Timeline, controller_cycles, kv_block_outside,
                              dma_busy_cycles, ext_end, faults, first_fault, footprint, legal_ops,
                              resadd_overlap)
from bitmos.semantics import depth as sem_depth

#: Execution unit of each opcode, for traces and Gantt charts.
UNIT = {Op.NOP: "ctrl", Op.HALT: "ctrl", Op.SETR: "ctrl", Op.WAIT: "ctrl", Op.LOAD: "dma",
        Op.STORE: "dma", Op.QUANT: "scale", Op.MATMUL: "array", Op.SCALEOUT: "scale",
        **{op: "vector" for op in VECTOR_OPS}}
UNIT_CODES = ("ctrl", "dma", "scale", "array", "vector")
_UNIT_OF_OP = np.zeros(64, dtype=np.int8)
for _op, _u in UNIT.items():
    _UNIT_OF_OP[int(_op)] = UNIT_CODES.index(_u)

_FIELD_NAMES = sorted({f.name for spec in SPECS.values() for f in spec})


def _legal_opcodes(cfg: AcceleratorConfig) -> np.ndarray:
    """[64] bool: which 6-bit opcodes ``cfg`` executes (:func:`bitmos.semantics.legal_ops`)."""
    legal = np.zeros(64, dtype=bool)
    legal[[int(o) for o in legal_ops(cfg)]] = True
    return legal


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


#: The contract's definitions (bitmos.semantics) evaluated on NumPy arrays, one entry per instruction.
NP = Ops(select=np.where)


def _subset(dec: Decoded, sel: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[Reg, np.ndarray]]:
    return dec.words[sel], {k: v[sel] for k, v in dec.f.items()}, {r: v[sel] for r, v in dec.regs.items()}


def check_all(dec: Decoded, cfg: AcceleratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cause code of each instruction (0 = legal), assuming all earlier instructions executed, and the
    end byte address of each load/store. The conditions are :func:`bitmos.semantics.faults`."""
    op = dec.op
    cause = np.zeros(len(op), dtype=np.int64)
    for o in legal_ops(cfg):
        sel = np.nonzero(op == int(o))[0]
        if not len(sel):
            continue
        words, f, regs = _subset(dec, sel)
        got = np.zeros(len(sel), dtype=np.int64)
        for flt in faults(o, words, f, regs, cfg, NP):
            got[(got == 0) & np.broadcast_to(flt.cond, got.shape)] = flt.cause
        cause[sel] = got
    cause[~_legal_opcodes(cfg)[op]] = CAUSE_ILLEGAL_OPCODE
    return cause, ext_end(dec.f, dec.regs, cfg, NP)


# ---- DMA hazards ------------------------------------------------------------------------------------

def _strided_overlap(base: int, stride: int, width: int, count: int, a: int, b: int) -> bool:
    """Do lines base + n*stride + [0, width) for n < count meet [a, b)?"""
    if count <= 0 or width <= 0 or b <= a:
        return False
    # n must satisfy base + n*stride < b and base + n*stride + width > a
    n_hi = min(count - 1, -(-(b - base) // stride) - 1)
    n_lo = max(0, (a - base - width) // stride + 1)
    return n_lo <= n_hi


def hazard_message(pc: int, op: int, dma_pc: int, dma_op: int, buf: str, a: int, b: int) -> str:
    return (f"DMA hazard: {Op(op).name.lower()} at pc {pc} touches {buf}BUF lines that the "
            f"{Op(dma_op).name.lower()} at pc {dma_pc} (lines {a}..{b - 1}) may still be transferring; "
            f"put a 'wait' between them")


def _touches(cfg: AcceleratorConfig, op: Op, f, regs, buf: str, a: int, b: int) -> bool:
    """Does instruction ``op`` (Python ints) touch lines [a, b) of DMA buffer ``buf``? (exact, strided)"""
    return any(acc.buffer == buf and acc.when and _strided_overlap(acc.base, acc.stride, acc.width,
                                                                     acc.count, a, b)
               for acc in footprint(op, f, regs, cfg))


def find_hazard(dec: Decoded, cfg: AcceleratorConfig, stop: int) -> tuple[int, int, str] | None:
    """First compute instruction in [0, stop) that touches the lines of a transfer that may be in flight (its
    footprint, :func:`bitmos.semantics.footprint`, meets them), under the rule's strictest reading (docs/isa.md,
    load/store): the last ``dma_slots`` transfers that no wait/halt has retired (``wait keep=n`` retires all but
    the last n issued before it). -> (pc, the transfer's pc, message). Transfers never conflict with each other:
    they move their data in issue order."""
    op = dec.op[:stop]
    n = len(op)
    if n == 0:
        return None
    is_dma = np.isin(op, [int(o) for o in DMA_OPS])
    dma_pos = np.nonzero(is_dma)[0]
    if not len(dma_pos):
        return None
    f = {k: v[:n] for k, v in dec.f.items()}
    drain = np.isin(op, [int(Op.WAIT), int(Op.HALT)])
    dma_before = np.cumsum(is_dma) - is_dma            # transfers issued before each pc
    # transfers 0, 1, ... in issue order: a wait keep=n before pc left only the last n issued before it in flight
    retired = np.maximum.accumulate(np.where(drain, dma_before - f["keep"], 0))
    is_compute = np.isin(op, [int(o) for o in COMPUTE_OPS])
    found: list[tuple[int, int]] = []                  # (pc, transfer pc) of the first hit at each depth
    for back in range(1, cfg.dma_slots + 1):
        j = dma_before - back
        d = dma_pos[np.maximum(j, 0)]
        live = (j >= 0) & (j >= retired)               # no wait/halt since has retired that transfer
        if not live.any():
            break                                      # deeper ones are older still
        dbuf, da = f["buf"][d], f["line"][d]
        db = da + f["nlines"][d]
        hit = np.zeros(n, dtype=bool)
        for o in COMPUTE_OPS:
            pcs = np.nonzero(live & is_compute & (op == int(o)))[0]
            if not len(pcs):
                continue
            _, fs, regs = _subset(dec, pcs)
            h = np.zeros(len(pcs), dtype=bool)
            for acc in footprint(o, fs, regs, cfg, NP):
                if acc.buffer in BUFFERS:  # line hull first; the strided case is checked exactly below
                    h |= (acc.when & (dbuf[pcs] == BUFFERS.index(acc.buffer)) & (acc.base < db[pcs])
                          & (acc.end > da[pcs]))
            hit[pcs] |= h
        for pc in np.nonzero(hit)[0].tolist():
            dd = int(d[pc])
            buf = BUFFERS[int(f["buf"][dd])]
            a = int(f["line"][dd])
            fields = {k: int(v[pc]) for k, v in f.items()}
            regs = {r: int(v[pc]) for r, v in dec.regs.items()}
            if not _touches(cfg, Op(int(op[pc])), fields, regs, buf, a, a + int(f["nlines"][dd])):
                continue
            found.append((pc, dd))
            break
    if not found:
        return None
    pc, dd = min(found, key=lambda h: (h[0], -h[1]))   # the first pc; the latest transfer it meets
    a = int(f["line"][dd])
    return pc, dd, hazard_message(pc, int(op[pc]), dd, int(op[dd]), BUFFERS[int(f["buf"][dd])], a,
                                  a + int(f["nlines"][dd]))


# ---- timing -----------------------------------------------------------------------------------------

@dataclass
class Timing:
    cycles: int
    stall_cycles: int
    issue: np.ndarray       # int64 [n], issue cycle of each executed instruction (Timeline's 'issue')
    busy: np.ndarray        # int64 [n], cycles the instruction's unit stays busy after issue
    end_now: int            # the controller's 'now' after the last timed instruction


def cycle_costs(dec: Decoded, cfg: AcceleratorConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Controller cycles and unit busy cycles of the first n instructions
    (:func:`bitmos.semantics.controller_cycles`, :func:`bitmos.semantics.dma_busy_cycles`)."""
    op = dec.op[:n]
    ctl = np.ones(n, dtype=np.int64)
    busy = np.zeros(n, dtype=np.int64)
    head = Decoded(dec.words[:n], op, {k: v[:n] for k, v in dec.f.items()},
                   {r: v[:n] for r, v in dec.regs.items()})
    for o in COMPUTE_OPS:
        sel = np.nonzero(op == int(o))[0]
        if len(sel):
            _, f, regs = _subset(head, sel)
            ctl[sel] = controller_cycles(o, f, regs, cfg, NP)
            busy[sel] = ctl[sel] - 1
    sel = np.nonzero(np.isin(op, [int(o) for o in DMA_OPS]))[0]
    if len(sel):
        _, f, _ = _subset(head, sel)
        busy[sel] = dma_busy_cycles(f, cfg, NP)
    return ctl, busy


def timeline(dec: Decoded, cfg: AcceleratorConfig, n: int) -> Timing:
    """The :class:`bitmos.semantics.Timeline` over the first n instructions (all of which issue): one
    ``compute`` move per run of non-synchronising instructions, one ``transfer``/``sync`` per
    synchronising one; issue cycles inside a run are prefix sums."""
    op = dec.op[:n]
    ctl, busy = cycle_costs(dec, cfg, n)
    is_dma = np.isin(op, [int(o) for o in DMA_OPS])
    is_sync = np.isin(op, [int(o) for o in SYNC_OPS])
    add = np.where(is_sync, 0, ctl)
    S = np.concatenate(([0], np.cumsum(add)))
    sync_idx = np.nonzero(is_sync)[0]
    seg_start = np.concatenate(([0], sync_idx + 1))
    seg_base = np.empty(len(sync_idx) + 1, dtype=np.int64)
    seg_base[0] = 0
    tl = Timeline.of(cfg)
    S_l = S.tolist()
    sync_busy = busy[sync_idx].tolist()
    sync_dma = is_dma[sync_idx].tolist()
    sync_keep = dec.f["keep"][sync_idx].tolist()     # wait keep (0 on halt)
    sync_issue = []
    prev = 0
    for j, p in enumerate(sync_idx.tolist()):
        tl.compute(S_l[p] - S_l[prev])
        sync_issue.append(tl.transfer(sync_busy[j]) if sync_dma[j] else tl.sync(sync_keep[j]))
        prev = p + 1
        seg_base[j + 1] = tl.now
    tl.compute(S_l[n] - S_l[prev])
    # issue cycles of the non-sync instructions: segment base + prefix sum within the segment
    seg_id = np.cumsum(is_sync) - is_sync  # number of sync instructions strictly before i
    issue = seg_base[seg_id] + S[:n] - S[seg_start[seg_id]]
    if len(sync_idx):
        issue[sync_idx] = sync_issue
    return Timing(cycles=tl.now, stall_cycles=tl.stall_cycles, issue=issue, busy=busy, end_now=tl.now)


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
    """A one-line description of why instruction ``pc`` faulted: the first of its
    :func:`bitmos.semantics.faults` that holds, with the values involved."""
    w = int(dec.words[pc])
    head = f"pc {pc}: {CAUSE_NAMES[cause]}"
    if cause == CAUSE_ILLEGAL_OPCODE:
        return f"{head}: opcode {w >> OPCODE_LO:#04x} in word {w:#018x}"
    try:
        ins = decode(w, pc=pc)
    except DecodeError as exc:   # reserved bits, a field or a register value out of its range
        return f"{head}: {exc}"
    regs = {r: int(v[pc]) for r, v in dec.regs.items()}
    flt = first_fault(ins, w, regs, cfg)
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.SETR and ins["reg"] == int(Reg.BIAS):  # decodable: E < 2
        return (f"{head}: {ins}: BIAS = 1 needs a router (its bias is router row 0's sum), and this config has "
                f"experts = {cfg.experts}")
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.SETR and ins["reg"] in VECTOR_REGS and not cfg.vector_unit:
        return (f"{head}: {ins}: register {Reg(ins['reg']).name} belongs to the vector unit, and this config has "
                "vector_unit = 0")
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.SETR and ins["reg"] == int(Reg.HDIM):
        return (f"{head}: {ins}: HDIM must be even with half of it a multiple of cols = {cfg.cols} (a rotated pair's "
                "values share a lane)")
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.SETR and ins["reg"] in (int(Reg.KVMAX), int(Reg.TPOS)):
        return (f"{head}: {ins}: {Reg(ins['reg']).name} must be a multiple of a WBUF line's "
                f"{cfg.wbuf_line_bits // 8} bytes (every area of a KV-cache region starts on a line)")
    if cause == CAUSE_ILLEGAL_FIELD and ins.op in (Op.KVPACK, Op.ATTN) and kv_block_outside(ins.op, dict(ins.args),
                                                                                            regs):
        part = ins["part"] if ins.op is Op.ATTN else None
        where = {None: "TPOS <= QPOS and QPOS + ntok <= TPOS + KVMAX (the block inside the region)",
                 0: "TPOS = 0 and QPOS + ntok <= KVMAX (the whole attention's region holds every position)"}.get(
                     part, "TPOS < QPOS + ntok (a tile some row sees)")
        return (f"{head}: {ins}: needs HDIM > 0" + (" and HGRP > 0" if ins.op is Op.ATTN else "")
                + f" and {where} (HDIM = {regs[Reg.HDIM]}, HGRP = {regs[Reg.HGRP]}, QPOS = {regs[Reg.QPOS]}, "
                f"ntok = {ins['ntok']}, TPOS = {regs[Reg.TPOS]}, KVMAX = {regs[Reg.KVMAX]})")
    whole_heads = regs[Reg.HDIM] and regs[Reg.K] % regs[Reg.HDIM] == 0
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.ROPE and not whole_heads:
        return f"{head}: {ins}: K = {regs[Reg.K]} is not a whole number of heads of HDIM = {regs[Reg.HDIM]}"
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.RESADD and resadd_overlap(dict(ins.args), regs, cfg):
        return (f"{head}: {ins}: the addend lines from o = {ins['o']} overlap the residual lines from r = "
                f"{ins['r']} (K={regs[Reg.K]}); they must be the same lines or apart")
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.WAIT:
        return (f"{head}: {ins}: keeps {ins['keep']} transfer(s) in flight, and this config's DMA engine keeps "
                f"{cfg.dma_slots} (dma_queue = {cfg.dma_queue}): keep must be below that")
    if cause == CAUSE_ILLEGAL_FIELD and ins.op is Op.SETR:   # decodable, so WBITS against this config
        return (f"{head}: {ins}: WBITS = {ins['value']} is no weight format of this config (0 = sign weights"
                + (f", 2..{cfg.weight_bits} = integer weights)" if cfg.weight_bits >= 2 else "; weight_bits = 1)"))
    if cause == CAUSE_ILLEGAL_FIELD:
        return (f"{head}: {ins}: mode {'plane' if ins['mode'] else 'token'} with ntok={ins['ntok']} "
                f"(token mode allows 1..{cfg.rows}, plane mode exactly 1)")
    if cause == CAUSE_BUFFER_RANGE and flt is not None and flt.access is not None:
        a = flt.access
        return (f"{head}: {ins}: {a.what} up to {a.end - 1}, depth {sem_depth(cfg, a.buffer)} "
                f"(K={regs[Reg.K]})")
    end = ext_end(dict(ins.args), regs, cfg)
    return (f"{head}: {ins}: bytes up to {end} with EBASE={regs[Reg.EBASE]}, memory has "
            f"{cfg.ext_mem_bytes}")


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
