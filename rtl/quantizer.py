"""Quantizer: scale mixing, the per-token max, RQ and D, and the k-bit planes (``formats.quantize_token``).

A pipeline over the XBUF lines of a token (C lanes each), counted from the cycle the line and its tags
arrive (s0): s0 registers the line and its SBUF input-scale line (so no multiplier hangs off a block
RAM's output), s1 the E gate x scale products, s2 s_in = mix_scale(gates, S_in), s3 v = x * s_in (x for
E = 0), s4 folds |v| into m = max|v| (``track_max``) or, for a gathered line, registers the limb
products of v * RQ, s5 their sum, s6 writes the round/clamped q bits of lane group ``group`` into plane
bank ``bank``. So m is final 5 cycles after the last tracked line arrives
(``bitmos.semantics.MIX_LATENCY`` counts the read too) and a gathered line is in its bank 7 cycles
after it arrives (``GATHER_LATENCY``).
D = rshift_round(m * INVQ_k, INVQ_SHIFT) follows m three cycles behind (final before the META write
reads it); ``rq_start`` starts, for k >= 2, the
:class:`~bitmos.rtl.divider.SequentialDivider` for RQ = floor(Q * 2^RQ_SHIFT / m), ready
``rq_cycles`` later. The two banks let the sequencer write one chunk's plane words (``line``, from
bank ``write_bank``) while it gathers the next chunk into the other bank.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bitmos import formats as F
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import (check_config, expert_lanes, first_max_onehot, onehot_select, pipelined_mix_scale,
                               pipelined_product, registered, registered_masked, signed_lanes)
from bitmos.rtl.divider import SequentialDivider

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
        The token's gates (E = 1: GATE_ONE; no such port for E = 0); held for the whole token.
    clear : In(1)
        Start a token (m = 0).
    track_max, gather, group, bank : In
        The arriving line is folded into m; or its q bits go to lane group ``group`` (0..L/C-1) of
        plane bank ``bank``.
    rq_start : In(1)
        m is final: register D and start the divide for RQ.
    plane_mode, write_index, write_bank : In
        Which QBUF line ``line`` is, from bank ``write_bank``: token mode, plane ``write_index``
        replicated into every slot; plane mode, planes ``write_index*R`` .. ``+R-1`` in slots 0..R-1
        (0 past k).
    d : Out(D_BITS)
        D of the token (from the third cycle after ``rq_start``; the META write reads it much later).
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
            "bank": In(1), "rq_start": In(1), "plane_mode": In(1), "write_index": In(3), "write_bank": In(1),
            "d": Out(F.D_BITS), "line": Out(cfg.qbuf_line_bits),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        C, k, Q = cfg.cols, cfg.act_bits, cfg.act_qmax
        tags = self._tag_pipeline(m)
        v, vabs = self._values(m)
        vmax = self._running_max(m, vabs, tags[4])
        rq = self._reciprocal(m, vmax)

        # s4, s5: v * RQ (k >= 2, in two stages) or the sign (k = 1, held as long) of the gathered line
        qbits = []
        for j in range(C):
            if k == 1:
                qbits.append([registered(m, registered(m, v[j] >= 0, f"nonneg{j}_s4"), f"nonneg{j}")])
            else:
                prod = pipelined_product(m, v[j], rq, f"vrq{j}")
                qv = (prod + (1 << (F.RQ_SHIFT - 1))) >> F.RQ_SHIFT
                qbits.append(Mux(qv > Q, Q, Mux(qv < -Q, -Q, qv))[:k])
        banks = self._banks(m, qbits, tags[6])
        self._write_line(m, banks)
        return m

    def _tag_pipeline(self, m):
        """(track_max, gather, group, bank, lane_valid) of the line in stage s0 .. s6."""
        stage0 = (self.track_max, self.gather, self.group, self.bank, self.lane_valid)
        out = [stage0]
        for s in range(1, 7):
            nxt = tuple(Signal.like(t, name=f"{n}_s{s}") for t, n in
                        zip(out[-1], ("track", "gather", "group", "bank", "lane_valid")))
            m.d.sync += [a.eq(b) for a, b in zip(nxt, out[-1])]
            out.append(nxt)
        return out

    def _values(self, m):
        """v_j and |v_j| of the line in stage s4 (registered at the end of s3). |v| is formed from the
        operands' magnitudes, |x| * |s_in|, so no negation follows the product on the max path."""
        cfg = self._cfg
        C, E = cfg.cols, cfg.experts
        x0 = registered_masked(m, signed_lanes(self.x, C, F.X_BITS), self.lane_valid, "x{}_s0")
        x1 = [Signal(signed(F.X_BITS), name=f"x{j}_s1") for j in range(C)]
        x2 = [Signal(signed(F.X_BITS), name=f"x{j}_s2") for j in range(C)]
        m.d.sync += [a.eq(b) for a, b in zip(x1, x0)] + [a.eq(b) for a, b in zip(x2, x1)]
        v = [Signal(signed(F.V_BITS), name=f"v{j}") for j in range(C)]
        vabs = [Signal(F.V_BITS - 1, name=f"vabs{j}") for j in range(C)]   # |v| <= 2^30

        def magnitude(a):
            return Mux(a < 0, -a, a)[:len(a)]   # |a| of a signed value, as unsigned of the same width

        if E == 0:   # v = x * 2^E0_V_SHIFT: wiring
            m.d.sync += [v[j].eq(x2[j] << F.E0_V_SHIFT) for j in range(C)]
            m.d.sync += [vabs[j].eq(magnitude(x2[j]) << F.E0_V_SHIFT) for j in range(C)]
            return v, vabs
        # s0: each scale registered, masked by its lane's valid bit (a lane past K has x = 0, so v = 0
        # whatever its scale; the mask keeps the register out of the SBUF's read port)
        s_in = [registered_masked(m, lanes, self.lane_valid, f"s_in{e}_{{}}_s0")
                for e, lanes in enumerate(expert_lanes(self.scales, E, C))]
        gates = [self.gates[e] for e in range(E)]
        # s1: the gate x scale products, s2: their rounded sum
        mixed = [pipelined_mix_scale(m, gates, [s[j] for s in s_in], f"s_in{j}") for j in range(C)]
        m.d.sync += [v[j].eq(x2[j] * mixed[j]) for j in range(C)]
        m.d.sync += [vabs[j].eq(magnitude(x2[j]) * magnitude(mixed[j])) for j in range(C)]
        return v, vabs

    def _running_max(self, m, vabs, tags4):
        """s4: m = max|v| over the tracked lines of the token (clear: 0): the running max and the line's lanes
        compared pairwise side by side, the largest taken by an AND-OR select."""
        vmax = Signal(F.V_BITS - 1)   # |v| <= 2^30
        with m.If(tags4[0]):
            candidates = [vmax, *vabs]
            m.d.sync += vmax.eq(onehot_select(first_max_onehot(m, candidates, "vmax_top"), candidates))
        with m.If(self.clear):
            m.d.sync += vmax.eq(0)
        return vmax

    def _reciprocal(self, m, vmax):
        """D (pipelined behind m) and RQ (the divider's quotient; unused for k = 1)."""
        cfg = self._cfg
        k, Q = cfg.act_bits, cfg.act_qmax
        # D follows m through a three-stage pipeline (limb products, their sum, the rounding shift) rather
        # than one registered product at rq_start: m is final from rq_start on and D is read only by the
        # META write, at least GATHER_LATENCY cycles later (a token with K = 0 has m = 0 from its clear,
        # MIX_LATENCY + rq_cycles >= 3 cycles before its META write), so the stages cost no cycle. In one
        # stage the product was the whole accelerator's longest path on an ECP5 (docs/fpga.md).
        d_product = pipelined_product(m, vmax, Const(F.inv_q(k)), "d_product")
        m.d.sync += self.d.eq((d_product + (1 << (F.INVQ_SHIFT - 1))) >> F.INVQ_SHIFT)
        if k == 1:
            return Const(0, 1)
        # Q * 2^RQ_SHIFT < 2^39: the quotient for m = 1 needs all 39 bits (m = 0 divides by 1; q is 0 then)
        m.submodules.rq_divider = div = SequentialDivider(
            dividend_bits=sem.RQ_QUOTIENT_BITS, divisor_bits=len(vmax), quotient_bits=sem.RQ_QUOTIENT_BITS)
        assert div.cycles == sem.rq_cycles(cfg), "rq_cycles does not match the divider"
        m.d.comb += [div.start.eq(self.rq_start), div.dividend.eq(Q << F.RQ_SHIFT),
                     div.divisor.eq(Mux(vmax == 0, 1, vmax))]
        return div.quotient

    def _banks(self, m, qbits, tags6):
        """s6: the two plane banks (k planes of L bits each); the gathered line's bits go to its bank."""
        cfg = self._cfg
        C, L, k = cfg.cols, cfg.lanes, cfg.act_bits
        banks = [[Signal(L, name=f"bank{n}_plane{b}") for b in range(k)] for n in range(2)]
        _, gather, group, bank, lane_valid = tags6
        with m.If(gather):
            for j in range(C):
                bits = [Mux(lane_valid[j], qbits[j][b], 0) for b in range(k)]
                with m.Switch(Cat(group, bank) if L // C > 1 else bank):
                    for n in range(2):
                        for g in range(L // C):
                            with m.Case(g + n * (1 << len(group)) if L // C > 1 else n):
                                m.d.sync += [banks[n][b][g * C + j].eq(bits[b]) for b in range(k)]
        return banks

    def _write_line(self, m, banks):
        """``line``: the QBUF line of write ``write_index`` from bank ``write_bank``."""
        cfg = self._cfg
        R, L, k, P = cfg.rows, cfg.lanes, cfg.act_bits, cfg.planes_per_row
        planes = [Mux(self.write_bank, b1, b0) for b0, b1 in zip(*banks)]
        groups = [Cat(planes[p * R + i] if p * R + i < k else Const(0, L) for i in range(R)) for p in range(P)]
        plane_line = Array(groups)[self.write_index[:max(1, (P - 1).bit_length())]] if P > 1 else groups[0]
        token_line = Array(planes)[self.write_index].replicate(R)
        m.d.comb += self.line.eq(Mux(self.plane_mode, plane_line, token_line))
