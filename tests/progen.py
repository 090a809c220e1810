"""Random LEGAL bitmos programs and memory images for any AcceleratorConfig (a test helper).

Shared by the simulator tests (tests/sim) and the RTL differential tests (tests/rtl): it imports only
the ``bitmos`` contract. ``random_program(cfg, seed)`` returns ``(words, memory)``: a program that
sets registers, moves data with load/store, runs quant/matmul/scaleout (and, on a config with the vector unit,
resadd/silu/rmsnorm) in both modes and halts,
never faults and never touches the lines of an in-flight DMA transfer (it inserts a ``wait`` when an
instruction would). ``faults=True`` may additionally plant one faulting instruction or drop the halt.
"""

from __future__ import annotations

import random

from bitmos.config import AcceleratorConfig
from bitmos.isa import BUFFERS, REG_RANGE, Instruction, Op, Reg, encode, setr


def _k_max(cfg: AcceleratorConfig) -> int:
    """Largest K for which one token fits every buffer in both modes."""
    best = 0
    for K in range(1, 65536, max(1, cfg.lanes // 2)):
        nch, xl = cfg.nchunks(K), cfg.xlines(K)
        if (xl <= cfg.depth("X") and xl <= cfg.depth("S") // 2 and nch * cfg.act_bits <= cfg.depth("Q")
                and nch * cfg.weight_bits <= cfg.depth("W")):
            best = K
        else:
            break
    return max(best, 1)


def random_program(cfg: AcceleratorConfig, seed: int = 0, *, length: int = 40, mem_bytes: int = 1 << 15,
                   faults: bool = False, k_max: int | None = None) -> tuple[list[int], bytearray]:
    rng = random.Random(seed)
    mem = bytearray(rng.getrandbits(8) for _ in range(mem_bytes))
    R, E = cfg.rows, cfg.experts
    dep = {b: cfg.depth(b) for b in "XWSQO"}
    lb = {b: cfg.line_bits(b) // 8 for b in BUFFERS}
    kmax = min(k_max or 4 * cfg.lanes, _k_max(cfg))
    prog: list[Instruction] = []
    regs = {r: 0 for r in Reg}
    inflight: list[tuple[str, int, int]] = []     # the last dma_slots transfers since the last wait

    def retire(newer: int) -> None:
        """A wait before an instruction that meets a transfer with ``newer`` transfers issued after it: keep those
        in flight (wait keep) or, at random, none."""
        nonlocal inflight
        keep = rng.choice([0, newer]) if newer else 0
        prog.append(Instruction.make(Op.WAIT, keep=keep))
        inflight = inflight[len(inflight) - keep:] if keep else []

    def emit(ins: Instruction) -> None:
        nonlocal inflight
        if ins.op in (Op.LOAD, Op.STORE):
            buf, a, b = BUFFERS[ins["buf"]], ins["line"], ins["line"] + ins["nlines"]
            inflight = (inflight + [(buf, a, b)])[-cfg.dma_slots:]
        elif ins.op is Op.HALT:
            inflight = []
        elif ins.op is Op.WAIT:
            inflight = inflight[max(0, len(inflight) - ins["keep"]):] if ins["keep"] else []
        else:
            hits = [i for i, t in enumerate(inflight) if _touches(cfg, ins, regs, t)]
            if hits:
                retire(len(inflight) - 1 - hits[-1])
        if ins.op is Op.SETR:
            r = Reg(ins["reg"])
            v = ins["value"]
            regs[r] = v - (1 << 32) if r is Reg.SMUL and v >> 31 else v
        prog.append(ins)

    def set_k(K: int) -> None:
        xl = cfg.xlines(K)
        emit(setr(Reg.K, K))
        emit(setr(Reg.ROUTER, rng.randrange(0, dep["S"] - xl + 1)))
        emit(setr(Reg.SIN, rng.randrange(0, dep["S"] - xl + 1)))

    emit(setr(Reg.EBASE, rng.choice([0, 0, 1, 3])))
    emit(setr(Reg.RSHIFT, rng.choice([0, 4, 8, 12, 16, 20, rng.randrange(64)])))
    emit(setr(Reg.OSHIFT, rng.choice([0, 8, 16, 24, 32, 40, rng.randrange(64)])))
    emit(setr(Reg.SMUL, rng.randrange(-32768, 32768)))
    set_k(rng.choice([1, kmax, rng.randrange(1, kmax + 1), rng.randrange(1, kmax + 1)]))
    wformats = [0, *range(2, cfg.weight_bits + 1)]     # WBITS: sign, or integer weights of 2..weight_bits
    if len(wformats) > 1:
        emit(setr(Reg.WBITS, rng.choice(wformats)))
    router = cfg.experts >= 2                        # BIAS = 1 (router row 0 as a per-token bias) needs a router
    if router:
        emit(setr(Reg.BIAS, rng.randrange(2)))
    vec = cfg.vector_unit == 1
    if vec:
        emit(setr(Reg.XFRAC, rng.randrange(16)))
        emit(setr(Reg.GEXP, rng.randrange(32)))
        emit(setr(Reg.EPS, rng.choice([0, 1, rng.randrange(1 << 32)])))
    base = regs[Reg.EBASE] * 64
    for _ in range(length):
        K = regs[Reg.K]
        nch, xl = cfg.nchunks(K), cfg.xlines(K)
        kind = rng.choices(["load", "store", "wait", "nop", "setk", "setw", "setb", "quant", "matmul", "scaleout",
                            "setv", "resadd", "silu", "rmsnorm", "layernorm", "rope", "kvpack", "attn"],
                           [6, 2, 1, 1, 1, 1 if len(wformats) > 1 else 0, 1 if router else 0, 4, 4, 3,
                            *([1, 2, 2, 2, 2, 2, 2, 2] if vec else [0] * 8)])[0]
        if kind == "rope":   # whole heads: HDIM = 2*C*m and K a multiple of it
            hd = 2 * cfg.cols * rng.randrange(1, 4)
            heads = rng.randrange(1, max(1, kmax // hd) + 1)
            if heads * hd > kmax:
                kind = "nop"
            else:
                emit(setr(Reg.HDIM, hd))
                if K != heads * hd:
                    set_k(heads * hd)
                K = regs[Reg.K]
                nch, xl = cfg.nchunks(K), cfg.xlines(K)
                nl = K // cfg.cols
                mode = rng.randrange(2)
                ntok = 1 if mode else rng.randrange(1, R + 1)
                span = nl if mode else (nl - 1) * R + ntok
                tab = ntok * hd // cfg.cols
                if span > dep["O"] or tab > dep["S"]:
                    kind = "nop"
                else:
                    emit(Instruction.make(Op.ROPE, mode=mode, q=rng.randrange(0, dep["O"] - span + 1),
                                          s=rng.randrange(0, dep["S"] - tab + 1), ntok=ntok))
                    continue
        if kind in ("kvpack", "attn"):   # a kv head's region or tile somewhere in WBUF (random bytes unless packed)
            hd = 2 * cfg.cols * rng.randrange(1, 4)
            wb = cfg.wbuf_line_bits // 8
            part = rng.randrange(3) if kind == "attn" else 0
            mode = rng.randrange(2)
            group = rng.randrange(1, 4) if kind == "attn" else 1
            hl = hd // cfg.cols
            if part == 0:     # the whole region: positions 0 .. kv_max - 1 (kvpack: any region of pages)
                kv_max = wb * rng.randrange(1, 3)
                tpos = wb * rng.randrange(0, 3) if kind == "kvpack" else 0
                ntok = 1 if mode else rng.randrange(1, min(R, kv_max) + 1)
                qpos = tpos + rng.choice([0, kv_max - ntok, rng.randrange(0, kv_max - ntok + 1)])
                region = 2 * kv_max * (hd + 1) // wb
            else:             # a tile of one or two pages somewhere in the block's positions
                ntok = 1 if mode else rng.randrange(1, R + 1)
                qpos = rng.choice([0, rng.randrange(0, 3 * wb)])
                tpos = wb * rng.randrange(0, -(-(qpos + ntok) // wb))
                kv_max = wb * rng.randrange(1, 3)
                region = kv_max * (hd + 1) // wb
            span = group * hl if mode else (group * hl - 1) * R + ntok
            rows, sl = ntok * group, -(-(qpos + ntok) // cfg.cols)
            scr = rows * sl
            acc = rows * 2 * hl if part == 2 else 0
            x_span = (ntok - 1) * xl + group * hl
            if region > dep["W"] or span + scr + acc > dep["O"] or x_span > dep["X"]:
                kind = "nop"
            else:
                emit(setr(Reg.HDIM, hd))
                emit(setr(Reg.KVMAX, kv_max))
                emit(setr(Reg.TPOS, tpos))
                emit(setr(Reg.KVW, rng.randrange(0, dep["W"] - region + 1)))
                emit(setr(Reg.QPOS, qpos))
                if kind == "kvpack":
                    emit(Instruction.make(Op.KVPACK, mode=mode, o=rng.randrange(0, dep["O"] - span + 1),
                                          kind=rng.randrange(2), ntok=ntok))
                else:
                    emit(setr(Reg.HGRP, group))
                    q = rng.randrange(0, dep["O"] - span - scr - acc + 1)
                    s0 = rng.randrange(q + span, dep["O"] - scr - acc + 1)
                    emit(setr(Reg.SCR, s0))
                    if part == 2:
                        emit(setr(Reg.ACC, rng.randrange(s0 + scr, dep["O"] - acc + 1)))
                    emit(Instruction.make(Op.ATTN, mode=mode, q=q, x=rng.randrange(0, dep["X"] - x_span + 1),
                                          ntok=ntok, part=part))
                continue
        if kind in ("resadd", "silu", "rmsnorm", "layernorm"):
            nl = -(-K // cfg.cols)
            mode = rng.randrange(2)
            ntok = 1 if mode else rng.randrange(1, R + 1)
            span = nl if mode else (nl - 1) * R + ntok
            if span > dep["O"] // 2 or ntok * xl > dep["X"] or nl > dep["S"]:
                kind = "nop"    # this K does not fit two operands; the next setk may
        if kind in ("resadd", "silu", "rmsnorm", "layernorm"):
            o1 = rng.randrange(0, dep["O"] - span + 1)
            # a second operand apart from the first (or, for resadd, sometimes the same lines: r + r)
            free = [o for o in range(0, dep["O"] - span + 1) if o + span <= o1 or o >= o1 + span]
            o2 = o1 if (kind == "resadd" and rng.randrange(4) == 0) or not free else rng.choice(free)
            if kind == "resadd":
                emit(Instruction.make(Op.RESADD, mode=mode, r=o1, o=o2, ntok=ntok))
            elif kind == "silu":
                emit(Instruction.make(Op.SILU, mode=mode, g=o1, u=o2, x=rng.randrange(0, dep["X"] - ntok * xl + 1),
                                      ntok=ntok))
            elif kind == "rmsnorm":
                emit(Instruction.make(Op.RMSNORM, mode=mode, r=o1, x=rng.randrange(0, dep["X"] - ntok * xl + 1),
                                      s=rng.randrange(0, dep["S"] - nl + 1), ntok=ntok))
            else:
                emit(Instruction.make(Op.LAYERNORM, mode=mode, r=o1, x=rng.randrange(0, dep["X"] - ntok * xl + 1),
                                      ntok=ntok))
            continue
        if kind == "setv":
            reg = rng.choice([Reg.XFRAC, Reg.GEXP, Reg.EPS])
            emit(setr(reg, rng.randrange(REG_RANGE[reg][1] + 1)))
            continue
        if kind in ("load", "store"):
            b = rng.choice(BUFFERS)
            nl = rng.randrange(1, min(dep[b], max(1, (mem_bytes - base) // lb[b]), 64) + 1)
            line = rng.randrange(0, dep[b] - nl + 1)
            ext = rng.randrange(0, mem_bytes - base - nl * lb[b] + 1)
            emit(Instruction.make(Op.LOAD if kind == "load" else Op.STORE, buf=b, line=line, nlines=nl,
                                  ext=ext))
        elif kind == "wait":
            emit(Instruction.make(Op.WAIT))
        elif kind == "nop":
            emit(Instruction.make(Op.NOP))
        elif kind == "setk":
            set_k(rng.randrange(1, kmax + 1))
        elif kind == "setw":
            emit(setr(Reg.WBITS, rng.choice(wformats)))
        elif kind == "setb":
            emit(setr(Reg.BIAS, rng.randrange(2)))
        elif kind == "quant":
            mode = rng.randrange(2)
            planes = nch * (cfg.act_bits if mode == 0 else cfg.planes_per_row)
            tmax = 1 if mode else max(1, min(R, dep["X"] // xl, cfg.meta_tokens))
            ntok = rng.randrange(1, tmax + 1)
            emit(Instruction.make(Op.QUANT, mode=mode, x=rng.randrange(0, dep["X"] - ntok * xl + 1),
                                  q=rng.randrange(0, dep["Q"] - planes + 1),
                                  meta=rng.randrange(0, cfg.meta_tokens - ntok + 1), ntok=ntok))
        elif kind == "matmul":
            mode = rng.randrange(2)
            planes = nch * (cfg.act_bits if mode == 0 else cfg.planes_per_row)
            per_o = R if mode == 0 else 1
            wlines = nch * (regs[Reg.WBITS] or 1)          # WBUF lines per tile
            nt_max = max(1, min(dep["W"] // wlines, dep["O"] // per_o, 4))
            nt = rng.randrange(1, nt_max + 1)
            emit(Instruction.make(Op.MATMUL, mode=mode, q=rng.randrange(0, dep["Q"] - planes + 1),
                                  w=rng.randrange(0, dep["W"] - nt * wlines + 1),
                                  o=rng.randrange(0, dep["O"] - nt * per_o + 1), ntiles=nt))
        else:
            mode = rng.randrange(2)
            ntok = 1 if mode else rng.randrange(1, min(R, cfg.meta_tokens) + 1)
            stride = R if mode == 0 else 1
            nt_max = max(1, min(4, (dep["O"] - ntok) // stride + 1 if mode == 0 else dep["O"], dep["S"]))
            nt = rng.randrange(1, nt_max + 1)
            o_span = (nt - 1) * R + ntok if mode == 0 else nt
            emit(Instruction.make(Op.SCALEOUT, mode=mode, o=rng.randrange(0, dep["O"] - o_span + 1),
                                  s=rng.randrange(0, dep["S"] - nt + 1),
                                  meta=rng.randrange(0, cfg.meta_tokens - ntok + 1), ntok=ntok, ntiles=nt))
    emit(Instruction.make(Op.HALT))
    words = [encode(i) for i in prog]
    if faults:
        words = plant_fault(cfg, words, rng)
    return words, mem


def plant_fault(cfg: AcceleratorConfig, words: list[int], rng: random.Random) -> list[int]:
    """Replace one word by a faulting one (each cause), or drop the halt."""
    words = list(words)
    pc = rng.randrange(len(words))
    choice = rng.randrange(8)
    if choice == 0:   # an opcode past the table, or the vector unit's on a config without it
        first = 0x0E if cfg.vector_unit else 0x09
        words[pc] = rng.randrange(first, 0x40) << 58
    elif choice == 1:
        words[pc] = (int(Op.NOP) << 58) | (1 << rng.randrange(58))                    # reserved bit
    elif choice == 2:
        words[pc] = encode(Instruction.make(Op.QUANT, mode=1, ntok=2))                # plane, ntok != 1
    elif choice == 3:
        words[pc] = encode(Instruction.make(Op.LOAD, buf="O", line=cfg.depth("O") - 1, nlines=2))
    elif choice == 4:
        words[pc] = encode(setr(Reg.EBASE, (cfg.ext_mem_bytes // 64) - 1))
        words.insert(pc + 1, encode(Instruction.make(Op.LOAD, buf="X", line=0, nlines=65)))
    elif choice == 5:   # a WBITS value this config has no format for (1, or one bit wider than it takes)
        bad = rng.choice([1] + ([cfg.weight_bits + 1] if cfg.weight_bits < 8 else []))
        words[pc] = encode(setr(Reg.WBITS, bad))
    elif choice == 6 and not cfg.vector_unit and rng.randrange(2):   # the vector unit's register without it
        words[pc] = encode(setr(rng.choice([Reg.XFRAC, Reg.GEXP, Reg.EPS]), 1))
    elif choice == 6:   # BIAS = 1 without a router, or a BIAS past its range (the word, as setr() refuses it)
        value = 1 if cfg.experts < 2 else 2
        words[pc] = (int(Op.SETR) << 58) | (int(Reg.BIAS) << 52) | value
    else:
        words = [w for w in words if w >> 58 != Op.HALT][:cfg.imem_words]
    return words[:cfg.imem_words]


def _touches(cfg: AcceleratorConfig, ins: Instruction, regs, inflight) -> bool:
    """Conservative: does a compute instruction's line hull meet the in-flight transfer's lines?"""
    buf, a, b = inflight
    K = regs[Reg.K]
    nch, xl = cfg.nchunks(K), cfg.xlines(K)
    R, E = cfg.rows, cfg.experts
    ranges = []
    if ins.op is Op.QUANT:
        ranges.append(("X", ins["x"], ins["x"] + ins["ntok"] * xl))
        if E >= 2:
            ranges.append(("S", regs[Reg.ROUTER], regs[Reg.ROUTER] + xl))
        if E >= 1:
            ranges.append(("S", regs[Reg.SIN], regs[Reg.SIN] + xl))
    elif ins.op is Op.MATMUL:
        ranges.append(("W", ins["w"], ins["w"] + ins["ntiles"] * nch * (regs[Reg.WBITS] or 1)))
        ranges.append(("O", ins["o"], ins["o"] + ins["ntiles"] * (R if ins["mode"] == 0 else 1)))
    elif ins.op is Op.SCALEOUT:
        end = ins["o"] + ((ins["ntiles"] - 1) * R + ins["ntok"] if ins["mode"] == 0 else ins["ntiles"])
        ranges.append(("O", ins["o"], end))
        if E >= 1:
            ranges.append(("S", ins["s"], ins["s"] + ins["ntiles"]))
    elif ins.op in (Op.KVPACK, Op.ATTN):
        hl, wb = regs[Reg.HDIM] // cfg.cols, cfg.wbuf_line_bits // 8
        group = regs[Reg.HGRP] if ins.op is Op.ATTN else 1
        span = group * hl if ins["mode"] == 1 else (group * hl - 1) * R + ins["ntok"]
        base = ins["q"] if ins.op is Op.ATTN else ins["o"]
        part = ins["part"] if ins.op is Op.ATTN else 0
        if part != 2:
            ranges.append(("O", base, base + span))
        half = regs[Reg.KVMAX] * (regs[Reg.HDIM] + 1) // wb
        ranges.append(("W", regs[Reg.KVW], regs[Reg.KVW] + (2 * half if part == 0 else half)))
        if ins.op is Op.ATTN:
            n = regs[Reg.QPOS] + ins["ntok"]
            rows, sl = ins["ntok"] * group, -(-n // cfg.cols)
            ranges.append(("O", regs[Reg.SCR], regs[Reg.SCR] + rows * sl))
            if part == 2:
                ranges.append(("O", regs[Reg.ACC], regs[Reg.ACC] + rows * 2 * hl))
            if part == 0 or (part == 2 and regs[Reg.TPOS] + regs[Reg.KVMAX] >= n):
                ranges.append(("X", ins["x"], ins["x"] + (ins["ntok"] - 1) * xl + group * hl))
    elif ins.op in (Op.RESADD, Op.SILU, Op.RMSNORM, Op.LAYERNORM, Op.ROPE):
        nl = -(-K // cfg.cols)
        span = nl if ins["mode"] == 1 else (nl - 1) * R + ins["ntok"]
        if ins.op is Op.ROPE:
            ranges.append(("S", ins["s"], ins["s"] + ins["ntok"] * regs[Reg.HDIM] // cfg.cols))
        for name in ("r", "o", "g", "u", "q"):
            if name in dict(ins.args):
                ranges.append(("O", ins[name], ins[name] + span))
        if ins.op not in (Op.RESADD, Op.ROPE):
            ranges.append(("X", ins["x"], ins["x"] + ins["ntok"] * xl))
        if ins.op is Op.RMSNORM:
            ranges.append(("S", ins["s"], ins["s"] + nl))
    return any(rb == buf and lo < b and hi > a for rb, lo, hi in ranges)
