"""DMAEngine: moves lines between the external memory port and the X, W, S, O buffers.

Up to ``Q = cfg.dma_slots`` transfers are in flight (the controller issues one only when the transfer
Q back is done: ``bitmos.semantics.Timeline``). Their data phases follow each other in issue order,
each ``b`` beats long (``b = nlines * B / ext_bw_bits``), and the engine paces its requests so that
transfer j's phase is exactly the contract's: its request goes out at ``r_j = max(a_j, r_(j-1) +
b_(j-1))`` (``a_j`` its issue cycle; in the issue cycle itself when nothing is waiting, as in v2), so
its phase runs from ``r_j + 1 + ext_latency`` for ``b_j`` cycles, which is ``max(a_j + 1 + L,
done_(j-1))``, and it is done when the phase ends (``done_j``), the cycle the controller counts.

* ``load``: beat i arrives ``ext_latency + i`` cycles after the request (the memory's fixed timing),
  one cycle before its place in the phase; every ``B/ext_bw_bits`` beats complete one line, written
  in the cycle its last beat arrives. So the last line is in its buffer by ``done_j - 1``.
* ``store``: its first line is read in the cycle before its phase and its beats leave one per cycle
  through the phase, the next line read in the cycle of the current line's last beat; the last beat
  leaves in ``done_j - 1``.

The DMA side of each of X, W, S, O is one read-write port (one line address for both directions:
docs/fpga.md; the load's write strobe chooses it, so a store's start decision drives only the read
enables), so a load's line write and a store's line read must never fall in one cycle: a store
reads only inside ``[start - 1, done - 1)`` of its own phase and a load writes only inside ``[start -
1, done - 1)`` of its own, and phases do not overlap. A store's last beat can share its cycle with the
next load's first beat: the external port carries both (the memory orders them: ``ExtMemSignature``).

Three queues of Q descriptors: ``pending`` (issued, request not yet sent), ``loads`` (requested,
beats still to arrive) and ``stores`` (requested, not yet started; with the cycle its first line is
read).
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.isa import BUFFERS
from bitmos.rtl.common import Countdown, RecordQueue, addr_bits, check_config, due_counter_bits
from bitmos.rtl.layouts import instruction_layout
from bitmos.rtl.signatures import ExtMemSignature

__all__ = ["DMAEngine", "DMA_FIELDS", "ext_addr_bits", "transfer_layout"]

#: The ``load``/``store`` fields the engine takes from the instruction (``ext`` reaches it as ``addr``).
DMA_FIELDS = ("buf", "line", "nlines")
#: Width of a transfer's beat count (nlines < 2^16 lines of at most 2^16 beats).
BEATS_BITS = 32


def ext_addr_bits(cfg: AcceleratorConfig) -> int:
    """Width of an external byte address."""
    return max(1, ceil_log2(cfg.ext_mem_bytes))


def _fields() -> dict:
    """The shapes of the ``load``/``store`` fields the engine takes."""
    fields = instruction_layout(isa.Op.LOAD)   # STORE has the same fields (a test checks it)
    return {name: fields[name].shape for name in DMA_FIELDS}


def transfer_layout(cfg: AcceleratorConfig) -> data.StructLayout:
    """An issued load/store: direction (1 = store), the instruction's fields, its external byte
    address and its beat count."""
    return data.StructLayout({"store": 1, **_fields(), "addr": ext_addr_bits(cfg), "beats": BEATS_BITS})


class DMAEngine(wiring.Component):
    """DMA engine with a queue of ``cfg.dma_slots`` transfers.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    start : In(1)
        Pulse in the issue cycle of a ``load``/``store``; the fields are sampled with it.
    store, buf, line, nlines, addr, beats : In
        Direction (1 = store), buffer code (0 X, 1 W, 2 S, 3 O), first line, line count (the
        ``load``/``store`` fields, shaped as ``bitmos.isa.SPECS`` says), external byte address
        (EBASE*64 + ext, range-checked by the controller), beat count (nlines x line bits /
        ``ext_bw_bits``: the controller has it ready in a register).
    ext : Out(ExtMemSignature)
    x_rd, x_wr, w_rd, w_wr, s_rd, s_wr, o_rd, o_wr : In(ReadPort/WritePort.Signature)
        The buffers' DMA ports.
    busy : Out(1)
        A transfer is in flight.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        self._bpl = [cfg.line_bits(b) // cfg.ext_bw_bits for b in BUFFERS]   # beats per line
        members = {
            "start": In(1), "store": In(1), **{name: In(shape) for name, shape in _fields().items()},
            "addr": In(ext_addr_bits(cfg)), "beats": In(BEATS_BITS),
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
        queue, fields = cfg.dma_slots, _fields()
        tick = Signal(due_counter_bits(cfg.ext_latency))   # free-running: a store starts when it equals the store's ``due``
        m.d.sync += tick.eq(tick + 1)

        pending, request, fire = self._requests(m, queue)
        # a requested load waits in ``loads`` for its beats; a requested store in ``stores`` for its first
        # read, due ``ext_latency`` cycles after its request (the cycle before its phase)
        load_layout = data.StructLayout(fields)
        store_layout = data.StructLayout({**fields, "due": len(tick)})
        load_q = m.submodules.loads = RecordQueue(load_layout, queue)
        store_q = m.submodules.stores = RecordQueue(store_layout, queue)
        m.d.comb += [load_q.w.payload[n].eq(request[n]) for n in fields]
        m.d.comb += [store_q.w.payload[n].eq(request[n]) for n in fields]
        m.d.comb += [store_q.w.payload.due.eq(tick + cfg.ext_latency),
                     load_q.w.valid.eq(fire & ~request.store), store_q.w.valid.eq(fire & request.store)]

        load_line, load_write, load_buf, load_data = self._load_stage(m, load_q.r)
        store_read, store_line, store_buf, storing = self._store_stage(m, store_q.r, tick)
        # one line address for both directions (see the module docstring: they never fall in one cycle),
        # chosen by the load's write, which depends on registers and rvalid only
        line = Signal(17)
        m.d.comb += line.eq(Mux(load_write, load_line, store_line))
        for i, b in enumerate(BUFFERS):
            wr, rd = getattr(self, f"{b.lower()}_wr"), getattr(self, f"{b.lower()}_rd")
            m.d.comb += [wr.addr.eq(line), wr.data.eq(load_data[:cfg.line_bits(b)]),
                         wr.en.eq(load_write & (load_buf == i)),
                         rd.addr.eq(line), rd.en.eq(store_read & (store_buf == i))]
        m.d.comb += self.busy.eq(pending.r.valid | load_q.r.valid | store_q.r.valid | storing)
        return m

    def _requests(self, m, queue):
        """The request stage: a transfer's request goes out when it is the oldest not sent and the
        previous request's beats are paced out (``pace``). Returns the queue of issued transfers not
        yet requested, the request (a view of ``transfer_layout``) and its strobe."""
        cfg = self._cfg
        layout = transfer_layout(cfg)
        incoming = Signal(layout)
        m.d.comb += [incoming.store.eq(self.store), incoming.buf.eq(self.buf), incoming.line.eq(self.line),
                     incoming.nlines.eq(self.nlines), incoming.addr.eq(self.addr), incoming.beats.eq(self.beats)]
        pending = m.submodules.pending = RecordQueue(layout, queue)
        m.submodules.pace = pace = Countdown(BEATS_BITS)   # cycles until the next request may go out
        request = data.View(layout, Mux(pending.r.valid, pending.r.payload.as_value(), incoming.as_value()))
        fire = (pending.r.valid | self.start) & pace.zero
        m.d.comb += [pending.r.ready.eq(fire),
                     pending.w.valid.eq(self.start & (pending.r.valid | ~pace.zero)), pending.w.payload.eq(incoming),
                     pace.load.eq(fire), pace.value.eq(request.beats - 1)]
        m.d.comb += [self.ext.req.eq(fire), self.ext.req_we.eq(request.store), self.ext.req_addr.eq(request.addr),
                     self.ext.req_len.eq(request.beats * (cfg.ext_bw_bits // 8))]
        return pending, request, fire

    def _load_stage(self, m, loads):
        """Beats arriving on ``rdata`` belong to the oldest requested load (``head``): assemble each line,
        write it on its last beat, drop the load from its queue on its last line's.
        Returns (line address, write strobe, buffer code, line data)."""
        cfg = self._cfg
        bw = cfg.ext_bw_bits
        head = loads.payload
        beat = Signal(range(max(self._bpl) + 1))
        # the first line of a load is the record's; the next ones count on in registers, so no adder sits
        # between the record and the buffers' address
        started = Signal()                   # a line of the head load is written
        later = Signal(len(head.line) + 1)   # then: the line its next beats fill
        left = Signal.like(head.nlines)      # and the lines after that one
        line = Mux(started, later, head.line)
        last_line = Mux(started, left == 0, head.nlines == 1)
        assembled = Signal(max(cfg.line_bits(b) for b in BUFFERS) - bw)   # the line's beats before its last
        last_beat = beat == Array(self._bpl)[head.buf] - 1
        with m.If(self.ext.rvalid):
            if len(assembled):
                m.d.sync += assembled.word_select(beat, bw).eq(self.ext.rdata)
            with m.If(last_beat):
                m.d.sync += beat.eq(0)
                with m.If(last_line):
                    m.d.sync += started.eq(0)
                    m.d.comb += loads.ready.eq(1)
                with m.Else():
                    m.d.sync += [started.eq(1), later.eq(line + 1), left.eq(Mux(started, left - 1, head.nlines - 2))]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        line_data = Signal(max(cfg.line_bits(b) for b in BUFFERS))
        # the line is its assembled beats below the arriving one, so the beats of a shorter line end at its width
        for i, b in enumerate(BUFFERS):
            with m.If(head.buf == i):
                width = cfg.line_bits(b)
                m.d.comb += line_data.eq(Cat(assembled[:width - bw], self.ext.rdata))
        return line, self.ext.rvalid & last_beat, head.buf, line_data

    def _store_stage(self, m, stores, tick):
        """The oldest requested store (``head``) starts in the cycle ``tick`` reaches its ``due``: its first
        line is read and its registers taken; its beats then leave one per cycle from the read data.
        Returns (read strobe, the line the next read would take, read buffer code, busy). That line does
        not depend on whether a read happens (only the strobe does), so the start decision stays off
        the buffers' address path."""
        cfg = self._cfg
        bw = cfg.ext_bw_bits
        head = stores.payload
        active = Signal()
        buf = Signal.like(head.buf)
        nxt = Signal(len(head.line) + 1)    # the line after the one whose beats leave now
        last_line = Signal()                # the line whose beats leave now is the store's last
        left = Signal.like(head.nlines)     # lines of the store after the one whose beats leave now
        beat = Signal(range(max(self._bpl) + 1))
        last_beat = beat == Array(self._bpl)[buf] - 1
        finishing = active & last_beat & last_line
        begin = stores.valid & (head.due == tick) & (~active | finishing)
        next_line = active & last_beat & ~last_line
        m.d.comb += stores.ready.eq(begin)
        with m.If(begin):
            m.d.sync += [active.eq(1), buf.eq(head.buf), nxt.eq(head.line + 1), left.eq(head.nlines - 1),
                         last_line.eq(head.nlines == 1), beat.eq(0)]
        with m.Elif(finishing):
            m.d.sync += active.eq(0)
        with m.Elif(next_line):
            m.d.sync += [nxt.eq(nxt + 1), left.eq(left - 1), last_line.eq(left == 1), beat.eq(0)]
        with m.Elif(active):
            m.d.sync += beat.eq(beat + 1)
        with m.Switch(buf):
            for i, b in enumerate(BUFFERS):
                with m.Case(i):
                    sel = beat[:max(1, ceil_log2(self._bpl[i]))] if self._bpl[i] > 1 else 0
                    m.d.comb += self.ext.wdata.eq(getattr(self, f"{b.lower()}_rd").data.word_select(sel, bw))
        m.d.comb += self.ext.wvalid.eq(active)
        # the next read is of the store's next line while it has one, else of the next store's first
        reading_on = active & ~last_line
        read_line = Mux(reading_on, nxt, head.line)
        read_buf = Mux(reading_on, buf, head.buf)
        return begin | next_line, read_line, read_buf, active
