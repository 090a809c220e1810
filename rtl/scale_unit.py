"""ScaleExpertUnit: the per-token scale-expert pipeline that runs ``quant`` and ``scaleout``.

``quant``, per token (cycle counts are ``bitmos.semantics.quant_token_cycles`` exactly):

* ROUTER (E >= 2, XL + E + GATES_FIXED cycles): one XBUF line and one SBUF router line per cycle
  for XL cycles into the :class:`~bitmos.rtl.router.Router`'s E 48-bit multiply-accumulators (C lanes
  each), then the GATES window of the :class:`~bitmos.rtl.softmax.Softmax` (logits, max, one EXP2_LUT
  ROM read per expert, sum, sequential reciprocal, gate products);
* MIX (XL + MIX_LATENCY cycles): the :class:`~bitmos.rtl.quantizer.Quantizer` forms s_in =
  mix_scale(g, S_in), v = x*s_in and the running max|v|; the last MIX_LATENCY cycles drain its pipeline;
* RQ (``rq_cycles``): D, and for k >= 2 the sequential divide for RQ;
* QUANT ((nch - 1) * T + L/C + GATHER_LATENCY - 1 + W cycles, T = max(L/C, W)): chunk c's L/C
  lines are read from cycle c*T (x and s_in again, v recomputed, q gathered into plane bank c mod 2);
  its W plane words (token mode: slot t of k lines; plane mode: P lines) are written from cycle
  c*T + L/C + GATHER_LATENCY - 1, while chunk c+1 is gathered into the other bank;
* META (1 cycle): META[meta + t] <- (D, gates, bias).

``scaleout``: one OBUF line per cycle for ntiles*ntok cycles (read OBUF, META, SBUF), then the
:class:`~bitmos.rtl.scaleout.ScaleOut` pipeline: the last write-back SCALEOUT_PIPELINE cycles after
the last read.

All memories are read with one cycle of latency: the :class:`ScaleSequencer` issues each read one
cycle before the data is used, and a one-cycle tag pipeline says what the arriving data is for; the
datapath components carry the tags on through their own stages. :class:`ScaleExpertUnit` only joins
the sequencer and the four datapath components.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out, connect, flipped

from bitmos import formats as F
from bitmos import isa
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import AMARANTH_OPS, addr_bits, check_config
from bitmos.rtl.layouts import instruction_layout, meta_layout
from bitmos.rtl.quantizer import Quantizer
from bitmos.rtl.router import Router
from bitmos.rtl.scaleout import LINE_BITS, ScaleOut
from bitmos.rtl.signatures import LayerRegistersSignature
from bitmos.rtl.softmax import Softmax

__all__ = ["ScaleExpertUnit", "ScaleSequencer"]

#: The instruction inputs of the unit and its sequencer, sampled with ``start``.
ISSUE_INPUTS = ("op", "mode", "a", "b", "meta", "ntok", "ntiles")


class _State(enum.Enum, shape=3):
    IDLE = 0
    ROUTER = 1      # router pass and GATES window
    MIX = 2
    RQ = 3
    QUANT = 4
    META = 5
    SCALEOUT = 6


def _issue_members() -> dict:
    """``start`` and the fields of ``quant``/``scaleout`` (``a``: x or o, ``b``: q or s), shaped from SPECS."""
    quant, scaleout = instruction_layout(isa.Op.QUANT), instruction_layout(isa.Op.SCALEOUT)

    def wider(*fields):
        return In(max(f.shape.width for f in fields))

    return {"start": In(1), "op": In(1), "mode": wider(quant["mode"], scaleout["mode"]),
            "a": wider(quant["x"], scaleout["o"]), "b": wider(quant["q"], scaleout["s"]),
            "meta": wider(quant["meta"], scaleout["meta"]), "ntok": wider(quant["ntok"], scaleout["ntok"]),
            "ntiles": wider(scaleout["ntiles"])}


class _Registers:
    """The sequencer's state: the instruction latched at issue and the position within it."""

    def __init__(self, cfg: AcceleratorConfig):
        self.state = Signal(_State)
        self.cnt = Signal(20)        # cycle within ROUTER / MIX / RQ / QUANT / SCALEOUT
        self.mode = Signal()
        self.kreg = Signal(16)
        self.nch = Signal(16)
        self.xl = Signal(20)
        self.wcount = Signal(4)      # W: plane writes per chunk
        self.xbase = Signal(24)      # x + t*XL (quant) / o (scaleout)
        self.bfield = Signal(16)
        self.metab = Signal(10)
        self.ntok = Signal(7)
        self.tok = Signal(7)
        self.rchunk = Signal(16)     # quantize pass, read side: chunk and cycle within its period
        self.rsub = Signal(8)
        self.wchunk = Signal(16)     # quantize pass, write side
        self.wsub = Signal(8)
        self.writing = Signal()      # the write side has started
        self.rline = Signal(20)      # next XBUF line (within the token) the quantize pass reads
        self.qline = Signal(17)      # next QBUF line written
        self.total = Signal(17)      # scaleout: ntiles*ntok
        self.so_t = Signal(7)
        self.so_n = Signal(8)
        self.so_line = Signal(LINE_BITS)


