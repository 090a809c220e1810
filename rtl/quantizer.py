"""Quantizer: scale mixing, the per-token max, RQ and D, and the k-bit planes (``formats.quantize_token``).

Per XBUF line of a token (C lanes): s_in = mix_scale(gates, S_in) (E >= 1), v = x * s_in (x for
E = 0). While ``track_max`` it keeps m = max|v| over the token; from m it holds, combinationally,
RQ = floor(Q * 2^RQ_SHIFT / m) (a ``//``) and D = rshift_round(m * INVQ_k, INVQ_SHIFT). While
``gather`` it writes bit b of q_j = clamp(rshift_round(v_j * RQ, RQ_SHIFT), -Q, Q) (k = 1: v_j >= 0) into
lane ``group*C + j`` of plane b; ``line`` is the QBUF line of write ``write_index`` from those planes.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import check_config, expert_lanes, mix_scale, signed_lanes

__all__ = ["Quantizer"]


class Quantizer(wiring.Component):
    """The per-token quantizer of the scale-expert unit.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    x, lane_valid : In
        The XBUF line and which of its C lanes are inside K (the others are 0).
    scales : In(sbuf_line_bits)
        The SBUF line of the input scale experts (expert e, lane j at element ``e*C + j``).
    gates : In(ArrayLayout(unsigned(GATE_BITS), E))
        The token's gates (E = 1: GATE_ONE; no such port for E = 0).
    clear, track_max : In(1)
        Start a token (m = 0; wins over ``track_max``); fold this line's |v| into m.
    gather, group : In
        Write this line's q bits into lane group ``group`` (0..L/C-1) of the planes.
    plane_mode, write_index : In
        Which QBUF line ``line`` is: token mode, plane ``write_index`` replicated into every slot;
        plane mode, planes ``write_index*R`` .. ``+R-1`` in slots 0..R-1 (0 past k).
    d : Out(D_BITS)
        D of the token (valid once the token's lines have been tracked).
    line : Out(qbuf_line_bits)

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        super().__init__({
            "x": In(cfg.xbuf_line_bits), "lane_valid": In(cfg.cols), "scales": In(cfg.sbuf_line_bits),
            **({"gates": In(data.ArrayLayout(unsigned(F.GATE_BITS), cfg.experts))} if cfg.experts else {}),
            "clear": In(1), "track_max": In(1), "gather": In(1), "group": In(range(max(2, cfg.lanes // cfg.cols))),
            "plane_mode": In(1), "write_index": In(3),
            "d": Out(F.D_BITS), "line": Out(cfg.qbuf_line_bits),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        R, C, L, k, E, P, Q = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.experts, cfg.planes_per_row, cfg.act_qmax
        x = [Mux(self.lane_valid[j], xj, 0) for j, xj in enumerate(signed_lanes(self.x, C, F.X_BITS))]
        s_in = expert_lanes(self.scales, E, C)
        gates = [self.gates[e] for e in range(E)] if E else []
        v = [Signal(signed(F.V_BITS), name=f"v{j}") for j in range(C)]
        m.d.comb += [v[j].eq(x[j] * mix_scale(gates, [s[j] for s in s_in]) if E >= 1 else x[j]) for j in range(C)]

        vmax = Signal(F.V_BITS - 1)   # |v| <= 2^30
        with m.If(self.track_max):
            newmax = vmax
            for a in (Mux(vj < 0, -vj, vj)[:len(vmax)] for vj in v):
                newmax = Mux(a > newmax, a, newmax)
            m.d.sync += vmax.eq(newmax)
        with m.If(self.clear):
            m.d.sync += vmax.eq(0)
        rq = Signal(40)   # Q * 2^RQ_SHIFT < 2^39
        m.d.comb += [rq.eq(Const(Q << F.RQ_SHIFT, 40) // Mux(vmax == 0, 1, vmax)),
                     self.d.eq((vmax * F.inv_q(k) + (1 << (F.INVQ_SHIFT - 1))) >> F.INVQ_SHIFT)]

        planes = [Signal(L, name=f"plane{b}") for b in range(k)]
        with m.If(self.gather):
            for j in range(C):
                if k == 1:
                    bits = [Mux(self.lane_valid[j], v[j] >= 0, 0)]
                else:
                    qv = (v[j] * rq + (1 << (F.RQ_SHIFT - 1))) >> F.RQ_SHIFT
                    qc = Mux(qv > Q, Q, Mux(qv < -Q, -Q, qv))[:k]
                    bits = [Mux(self.lane_valid[j], qc[b], 0) for b in range(k)]
                with m.Switch(self.group):
                    for g in range(L // C):
                        with m.Case(g):
                            m.d.sync += [planes[b][g * C + j].eq(bits[b]) for b in range(k)]

        groups = [Cat(planes[p * R + i] if p * R + i < k else Const(0, L) for i in range(R)) for p in range(P)]
        plane_line = Array(groups)[self.write_index[:max(1, (P - 1).bit_length())]] if P > 1 else groups[0]
        token_line = Array(planes)[self.write_index].replicate(R)
        m.d.comb += self.line.eq(Mux(self.plane_mode, plane_line, token_line))
        return m
