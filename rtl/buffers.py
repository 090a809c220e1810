"""On-chip buffers: XBUF, WBUF, SBUF, QBUF, OBUF, META and IMEM as ``amaranth.lib.memory.Memory``.

Widths and depths come from the config (``AcceleratorConfig.line_bits``/``depth``). Each buffer has
the ports its users need, all synchronous (one cycle read latency, reads not transparent):

| buffer | compute ports | DMA ports | other |
|---|---|---|---|
| X | read (scale unit) | read, write | |
| W | read (array) | read, write | |
| S | read (scale unit) | read, write | |
| Q | read (array), write with L-bit granularity (scale unit) | | |
| O | read, write (array drain / scaleout) | read, write | |
| META | read, write (scale unit) | | |
| IMEM | read (controller) | | write (host) |

X, W, S and OBUF's DMA bank are each one true-dual-port memory: the DMA engine's read and write
ports share one address (one read-write port), the datapath's read port is the other port and is
transparent for the DMA's writes, so Yosys maps each onto one set of DP16KD instead of a copy per
reader. A datapath read of a line in the cycle the DMA engine writes it is therefore undefined; a
program must not do it anyway (a hazard, docs/isa.md "load/store").

``clear`` (a pulse) zeroes every row of every memory, one row per cycle in all memories at once;
``clearing`` is high meanwhile and the write ports of the users are ignored.

OBUF has two write ports (compute and DMA) and two read ports, which no FPGA block RAM offers (and
which Yosys otherwise builds from flip-flops: 16 k of them for the tiny config). It is built as a
live-value-table memory (LaForest and Steffan, "Efficient multi-ported memories for FPGAs", FPGA
2010): one bank per write port, each readable by both read ports, and a 1-bit-per-line table saying
which bank wrote a line last. The banks map to block RAM; only the table is in flip-flops.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out, connect, flipped

from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config

__all__ = ["Buffers", "buffer_shapes"]


def buffer_shapes(cfg: AcceleratorConfig) -> dict[str, tuple[int, int]]:
    """(width, depth) of every on-chip memory."""
    shapes = {b: (cfg.line_bits(b), cfg.depth(b)) for b in "XWSQO"}
    shapes["META"] = (cfg.meta_bits, cfg.meta_tokens)
    shapes["IMEM"] = (64, cfg.imem_words)
    return shapes


# (port name, buffer, kind): "r" read, "w" write, "wg" write with lanes granularity
_PORTS = (
    ("x_rd", "X", "r"), ("x_dma_rd", "X", "r"), ("x_dma_wr", "X", "w"),
    ("w_rd", "W", "r"), ("w_dma_rd", "W", "r"), ("w_dma_wr", "W", "w"),
    ("s_rd", "S", "r"), ("s_dma_rd", "S", "r"), ("s_dma_wr", "S", "w"),
    ("q_rd", "Q", "r"), ("q_wr", "Q", "wg"),
    ("o_rd", "O", "r"), ("o_wr", "O", "w"), ("o_dma_rd", "O", "r"), ("o_dma_wr", "O", "w"),
    ("meta_rd", "META", "r"), ("meta_wr", "META", "w"),
    ("imem_rd", "IMEM", "r"), ("imem_wr", "IMEM", "w"),
)


class Buffers(wiring.Component):
    """Every on-chip memory of the accelerator.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    x_rd, x_dma_rd, ... : Out(ReadPort.Signature) / Out(WritePort.Signature)
        One member per port (see the module docstring); names end in ``_rd`` or ``_wr``.
    clear : In(1)
        Pulse: zero every memory.
    clearing : Out(1)
        High while clearing.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        self._shapes = buffer_shapes(cfg)
        members = {"clear": In(1), "clearing": Out(1)}
        for name, buf, kind in _PORTS:
            width, depth = self._shapes[buf]
            aw = addr_bits(depth)
            if kind == "r":
                members[name] = Out(ReadPort.Signature(addr_width=aw, shape=width))
            else:
                members[name] = Out(WritePort.Signature(addr_width=aw, shape=width,
                                                        granularity=cfg.lanes if kind == "wg" else None))
        super().__init__(members)

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        maxdepth = max(d for _, d in self._shapes.values())
        # ``clearing`` and the line being cleared are registers (the flag gates the host's start and every
        # write port: a compare of a counter there was tiny's critical path), lines maxdepth-1 down to 0
        row = Signal(range(maxdepth), name="clear_row")
        clearing = Signal(name="clearing_r")
        m.d.comb += self.clearing.eq(clearing)
        with m.If(self.clear & ~clearing):
            m.d.sync += [clearing.eq(1), row.eq(maxdepth - 1)]
        with m.Elif(clearing):
            m.d.sync += [row.eq(row - 1), clearing.eq(row != 0)]

        def write(port, bus, clears, data=None):
            """Drive ``port`` from ``bus``; a clearing port zeroes line ``row``, the others are muted."""
            data = bus.data if data is None else data
            if not clears:
                m.d.comb += [port.addr.eq(bus.addr), port.data.eq(data),
                             port.en.eq(Mux(self.clearing, 0, bus.en))]
                return
            m.d.comb += [
                port.addr.eq(Mux(self.clearing, row, bus.addr)),
                port.data.eq(Mux(self.clearing, 0, data)),
                port.en.eq(Mux(self.clearing, Mux(row < port.memory.depth, (1 << len(port.en)) - 1, 0),
                               bus.en)),
            ]

        for buf, (width, depth) in self._shapes.items():
            if buf == "O":
                continue
            mem = m.submodules[buf.lower()] = Memory(shape=width, depth=depth, init=[])
            ports = [(name, kind) for name, b, kind in _PORTS if b == buf]
            wport = None
            for name, kind in ports:   # one write port per memory (the OBUF below is the one with two)
                if kind != "r":
                    wport = mem.write_port(granularity=self._cfg.lanes if kind == "wg" else None)
                    write(wport, getattr(self, name), True)
            for name, kind in ports:
                if kind != "r":
                    continue
                bus = getattr(self, name)
                if name.endswith("_dma_rd"):
                    # The DMA read port takes the DMA write port's (clear-muxed) address: the engine drives
                    # one line address for both directions, so the two become one read-write port of a
                    # true-dual-port block RAM; the datapath's read port is the other port.
                    port = mem.read_port()
                    m.d.comb += [port.addr.eq(Mux(self.clearing, row, bus.addr)), port.en.eq(bus.en),
                                 bus.data.eq(port.data)]
                elif wport is not None and buf in "XWS":
                    # Transparent for the DMA's writes: Yosys then maps the memory as one true-dual-port
                    # RAM instead of a copy per reader (for a non-transparent second port it would have to
                    # keep old data across ports, which the DP16KD cannot). Reading a line in the cycle the
                    # DMA writes it is a hazard (docs/isa.md: a program waits first), so no legal program
                    # sees the difference.
                    connect(m, flipped(bus), mem.read_port(transparent_for=(wport,)))
                else:
                    connect(m, flipped(bus), mem.read_port())

        # OBUF: live-value table over a compute-written and a DMA-written bank (see module docstring)
        width, depth = self._shapes["O"]
        bank_c = m.submodules.o_compute = Memory(shape=width, depth=depth, init=[])
        bank_d = m.submodules.o_dma = Memory(shape=width, depth=depth, init=[])
        lvt = m.submodules.o_lvt = Memory(shape=1, depth=depth, init=[])   # 1: the DMA bank is live
        write(bank_c.write_port(), self.o_wr, True)
        write(lvt.write_port(), self.o_wr, True, data=0)
        wp_d = bank_d.write_port()
        write(wp_d, self.o_dma_wr, False)
        write(lvt.write_port(), self.o_dma_wr, False, data=1)   # added last: wins a same-line clash
        for bus in (self.o_rd, self.o_dma_rd):
            # the compute read of the DMA bank is transparent for the DMA's writes (see above): that bank
            # is then one true-dual-port RAM (DMA read-write port, compute read port)
            ports = [bank_c.read_port(), bank_d.read_port(transparent_for=(wp_d,) if bus is self.o_rd else ()),
                     lvt.read_port()]
            for p in ports:
                m.d.comb += [p.addr.eq(bus.addr), p.en.eq(bus.en)]
            m.d.comb += bus.data.eq(Mux(ports[2].data, ports[1].data, ports[0].data))
        return m
