"""Accelerator: the top level (controller, DMA engine, systolic array, scale unit, buffers).

Ports: ``host`` (:class:`~bitmos.rtl.signatures.HostSignature`: IMEM loading, clear, start,
status) and ``ext`` (:class:`~bitmos.rtl.signatures.ExtMemSignature`: the external memory).
A run: pulse ``clear`` (optional; zeroes IMEM and every buffer) and wait for ``busy`` low, write the
program into IMEM, pulse ``start``; ``busy`` falls when ``done`` rises, with ``error``, ``cause``
and ``cycles`` valid.
"""

from __future__ import annotations

from amaranth import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.rtl.array import SystolicArray
from bitmos.rtl.buffers import Buffers
from bitmos.rtl.common import addr_bits, check_config
from bitmos.rtl.controller import Controller
from bitmos.rtl.dma import DMA_FIELDS, DMAEngine, ext_addr_bits
from bitmos.rtl.layouts import instruction_layout
from bitmos.rtl.scale_unit import ScaleExpertUnit
from bitmos.rtl.signatures import ExtMemSignature, HostSignature

__all__ = ["Accelerator"]

Op = isa.Op


class Accelerator(wiring.Component):
    """The bitmos accelerator for one :class:`AcceleratorConfig`.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    host : In(HostSignature)
    ext : Out(ExtMemSignature)

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        super().__init__({
            "host": In(HostSignature(imem_addr_bits=addr_bits(cfg.imem_words))),
            "ext": Out(ExtMemSignature(addr_bits=ext_addr_bits(cfg), data_bits=cfg.ext_bw_bits)),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        m.submodules.buffers = bufs = Buffers(cfg)
        m.submodules.controller = ctl = Controller(cfg)
        m.submodules.dma = dma = DMAEngine(cfg)
        m.submodules.array = arr = SystolicArray(cfg)
        m.submodules.scale_unit = su = ScaleExpertUnit(cfg)

        host = self.host
        # A fault stops the controller at once, but a transfer in flight still completes: the host
        # sees busy until the DMA engine is idle too (the cycle count is not affected).
        idle = ~ctl.running & ~bufs.clearing & ~dma.busy
        m.d.comb += [
            bufs.clear.eq(host.clear & idle),
            ctl.start.eq(host.start & idle),
            host.busy.eq(~idle),
            bufs.imem_wr.addr.eq(host.imem_addr), bufs.imem_wr.data.eq(host.imem_data),
            bufs.imem_wr.en.eq(host.imem_we & idle),
        ]
        m.d.comb += [getattr(host, name).eq(getattr(ctl, name)) for name in ("done", "error", "cause", "cycles", "pc")]
        connect(m, wiring.flipped(self.ext), dma.ext)
        connect(m, ctl.regs, arr.regs, su.regs)
        ports = [(ctl.imem, bufs.imem_rd), (arr.qbuf, bufs.q_rd), (arr.wbuf, bufs.w_rd), (su.xbuf, bufs.x_rd),
                 (su.sbuf, bufs.s_rd), (su.qbuf, bufs.q_wr), (su.obuf_r, bufs.o_rd), (su.meta_r, bufs.meta_rd),
                 (su.meta_w, bufs.meta_wr)]
        ports += [(getattr(dma, f"{b}_{d}"), getattr(bufs, f"{b}_dma_{d}")) for b in "xwso" for d in ("rd", "wr")]
        for unit_port, buffer_port in ports:
            connect(m, unit_port, buffer_port)
        # OBUF compute write port: the array drain or the scaleout write-back (never both in one cycle:
        # one compute instruction runs at a time). Chosen by the array's write enable, a register, not by
        # its busy flag (a 9-bit compare in front of every OBUF line's write: tiny's critical path)
        arr_writes = arr.obuf.en[0]
        m.d.comb += [
            bufs.o_wr.addr.eq(Mux(arr_writes, arr.obuf.addr, su.obuf_w.addr)),
            bufs.o_wr.data.eq(Mux(arr_writes, arr.obuf.data, su.obuf_w.data)),
            bufs.o_wr.en.eq(Mux(arr_writes, arr.obuf.en, su.obuf_w.en)),
        ]

        word = ctl.word
        matmul, quant, scaleout, load = word.matmul, word.quant, word.scaleout, word.load
        m.d.comb += [arr.start.eq(ctl.array_start)]
        m.d.comb += [getattr(arr, name).eq(matmul[name]) for name, _ in instruction_layout(Op.MATMUL)]
        # quant and scaleout share the unit: ``a``/``b`` are x/q or o/s, the rest by name
        so = ctl.unit_op
        m.d.comb += [
            su.start.eq(ctl.unit_start), su.op.eq(so),
            su.a.eq(Mux(so, scaleout.o, quant.x)), su.b.eq(Mux(so, scaleout.s, quant.q)),
            su.mode.eq(Mux(so, scaleout.mode, quant.mode)), su.meta.eq(Mux(so, scaleout.meta, quant.meta)),
            su.ntok.eq(Mux(so, scaleout.ntok, quant.ntok)), su.ntiles.eq(scaleout.ntiles),
        ]
        # load and store have the same fields; the engine takes them from the load view
        m.d.comb += [dma.start.eq(ctl.dma_start), dma.store.eq(word.opcode == int(Op.STORE)),
                     dma.addr.eq(ctl.dma_addr), dma.beats.eq(ctl.dma_beats)]
        m.d.comb += [getattr(dma, name).eq(load[name]) for name in DMA_FIELDS]
        return m
