"""SystolicArray: R x C XnorPopcountPEs and the sequencer that runs one ``matmul`` (docs/isa.md).

Dataflow: each step the sequencer reads one QBUF line (R slots of L bits) and one WBUF line (C words
of L bits). Activation slot i enters row i and moves right one PE per cycle; weight word j enters
column j and moves down one PE per cycle; row i and column j inputs are skewed by i and j cycles, so
PE (i, j) sees step s at cycle s + i + j after it enters. The plane index and
the valid flag travel with the activation (the mask in the XNOR form only).

* token mode: row i holds token slot i; each step is one (chunk, plane); the drain writes one OBUF
  line per row (``o + n*R + i``).
* plane mode: row i < Ra holds plane b = p*R + i; each step is one (chunk, plane group); the drain
  sums the Ra rows of each column and writes one line (``o + n``).

Each PE holds only the weight-dependent half of ``plane_weight * plane_dot``; the half a row shares
(its active-lane count and the sign plane's correction) is one "row term" per row (``_row_term``), added
at the drain. Pipeline: the read words are registered at the array's edge
(``bitmos.semantics.ARRAY_OPERAND_REGISTER``), a PE registers its popcount before accumulating
(``ARRAY_PE_PIPELINE``); the drain registers the selected row, then its sum with the
row term (``ARRAY_DRAIN_PIPELINE``), and the OBUF write comes from that register.

Timing matches ``bitmos.semantics`` (``1 + ntiles*T_tile + T_drain``): the read for step s of tile n
is issued at cycle n*T_tile + s (data one cycle later, registered one more); PE (i, j) sees it j + i
cycles after that and accumulates it ARRAY_PE_PIPELINE cycles later, so row i is final in every
column at tile cycle S + C + 3 + i. The drain then visits row i (select and clear), so tile n+1 may start its steps at
S + C: a row is cleared the cycle before the next tile's first step reaches its column 0. Tiles
overlap their drain with the next tile's fill; the last tile runs its own S + C + 3 + D + 2 cycles.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import isa
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import AMARANTH_OPS, addr_bits, check_config
from bitmos.rtl.layouts import instruction_layout
from bitmos.rtl.pe import XnorPopcountPE, popcount, popcount_split
from bitmos.rtl.signatures import LayerRegistersSignature

__all__ = ["SystolicArray", "sext"]


def sext(v, width: int):
    """Sign-extend (or truncate) the bits of ``v`` to ``width`` bits."""
    if len(v) >= width:
        return v[:width]
    return Cat(v, v[-1].replicate(width - len(v)))


class SystolicArray(wiring.Component):
    """The ``matmul`` engine: R x C PEs, operand skew, token and plane mode, drain.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Geometry (rows, cols, lanes), act_bits, acc_bits and buffer depths.

    Attributes
    ----------
    start : In(1)
        Pulse in the issue cycle; the fields below are sampled with it.
    mode, q, w, o, ntiles : In
        The ``matmul`` fields (docs/isa.md), shaped as ``bitmos.isa.SPECS`` says.
    regs : In(LayerRegistersSignature)
        The layer registers; the array reads K (``regs.k``, also reachable as ``k_features``).
    qbuf, wbuf : In(ReadPort.Signature)
        QBUF and WBUF read ports (synchronous, one cycle latency).
    obuf : In(WritePort.Signature)
        OBUF write port.
    busy : Out(1)
        High in the ``ntiles * T_tile`` cycles after the issue cycle.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        R, C, L = cfg.rows, cfg.cols, cfg.lanes
        super().__init__({
            "start": In(1),
            **{name: In(field.shape) for name, field in instruction_layout(isa.Op.MATMUL)},
            "regs": In(LayerRegistersSignature()),
            "qbuf": In(ReadPort.Signature(addr_width=addr_bits(cfg.depth("Q")), shape=R * L)),
            "wbuf": In(ReadPort.Signature(addr_width=addr_bits(cfg.depth("W")), shape=C * L)),
            "obuf": In(WritePort.Signature(addr_width=addr_bits(cfg.depth("O")), shape=C * 32)),
            "busy": Out(1),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    @property
    def k_features(self):
        """Register K (``regs.k``), under the name the unit benches drive."""
        return self.regs.k

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        R, C, L, k = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits
        P, Ra = cfg.planes_per_row, cfg.plane_rows
        pbits = max(1, ceil_log2(k))
        A = cfg.acc_bits

        # ---- sequencer: tile n's steps start at n*T_tile; the last tile runs its own length --------
        # Every per-cycle decision is a registered flag or a compare with zero (no wide compare
        # between counters feeds the enables): ``tleft`` counts the tile's cycles down, ``reading``
        # is set for the first S cycles of a tile.
        mode = Signal()
        nch = Signal(16)
        steps = Signal(20)       # S: steps per tile
        pitch_m1 = Signal(20)    # T_tile - 1: cycles between tile starts, minus one
        tlast_m1 = Signal(20)    # T_tile + T_drain - 1: the last tile's length, minus one
        fill_end = Signal(20)    # S + C - 1: the cycle the drain is scheduled from
        tiles_left = Signal(9)
        last_tile = Signal()     # tiles_left == 1
        loading = Signal()       # the first cycle after start: tleft is loaded, not counted
        tleft = Signal(20)       # cycles of this tile after the current one
        tile_end = Signal()      # registered tleft == 0 (not loading): the enable of every tile register
        tc = Signal(20)          # cycle within the tile
        reading = Signal()       # tc < S: this cycle issues a step's reads
        qline = Signal(17)       # q + s
        wbase = Signal(17)       # w + n*nch (sign-only arrays; with weight planes wline runs on)
        obase = Signal(17)       # o + n*R (token) or o + n (plane)
        q0 = Signal(16)
        chunk = Signal(16)       # c of the current step
        sub = Signal(3)          # plane b (token) or plane group p (plane) of the current step
        rem = Signal(signed(18))  # K - c*L: lanes of this chunk that are in range
        kreg = Signal(16)
        # integer weights (weight_bits >= 2): each chunk is read once per weight plane p, the k (or P)
        # activation steps innermost, so WBUF line w + n*wlines + c*planes + p is read for k steps
        WB = cfg.weight_bits
        wint = Signal()          # this MATMUL's weights are integer planes (WBITS != 0); held for it
        nwp_m1 = Signal(3)       # weight planes - 1
        wp = Signal(max(1, ceil_log2(WB)))   # weight plane p of the current step
        wline = Signal(17)       # the current step's WBUF line
        qchunk = Signal(17)      # q + c*(k or P): where the chunk's activation steps restart

        wbits = self.regs.wbits
        nch_c = (self.regs.k + (L - 1)) // L
        steps_c = sem.matmul_steps(cfg, self.regs.k, self.mode, AMARANTH_OPS, w_bits=wbits)
        t_tile = sem.matmul_tile_cycles(cfg, self.regs.k, self.mode, AMARANTH_OPS, w_bits=wbits)
        if WB >= 2:
            with m.If(self.start):
                m.d.sync += [wint.eq(wbits != 0), nwp_m1.eq(Mux(wbits == 0, 0, wbits - 1)),
                             wp.eq(0), wline.eq(self.w), qchunk.eq(self.q)]
        with m.If(self.start):
            m.d.sync += [
                mode.eq(self.mode), nch.eq(nch_c), kreg.eq(self.regs.k), steps.eq(steps_c),
                pitch_m1.eq(t_tile - 1),
                tlast_m1.eq(t_tile + sem.matmul_drain_cycles(cfg, self.regs.k, self.mode, AMARANTH_OPS,
                                                             w_bits=wbits) - 1),
                fill_end.eq(steps_c + (C - 1)),
                tiles_left.eq(self.ntiles), last_tile.eq(self.ntiles == 1), loading.eq(1), tile_end.eq(0),
                tc.eq(0),
                reading.eq(1),
                q0.eq(self.q), qline.eq(self.q), wbase.eq(self.w), obase.eq(self.o),
                chunk.eq(0), sub.eq(0), rem.eq(self.regs.k),
            ]
        with m.Elif(self.busy):
            last_sub = Mux(mode, P - 1, k - 1)
            m.d.sync += loading.eq(0)
            with m.If(tile_end):                                   # next tile (its length is >= 2)
                m.d.sync += [tile_end.eq(0), tc.eq(0), tiles_left.eq(tiles_left - 1), last_tile.eq(tiles_left == 2),
                             tleft.eq(Mux(tiles_left == 2, tlast_m1, pitch_m1)), reading.eq(1),
                             qline.eq(q0), obase.eq(obase + Mux(mode, 1, R)),
                             chunk.eq(0), sub.eq(0), rem.eq(kreg)]
                if WB >= 2:   # wline is already the next tile's first line: the tile read wlines of them
                    m.d.sync += [wp.eq(0), qchunk.eq(q0)]
                else:
                    m.d.sync += wbase.eq(wbase + nch)
            with m.Else():
                m.d.sync += [tc.eq(tc + 1), tleft.eq(Mux(loading, Mux(last_tile, tlast_m1, pitch_m1), tleft) - 1),
                             tile_end.eq(Mux(loading, Mux(last_tile, tlast_m1, pitch_m1) == 1, tleft == 1))]
                with m.If(reading):
                    m.d.sync += reading.eq(tc + 1 != steps)
                    if WB >= 2:
                        self._next_step_planes(m, L, sub, last_sub, wp, nwp_m1, wline, qline, qchunk, chunk, rem)
                    else:
                        m.d.sync += qline.eq(qline + 1)
                        with m.If(sub == last_sub):
                            m.d.sync += [sub.eq(0), chunk.eq(chunk + 1), rem.eq(rem - L)]
                        with m.Else():
                            m.d.sync += sub.eq(sub + 1)
        m.d.comb += self.busy.eq(tiles_left != 0)

        m.d.comb += [
            self.qbuf.addr.eq(qline), self.wbuf.addr.eq(wline if WB >= 2 else wbase + chunk),
            self.qbuf.en.eq(1), self.wbuf.en.eq(1),
        ]
        # Step info, aligned with the read data one cycle later.
        d_valid = Signal()
        d_sub = Signal(3)
        d_mask = Signal(L)
        d_wp, d_wneg = Signal.like(wp), Signal()
        m.d.sync += [d_wp.eq(wp), d_wneg.eq(wint & (wp == nwp_m1))]
        # lane l is in range iff l < rem: all lanes while rem >= L, else a thermometer of rem's low bits
        lb = ceil_log2(L)
        full = ~rem[-1] & (rem[lb:] != 0) if lb < len(rem) else Const(0)
        def partial(l):   # lane l of a partial chunk; the top lane of a power-of-two L only when full
            if l == 0:
                return rem != 0
            if l >= (1 << lb) - 1:
                return Const(0)
            return Const(l, max(lb, 1)) < rem[:max(lb, 1)]
        mask_now = Cat(full | ~rem[-1] & partial(l) for l in range(L))
        m.d.sync += [d_valid.eq(self.busy & reading), d_sub.eq(sub), d_mask.eq(mask_now)]

        # ---- the operand register (ARRAY_OPERAND_REGISTER): the read words and their step info are
        # registered before any logic. The words pass through a mask that changes no result (AND form:
        # the chunk's lane mask, which it applies anyway; XNOR form and WBUF: the step's valid bit, as
        # an invalid step is never accumulated), because Yosys folds a register that takes a block
        # RAM's read data unchanged into the memory's read port, and the path stays as it was.
        assert sem.ARRAY_OPERAND_REGISTER == 1, "the RTL below registers the operands once"
        a_word = Signal(R * L)
        w_word = Signal(C * L)
        e_valid, e_sub, e_mask = Signal(), Signal(3), Signal(L)
        e_wp, e_wneg = Signal.like(wp), Signal()
        valid_lanes = d_valid.replicate(L)
        m.d.sync += [
            a_word.eq(Cat((self.qbuf.data.word_select(i, L) & (valid_lanes if k == 1 else d_mask))
                          for i in range(R))),
            w_word.eq(Cat(self.wbuf.data.word_select(j, L) & valid_lanes for j in range(C))),
            e_valid.eq(d_valid), e_sub.eq(d_sub), e_mask.eq(d_mask), e_wp.eq(d_wp), e_wneg.eq(d_wneg),
        ]

        # ---- the PE grid with skew ---------------------------------------------------------------
        pes = [[XnorPopcountPE(lanes=L, act_bits=k, acc_bits=A, weight_bits=WB) for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]
        assert XnorPopcountPE.LATENCY == sem.ARRAY_PE_PIPELINE

        # What moves right: the activation word (AND form: masked at the row entry, so the mask need
        # not travel), the mask (XNOR form only), the plane index and valid; with integer weights
        # also the weight plane index and its sign-plane flag (wint is held for the whole MATMUL).
        def bundle(name):
            sigs = [Signal(L, name=f"{name}_a"), Signal(pbits, name=f"{name}_plane"),
                    Signal(name=f"{name}_valid")]
            if WB >= 2:
                return sigs + [Signal.like(wp, name=f"{name}_wplane"), Signal(name=f"{name}_wneg")]
            return sigs + ([Signal(L, name=f"{name}_mask")] if k == 1 else [])

        def delay(m, src, n, name):
            cur = src
            for d in range(n):
                nxt = [Signal.like(s, name=f"{name}_d{d}_{s.name.rsplit('_', 1)[-1]}") for s in cur]
                m.d.sync += [a.eq(b) for a, b in zip(nxt, cur)]
                cur = nxt
            return cur

        clear = [Signal(name=f"row{i}_clear") for i in range(R)]
        row_term = [Signal(signed(A), name=f"row{i}_term") for i in range(R)]
        for i in range(R):
            src = bundle(f"row{i}_in")
            plane_tok = e_sub
            plane_pl = e_sub * R + i
            row_ok = Const(1) if i < Ra else Const(0)
            m.d.comb += [
                src[0].eq(a_word.word_select(i, L)),
                src[1].eq(Mux(mode, plane_pl, plane_tok)),
                src[2].eq(e_valid & Mux(mode, row_ok & (plane_pl < k), 1)),
            ]
            if k == 1:
                m.d.comb += src[3].eq(e_mask)
            if WB >= 2:
                m.d.comb += [src[3].eq(e_wp), src[4].eq(e_wneg)]
            cur = delay(m, src, i, f"row{i}_skew")
            self._row_term(m, cur, row_term[i], clear[i], f"row{i}", wint)
            for j in range(C):
                pe = pes[i][j]
                m.d.comb += [pe.a.eq(cur[0]), pe.plane.eq(cur[1]), pe.valid.eq(cur[2]), pe.clear.eq(clear[i])]
                if k == 1:
                    m.d.comb += pe.mask.eq(cur[3])
                if WB >= 2:
                    m.d.comb += [pe.wint.eq(wint), pe.wplane.eq(cur[3]), pe.wneg.eq(cur[4])]
                if j < C - 1:
                    cur = delay(m, cur, 1, f"pe_{i}_{j}_right")
        for j in range(C):
            src = Signal(L, name=f"col{j}_in")
            m.d.comb += src.eq(w_word.word_select(j, L))
            cur = delay(m, [src], j, f"col{j}_skew")
            for i in range(R):
                m.d.comb += pes[i][j].w.eq(cur[0])
                if i < R - 1:
                    cur = delay(m, cur, 1, f"pe_{i}_{j}_down")

        # ---- drain: row r of a tile is final in every column S + C + ARRAY_OPERAND_REGISTER +
        # ARRAY_PE_PIPELINE cycles after the tile's start; it is visited (selected and cleared) then,
        # one row a cycle, while the next tile's steps may already be entering. Scheduled at tile
        # cycle S + C - 1, the last cycle before that any tile reaches, and carried by a delay line.
        rows = Signal(range(R + 1))
        m.d.comb += rows.eq(Mux(mode, Ra, R))
        go_delay = sem.ARRAY_OPERAND_REGISTER + sem.ARRAY_PE_PIPELINE + 1
        go = [Signal(name=f"drain_go_{d}") for d in range(go_delay + 1)]
        # the tile's OBUF base travels with its go: tiles may start every S + C >= C + 1 cycles, fewer
        # than the go_delay cycles of the line
        go_obases = [Signal(17, name=f"drain_obase_{d}") for d in range(go_delay)]
        go_obase = go_obases[-1]
        m.d.comb += go[0].eq(self.busy & (tc == fill_end))
        m.d.sync += [go[d + 1].eq(go[d]) for d in range(go_delay)]
        m.d.sync += [go_obases[0].eq(obase)] + [go_obases[d + 1].eq(go_obases[d]) for d in range(go_delay - 1)]
        dr_active = Signal()
        dr_row = Signal(range(max(R, 2)))
        dr_obase = Signal(17)
        # row 0 is visited in the cycle go arrives, rows 1..rows-1 on the following cycles; the row
        # being visited is drained from and cleared in the same cycle
        visit = Signal()
        m.d.comb += visit.eq(go[go_delay] | dr_active)
        vrow = Signal.like(dr_row)
        m.d.comb += vrow.eq(Mux(go[go_delay], 0, dr_row))
        vobase = Signal(17)
        m.d.comb += vobase.eq(Mux(go[go_delay], go_obase, dr_obase))
        with m.If(go[go_delay]):
            m.d.sync += [dr_active.eq(rows != 1), dr_row.eq(1), dr_obase.eq(go_obase)]
        with m.Elif(dr_active):
            m.d.sync += dr_row.eq(dr_row + 1)
            with m.If(dr_row == rows - 1):
                m.d.sync += dr_active.eq(0)
        for i in range(R):
            m.d.comb += clear[i].eq(visit & (vrow == i))

        # stage 1: the visited row's accumulators and row term
        sel = [Signal(signed(A), name=f"drain_sel_{j}") for j in range(C)]
        sel_term = Signal(signed(A))
        s1 = Signal()
        s1_row = Signal.like(dr_row)
        s1_obase = Signal(17)
        m.d.sync += [s1.eq(visit), s1_row.eq(vrow), s1_obase.eq(vobase)]
        with m.Switch(vrow):
            for i in range(R):
                with m.Case(i):
                    m.d.sync += [sel[j].eq(pes[i][j].acc) for j in range(C)]
                    m.d.sync += sel_term.eq(row_term[i])
        # stage 2: add the row term; plane mode sums the rows into the same register
        val = [Signal(signed(A), name=f"drain_val_{j}") for j in range(C)]
        s2_write = Signal()      # the stage-2 register is written to OBUF: every token row, a plane tile's last row
        s2_row = Signal.like(dr_row)
        s2_obase = Signal(17)
        m.d.sync += [s2_write.eq(s1 & (~mode | (s1_row == rows - 1))), s2_row.eq(s1_row), s2_obase.eq(s1_obase)]
        keep = mode & (s1_row != 0)
        with m.If(s1):
            m.d.sync += [val[j].eq(Mux(keep, val[j], 0) + sel[j] + sel_term) for j in range(C)]
        # the OBUF write, from the stage-2 registers; its enable is a register (the top level chooses
        # OBUF's writer with it). A drain runs only inside the MATMUL's busy window, whose length
        # (semantics.matmul_drain_cycles) ends with the last write.
        m.d.comb += [
            self.obuf.en.eq(s2_write.replicate(len(self.obuf.en))),
            self.obuf.addr.eq(Mux(mode, s2_obase, s2_obase + s2_row)),
            self.obuf.data.eq(Cat(sext(v, 32) for v in val)),
        ]
        return m

    @staticmethod
    def _next_step_planes(m, lanes, sub, last_sub, wp, nwp_m1, wline, qline, qchunk, chunk, rem):
        """The step after this one with weight planes: the activation steps of a chunk (sub) are run
        once per weight plane p (the QBUF lines from the chunk's start again), then the next chunk; the
        WBUF line moves on after each run, as (chunk, plane) pairs are consecutive lines."""
        with m.If(sub == last_sub):
            m.d.sync += [sub.eq(0), wline.eq(wline + 1)]
            with m.If(wp == nwp_m1):
                m.d.sync += [wp.eq(0), chunk.eq(chunk + 1), rem.eq(rem - lanes),
                             qline.eq(qline + 1), qchunk.eq(qline + 1)]
            with m.Else():
                m.d.sync += [wp.eq(wp + 1), qline.eq(qchunk)]
        with m.Else():
            m.d.sync += [sub.eq(sub + 1), qline.eq(qline + 1)]

    def _row_term(self, m, cur, term, clear, name, wint):
        """The part of ``plane_weight * plane_dot`` every PE of a row shares, accumulated in step with
        the row's column-0 PE (same pipeline, same clear): AND form ``-(total << b)``, and for the
        sign plane ``(total << b) + 1`` (undoing the PEs' ones' complement); XNOR form ``-total``;
        ``total`` is the row's active-lane count. An integer-weight step (``wint``) adds only the 1
        of a negated step (activation sign plane XOR weight sign plane) and no total."""
        k, L = self._cfg.act_bits, self._cfg.lanes
        a, plane, valid = cur[0], cur[1], cur[2]
        # the same pipelined tree as the PEs', so the row term is updated in step with column 0
        assert XnorPopcountPE.LATENCY == 2
        total_now = popcount(m, cur[3] if k == 1 else a, f"{name}_total", register_at=popcount_split(L))
        total = Signal(ceil_log2(L + 1), name=f"{name}_total")
        tplane_mid, tplane = Signal.like(plane, name=f"{name}_tplane_mid"), Signal.like(plane, name=f"{name}_tplane")
        tvalid_mid, tvalid = Signal(name=f"{name}_tvalid_mid"), Signal(name=f"{name}_tvalid")
        m.d.sync += [tplane_mid.eq(plane), tvalid_mid.eq(valid),
                     total.eq(total_now), tplane.eq(tplane_mid), tvalid.eq(tvalid_mid)]
        # t + 1 with t = x (sign plane) or ~x = -x - 1 (the others), x = total << b zero-extended; the
        # + 1 is the carry into one adder (both operands get a low 1 bit), so the path is shift, XOR
        # and one carry chain, as in the PEs
        t = Signal(signed(len(total) + k + 1), name=f"{name}_t")
        if k == 1:
            m.d.comb += t.eq(~Cat(total, Const(0, 1)).as_signed())
        else:
            shifted = Cat(total << tplane, Const(0, 1)).as_signed()
            sign_form = Mux(tplane == k - 1, shifted, ~shifted)
            if self._cfg.weight_bits >= 2:   # t + 1 = 1 for a negated integer step, else 0
                twneg_mid, twneg = Signal(name=f"{name}_twneg_mid"), Signal(name=f"{name}_twneg")
                m.d.sync += [twneg_mid.eq(cur[4]), twneg.eq(twneg_mid)]
                negated = (tplane == k - 1) ^ twneg
                m.d.comb += t.eq(Mux(wint, Mux(negated, 0, -1), sign_form))
            else:
                m.d.comb += t.eq(sign_form)
        plus_one = Signal(signed(len(term) + 1), name=f"{name}_sum")
        m.d.comb += plus_one.eq(Cat(Const(1, 1), term).as_signed() + Cat(Const(1, 1), t).as_signed())
        with m.If(clear):
            m.d.sync += term.eq(0)
        with m.Elif(tvalid):
            m.d.sync += term.eq(plus_one[1:])
