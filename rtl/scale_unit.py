"""ScaleExpertUnit: the per-token scale-expert pipeline that runs ``quant`` and ``scaleout``.

``quant``, per token (cycle counts are ``bitmos.semantics.quant_token_cycles`` exactly):

* ROUTER (E >= 2, XL cycles): one XBUF line and one SBUF router line per cycle into the
  :class:`~bitmos.rtl.router.Router`'s E 48-bit multiply-accumulators (C lanes each);
* GATES (E >= 2, E + 4 cycles): the :class:`~bitmos.rtl.softmax.Softmax` (logits, max, one EXP2_LUT
  ROM read per expert, sum, reciprocal, gate products);
* MIX (XL cycles): the :class:`~bitmos.rtl.quantizer.Quantizer` forms s_in = mix_scale(g, S_in),
  v = x*s_in and the running max|v|;
* RQ (1 cycle): RQ and D settle; the first quantize read issues;
* QUANT (nch * (L/C + W) cycles): per chunk, L/C cycles gather q_i (x and s_in are read again and v
  recomputed), then W cycles write plane words (token mode: slot t of k lines; plane mode: P lines);
* META (1 cycle): META[meta + t] <- (D, gates).

``scaleout``: one OBUF line per cycle for ntiles*ntok cycles (read OBUF, META, SBUF), then the
:class:`~bitmos.rtl.scaleout.ScaleOut` multiply stage and write-back stage: ntiles*ntok + 2 cycles
after the issue cycle.

All memories are read with one cycle of latency: the :class:`ScaleSequencer` issues each read one
cycle before the data is used, and a one-cycle tag pipeline says what the arriving data is for.
:class:`ScaleExpertUnit` only joins the sequencer and the four datapath components.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out, connect, flipped

from bitmos import formats as F
from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config
from bitmos.rtl.layouts import instruction_layout, meta_layout
from bitmos.rtl.quantizer import Quantizer
from bitmos.rtl.router import Router
from bitmos.rtl.scaleout import LINE_BITS, ScaleOut
from bitmos.rtl.signatures import LayerRegistersSignature
from bitmos.rtl.softmax import Softmax

__all__ = ["ScaleExpertUnit", "ScaleSequencer"]

#: The instruction inputs of the unit and its sequencer, sampled with ``start``.
ISSUE_INPUTS = ("op", "mode", "a", "b", "meta", "ntok", "ntiles")


class _State(enum.Enum, shape=4):
    IDLE = 0
    ROUTER = 1
    GATES = 2
    MIX = 3
    RQ = 4
    QUANT = 5
    META = 6
    SCALEOUT = 7


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
        self.cnt = Signal(20)        # cycle within ROUTER / GATES / MIX / SCALEOUT
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
        self.chunk = Signal(16)
        self.sub = Signal(8)         # j within a chunk: 0..G+W-1
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
    token_start, router_accumulate, gates_active, gates_step, track_max, gather, group : Out
        Strobes of the router, softmax and quantizer (see their docstrings).
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
            "gates_active": Out(1), "gates_step": Out(range(cfg.experts + 4)), "track_max": Out(1),
            "gather": Out(1), "group": Out(range(max(2, G))), "so_valid": Out(1), "so_line": Out(LINE_BITS),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        r = _Registers(self._cfg)
        m.d.comb += [self.busy.eq(r.state != _State.IDLE), self.gates_active.eq(r.state == _State.GATES),
                     self.gates_step.eq(r.cnt), self.q_plane_mode.eq(r.mode)]
        self._reads_and_writes(m, r)
        self._state_machine(m, r)
        return m

    def _reads_and_writes(self, m, r):
        """Addresses and tags of the reads and writes each state makes (tags arrive with the data)."""
        R, C, G = self._cfg.rows, self._cfg.cols, self._cfg.lanes // self._cfg.cols
        t_router, t_mix, t_quant, t_so = Signal(), Signal(), Signal(), Signal()
        t_line = Signal(20)          # XBUF line within the token (for the K mask)
        t_grp = Signal(range(max(2, G)))   # lane group within the chunk (quantize gather); 1 bit at G = 1, not 0
        d_line = Signal(20)
        m.d.sync += [self.router_accumulate.eq(t_router), self.track_max.eq(t_mix), self.gather.eq(t_quant),
                     self.so_valid.eq(t_so), d_line.eq(t_line), self.group.eq(t_grp), self.so_line.eq(r.so_line)]
        m.d.comb += self.lane_valid.eq(Cat((d_line * C + j) < r.kreg for j in range(C)))
        m.d.comb += [self.o_addr.eq(r.so_line), self.meta_addr.eq(r.metab + r.so_t),
                     self.x_addr.eq(r.xbase + r.cnt), self.s_addr.eq(self.regs.sin + r.cnt), t_line.eq(r.cnt)]
        with m.Switch(r.state):
            with m.Case(_State.ROUTER):
                m.d.comb += [t_router.eq(1), self.s_addr.eq(self.regs.router + r.cnt)]
            with m.Case(_State.MIX):
                m.d.comb += t_mix.eq(1)
            with m.Case(_State.RQ, _State.QUANT):
                rd = (r.state == _State.RQ) | ((r.sub == G + r.wcount - 1) & (r.chunk != r.nch - 1))
                if G > 1:
                    rd = rd | (r.sub < G - 1)
                m.d.comb += [t_quant.eq(rd), t_line.eq(r.rline),
                             self.x_addr.eq(r.xbase + r.rline), self.s_addr.eq(self.regs.sin + r.rline),
                             t_grp.eq(Mux((r.state == _State.RQ) | (r.sub >= G - 1), 0, r.sub + 1))]
                with m.If(rd):
                    m.d.sync += r.rline.eq(r.rline + 1)
                m.d.comb += self.q_index.eq((r.sub - G)[:3])
                with m.If((r.state == _State.QUANT) & (r.sub >= G)):   # plane writes
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
            m.d.sync += [r.cnt.eq(0), r.state.eq(first_state), r.rline.eq(0)]

        def count(last, then):   # cnt runs 0..last, then the state becomes ``then``
            m.d.sync += r.cnt.eq(r.cnt + 1)
            with m.If(r.cnt == last):
                m.d.sync += [r.state.eq(then), r.cnt.eq(0)]

        with m.Switch(r.state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    m.d.sync += [r.mode.eq(self.mode), r.kreg.eq(self.regs.k), r.nch.eq(nch), r.xl.eq(nch * G),
                                 r.wcount.eq(Mux(self.mode, P, k)), r.xbase.eq(self.a), r.bfield.eq(self.b),
                                 r.metab.eq(self.meta), r.ntok.eq(self.ntok), r.tok.eq(0), r.qline.eq(self.b),
                                 r.total.eq(self.ntiles * self.ntok), r.so_t.eq(0), r.so_n.eq(0),
                                 r.so_line.eq(self.a), r.cnt.eq(0)]
                    with m.If(self.op):
                        m.d.sync += r.state.eq(_State.SCALEOUT)
                    with m.Else():
                        begin_token()
            with m.Case(_State.ROUTER):
                count(r.xl - 1, _State.GATES)
            with m.Case(_State.GATES):
                count(E + 3, _State.MIX)
            with m.Case(_State.MIX):
                count(r.xl - 1, _State.RQ)
            with m.Case(_State.RQ):
                m.d.sync += [r.state.eq(_State.QUANT), r.chunk.eq(0), r.sub.eq(0)]
            with m.Case(_State.QUANT):
                m.d.sync += r.sub.eq(r.sub + 1)
                with m.If(r.sub == G + r.wcount - 1):
                    m.d.sync += [r.sub.eq(0), r.chunk.eq(r.chunk + 1)]
                    with m.If(r.chunk == r.nch - 1):
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
                with m.If(r.cnt == r.total + 1):
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
                         router.clear.eq(seq.token_start), softmax.acc.eq(router.acc),
                         softmax.active.eq(seq.gates_active), softmax.step.eq(seq.gates_step),
                         gates.eq(softmax.gates)]
        elif E == 1:
            m.d.comb += gates[0].eq(F.GATE_ONE)
        connect(m, flipped(self.regs), *(unit.regs for unit in readers))

        m.d.comb += [quant.x.eq(self.xbuf.data), quant.lane_valid.eq(seq.lane_valid),
                     quant.scales.eq(self.sbuf.data), quant.clear.eq(seq.token_start),
                     quant.track_max.eq(seq.track_max), quant.gather.eq(seq.gather), quant.group.eq(seq.group),
                     quant.plane_mode.eq(seq.q_plane_mode), quant.write_index.eq(seq.q_index)]
        record = Signal(meta_layout(cfg))
        m.d.comb += record.d.eq(quant.d)
        if E:
            m.d.comb += [quant.gates.eq(gates), record.gates.eq(gates)]

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
