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
from bitmos.rtl.common import addr_bits, check_config, instruction_field
from bitmos.rtl.controller import Controller
from bitmos.rtl.dma import DMAEngine, ext_addr_bits
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
            host.done.eq(ctl.done), host.error.eq(ctl.error), host.cause.eq(ctl.cause),
            host.cycles.eq(ctl.cycles), host.pc.eq(ctl.pc),
            bufs.imem_wr.addr.eq(host.imem_addr), bufs.imem_wr.data.eq(host.imem_data),
            bufs.imem_wr.en.eq(host.imem_we & idle),
        ]
        connect(m, ctl.imem, bufs.imem_rd)
        connect(m, wiring.flipped(self.ext), dma.ext)
        for b in "xwso":
            connect(m, getattr(dma, f"{b}_rd"), getattr(bufs, f"{b}_dma_rd"))
            connect(m, getattr(dma, f"{b}_wr"), getattr(bufs, f"{b}_dma_wr"))
        connect(m, arr.qbuf, bufs.q_rd)
        connect(m, arr.wbuf, bufs.w_rd)
        connect(m, su.xbuf, bufs.x_rd)
        connect(m, su.sbuf, bufs.s_rd)
        connect(m, su.qbuf, bufs.q_wr)
        connect(m, su.obuf_r, bufs.o_rd)
        connect(m, su.meta_r, bufs.meta_rd)
        connect(m, su.meta_w, bufs.meta_wr)
        # OBUF compute write port: the array drain or the scaleout write-back (never both)
        m.d.comb += [
            bufs.o_wr.addr.eq(Mux(arr.busy, arr.obuf.addr, su.obuf_w.addr)),
            bufs.o_wr.data.eq(Mux(arr.busy, arr.obuf.data, su.obuf_w.data)),
            bufs.o_wr.en.eq(Mux(arr.busy, arr.obuf.en, su.obuf_w.en)),
        ]

        w = ctl.word
        regs = [(arr.k_features, ctl.k_features), (su.k_features, ctl.k_features), (su.rshift, ctl.rshift),
                (su.oshift, ctl.oshift), (su.router, ctl.router), (su.sin, ctl.sin), (su.smul, ctl.smul)]
        m.d.comb += [a.eq(b) for a, b in regs]
        m.d.comb += [
            arr.start.eq(ctl.array_start), arr.mode.eq(instruction_field(w, Op.MATMUL, "mode")),
            arr.q.eq(instruction_field(w, Op.MATMUL, "q")), arr.w.eq(instruction_field(w, Op.MATMUL, "w")), arr.o.eq(instruction_field(w, Op.MATMUL, "o")),
            arr.ntiles.eq(instruction_field(w, Op.MATMUL, "ntiles")),
            su.start.eq(ctl.unit_start), su.op.eq(ctl.unit_op),
            su.mode.eq(instruction_field(w, Op.QUANT, "mode")),
            su.a.eq(Mux(ctl.unit_op, instruction_field(w, Op.SCALEOUT, "o"), instruction_field(w, Op.QUANT, "x"))),
            su.b.eq(Mux(ctl.unit_op, instruction_field(w, Op.SCALEOUT, "s"), instruction_field(w, Op.QUANT, "q"))),
            su.meta.eq(instruction_field(w, Op.QUANT, "meta")), su.ntok.eq(instruction_field(w, Op.QUANT, "ntok")),
            su.ntiles.eq(instruction_field(w, Op.SCALEOUT, "ntiles")),
            dma.start.eq(ctl.dma_start), dma.store.eq(w[isa.OPCODE_LO:] == int(Op.STORE)),
            dma.buf.eq(instruction_field(w, Op.LOAD, "buf")), dma.line.eq(instruction_field(w, Op.LOAD, "line")),
            dma.nlines.eq(instruction_field(w, Op.LOAD, "nlines")), dma.addr.eq(ctl.dma_addr),
        ]
        return m