class ScaleSequencer(wiring.Component):
    """The scale-expert unit's state machine: buffer addresses, the tag pipeline and the datapath strobes.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    start, op, mode, a, b, meta, ntok, ntiles : In
        As :class:`ScaleExpertUnit`'s.
    regs : In(LayerRegistersSignature)
        K, ROUTER and SIN.
    busy : Out(1)
    x_addr, s_addr, o_addr, meta_addr : Out
        Read addresses of XBUF, SBUF, OBUF and META (their data arrives one cycle later).
    q_addr, q_en, q_plane_mode, q_index : Out
        QBUF plane write: line, slot enables, and which line the quantizer forms (mode, write index).
    meta_w_addr, meta_w_en : Out
        META write of the token's record.
    lane_valid : Out(C)
        Lanes of the arriving XBUF line that are inside K.
    token_start, router_accumulate, gates_active, gates_step, track_max, gather, group, bank, rq_start : Out
        Strobes of the router, softmax and quantizer (see their docstrings).
    q_bank : Out(1)
        The plane bank the QBUF write is formed from.
    so_valid, so_line : Out
        The arriving OBUF/META/SBUF data is scaleout item ``so_line``.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        G = cfg.lanes // cfg.cols   # lane groups; ``group`` gets at least 1 bit (no zero-width port)
        super().__init__({
            **_issue_members(), "regs": In(LayerRegistersSignature()), "busy": Out(1),
            "x_addr": Out(addr_bits(cfg.depth("X"))), "s_addr": Out(addr_bits(cfg.depth("S"))),
            "o_addr": Out(addr_bits(cfg.depth("O"))), "meta_addr": Out(addr_bits(cfg.meta_tokens)),
            "q_addr": Out(addr_bits(cfg.depth("Q"))), "q_en": Out(cfg.rows), "q_plane_mode": Out(1),
            "q_index": Out(3), "meta_w_addr": Out(addr_bits(cfg.meta_tokens)), "meta_w_en": Out(1),
            "lane_valid": Out(cfg.cols), "token_start": Out(1), "router_accumulate": Out(1),
            "gates_active": Out(1), "gates_step": Out(range(cfg.experts + sem.GATES_FIXED)), "track_max": Out(1),
            "gather": Out(1), "group": Out(range(max(2, G))), "bank": Out(1), "rq_start": Out(1),
            "q_bank": Out(1), "so_valid": Out(1), "so_line": Out(LINE_BITS),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        r = _Registers(self._cfg)
        m.d.comb += [self.busy.eq(r.state != _State.IDLE), self.q_plane_mode.eq(r.mode)]
        self._reads_and_writes(m, r)
        self._state_machine(m, r)
        return m

    def _reads_and_writes(self, m, r):
        """Addresses and tags of the reads and writes each state makes (tags arrive with the data)."""
        R, C, G = self._cfg.rows, self._cfg.cols, self._cfg.lanes // self._cfg.cols
        t_router, t_mix, t_quant, t_so = Signal(), Signal(), Signal(), Signal()
        t_line = Signal(20)          # XBUF line within the token (for the K mask)
        t_grp = Signal(range(max(2, G)))   # lane group within the chunk (quantize gather); 1 bit at G = 1, not 0
        t_bank = Signal()
        d_line = Signal(20)
        m.d.sync += [self.router_accumulate.eq(t_router), self.track_max.eq(t_mix), self.gather.eq(t_quant),
                     self.so_valid.eq(t_so), d_line.eq(t_line), self.group.eq(t_grp), self.bank.eq(t_bank),
                     self.so_line.eq(r.so_line)]
        m.d.comb += self.lane_valid.eq(Cat((d_line * C + j) < r.kreg for j in range(C)))
        m.d.comb += [self.o_addr.eq(r.so_line), self.meta_addr.eq(r.metab + r.so_t),
                     self.x_addr.eq(r.xbase + r.cnt), self.s_addr.eq(self.regs.sin + r.cnt), t_line.eq(r.cnt)]
        with m.Switch(r.state):
            with m.Case(_State.ROUTER):
                m.d.comb += [t_router.eq(r.cnt < r.xl), self.s_addr.eq(self.regs.router + r.cnt),
                             self.gates_active.eq(r.cnt >= r.xl), self.gates_step.eq((r.cnt - r.xl)[:len(self.gates_step)])]
            with m.Case(_State.MIX):
                m.d.comb += t_mix.eq(r.cnt < r.xl)
            with m.Case(_State.RQ):
                m.d.comb += self.rq_start.eq(r.cnt == 0)
            with m.Case(_State.QUANT):
                rd = (r.rchunk != r.nch) & (r.rsub < G)
                m.d.comb += [t_quant.eq(rd), t_line.eq(r.rline), t_grp.eq(r.rsub[:len(t_grp)]),
                             t_bank.eq(r.rchunk[0]),
                             self.x_addr.eq(r.xbase + r.rline), self.s_addr.eq(self.regs.sin + r.rline)]
                with m.If(rd):
                    m.d.sync += r.rline.eq(r.rline + 1)
                m.d.comb += [self.q_index.eq(r.wsub[:3]), self.q_bank.eq(r.wchunk[0])]
                with m.If(r.writing & (r.wsub < r.wcount)):   # plane writes
                    m.d.sync += r.qline.eq(r.qline + 1)
                    m.d.comb += [self.q_addr.eq(r.qline),
                                 self.q_en.eq(Mux(r.mode, (1 << R) - 1, Const(1, R) << r.tok))]
            with m.Case(_State.META):
                m.d.comb += [self.meta_w_addr.eq(r.metab + r.tok), self.meta_w_en.eq(1)]
            with m.Case(_State.SCALEOUT):
                m.d.comb += [t_so.eq(r.cnt < r.total), self.s_addr.eq(r.bfield + r.so_n)]

    def _state_machine(self, m, r):
        cfg = self._cfg
        R, L, k, E, P, G = cfg.rows, cfg.lanes, cfg.act_bits, cfg.experts, cfg.planes_per_row, cfg.lanes // cfg.cols
        nch = (self.regs.k + (L - 1)) // L
        first_state = _State.ROUTER if E >= 2 else _State.MIX

        def begin_token():   # the router sums and the quantizer's max restart with token_start
            m.d.comb += self.token_start.eq(1)
            m.d.sync += [r.cnt.eq(0), r.state.eq(first_state), r.rline.eq(0),
                         r.rchunk.eq(0), r.rsub.eq(0), r.wchunk.eq(0), r.wsub.eq(0), r.writing.eq(0)]

        def count(last, then):   # cnt runs 0..last, then the state becomes ``then``
            m.d.sync += r.cnt.eq(r.cnt + 1)
            with m.If(r.cnt == last):
                m.d.sync += [r.state.eq(then), r.cnt.eq(0)]

        period = sem.chunk_period(cfg, r.mode, AMARANTH_OPS)   # T: cycles per chunk of the quantize pass

        def advance(chunk, sub):   # the next cycle of a quantize-pass side: sub runs 0..T-1 per chunk
            m.d.sync += sub.eq(sub + 1)
            with m.If(sub == period - 1):
                m.d.sync += [sub.eq(0), chunk.eq(chunk + 1)]

        with m.Switch(r.state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    m.d.sync += [r.mode.eq(self.mode), r.kreg.eq(self.regs.k), r.nch.eq(nch), r.xl.eq(nch * G),
                                 r.wcount.eq(Mux(self.mode, P, k)),
                                 r.xbase.eq(self.a), r.bfield.eq(self.b),
                                 r.metab.eq(self.meta), r.ntok.eq(self.ntok), r.tok.eq(0), r.qline.eq(self.b),
                                 r.total.eq(self.ntiles * self.ntok), r.so_t.eq(0), r.so_n.eq(0),
                                 r.so_line.eq(self.a), r.cnt.eq(0)]
                    with m.If(self.op):
                        m.d.sync += r.state.eq(_State.SCALEOUT)
                    with m.Else():
                        begin_token()
            with m.Case(_State.ROUTER):
                count(r.xl + E + sem.GATES_FIXED - 1, _State.MIX)
            with m.Case(_State.MIX):
                count(r.xl + sem.MIX_LATENCY - 1, _State.RQ)
            with m.Case(_State.RQ):
                count(sem.rq_cycles(cfg) - 1, _State.QUANT)
                with m.If((r.cnt == sem.rq_cycles(cfg) - 1) & (r.nch == 0)):   # K = 0: no chunks to quantize
                    m.d.sync += r.state.eq(_State.META)
            with m.Case(_State.QUANT):
                m.d.sync += r.cnt.eq(r.cnt + 1)
                with m.If(r.cnt == G + sem.GATHER_LATENCY - 2):   # chunk 0's last line is in its bank next cycle
                    m.d.sync += r.writing.eq(1)
                with m.If(r.rchunk != r.nch):
                    advance(r.rchunk, r.rsub)
                with m.If(r.writing):
                    advance(r.wchunk, r.wsub)
                    with m.If((r.wchunk == r.nch - 1) & (r.wsub == r.wcount - 1)):
                        m.d.sync += r.state.eq(_State.META)
            with m.Case(_State.META):
                with m.If(r.tok == r.ntok - 1):
                    m.d.sync += r.state.eq(_State.IDLE)
                with m.Else():
                    m.d.sync += [r.tok.eq(r.tok + 1), r.xbase.eq(r.xbase + r.xl),
                                 r.qline.eq(Mux(r.mode, r.qline, r.bfield))]
                    begin_token()
            with m.Case(_State.SCALEOUT):
                m.d.sync += r.cnt.eq(r.cnt + 1)
                with m.If(r.cnt < r.total):  # advance to the next (n, t)
                    with m.If(r.so_t == r.ntok - 1):
                        m.d.sync += [r.so_t.eq(0), r.so_n.eq(r.so_n + 1),
                                     r.so_line.eq(r.so_line + Mux(r.mode, 1, R) - r.so_t)]
                    with m.Else():
                        m.d.sync += [r.so_t.eq(r.so_t + 1), r.so_line.eq(r.so_line + 1)]
                with m.If(r.cnt == r.total + sem.SCALEOUT_PIPELINE - 1):
                    m.d.sync += r.state.eq(_State.IDLE)


class ScaleExpertUnit(wiring.Component):
    """Router, softmax, scale mixing, per-token quantizer and output scaling, joined to the buffers.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    start : In(1)
        Pulse in the issue cycle; ``op`` (0 = quant, 1 = scaleout) and the fields are sampled with it.
    mode, a, b, meta, ntok, ntiles : In
        Instruction fields: ``a`` is ``x`` (quant) or ``o`` (scaleout), ``b`` is ``q`` or ``s``.
    regs : In(LayerRegistersSignature)
        The layer registers (K, RSHIFT, OSHIFT, ROUTER, SIN, SMUL are read); the unit benches reach
        them as ``k_features``, ``rshift``, ``oshift``, ``router``, ``sin`` and ``smul`` too.
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
            **_issue_members(), "regs": In(LayerRegistersSignature()),
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

    # The layer registers under the names the unit benches drive.
    k_features = property(lambda self: self.regs.k)
    rshift = property(lambda self: self.regs.rshift)
    oshift = property(lambda self: self.regs.oshift)
    router = property(lambda self: self.regs.router)
    sin = property(lambda self: self.regs.sin)
    smul = property(lambda self: self.regs.smul)

    def elaborate(self, platform):
        m = Module()
        cfg, E = self._cfg, self._cfg.experts
        m.submodules.sequencer = seq = ScaleSequencer(cfg)
        m.submodules.quantizer = quant = Quantizer(cfg)
        m.submodules.scaleout = scaleout = ScaleOut(cfg)
        m.d.comb += [seq.start.eq(self.start), self.busy.eq(seq.busy)]
        m.d.comb += [getattr(seq, name).eq(getattr(self, name)) for name in ISSUE_INPUTS]
        readers = [seq, scaleout]

        gates = Signal(data.ArrayLayout(unsigned(F.GATE_BITS), E)) if E else None   # E = 1: the one gate is 1.0
        if E >= 2:
            m.submodules.router = router = Router(cfg)
            m.submodules.softmax = softmax = Softmax(cfg)
            readers.append(softmax)
            m.d.comb += [router.x.eq(self.xbuf.data), router.lane_valid.eq(seq.lane_valid),
                         router.weights.eq(self.sbuf.data), router.accumulate.eq(seq.router_accumulate),
                         router.clear.eq(seq.token_start), router.rounding.eq(softmax.rounding),
                         softmax.acc.eq(router.acc),
                         softmax.active.eq(seq.gates_active), softmax.step.eq(seq.gates_step),
                         gates.eq(softmax.gates)]
        elif E == 1:
            m.d.comb += gates[0].eq(F.GATE_ONE)
        connect(m, flipped(self.regs), *(unit.regs for unit in readers))

        m.d.comb += [quant.x.eq(self.xbuf.data), quant.lane_valid.eq(seq.lane_valid),
                     quant.scales.eq(self.sbuf.data), quant.clear.eq(seq.token_start),
                     quant.track_max.eq(seq.track_max), quant.gather.eq(seq.gather), quant.group.eq(seq.group),
                     quant.bank.eq(seq.bank), quant.rq_start.eq(seq.rq_start),
                     quant.plane_mode.eq(seq.q_plane_mode), quant.write_index.eq(seq.q_index),
                     quant.write_bank.eq(seq.q_bank)]
        record = Signal(meta_layout(cfg))
        m.d.comb += record.d.eq(quant.d)
        if E:
            m.d.comb += [quant.gates.eq(gates), record.gates.eq(gates)]
        if E >= 2:
            m.d.comb += record.bias.eq(softmax.bias)

        m.d.comb += [scaleout.acc_line.eq(self.obuf_r.data), scaleout.meta.eq(self.meta_r.data),
                     scaleout.scales.eq(self.sbuf.data), scaleout.valid.eq(seq.so_valid),
                     scaleout.line.eq(seq.so_line)]
        connect(m, flipped(self.obuf_w), scaleout.obuf_w)

        m.d.comb += [port.en.eq(1) for port in (self.xbuf, self.sbuf, self.obuf_r, self.meta_r)]
        m.d.comb += [self.xbuf.addr.eq(seq.x_addr), self.sbuf.addr.eq(seq.s_addr),
                     self.obuf_r.addr.eq(seq.o_addr), self.meta_r.addr.eq(seq.meta_addr),
                     self.qbuf.addr.eq(seq.q_addr), self.qbuf.en.eq(seq.q_en), self.qbuf.data.eq(quant.line),
                     self.meta_w.addr.eq(seq.meta_w_addr), self.meta_w.en.eq(seq.meta_w_en),
                     self.meta_w.data.eq(record)]
        return m
