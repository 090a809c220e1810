"""A deliberately naive model of docs/isa.md: Python integers, one element at a time, written
directly from the spec with the reference functions of bitmos.formats. Legal programs only (no
error handling beyond stopping at halt). The simulator's functional mode must match it bit for bit.
"""

from __future__ import annotations

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.isa import BUFFERS, Op, Reg, decode, reg_value


class NaiveMachine:
    def __init__(self, cfg: AcceleratorConfig, mem: bytes):
        self.cfg = cfg
        self.mem = bytearray(mem)
        self.buf = {b: [0] * cfg.depth(b) for b in "XWSQO"}   # each line one little-endian integer
        self.meta = [(0, [0] * cfg.experts) for _ in range(cfg.meta_tokens)]
        self.regs = {r: 0 for r in Reg}

    # element access -------------------------------------------------------------------------------
    @staticmethod
    def field(line: int, idx: int, bits: int, signed: bool) -> int:
        u = (line >> (idx * bits)) & ((1 << bits) - 1)
        return F.to_signed(u, bits) if signed else u

    def x(self, line: int, j: int) -> int:
        return self.field(self.buf["X"][line], j, 16, True)

    def s(self, line: int, e: int, j: int) -> int:
        return self.field(self.buf["S"][line], e * self.cfg.cols + j, 16, True)

    def run(self, words: list[int]) -> None:
        for pc, w in enumerate(words):
            ins = decode(w, pc=pc)
            op = ins.op
            if op is Op.HALT:
                return
            if op is Op.SETR:
                self.regs[Reg(ins["reg"])] = reg_value(Reg(ins["reg"]), ins["value"])
            elif op in (Op.LOAD, Op.STORE):
                b = BUFFERS[ins["buf"]]
                nbytes = self.cfg.line_bits(b) // 8
                a = self.regs[Reg.EBASE] * 64 + ins["ext"]
                for i in range(ins["nlines"]):
                    lo = a + i * nbytes
                    if op is Op.LOAD:
                        chunk = bytes(self.mem[lo:lo + nbytes]).ljust(nbytes, b"\0")
                        self.buf[b][ins["line"] + i] = int.from_bytes(chunk, "little")
                    else:
                        if len(self.mem) < lo + nbytes:
                            self.mem.extend(bytes(lo + nbytes - len(self.mem)))
                        self.mem[lo:lo + nbytes] = self.buf[b][ins["line"] + i].to_bytes(nbytes, "little")
            elif op is Op.QUANT:
                self.quant(ins)
            elif op is Op.MATMUL:
                self.matmul(ins)
            elif op is Op.SCALEOUT:
                self.scaleout(ins)

    def quant(self, ins) -> None:
        cfg = self.cfg
        C, L, R, E, k = cfg.cols, cfg.lanes, cfg.rows, cfg.experts, cfg.act_bits
        K = self.regs[Reg.K]
        nch, XL, P = cfg.nchunks(K), cfg.xlines(K), cfg.planes_per_row
        for t in range(ins["ntok"]):
            x = [self.x(ins["x"] + t * XL + i // C, i % C) for i in range(K)]
            if E >= 2:
                router = [[self.s(self.regs[Reg.ROUTER] + i // C, e, i % C) for i in range(K)] for e in range(E)]
                g = F.softmax_gates(F.router_logits(x, router, self.regs[Reg.RSHIFT]))
            elif E == 1:
                g = [F.GATE_ONE]
            else:
                g = []
            if E >= 1:
                v = [x[i] * F.mix_scale(g, [self.s(self.regs[Reg.SIN] + i // C, e, i % C) for e in range(E)])
                     for i in range(K)]
            else:
                v = x
            q, d = F.quantize_token(v, k)
            planes = F.activation_planes(q, k)      # plane b: bit i = element i (lanes >= K are 0)
            Lmask = (1 << L) - 1
            for c in range(nch):
                words = [(p >> (c * L)) & Lmask for p in planes]
                if ins["mode"] == 0:
                    for b in range(k):
                        line = ins["q"] + c * k + b
                        old = self.buf["Q"][line]
                        old &= ~(Lmask << (t * L))
                        self.buf["Q"][line] = old | (words[b] << (t * L))
                else:
                    for p in range(P):
                        val = 0
                        for i in range(R):
                            b = p * R + i
                            if b < k:
                                val |= words[b] << (i * L)
                        self.buf["Q"][ins["q"] + c * P + p] = val
            self.meta[ins["meta"] + t] = (d, list(g) + [0] * (E - len(g)))

    def matmul(self, ins) -> None:
        cfg = self.cfg
        C, L, R, k = cfg.cols, cfg.lanes, cfg.rows, cfg.act_bits
        K = self.regs[Reg.K]
        nch, P, Ra = cfg.nchunks(K), cfg.planes_per_row, cfg.plane_rows
        Lmask = (1 << L) - 1
        for n in range(ins["ntiles"]):
            for j in range(C):
                rows = range(R) if ins["mode"] == 0 else range(1)
                for i in rows:
                    acc = 0
                    for c in range(nch):
                        mask = sum(1 << l for l in range(L) if c * L + l < K)
                        wword = (self.buf["W"][ins["w"] + n * nch + c] >> (j * L)) & Lmask
                        if ins["mode"] == 0:
                            for b in range(k):
                                a = (self.buf["Q"][ins["q"] + c * k + b] >> (i * L)) & Lmask
                                acc += F.plane_weight(b, k) * F.plane_dot(a, wword, mask, k)
                        else:
                            for p in range(P):
                                for ii in range(Ra):
                                    b = p * R + ii
                                    if b < k:
                                        a = (self.buf["Q"][ins["q"] + c * P + p] >> (ii * L)) & Lmask
                                        acc += F.plane_weight(b, k) * F.plane_dot(a, wword, mask, k)
                    acc = F.to_signed(acc, cfg.acc_bits)
                    line = ins["o"] + n * R + i if ins["mode"] == 0 else ins["o"] + n
                    self._set_o(line, j, acc)

    def _set_o(self, line: int, j: int, value: int) -> None:
        m = 0xFFFFFFFF << (32 * j)
        self.buf["O"][line] = (self.buf["O"][line] & ~m) | (F.to_unsigned(value, 32) << (32 * j))

    def scaleout(self, ins) -> None:
        cfg = self.cfg
        C, R, E = cfg.cols, cfg.rows, cfg.experts
        for n in range(ins["ntiles"]):
            for t in range(ins["ntok"]):
                line = ins["o"] + n * R + t if ins["mode"] == 0 else ins["o"] + n
                d, g = self.meta[ins["meta"] + t]
                for j in range(C):
                    if E == 0:
                        s_out = self.regs[Reg.SMUL]
                    else:
                        s_out = F.mix_scale(g, [self.s(ins["s"] + n, e, j) for e in range(E)])
                    acc = self.field(self.buf["O"][line], j, 32, True)
                    self._set_o(line, j, F.scale_output(acc, d, s_out, self.regs[Reg.OSHIFT]))
