"""DMAEngine: moves lines between the external memory port and the X, W, S, O buffers.

``load`` (external -> buffer): the request goes out in the issue cycle; beat b arrives ``ext_latency
+ b`` cycles later; every ``B/ext_bw_bits`` beats complete one line, which is written in the cycle its
last beat arrives. ``store`` (buffer -> external): the request goes out in the issue cycle, line 0 is
read in the next cycle and beats leave one per cycle from the cycle after, the next line being read
in the cycle of the current line's last beat. Both finish within the ``ext_latency +
ceil(nlines*B/ext_bw_bits)`` cycles after the issue cycle that the controller (``Timeline``) reserves
for them (``ext_latency >= 1``).
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.isa import BUFFERS
from bitmos.rtl.common import addr_bits, check_config
from bitmos.rtl.layouts import instruction_layout
from bitmos.rtl.signatures import ExtMemSignature

__all__ = ["DMAEngine", "DMA_FIELDS", "ext_addr_bits"]

#: The ``load``/``store`` fields the engine takes from the instruction (``ext`` reaches it as ``addr``).
DMA_FIELDS = ("buf", "line", "nlines")


def ext_addr_bits(cfg: AcceleratorConfig) -> int:
    """Width of an external byte address."""
    return max(1, ceil_log2(cfg.ext_mem_bytes))


class DMAEngine(wiring.Component):
    """One-transfer-at-a-time DMA engine.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    start : In(1)
        Pulse in the issue cycle of a ``load``/``store``; the fields are sampled with it.
    store, buf, line, nlines, addr : In
        Direction (1 = store), buffer code (0 X, 1 W, 2 S, 3 O), first line, line count (the
        ``load``/``store`` fields, shaped as ``bitmos.isa.SPECS`` says), external byte address
        (EBASE*64 + ext, range-checked by the controller).
    ext : Out(ExtMemSignature)
    x_rd, x_wr, w_rd, w_wr, s_rd, s_wr, o_rd, o_wr : In(ReadPort/WritePort.Signature)
        The buffers' DMA ports.
    busy : Out(1)
        A transfer is moving data.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        fields = instruction_layout(isa.Op.LOAD)   # STORE has the same fields (a test checks it)
        members = {
            "start": In(1), "store": In(1),
            **{name: In(fields[name].shape) for name in DMA_FIELDS},
            "addr": In(ext_addr_bits(cfg)),
            "ext": Out(ExtMemSignature(addr_bits=ext_addr_bits(cfg), data_bits=cfg.ext_bw_bits)),
            "busy": Out(1),
        }
        for b in BUFFERS:
            aw, width = addr_bits(cfg.depth(b)), cfg.line_bits(b)
            members[f"{b.lower()}_rd"] = In(ReadPort.Signature(addr_width=aw, shape=width))
            members[f"{b.lower()}_wr"] = In(WritePort.Signature(addr_width=aw, shape=width))
        super().__init__(members)

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        bw = cfg.ext_bw_bits
        bpl = [cfg.line_bits(b) // bw for b in BUFFERS]   # beats per line
        maxline = max(cfg.line_bits(b) for b in BUFFERS)

        loading, storing, primed = Signal(), Signal(), Signal()
        buf = Signal(2)
        lines_left = Signal(17)
        cur = Signal(17)        # buffer line of the current beat
        beat = Signal(range(max(bpl) + 1))
        lbuf = Signal(maxline)  # beats of the line being assembled
        last_beat = Signal()
        m.d.comb += [self.busy.eq(loading | storing), last_beat.eq(beat == Array(bpl)[buf] - 1)]

        # request
        m.d.comb += [self.ext.req.eq(self.start), self.ext.req_we.eq(self.store),
                     self.ext.req_addr.eq(self.addr),
                     self.ext.req_len.eq(self.nlines * Array([cfg.line_bits(b) // 8 for b in BUFFERS])[self.buf])]
        with m.If(self.start):
            m.d.sync += [buf.eq(self.buf), lines_left.eq(self.nlines), cur.eq(self.line), beat.eq(0),
                         loading.eq(~self.store), storing.eq(self.store), primed.eq(0)]

        # load: assemble beats, write the line on its last beat
        with m.If(loading & self.ext.rvalid):
            m.d.sync += lbuf.word_select(beat, bw).eq(self.ext.rdata)
            with m.If(last_beat):
                m.d.sync += [beat.eq(0), cur.eq(cur + 1), lines_left.eq(lines_left - 1)]
                with m.If(lines_left == 1):
                    m.d.sync += loading.eq(0)
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        # One line address for both directions (the engine moves one transfer at a time), so synthesis
        # can map a buffer's DMA read and write ports onto one read-write port of a block RAM.
        line = Signal(17)
        m.d.comb += line.eq(Mux(storing & primed, cur + 1, cur))
        for i, b in enumerate(BUFFERS):
            wr = getattr(self, f"{b.lower()}_wr")
            width = cfg.line_bits(b)
            m.d.comb += [wr.addr.eq(line), wr.data.eq(Cat(lbuf[:width - bw], self.ext.rdata)[:width]),
                         wr.en.eq(loading & self.ext.rvalid & last_beat & (buf == i))]

        # store: read a line, send its beats
        rd_en = Signal()
        m.d.comb += rd_en.eq(storing & (~primed | (last_beat & (lines_left > 1))))
        datas = []
        for i, b in enumerate(BUFFERS):
            rd = getattr(self, f"{b.lower()}_rd")
            m.d.comb += [rd.addr.eq(line), rd.en.eq(rd_en & (buf == i))]
            datas.append(rd.data)
        with m.If(storing):
            with m.If(~primed):
                m.d.sync += primed.eq(1)
            with m.Else():
                with m.If(last_beat):
                    m.d.sync += [beat.eq(0), cur.eq(cur + 1), lines_left.eq(lines_left - 1)]
                    with m.If(lines_left == 1):
                        m.d.sync += storing.eq(0)
                with m.Else():
                    m.d.sync += beat.eq(beat + 1)
        with m.Switch(buf):
            for i, b in enumerate(BUFFERS):
                with m.Case(i):
                    m.d.comb += self.ext.wdata.eq(datas[i].word_select(beat[:max(1, ceil_log2(bpl[i]))]
                                                                       if bpl[i] > 1 else 0, bw))
        m.d.comb += self.ext.wvalid.eq(storing & primed)
        return m
