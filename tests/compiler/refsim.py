"""A tiny, deliberately naive interpreter of the bitmos ISA, for the compiler tests.

Written straight from docs/isa.md with the reference arithmetic of bitmos.formats (slow; small shapes
only). It enforces the hazard rule in its strictest reading: after a load/store, until the next
`wait` (or `halt`), no instruction may touch the lines that transfer reads or writes.
The tests run every compiled program on both this interpreter and bitmos.sim and compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.isa import BUFFERS, Op, Reg, Timeline, decode, reg_value


class RefSimError(Exception):
    pass


@dataclass
class RefResult:
    cycles: int
    memory: bytearray
    error: str | None = None
    instructions: int = 0
    stall_cycles: int = 0
    trace: list = field(default_factory=list)


def run(cfg: AcceleratorConfig, words: list[int], memory: bytearray) -> RefResult:
    R, C, L, k, E = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.experts
    P, Ra = cfg.planes_per_row, cfg.plane_rows
    depth = {b: cfg.depth(b) for b in "XWSQO"}
    bufs = {b: [0] * depth[b] for b in "XWSQO"}
    meta = [(0, [0] * E) for _ in range(cfg.meta_tokens)]
    regs = {r: 0 for r in Reg}
    mem = bytearray(memory)
    inflight: list[tuple[int, str, int, int]] = []   # (pc, buf, lo, hi) since the last wait
    tl = Timeline()
    maskL = (1 << L) - 1

    def elem(line: int, j: int, bits: int) -> int:
        return F.to_signed((line >> (bits * j)) & ((1 << bits) - 1), bits)

    def check(buf, lo, hi, pc, what):
        if lo < 0 or hi > depth[buf]:
            raise RefSimError(f"pc {pc}: {what} touches {buf} lines [{lo},{hi}) beyond depth {depth[buf]}")
        for ipc, b, a, z in inflight:
            if b == buf and a < hi and lo < z:
                raise RefSimError(f"pc {pc}: hazard: {what} touches {buf} lines [{lo},{hi}) while the transfer "
                                  f"at pc {ipc} ([{a},{z})) has not been waited for")

    pc = 0
    while True:
        if pc >= cfg.imem_words or pc >= len(words):
            raise RefSimError(f"pc {pc} ran past the program")
        ins = decode(words[pc], pc=pc)
        op = ins.op
        K = regs[Reg.K]
        if op is Op.SETR:
            regs[Reg(ins["reg"])] = reg_value(Reg(ins["reg"]), ins["value"])
        elif op in (Op.LOAD, Op.STORE):
            b = BUFFERS[ins["buf"]]
            lo, n = ins["line"], ins["nlines"]
            check(b, lo, lo + n, pc, op.name.lower())
            lb = cfg.line_bits(b) // 8
            addr = regs[Reg.EBASE] * 64 + ins["ext"]
            if addr + n * lb > cfg.ext_mem_bytes:
                raise RefSimError(f"pc {pc}: external address out of range")
            if addr + n * lb > len(mem):
                raise RefSimError(f"pc {pc}: transfer beyond the memory image ({addr + n * lb} > {len(mem)})")
            for a in range(n):
                at = addr + a * lb
                if op is Op.LOAD:
                    bufs[b][lo + a] = int.from_bytes(mem[at:at + lb], "little")
                else:
                    mem[at:at + lb] = bufs[b][lo + a].to_bytes(lb, "little")
            inflight.append((pc, b, lo, lo + n))
        elif op is Op.WAIT:
            inflight.clear()
        elif op is Op.HALT:
            tl.step(ins, cfg, K)
            return RefResult(tl.now, mem, None, pc + 1, tl.stall_cycles)
        elif op is Op.QUANT:
            plane = ins["mode"] == 1
            ntok = ins["ntok"]
            nch, XL = cfg.nchunks(K), cfg.xlines(K)
            if plane and ntok != 1 or (not plane and ntok > R):
                raise RefSimError(f"pc {pc}: illegal ntok")
            check("X", ins["x"], ins["x"] + ntok * XL, pc, "quant")
            qn = nch * (P if plane else k)
            check("Q", ins["q"], ins["q"] + qn, pc, "quant")
            if ins["meta"] + ntok > cfg.meta_tokens:
                raise RefSimError(f"pc {pc}: meta out of range")
            if E >= 2:
                check("S", regs[Reg.ROUTER], regs[Reg.ROUTER] + XL, pc, "quant router")
            if E >= 1:
                check("S", regs[Reg.SIN], regs[Reg.SIN] + XL, pc, "quant s_in")
            for t in range(ntok):
                x = [elem(bufs["X"][ins["x"] + t * XL + i // C], i % C, 16) for i in range(K)]
                if E >= 2:
                    router = [[elem(bufs["S"][regs[Reg.ROUTER] + i // C], e * C + i % C, 16) for i in range(K)]
                              for e in range(E)]
                    g = F.softmax_gates(F.router_logits(x, router, regs[Reg.RSHIFT]))
                elif E == 1:
                    g = [F.GATE_ONE]
                else:
                    g = []
                if E >= 1:
                    v = [x[i] * F.mix_scale(g, [elem(bufs["S"][regs[Reg.SIN] + i // C], e * C + i % C, 16)
                                                for e in range(E)]) for i in range(K)]
                else:
                    v = x
                q, D = F.quantize_token(v, k)
                planes = F.activation_planes(q, k)
                for c in range(nch):
                    words_c = [(pl >> (c * L)) & maskL for pl in planes]
                    if not plane:
                        for b in range(k):
                            ln = ins["q"] + c * k + b
                            old = bufs["Q"][ln]
                            bufs["Q"][ln] = (old & ~(maskL << (t * L))) | (words_c[b] << (t * L))
                    else:
                        for p in range(P):
                            line = 0
                            for i in range(R):
                                b = p * R + i
                                if b < k:
                                    line |= words_c[b] << (i * L)
                            bufs["Q"][ins["q"] + c * P + p] = line
                meta[ins["meta"] + t] = (D, g)
        elif op is Op.MATMUL:
            plane = ins["mode"] == 1
            nch = cfg.nchunks(K)
            nt = ins["ntiles"]
            qn = nch * (P if plane else k)
            check("Q", ins["q"], ins["q"] + qn, pc, "matmul")
            check("W", ins["w"], ins["w"] + nt * nch, pc, "matmul")
            check("O", ins["o"], ins["o"] + (nt if plane else nt * R), pc, "matmul")
            masks = [sum(1 << l for l in range(L) if c * L + l < K) for c in range(nch)]
            for n in range(nt):
                wl = [bufs["W"][ins["w"] + n * nch + c] for c in range(nch)]
                rows = [0] if plane else range(R)
                for i in rows:
                    out = 0
                    for j in range(C):
                        acc = 0
                        for c in range(nch):
                            w = (wl[c] >> (j * L)) & maskL
                            if not plane:
                                for b in range(k):
                                    a = (bufs["Q"][ins["q"] + c * k + b] >> (i * L)) & maskL
                                    acc += F.plane_weight(b, k) * F.plane_dot(a, w, masks[c], k)
                            else:
                                for p in range(P):
                                    for r in range(Ra):
                                        b = p * R + r
                                        if b < k:
                                            a = (bufs["Q"][ins["q"] + c * P + p] >> (r * L)) & maskL
                                            acc += F.plane_weight(b, k) * F.plane_dot(a, w, masks[c], k)
                        acc = F.to_signed(acc, cfg.acc_bits)
                        out |= F.to_unsigned(acc, 32) << (32 * j)
                    bufs["O"][ins["o"] + (n if plane else n * R + i)] = out
        elif op is Op.SCALEOUT:
            plane = ins["mode"] == 1
            nt, ntok = ins["ntiles"], ins["ntok"]
            hi = ins["o"] + (nt if plane else (nt - 1) * R + ntok)
            check("O", ins["o"], hi, pc, "scaleout")
            if E >= 1:
                check("S", ins["s"], ins["s"] + nt, pc, "scaleout")
            for n in range(nt):
                for t in range(ntok):
                    ln = ins["o"] + (n if plane else n * R + t)
                    D, g = meta[ins["meta"] + t]
                    out = 0
                    for j in range(C):
                        acc = elem(bufs["O"][ln], j, 32)
                        if E == 0:
                            s = regs[Reg.SMUL]
                        else:
                            s = F.mix_scale(g, [elem(bufs["S"][ins["s"] + n], e * C + j, 16) for e in range(E)])
                        out |= F.to_unsigned(F.scale_output(acc, D, s, regs[Reg.OSHIFT]), 32) << (32 * j)
                    bufs["O"][ln] = out
        tl.step(ins, cfg, K)
        pc += 1


def golden(lin, cfg: AcceleratorConfig, x: list[list[int]]) -> list[list[int]]:
    """The reference y_int of an exported layer, per token, straight from bitmos.formats."""
    k = lin.act_bits
    E = lin.experts
    if E >= 2:
        rshift = cfg.x_frac_bits + lin.router_exp - F.LOGIT_FRAC
    if E >= 1:
        oshift = cfg.x_frac_bits + lin.s_in_exp + lin.s_out_exp - cfg.out_frac_bits
    else:
        oshift = cfg.x_frac_bits + lin.smul_exp - cfg.out_frac_bits
    signs = [[1 if s else -1 for s in row] for row in lin.signs.tolist()]
    out = []
    for xt in x:
        if E >= 2:
            g = F.softmax_gates(F.router_logits(xt, lin.router.astype(int).tolist(), rshift))
        elif E == 1:
            g = [F.GATE_ONE]
        if E >= 1:
            s_in = [F.mix_scale(g, [int(lin.s_in[e, i]) for e in range(E)]) for i in range(lin.d_in)]
            v = [a * b for a, b in zip(xt, s_in)]
        else:
            v = list(xt)
        q, D = F.quantize_token(v, k)
        row = []
        for o in range(lin.d_out):
            acc = sum(a * b for a, b in zip(q, signs[o]))
            s_out = F.mix_scale(g, [int(lin.s_out[e, o]) for e in range(E)]) if E >= 1 else lin.smul
            row.append(F.scale_output(acc, D, s_out, oshift))
        out.append(row)
    return out
