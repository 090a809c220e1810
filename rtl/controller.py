"""Controller: fetch, decode, error checks and issue, implementing the ``bitmos.semantics.Timeline`` rule.

One instruction is looked at per cycle when no compute instruction is in flight. At that cycle the
controller checks it (docs/isa.md "Errors", causes 1-5 in that priority, before any DMA stall); the
fault conditions and the busy cycles are the contract's definitions in :mod:`bitmos.semantics`,
elaborated here on Amaranth values, the same text the simulator evaluates on integers and arrays; a fault sets ``done``, ``error`` and ``cause`` and the run's cycle count is
that cycle + 1. ``load``/``store``/``wait``/``halt`` then wait until the DMA engine is idle. Issuing
a compute instruction starts its unit and holds the controller for exactly ``compute_cycles - 1``
more cycles (the units are built to finish inside that window); issuing a ``load``/``store`` starts
the DMA engine and marks it busy for exactly ``dma_cycles``.

Two choices keep the block RAM and the multipliers off the issue path (contract v2, docs/fpga.md):
the instruction is checked from an instruction register, not from IMEM's output (IMEM is read two
instructions ahead: the register holds pc, IMEM's output pc + 1; one priming cycle after ``start``
fills the register before cycle 0, and is not counted), and a compute instruction's busy count, a
product of its count field and its per-token or per-tile cycles, is loaded one cycle after its
issue from a copy of the issued word (the controller is held meanwhile; every compute instruction
takes at least 3 cycles).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from bitmos import isa
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config
from bitmos.rtl.dma import ext_addr_bits
from bitmos.rtl.layouts import INSTRUCTION
from bitmos.rtl.signatures import CAUSE_BITS, CYCLE_BITS, LayerRegistersSignature

__all__ = ["Controller", "AMARANTH_OPS"]

Op = isa.Op

#: The contract's definitions (bitmos.semantics) evaluated on Amaranth values: a choice is a mux.
AMARANTH_OPS = sem.Ops(select=Mux)


class Controller(wiring.Component):
    """In-order controller with one DMA engine timeline.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    imem : In(ReadPort.Signature(addr_width, 64))
        IMEM read port.
    start : In(1)
        Pulse: reset registers and status and run from pc 0.
    running, done, error : Out(1)
    cause : Out(3)
    cycles : Out(48)
        Cycle count of the finished run (t_halt + 1, or t_fault + 1).
    pc : Out
    word : Out(INSTRUCTION)
        The instruction word being issued, as a view of every opcode's fields (the top level hands
        them to the units).
    array_start, unit_start, unit_op, dma_start : Out(1)
        Issue strobes (unit_op: 0 quant, 1 scaleout).
    dma_addr : Out
        EBASE*64 + ext of the issuing load/store.
    regs : Out(LayerRegistersSignature)
        The layer registers (reset by ``start``, written by SETR).

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        ia = addr_bits(cfg.imem_words)
        super().__init__({
            "imem": In(ReadPort.Signature(addr_width=ia, shape=64)),
            "start": In(1), "running": Out(1), "done": Out(1), "error": Out(1), "cause": Out(CAUSE_BITS),
            "cycles": Out(CYCLE_BITS), "pc": Out(ia + 1), "word": Out(INSTRUCTION),
            "array_start": Out(1), "unit_start": Out(1), "unit_op": Out(1), "dma_start": Out(1),
            "dma_addr": Out(ext_addr_bits(cfg)),
            "regs": Out(LayerRegistersSignature()),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg

        running = Signal()
        priming = Signal()       # the cycle after start: the instruction register loads word 0
        now = Signal(CYCLE_BITS)
        busy_cnt = Signal(32)
        dma_cnt = Signal(32)
        pc = self.pc
        ir = Signal(64)          # the instruction at pc
        bits = ir
        word = INSTRUCTION(bits)
        m.d.comb += [self.running.eq(running | priming), self.word.eq(word), self.imem.en.eq(1)]

        # ---- decode --------------------------------------------------------------------------------
        is_op = {op: (word.opcode == int(op)) for op in Op}
        f = {op: word[op.name.lower()] for op in Op}

        bad_opcode = word.opcode > max(Op)
        bad_pc = Signal()
        m.d.comb += bad_pc.eq(pc >= cfg.imem_words)

        # ---- legality and cycles: the contract's definitions (bitmos.semantics) on Amaranth values ----
        regs = {reg: getattr(self.regs, reg.name.lower()) for reg in isa.Reg}
        by_cause: dict[int, list] = {isa.CAUSE_ILLEGAL_FIELD: [], isa.CAUSE_BUFFER_RANGE: [],
                                     isa.CAUSE_EXT_RANGE: []}
        for op in Op:
            for flt in sem.faults(op, bits, f[op], regs, cfg, AMARANTH_OPS):
                by_cause[flt.cause].append(is_op[op] & flt.cond)
        bad_field, bad_range, bad_ext = (Signal(name=n) for n in ("bad_field", "bad_range", "bad_ext"))
        for sig, cause_code in ((bad_field, isa.CAUSE_ILLEGAL_FIELD), (bad_range, isa.CAUSE_BUFFER_RANGE),
                                (bad_ext, isa.CAUSE_EXT_RANGE)):
            m.d.comb += sig.eq(Cat(*by_cause[cause_code]).any())

        # load and store share field positions: one external address
        fl = f[Op.LOAD]
        m.d.comb += self.dma_addr.eq((self.regs.ebase << 6) + fl["ext"])

        cause = Signal(CAUSE_BITS)
        with m.If(bad_pc):
            m.d.comb += cause.eq(isa.CAUSE_PC_RANGE)
        with m.Elif(bad_opcode):
            m.d.comb += cause.eq(isa.CAUSE_ILLEGAL_OPCODE)
        with m.Elif(bad_field):
            m.d.comb += cause.eq(isa.CAUSE_ILLEGAL_FIELD)
        with m.Elif(bad_range):
            m.d.comb += cause.eq(isa.CAUSE_BUFFER_RANGE)
        with m.Elif(bad_ext):
            m.d.comb += cause.eq(isa.CAUSE_EXT_RANGE)

        # busy counters hold a unit for its cycles after the issue cycle; a compute instruction's
        # count is computed in the cycle after its issue, from ``issued`` (see the module docstring)
        issued = Signal(64)
        issued_word = INSTRUCTION(issued)
        issued_is = {op: issued_word.opcode == int(op) for op in sem.COMPUTE_OPS}
        busy_of = {op: sem.controller_cycles(op, issued_word[op.name.lower()], regs, cfg, AMARANTH_OPS) - 2
                   for op in sem.COMPUTE_OPS}
        deferred = Signal()
        dma_busy = Signal(32)
        m.d.comb += dma_busy.eq(sem.dma_busy_cycles(fl, cfg, AMARANTH_OPS))
        reg, val = f[Op.SETR]["reg"], f[Op.SETR]["value"]

        # ---- issue ----------------------------------------------------------------------------------
        head = running & (busy_cnt == 0)
        dma_op = is_op[Op.LOAD] | is_op[Op.STORE] | is_op[Op.WAIT] | is_op[Op.HALT]
        fault = head & (cause != 0)
        stall = head & ~fault & dma_op & (dma_cnt != 0)
        issue = head & ~fault & ~stall
        m.d.comb += [
            self.array_start.eq(issue & is_op[Op.MATMUL]),
            self.unit_start.eq(issue & (is_op[Op.QUANT] | is_op[Op.SCALEOUT])),
            self.unit_op.eq(is_op[Op.SCALEOUT]),
            self.dma_start.eq(issue & (is_op[Op.LOAD] | is_op[Op.STORE])),
        ]
        is_compute = is_op[Op.QUANT] | is_op[Op.MATMUL] | is_op[Op.SCALEOUT]
        advance = issue & ~is_op[Op.HALT]
        # IMEM's read address: the word after the one the register will hold next cycle
        m.d.comb += self.imem.addr.eq(Mux(running, Mux(advance, pc + 2, pc + 1), Mux(priming, 1, 0)))

        with m.If(self.start & ~running & ~priming):
            m.d.sync += [priming.eq(1), pc.eq(0), now.eq(0), busy_cnt.eq(0), dma_cnt.eq(0), deferred.eq(0),
                         self.done.eq(0), self.error.eq(0), self.cause.eq(0), self.cycles.eq(0)]
            m.d.sync += [r.eq(0) for r in regs.values()]
        with m.If(priming):
            m.d.sync += [priming.eq(0), running.eq(1), ir.eq(self.imem.data)]
        with m.If(running):
            m.d.sync += now.eq(now + 1)
            with m.If(advance):
                m.d.sync += [pc.eq(pc + 1), ir.eq(self.imem.data)]
            with m.If(deferred):
                m.d.sync += deferred.eq(0)
                for op, cycles in busy_of.items():
                    with m.If(issued_is[op]):
                        m.d.sync += busy_cnt.eq(cycles)
            with m.Elif(busy_cnt != 0):
                m.d.sync += busy_cnt.eq(busy_cnt - 1)
            with m.If(self.dma_start):
                m.d.sync += dma_cnt.eq(dma_busy)
            with m.Elif(dma_cnt != 0):
                m.d.sync += dma_cnt.eq(dma_cnt - 1)
            with m.If(fault):
                m.d.sync += [running.eq(0), self.done.eq(1), self.error.eq(1), self.cause.eq(cause),
                             self.cycles.eq(now + 1)]
            with m.If(issue):
                with m.If(is_op[Op.HALT]):
                    m.d.sync += [running.eq(0), self.done.eq(1), self.cycles.eq(now + 1)]
                with m.If(is_compute):   # held until the deferred count arrives next cycle
                    m.d.sync += [busy_cnt.eq(1), deferred.eq(1), issued.eq(bits)]
                with m.If(is_op[Op.SETR]):
                    with m.Switch(reg):
                        for r, target in regs.items():   # the value is legal: it fits (SMUL: its low bits)
                            with m.Case(int(r)):
                                m.d.sync += target.eq(val[:len(target)])
        return m
