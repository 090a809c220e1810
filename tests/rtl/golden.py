"""A deliberately naive model of the accelerator for the RTL tests, written from docs/isa.md.

Built only from the contract (``bitmos.formats``): the array's tile computation and the scale unit's
``quant`` per token on Python integers, the reference of the block-level Amaranth tests
(test_array.py, test_scale_unit.py). Whole programs are checked against ``bitmos.sim``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitmos import formats as F
from bitmos.config import AcceleratorConfig


def field_of(line: int, idx: int, bits: int, signed: bool = False) -> int:
    v = (line >> (idx * bits)) & ((1 << bits) - 1)
    return F.to_signed(v, bits) if signed else v


def set_field(line: int, idx: int, bits: int, value: int) -> int:
    mask = ((1 << bits) - 1) << (idx * bits)
    return (line & ~mask) | ((value & ((1 << bits) - 1)) << (idx * bits))


def matmul_tile(cfg: AcceleratorConfig, qbuf, wbuf, K: int, mode: int, q: int, w: int, n: int, wbits: int = 0):
    """Accumulators (C values, or R rows of C in token mode) of tile n, wrapped to acc_bits; ``wbits``
    is register WBITS (0 = sign weights, one plane per chunk; b >= 2 = b planes per chunk)."""
    R, C, L, k = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits
    nch, P = cfg.nchunks(K), cfg.planes_per_row
    wp = wbits or 1
    rows = []
    for i in (range(R) if mode == 0 else [None]):
        line = []
        for j in range(C):
            acc = 0
            for c in range(nch):
                mask = sum(1 << l for l in range(L) if c * L + l < K)
                for pw in range(wp):
                    wword = field_of(wbuf[w + (n * nch + c) * wp + pw], j, L)
                    if mode == 0:
                        steps = [(b, q + c * k + b, i) for b in range(k)]
                    else:
                        steps = [(p * R + r, q + c * P + p, r) for p in range(P) for r in range(cfg.plane_rows)
                                 if p * R + r < k]
                    for b, qline, slot in steps:
                        a = field_of(qbuf[qline], slot, L)
                        acc += F.step_weight(b, pw, k, wbits) * F.plane_dot(a, wword, mask, k, wbits)
            line.append(F.to_signed(acc, cfg.acc_bits))
        rows.append(line)
    return rows


@dataclass
class State:
    cfg: AcceleratorConfig
    mem: bytearray
    buf: dict = field(default_factory=dict)
    meta: list = field(default_factory=list)
    regs: list = field(default_factory=lambda: [0] * 9)   # K RSHIFT OSHIFT ROUTER SIN SMUL EBASE WBITS BIAS

    def __post_init__(self):
        c = self.cfg
        self.buf = {b: [0] * c.depth(b) for b in "XWSQO"}
        self.meta = [(0, [0] * c.experts, 0) for _ in range(c.meta_tokens)]   # (D, gates, bias)


def pack_meta(cfg: AcceleratorConfig, record) -> int:
    """A META record (D, gates, bias) as the word docs/isa.md lays out: D, the E gates, then (E >= 2) the bias."""
    d, gates, bias = record
    word = d | sum(g << (32 + 16 * e) for e, g in enumerate(gates))
    if cfg.experts >= 2:
        word |= (bias & 0xFFFFFFFF) << (32 + 16 * cfg.experts)
    return word


def quant_token(cfg, st: State, mode, x, q, meta, t):
    """One token of ``quant``; updates QBUF and META."""
    R, C, L, k, E = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.experts
    K, rshift, router, sin = st.regs[0], st.regs[1], st.regs[3], st.regs[4]
    nch, XL, P = cfg.nchunks(K), cfg.xlines(K), cfg.planes_per_row
    xs = [field_of(st.buf["X"][x + t * XL + i // C], i % C, 16, True) for i in range(K)]
    sval = lambda line, e, j: field_of(st.buf["S"][line], e * C + j, 16, True)
    bias = 0
    if E >= 2:
        wr = [[sval(router + i // C, e, i % C) for i in range(K)] for e in range(E)]
        if st.regs[8]:   # BIAS: row 0's sum is the bias, the logits are all 0
            bias = F.bias_term(xs, wr[0], rshift)
            g = F.softmax_gates([0] * E)
        else:
            g = F.softmax_gates(F.router_logits(xs, wr, rshift))
    elif E == 1:
        g = [F.GATE_ONE]
    else:
        g = []
    s_in = [F.mix_scale(g, [sval(sin + i // C, e, i % C) for e in range(E)]) for i in range(K)] if E >= 1 else None
    v = F.quant_input(xs, s_in)
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
    st.meta[meta + t] = (d, list(g), bias)
