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
        crow = Signal(range(maxdepth + 1))
        m.d.comb += self.clearing.eq(crow != 0)
        with m.If(self.clear & ~self.clearing):
            m.d.sync += crow.eq(maxdepth)
        with m.Elif(self.clearing):
            m.d.sync += crow.eq(crow - 1)
        row = crow - 1

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
            for name, b, kind in _PORTS:
                if b != buf:
                    continue
                bus = getattr(self, name)
                if kind == "r" and name.endswith("_dma_rd"):
                    # the DMA's read port takes the same (clear-muxed) address as its write port: the DMA
                    # engine drives one line address for both directions, so after flattening the two
                    # ports share one address and Yosys maps them onto one read-write port of a
                    # true-dual-port block RAM (the datapath's read port is the other one), instead of
                    # a second copy of the memory for the second reader
                    port = mem.read_port()
                    m.d.comb += [port.addr.eq(Mux(self.clearing, row, bus.addr)), port.en.eq(bus.en),
                                 bus.data.eq(port.data)]
                elif kind == "r":
                    connect(m, flipped(bus), mem.read_port())
                else:   # one write port per memory (the OBUF below is the one with two)
                    write(mem.write_port(granularity=self._cfg.lanes if kind == "wg" else None), bus, True)

        # OBUF: live-value table over a compute-written and a DMA-written bank (see module docstring)
        width, depth = self._shapes["O"]
        bank_c = m.submodules.o_compute = Memory(shape=width, depth=depth, init=[])
        bank_d = m.submodules.o_dma = Memory(shape=width, depth=depth, init=[])
        lvt = m.submodules.o_lvt = Memory(shape=1, depth=depth, init=[])   # 1: the DMA bank is live
        write(bank_c.write_port(), self.o_wr, True)
        write(lvt.write_port(), self.o_wr, True, data=0)
        write(bank_d.write_port(), self.o_dma_wr, False)
        write(lvt.write_port(), self.o_dma_wr, False, data=1)   # added last: wins a same-line clash
        for bus in (self.o_rd, self.o_dma_rd):
            ports = [mem.read_port() for mem in (bank_c, bank_d, lvt)]
            for p in ports:
                m.d.comb += [p.addr.eq(bus.addr), p.en.eq(bus.en)]
            m.d.comb += bus.data.eq(Mux(ports[2].data, ports[1].data, ports[0].data))
        return m
