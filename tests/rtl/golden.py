"""A deliberately naive model of the accelerator for the RTL tests, written from docs/isa.md.

Built only from the contract (``bitmos.formats``, ``bitmos.isa``): per-instruction semantics on
Python integers, with ``bitmos.isa.Timeline`` for cycles. It is the stand-in reference until
``bitmos.sim`` lands; the benches prefer ``bitmos.sim`` when it is importable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitmos import formats as F
from bitmos import isa
from bitmos.config import AcceleratorConfig


def field_of(line: int, idx: int, bits: int, signed: bool = False) -> int:
    v = (line >> (idx * bits)) & ((1 << bits) - 1)
    return F.to_signed(v, bits) if signed else v


def set_field(line: int, idx: int, bits: int, value: int) -> int:
    mask = ((1 << bits) - 1) << (idx * bits)
    return (line & ~mask) | ((value & ((1 << bits) - 1)) << (idx * bits))


def matmul_tile(cfg: AcceleratorConfig, qbuf, wbuf, K: int, mode: int, q: int, w: int, n: int):
    """Accumulators (C values, or R rows of C in token mode) of tile n, wrapped to acc_bits."""
    R, C, L, k = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits
    nch, P = cfg.nchunks(K), cfg.planes_per_row
    rows = []
    for i in (range(R) if mode == 0 else [None]):
        line = []
        for j in range(C):
            acc = 0
            for c in range(nch):
                mask = sum(1 << l for l in range(L) if c * L + l < K)
                wword = field_of(wbuf[w + n * nch + c], j, L)
                if mode == 0:
                    for b in range(k):
                        a = field_of(qbuf[q + c * k + b], i, L)
                        acc += F.plane_weight(b, k) * F.plane_dot(a, wword, mask, k)
                else:
                    for p in range(P):
                        for r in range(cfg.plane_rows):
                            b = p * R + r
                            if b < k:
                                a = field_of(qbuf[q + c * P + p], r, L)
                                acc += F.plane_weight(b, k) * F.plane_dot(a, wword, mask, k)
            line.append(F.to_signed(acc, cfg.acc_bits))
        rows.append(line)
    return rows


@dataclass
class State:
    cfg: AcceleratorConfig
    mem: bytearray
    buf: dict = field(default_factory=dict)
    meta: list = field(default_factory=list)
    regs: list = field(default_factory=lambda: [0] * 7)

    def __post_init__(self):
        c = self.cfg
        self.buf = {b: [0] * c.depth(b) for b in "XWSQO"}
        self.meta = [(0, [0] * c.experts) for _ in range(c.meta_tokens)]


def quant_token(cfg, st: State, mode, x, q, meta, t):
    """One token of ``quant``; updates QBUF and META."""
    R, C, L, k, E = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.experts
    K, rshift, router, sin = st.regs[0], st.regs[1], st.regs[3], st.regs[4]
    nch, XL, P = cfg.nchunks(K), cfg.xlines(K), cfg.planes_per_row
    xs = [field_of(st.buf["X"][x + t * XL + i // C], i % C, 16, True) for i in range(K)]
    sval = lambda line, e, j: field_of(st.buf["S"][line], e * C + j, 16, True)
    if E >= 2:
        wr = [[sval(router + i // C, e, i % C) for i in range(K)] for e in range(E)]
        g = F.softmax_gates(F.router_logits(xs, wr, rshift))
    elif E == 1:
        g = [F.GATE_ONE]
    else:
        g = []
    if E >= 1:
        v = [xs[i] * F.mix_scale(g, [sval(sin + i // C, e, i % C) for e in range(E)]) for i in range(K)]
    else:
        v = list(xs)
    qv, d = F.quantize_token(v, k)
    qv = qv + [0] * (nch * L - K)
    for c in range(nch):
        planes = F.activation_planes(qv[c * L:(c + 1) * L], k)
        planes = [p & sum(1 << l for l in range(L) if c * L + l < K) for p in planes]
        if mode == 0:
            for b in range(k):
                st.buf["Q"][q + c * k + b] = set_field(st.buf["Q"][q + c * k + b], t, L, planes[b])
        else:
            for p in range(P):
                st.buf["Q"][q + c * P + p] = sum(planes[p * R + i] << (i * L)
                                                 for i in range(R) if p * R + i < k)
    st.meta[meta + t] = (d, list(g))


def check(cfg: AcceleratorConfig, ins: isa.Instruction, regs, pc=None) -> int:
    """Cause code of ``ins`` at issue (0 = fine), per docs/isa.md "Errors" (after decoding)."""
    op, K = ins.op, regs[0]
    R = cfg.rows
    nch, XL, P = cfg.nchunks(K), cfg.xlines(K), cfg.planes_per_row
    dep = cfg.depth
    if op in (isa.Op.QUANT, isa.Op.SCALEOUT):
        if ins["mode"] == 1 and ins["ntok"] != 1 or ins["mode"] == 0 and ins["ntok"] > R:
            return isa.CAUSE_ILLEGAL_FIELD
    ok = True
    if op in (isa.Op.LOAD, isa.Op.STORE):
        b = isa.BUFFERS[ins["buf"]]
        ok = ins["line"] + ins["nlines"] <= dep(b)
        if ok and regs[6] * 64 + ins["ext"] + ins["nlines"] * cfg.line_bits(b) // 8 > cfg.ext_mem_bytes:
            return isa.CAUSE_EXT_RANGE
    elif op is isa.Op.QUANT:
        W = cfg.act_bits if ins["mode"] == 0 else P
        ok = (ins["x"] + ins["ntok"] * XL <= dep("X") and ins["q"] + nch * W <= dep("Q")
              and ins["meta"] + ins["ntok"] <= cfg.meta_tokens
              and (cfg.experts < 2 or regs[3] + XL <= dep("S"))
              and (cfg.experts < 1 or regs[4] + XL <= dep("S")))
    elif op is isa.Op.MATMUL:
        W = cfg.act_bits if ins["mode"] == 0 else P
        ok = (ins["q"] + nch * W <= dep("Q") and ins["w"] + ins["ntiles"] * nch <= dep("W")
              and ins["o"] + ins["ntiles"] * (R if ins["mode"] == 0 else 1) <= dep("O"))
    elif op is isa.Op.SCALEOUT:
        last = (ins["ntiles"] - 1) * R + ins["ntok"] if ins["mode"] == 0 else ins["ntiles"]
        ok = (ins["o"] + last <= dep("O") and (cfg.experts < 1 or ins["s"] + ins["ntiles"] <= dep("S"))
              and ins["meta"] + ins["ntok"] <= cfg.meta_tokens)
    return 0 if ok else isa.CAUSE_BUFFER_RANGE


@dataclass
class Result:
    cycles: int
    memory: bytearray
    error: bool
    cause: int
    state: State


def run(cfg: AcceleratorConfig, words: list[int], memory: bytes | bytearray, max_steps: int = 10**6) -> Result:
    """Run a program; returns cycles, final external memory, error flag and cause."""
    st = State(cfg, bytearray(memory))
    tl = isa.Timeline()
    pc = 0
    words = list(words) + [0] * (cfg.imem_words - len(words))
    R, C = cfg.rows, cfg.cols
    for _ in range(max_steps):
        if pc >= cfg.imem_words:
            return Result(tl.now + 1, st.mem, True, isa.CAUSE_PC_RANGE, st)
        w = words[pc]
        try:
            ins = isa.decode(w)
        except Exception:
            code = w >> isa.OPCODE_LO
            cause = isa.CAUSE_ILLEGAL_FIELD if code in {o.value for o in isa.Op} else isa.CAUSE_ILLEGAL_OPCODE
            if cause == isa.CAUSE_ILLEGAL_FIELD and isa.Op(code) in (isa.Op.LOAD, isa.Op.STORE, isa.Op.WAIT,
                                                                   isa.Op.HALT):
                tl._wait_dma()
            return Result(tl.now + 1, st.mem, True, cause, st)
        if ins.op in (isa.Op.LOAD, isa.Op.STORE, isa.Op.WAIT, isa.Op.HALT):
            tl._wait_dma()
        cause = check(cfg, ins, st.regs)
        if cause:
            return Result(tl.now + 1, st.mem, True, cause, st)
        K = st.regs[0]
        tl.step(ins, cfg, K)
        op = ins.op
        if op is isa.Op.HALT:
            return Result(tl.now, st.mem, False, 0, st)
        if op is isa.Op.SETR:
            st.regs[ins["reg"]] = isa.reg_value(isa.Reg(ins["reg"]), ins["value"])
        elif op in (isa.Op.LOAD, isa.Op.STORE):
            b = isa.BUFFERS[ins["buf"]]
            nb = cfg.line_bits(b) // 8
            a = st.regs[6] * 64 + ins["ext"]
            for n in range(ins["nlines"]):
                lo = a + n * nb
                if op is isa.Op.LOAD:
                    st.buf[b][ins["line"] + n] = int.from_bytes(st.mem[lo:lo + nb].ljust(nb, b"\0"), "little")
                else:
                    if len(st.mem) < lo + nb:
                        st.mem.extend(bytes(lo + nb - len(st.mem)))
                    st.mem[lo:lo + nb] = st.buf[b][ins["line"] + n].to_bytes(nb, "little")
        elif op is isa.Op.QUANT:
            for t in range(ins["ntok"]):
                quant_token(cfg, st, ins["mode"], ins["x"], ins["q"], ins["meta"], t)
        elif op is isa.Op.MATMUL:
            for n in range(ins["ntiles"]):
                rows = matmul_tile(cfg, st.buf["Q"], st.buf["W"], K, ins["mode"], ins["q"], ins["w"], n)
                for i, vals in enumerate(rows):
                    line = ins["o"] + (n * R + i if ins["mode"] == 0 else n)
                    st.buf["O"][line] = sum((v & 0xFFFFFFFF) << (32 * j) for j, v in enumerate(vals))
        elif op is isa.Op.SCALEOUT:
            for n in range(ins["ntiles"]):
                for t in range(ins["ntok"]):
                    line = ins["o"] + (n * R + t if ins["mode"] == 0 else n)
                    d, g = st.meta[ins["meta"] + t]
                    vals = []
                    for j in range(C):
                        acc = field_of(st.buf["O"][line], j, 32, True)
                        if cfg.experts == 0:
                            s_out = st.regs[5]
                        else:
                            s_out = F.mix_scale(g, [field_of(st.buf["S"][ins["s"] + n], e * C + j, 16, True)
                                                    for e in range(cfg.experts)])
                        vals.append(F.scale_output(acc, d, s_out, st.regs[2]))
                    st.buf["O"][line] = sum((v & 0xFFFFFFFF) << (32 * j) for j, v in enumerate(vals))
        pc += 1
    raise RuntimeError("program did not halt")
