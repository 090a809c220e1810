"""ScaleExpertUnit: the per-token scale-expert pipeline that runs ``quant`` and ``scaleout``.

``quant``, per token (cycle counts are ``bitmos.isa.quant_token_cycles`` exactly):

* ROUTER (E >= 2, XL cycles): one XBUF line and one SBUF router line per cycle into E 48-bit
  multiply-accumulators (C lanes each);
* GATES (E >= 2, E + 4 cycles): logits (``rshift_round`` by RSHIFT, saturate), max, one EXP2_LUT ROM
  read per expert, then sum, reciprocal (a combinational ``//``) and the gate products;
* MIX (XL cycles): s_in = mix_scale(g, S_in), v = x*s_in, running max|v|;
* RQ (1 cycle): RQ = floor(Q*2^32/m) (a combinational ``//``) and D; the first quantize read issues;
* QUANT (nch * (L/C + W) cycles): per chunk, L/C cycles gather q_i (x and s_in are read again and v
  recomputed), then W cycles write plane words (token mode: slot t of k lines; plane mode: P lines);
* META (1 cycle): META[meta + t] <- (D, gates).

``scaleout``: one OBUF line per cycle for ntiles*ntok cycles (read OBUF, META, SBUF), one multiply
stage, one write-back stage: ntiles*ntok + 2 cycles after the issue cycle.

All memories are read with one cycle of latency: the unit issues each read one cycle before it uses
the data, and a one-cycle tag pipeline says what the arriving data is for.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config, rshift_round, sat

__all__ = ["ScaleExpertUnit"]


class _State(enum.Enum, shape=4):
    IDLE = 0
    ROUTER = 1
    GATES = 2
    MIX = 3
    RQ = 4
    QUANT = 5
    META = 6
    SCALEOUT = 7


class ScaleExpertUnit(wiring.Component):
    """Router, softmax, scale mixing, per-token quantizer and output scaling.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    start : In(1)
        Pulse in the issue cycle; ``op`` (0 = quant, 1 = scaleout) and the fields are sampled with it.
    mode, a, b, meta, ntok, ntiles : In
        Instruction fields: ``a`` is ``x`` (quant) or ``o`` (scaleout), ``b`` is ``q`` or ``s``.
    k_features, rshift, oshift, router, sin, smul : In
        Registers K, RSHIFT, OSHIFT, ROUTER, SIN, SMUL (signed 16 bits).
    xbuf, sbuf, obuf_r, meta_r : In(ReadPort.Signature)
    qbuf (granularity L), obuf_w, meta_w : In(WritePort.Signature)
    busy : Out(1)
        High in the cycles after the issue cycle that the instruction occupies the unit.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        R, C, L = cfg.rows, cfg.cols, cfg.lanes
        ma = addr_bits(cfg.meta_tokens)
        super().__init__({
            "start": In(1), "op": In(1), "mode": In(1), "a": In(16), "b": In(16), "meta": In(10),
            "ntok": In(7), "ntiles": In(8),
            "k_features": In(16), "rshift": In(6), "oshift": In(6), "router": In(16), "sin": In(16),
            "smul": In(signed(16)),
            "xbuf": In(ReadPort.Signature(addr_width=addr_bits(cfg.depth("X")), shape=C * 16)),
            "sbuf": In(ReadPort.Signature(addr_width=addr_bits(cfg.depth("S")), shape=cfg.sbuf_line_bits)),
            "qbuf": In(WritePort.Signature(addr_width=addr_bits(cfg.depth("Q")), shape=R * L, granularity=L)),
            "obuf_r": In(ReadPort.Signature(addr_width=addr_bits(cfg.depth("O")), shape=C * 32)),
            "obuf_w": In(WritePort.Signature(addr_width=addr_bits(cfg.depth("O")), shape=C * 32)),
            "meta_r": In(ReadPort.Signature(addr_width=ma, shape=cfg.meta_bits)),
            "meta_w": In(WritePort.Signature(addr_width=ma, shape=cfg.meta_bits)),
            "busy": Out(1),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        R, C, L, k, E = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.experts
        P, G, Q = cfg.planes_per_row, cfg.lanes // cfg.cols, cfg.act_qmax

        state = Signal(_State)
        cnt = Signal(20)
        mode = Signal()
        kreg = Signal(16)
        nch = Signal(16)
        xl = Signal(20)
        wcount = Signal(4)         # W: plane writes per chunk
        xbase = Signal(24)         # x + t*XL (quant) / o (scaleout)
        bfield = Signal(16)
        metab = Signal(10)
        ntok = Signal(7)
        ntiles = Signal(8)
        tok = Signal(7)
        chunk = Signal(16)
        sub = Signal(8)            # j within a chunk: 0..G+W-1
        rline = Signal(20)         # next XBUF line (within the token) the quantize pass reads
        qline = Signal(17)         # next QBUF line written
        total = Signal(17)         # scaleout: ntiles*ntok
        so_t = Signal(7)
        so_n = Signal(8)
        so_line = Signal(24)

        nch_c = (self.k_features + (L - 1)) // L
        first_state = _State.ROUTER if E >= 2 else _State.MIX
        m.d.comb += self.busy.eq(state != _State.IDLE)

        # ---- one-cycle tag pipeline: what the read data arriving next cycle is for ---------------
        t_router, t_mix, t_quant, t_so = Signal(), Signal(), Signal(), Signal()
        t_line = Signal(20)        # XBUF line within the token (for the K mask)
        t_grp = Signal(range(G))   # lane group within the chunk (quantize gather)
        d_router, d_mix, d_quant, d_so = Signal(), Signal(), Signal(), Signal()
        d_line = Signal(20)
        d_grp = Signal(range(G))
        d_soline = Signal(24)
        m.d.sync += [d_router.eq(t_router), d_mix.eq(t_mix), d_quant.eq(t_quant), d_so.eq(t_so),
                     d_line.eq(t_line), d_grp.eq(t_grp), d_soline.eq(so_line)]
        m.d.comb += [self.xbuf.en.eq(1), self.sbuf.en.eq(1), self.obuf_r.en.eq(1), self.meta_r.en.eq(1)]

        # ---- datapath: lanes of the arriving lines ------------------------------------------------
        xs = [self.xbuf.data.word_select(j, 16).as_signed() for j in range(C)]
        svals = [[self.sbuf.data.word_select(e * C + j, 16).as_signed() for j in range(C)]
                 for e in range(max(E, 1))]
        in_k = [((d_line * C + j) < kreg) for j in range(C)]
        xm = [Mux(in_k[j], xs[j], 0) for j in range(C)]

        gates = [Signal(16, name=f"gate{e}") for e in range(E)]
        gate_vals = list(gates) if E >= 2 else [Const(F.GATE_ONE, 16)] * E

        def mix(gv, j):  # formats.mix_scale over the experts of lane j
            s = sum(g * svals[e][j] for e, g in enumerate(gv))
            return sat(rshift_round(s, Const(15, 4), 40), 16)

        if E >= 1:
            v = [Signal(signed(32), name=f"v{j}") for j in range(C)]
            for j in range(C):
                m.d.comb += v[j].eq(xm[j] * mix(gate_vals, j))
        else:
            v = [Signal(signed(32), name=f"v{j}") for j in range(C)]
            for j in range(C):
                m.d.comb += v[j].eq(xm[j])

        # Router accumulators
        racc = [Signal(signed(F.ROUTER_ACC_BITS), name=f"racc{e}") for e in range(E)]
        if E >= 2:
            with m.If(d_router):
                for e in range(E):
                    m.d.sync += racc[e].eq(racc[e] + sum(xm[j] * svals[e][j] for j in range(C)))

        # Running max |v|, RQ and D
        vmax = Signal(31)
        absv = [Mux(v[j] < 0, -v[j], v[j])[:31] for j in range(C)]
        with m.If(d_mix):
            newmax = vmax
            for j in range(C):
                newmax = Mux(absv[j] > newmax, absv[j], newmax)
            m.d.sync += vmax.eq(newmax)
        rq = Signal(40)
        m.d.comb += rq.eq(Const(Q << 32, 40) // Mux(vmax == 0, 1, vmax))
        dval = Signal(32)
        m.d.comb += dval.eq((vmax * F.inv_q(k) + (1 << 15)) >> 16)

        # Quantize gather: plane bits of lanes d_grp*C + j
        planes = [Signal(L, name=f"plane{b}") for b in range(k)]
        with m.If(d_quant):
            for j in range(C):
                if k == 1:
                    bits = [Mux(in_k[j], v[j] >= 0, 0)]
                else:
                    qv = (v[j] * rq + (1 << 31)) >> 32
                    qc = Mux(qv > Q, Q, Mux(qv < -Q, -Q, qv))[:k]
                    bits = [Mux(in_k[j], qc[b], 0) for b in range(k)]
                for b in range(k):
                    with m.Switch(d_grp):
                        for g in range(G):
                            with m.Case(g):
                                m.d.sync += planes[b][g * C + j].eq(bits[b])

        # ---- softmax (GATES) ---------------------------------------------------------------------
        if E >= 2:
            logits = [Signal(signed(16), name=f"logit{e}") for e in range(E)]
            pvals = [Signal(16, name=f"p{e}") for e in range(E)]
            rom = Memory(shape=16, depth=256, init=F.EXP2_LUT)
            m.submodules.exp2_lut = rom
            rport = rom.read_port()
            lmax = logits[0]
            for e in range(1, E):
                lmax = Mux(logits[e] > lmax, logits[e], lmax)
            lsel = Array(logits)[(cnt - 2)[:max(1, (E - 1).bit_length())]]
            dd = (lmax - lsel)[:17]
            dcl = Mux(dd > 0xFFFF, 0xFFFF, dd)[:16]
            u = Signal(18)
            m.d.comb += [u.eq((dcl * F.LOG2E_Q10 + 512) >> 10), rport.addr.eq(u[:8]), rport.en.eq(1)]
            nsh = Signal(10)
            pe_idx = Signal(range(E))
            m.d.sync += [nsh.eq(u >> 8), pe_idx.eq((cnt - 2)[:len(pe_idx)])]
            psum = sum(pvals)
            rcp = Signal(32)
            m.d.comb += rcp.eq(Const(1 << 30, 31) // Mux(psum == 0, 1, psum))
            with m.If(state == _State.GATES):
                with m.If(cnt == 1):
                    for e in range(E):
                        m.d.sync += logits[e].eq(sat(rshift_round(racc[e], self.rshift, 49), 16))
                with m.If((cnt >= 3) & (cnt <= E + 2)):
                    with m.Switch(pe_idx):
                        for e in range(E):
                            with m.Case(e):
                                m.d.sync += pvals[e].eq(Mux(nsh < 16, rport.data >> nsh[:4], 0))
                with m.If(cnt == E + 3):
                    for e in range(E):
                        m.d.sync += gates[e].eq((pvals[e] * rcp + (1 << 14)) >> 15)

        # ---- scaleout stage 1 (data of the item read last cycle) -> result register --------------
        so_valid = Signal()
        so_wline = Signal(24)
        so_data = Signal(C * 32)
        meta_d = self.meta_r.data[:32]
        meta_g = [self.meta_r.data[32 + 16 * e: 48 + 16 * e] for e in range(E)]
        outs = []
        for j in range(C):
            acc = self.obuf_r.data.word_select(j, 32).as_signed()
            s_out = mix(meta_g, j) if E >= 1 else self.smul
            outs.append(sat(rshift_round(acc * meta_d * s_out, self.oshift, 84), 32))
        m.d.sync += [so_valid.eq(d_so), so_wline.eq(d_soline), so_data.eq(Cat(outs))]
        m.d.comb += [self.obuf_w.addr.eq(so_wline), self.obuf_w.data.eq(so_data),
                     self.obuf_w.en.eq(so_valid), self.obuf_r.addr.eq(so_line),
                     self.meta_r.addr.eq(metab + so_t)]

        # ---- reads and writes driven by the state --------------------------------------------------
        m.d.comb += [self.xbuf.addr.eq(xbase + cnt), self.sbuf.addr.eq(self.sin + cnt)]
        m.d.comb += [t_line.eq(cnt)]
        with m.Switch(state):
            with m.Case(_State.ROUTER):
                m.d.comb += [t_router.eq(1), self.sbuf.addr.eq(self.router + cnt)]
            with m.Case(_State.MIX):
                m.d.comb += t_mix.eq(1)
            with m.Case(_State.RQ, _State.QUANT):
                rd = Signal()
                if G > 1:
                    m.d.comb += rd.eq((state == _State.RQ) | (sub < G - 1) |
                                      ((sub == G + wcount - 1) & (chunk != nch - 1)))
                else:
                    m.d.comb += rd.eq((state == _State.RQ) | ((sub == G + wcount - 1) & (chunk != nch - 1)))
                m.d.comb += [t_quant.eq(rd), t_line.eq(rline),
                             self.xbuf.addr.eq(xbase + rline), self.sbuf.addr.eq(self.sin + rline),
                             t_grp.eq(Mux((state == _State.RQ) | (sub >= G - 1), 0, sub + 1))]
                with m.If(rd):
                    m.d.sync += rline.eq(rline + 1)
                # plane writes
                wb = (sub - G)[:3]
                with m.If((state == _State.QUANT) & (sub >= G)):
                    m.d.sync += qline.eq(qline + 1)
                    m.d.comb += [self.qbuf.addr.eq(qline)]
                    with m.If(mode == 0):
                        m.d.comb += [self.qbuf.data.eq(Array(planes)[wb].replicate(R)),
                                     self.qbuf.en.eq(Const(1, R) << tok)]
                    with m.Else():
                        groups = []
                        for p in range(P):
                            groups.append(Cat(planes[p * R + i] if p * R + i < k else Const(0, L)
                                              for i in range(R)))
                        m.d.comb += [self.qbuf.data.eq(Array(groups)[wb[:max(1, (P - 1).bit_length())]]
                                                       if P > 1 else groups[0]),
                                     self.qbuf.en.eq((1 << R) - 1)]
            with m.Case(_State.META):
                m.d.comb += [self.meta_w.addr.eq(metab + tok), self.meta_w.en.eq(1),
                             self.meta_w.data.eq(Cat(dval, *gate_vals))]
            with m.Case(_State.SCALEOUT):
                m.d.comb += t_so.eq(cnt < total)
                m.d.comb += self.sbuf.addr.eq(bfield + so_n)

        # ---- state machine -------------------------------------------------------------------------
        def begin_token():
            stmts = [cnt.eq(0), state.eq(first_state), vmax.eq(0), rline.eq(0)]
            stmts += [r.eq(0) for r in racc]
            return stmts

        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    m.d.sync += [mode.eq(self.mode), kreg.eq(self.k_features), nch.eq(nch_c),
                                 xl.eq(nch_c * G), wcount.eq(Mux(self.mode, P, k)), xbase.eq(self.a),
                                 bfield.eq(self.b), metab.eq(self.meta), ntok.eq(self.ntok),
                                 ntiles.eq(self.ntiles), tok.eq(0), qline.eq(self.b),
                                 total.eq(self.ntiles * self.ntok), so_t.eq(0), so_n.eq(0),
                                 so_line.eq(self.a), cnt.eq(0)]
                    with m.If(self.op):
                        m.d.sync += state.eq(_State.SCALEOUT)
                    with m.Else():
                        m.d.sync += begin_token()
            with m.Case(_State.ROUTER):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == xl - 1):
                    m.d.sync += [state.eq(_State.GATES), cnt.eq(0)]
            with m.Case(_State.GATES):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == E + 3):
                    m.d.sync += [state.eq(_State.MIX), cnt.eq(0)]
            with m.Case(_State.MIX):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == xl - 1):
                    m.d.sync += [state.eq(_State.RQ), cnt.eq(0)]
            with m.Case(_State.RQ):
                m.d.sync += [state.eq(_State.QUANT), chunk.eq(0), sub.eq(0)]
            with m.Case(_State.QUANT):
                m.d.sync += sub.eq(sub + 1)
                with m.If(sub == G + wcount - 1):
                    m.d.sync += [sub.eq(0), chunk.eq(chunk + 1)]
                    with m.If(chunk == nch - 1):
                        m.d.sync += state.eq(_State.META)
            with m.Case(_State.META):
                with m.If(tok == ntok - 1):
                    m.d.sync += state.eq(_State.IDLE)
                with m.Else():
                    m.d.sync += [tok.eq(tok + 1), xbase.eq(xbase + xl),
                                 qline.eq(Mux(mode, qline, bfield))]
                    m.d.sync += begin_token()
            with m.Case(_State.SCALEOUT):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt < total):  # advance to the next (n, t)
                    with m.If(so_t == ntok - 1):
                        m.d.sync += [so_t.eq(0), so_n.eq(so_n + 1),
                                     so_line.eq(so_line + Mux(mode, 1, R) - so_t)]
                    with m.Else():
                        m.d.sync += [so_t.eq(so_t + 1), so_line.eq(so_line + 1)]
                with m.If(cnt == total + 1):
                    m.d.sync += state.eq(_State.IDLE)
        return m
