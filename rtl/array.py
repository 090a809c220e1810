"""SystolicArray: R x C XnorPopcountPEs and the sequencer that runs one ``matmul`` (docs/isa.md).

Dataflow: each step the sequencer reads one QBUF line (R slots of L bits) and one WBUF line (C words
of L bits). Activation slot i enters row i and moves right one PE per cycle; weight word j enters
column j and moves down one PE per cycle; row i and column j inputs are skewed by i and j cycles, so
PE (i, j) sees step s at cycle s + i + j after it enters. The chunk's lane mask, the plane index and
the first-step flag travel with the activation.

* token mode: row i holds token slot i; each step is one (chunk, plane); drain writes one OBUF line
  per row in R cycles (``o + n*R + i``).
* plane mode: row i < Ra holds plane b = p*R + i; each step is one (chunk, plane group); one drain
  cycle writes the column sums over the Ra rows (``o + n``).

Timing per tile matches ``bitmos.semantics.matmul_tile_cycles`` exactly: the read for step s is issued in
tile cycle s (data one cycle later), the last partial sum reaches PE (Ra-1, C-1) in cycle
S + Ra + C - 2 and the drain occupies the final R (token) or 1 (plane) cycles.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config
from bitmos.rtl.layouts import instruction_layout
from bitmos.rtl.pe import XnorPopcountPE
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

        # ---- sequencer --------------------------------------------------------------------------
        mode = Signal()
        nch = Signal(16)
        steps = Signal(20)       # S: steps per tile
        tlen = Signal(20)        # T_tile
        tiles_left = Signal(9)
        tc = Signal(20)          # cycle within the tile
        qline = Signal(17)       # q + s
        wbase = Signal(17)       # w + n*nch
        obase = Signal(17)       # o + n*R (token) or o + n (plane)
        q0 = Signal(16)
        chunk = Signal(16)       # c of the current step
        sub = Signal(3)          # plane b (token) or plane group p (plane) of the current step
        rem = Signal(signed(18))  # K - c*L: lanes of this chunk that are in range
        kreg = Signal(16)

        nch_c = (self.regs.k + (L - 1)) // L
        with m.If(self.start):
            m.d.sync += [
                mode.eq(self.mode), nch.eq(nch_c), kreg.eq(self.regs.k),
                steps.eq(Mux(self.mode, nch_c * P, nch_c * k)),
                tlen.eq(Mux(self.mode, nch_c * P + (Ra + C - 1) + 1, nch_c * k + (R + C - 1) + R)),
                tiles_left.eq(self.ntiles), tc.eq(0),
                q0.eq(self.q), qline.eq(self.q), wbase.eq(self.w), obase.eq(self.o),
                chunk.eq(0), sub.eq(0), rem.eq(self.regs.k),
            ]
        with m.Elif(self.busy):
            last_sub = Mux(mode, P - 1, k - 1)
            with m.If(tc == tlen - 1):                    # next tile
                m.d.sync += [tc.eq(0), tiles_left.eq(tiles_left - 1), qline.eq(q0),
                             wbase.eq(wbase + nch), obase.eq(obase + Mux(mode, 1, R)),
                             chunk.eq(0), sub.eq(0), rem.eq(kreg)]
            with m.Else():
                m.d.sync += tc.eq(tc + 1)
                with m.If(tc < steps):
                    m.d.sync += qline.eq(qline + 1)
                    with m.If(sub == last_sub):
                        m.d.sync += [sub.eq(0), chunk.eq(chunk + 1), rem.eq(rem - L)]
                    with m.Else():
                        m.d.sync += sub.eq(sub + 1)
        m.d.comb += self.busy.eq(tiles_left != 0)

        reading = Signal()
        m.d.comb += [
            reading.eq(self.busy & (tc < steps)),
            self.qbuf.addr.eq(qline), self.wbuf.addr.eq(wbase + chunk),
            self.qbuf.en.eq(1), self.wbuf.en.eq(1),
        ]
        # Step info, aligned with the read data one cycle later.
        d_valid = Signal()
        d_first = Signal()
        d_sub = Signal(3)
        d_mask = Signal(L)
        mask_now = Cat(Const(l, 18).as_signed() < rem for l in range(L))
        m.d.sync += [d_valid.eq(reading), d_first.eq(reading & (tc == 0)), d_sub.eq(sub),
                     d_mask.eq(mask_now)]

        # ---- the PE grid with skew ---------------------------------------------------------------
        pes = [[XnorPopcountPE(lanes=L, act_bits=k, acc_bits=cfg.acc_bits) for _ in range(C)]
               for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        def bundle(name):  # what moves right: a, mask, plane, valid, first
            return [Signal(L, name=f"{name}_a"), Signal(L, name=f"{name}_mask"),
                    Signal(pbits, name=f"{name}_plane"), Signal(name=f"{name}_valid"),
                    Signal(name=f"{name}_first")]

        def delay(m, src, n, name):
            cur = src
            for d in range(n):
                nxt = [Signal.like(s, name=f"{name}_d{d}_{s.name.rsplit('_', 1)[-1]}") for s in cur]
                m.d.sync += [a.eq(b) for a, b in zip(nxt, cur)]
                cur = nxt
            return cur

        for i in range(R):
            src = bundle(f"row{i}_in")
            plane_tok = d_sub
            plane_pl = d_sub * R + i
            row_ok = Const(1) if i < Ra else Const(0)
            m.d.comb += [
                src[0].eq(self.qbuf.data.word_select(i, L)), src[1].eq(d_mask),
                src[2].eq(Mux(mode, plane_pl, plane_tok)),
                src[3].eq(d_valid & Mux(mode, row_ok & (plane_pl < k), 1)),
                src[4].eq(d_first),
            ]
            cur = delay(m, src, i, f"row{i}_skew")
            for j in range(C):
                pe = pes[i][j]
                m.d.comb += [pe.a.eq(cur[0]), pe.mask.eq(cur[1]), pe.plane.eq(cur[2]),
                             pe.valid.eq(cur[3]), pe.first.eq(cur[4])]
                if j < C - 1:
                    cur = delay(m, cur, 1, f"pe_{i}_{j}_right")
        for j in range(C):
            src = Signal(L, name=f"col{j}_in")
            m.d.comb += src.eq(self.wbuf.data.word_select(j, L))
            cur = delay(m, [src], j, f"col{j}_skew")
            for i in range(R):
                m.d.comb += pes[i][j].w.eq(cur[0])
                if i < R - 1:
                    cur = delay(m, cur, 1, f"pe_{i}_{j}_down")

        # ---- drain -----------------------------------------------------------------------------------
        fill_tok = steps + (R + C - 1)
        drow = Signal(range(max(R, 2)))
        m.d.comb += drow.eq((tc - fill_tok)[:len(drow)])
        tok_line = Signal(C * 32)
        with m.Switch(drow):
            for i in range(R):
                with m.Case(i):
                    m.d.comb += tok_line.eq(Cat(sext(pes[i][j].acc, 32) for j in range(C)))
        plane_line = Cat(sext(sum(pes[i][j].acc for i in range(Ra))[:cfg.acc_bits], 32)
                         for j in range(C))
        tok_drain = ~mode & (tc >= fill_tok)
        pl_drain = mode & (tc == tlen - 1)
        m.d.comb += [
            self.obuf.en.eq(Mux(self.busy & (tok_drain | pl_drain), (1 << len(self.obuf.en)) - 1, 0)),
            self.obuf.addr.eq(Mux(mode, obase, obase + drow)),
            self.obuf.data.eq(Mux(mode, plane_line, tok_line)),
        ]
        return m
