"""Controller: fetch, decode, error checks and issue, implementing the ``bitmos.semantics.Timeline`` rule.

One instruction is looked at per cycle when no compute instruction is in flight. At that cycle the
controller checks it (docs/isa.md "Errors", causes 1-5 in that priority, before any DMA stall); the
fault conditions and the busy cycles are the contract's definitions in :mod:`bitmos.semantics`,
elaborated here on Amaranth values, the same text the simulator evaluates on integers and arrays; a fault sets ``done``, ``error`` and ``cause`` and the run's cycle count is
that cycle + 1. ``load``/``store``/``wait``/``halt`` then wait until the DMA engine is idle. Issuing
a compute instruction starts its unit and holds the controller for exactly ``compute_cycles - 1``
more cycles (the units are built to finish inside that window); issuing a ``load``/``store`` starts
the DMA engine and marks it busy for exactly ``dma_cycles``.

Three choices keep the block RAM and the multipliers off the issue path (contract v2, docs/fpga.md),
none of them visible in the contract's cycles: the instruction issues from an instruction register
``ir``, not from IMEM's output; its faults (range checks are products of count fields and register
values), its DMA busy count and address were found one cycle earlier, while it waited in a second
register ``ir_next``, with the registers as the instruction before it leaves them (IMEM is read
three words ahead; two priming cycles after ``start`` fill the registers and are not counted); and
a compute instruction's busy count, a product of its count field and its per-token or per-tile
cycles, is loaded one cycle after its issue from a copy of the issued word (the controller is held
meanwhile; every compute instruction takes at least 3 cycles).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from bitmos import isa
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import AMARANTH_OPS, addr_bits, check_config
from bitmos.rtl.dma import ext_addr_bits
from bitmos.rtl.layouts import INSTRUCTION
from bitmos.rtl.signatures import CAUSE_BITS, CYCLE_BITS, LayerRegistersSignature

__all__ = ["Controller"]

Op = isa.Op


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
        priming = Signal(2)      # the two cycles after start fill the instruction registers
        now = Signal(CYCLE_BITS)
        busy_cnt = Signal(32)
        dma_cnt = Signal(32)
        pc = self.pc
        ir = Signal(64)          # the instruction at pc: checked and issued this cycle
        ir_next = Signal(64)     # the instruction at pc + 1: its faults are found this cycle
        word, word_next = INSTRUCTION(ir), INSTRUCTION(ir_next)
        m.d.comb += [self.running.eq(running | (priming != 0)), self.word.eq(word), self.imem.en.eq(1)]

        is_op = {op: (word.opcode == int(op)) for op in Op}
        f = {op: word[op.name.lower()] for op in Op}
        regs = {reg: getattr(self.regs, reg.name.lower()) for reg in isa.Reg}
        reg, val = f[Op.SETR]["reg"], f[Op.SETR]["value"]

        # ---- issue ----------------------------------------------------------------------------------
        bad_pc = Signal()
        cause = Signal(CAUSE_BITS)   # of ``ir``: pc range now, the others found a cycle ahead (below)
        next_cause = Signal(CAUSE_BITS)
        m.d.comb += bad_pc.eq(pc >= cfg.imem_words)
        head = running & (busy_cnt == 0)
        dma_op = is_op[Op.LOAD] | is_op[Op.STORE] | is_op[Op.WAIT] | is_op[Op.HALT]
        fault = head & (bad_pc | (cause != 0))
        stall = head & ~fault & dma_op & (dma_cnt != 0)
        issue = head & ~fault & ~stall
        advance = issue & ~is_op[Op.HALT]
        m.d.comb += [
            self.array_start.eq(issue & is_op[Op.MATMUL]),
            self.unit_start.eq(issue & (is_op[Op.QUANT] | is_op[Op.SCALEOUT])),
            self.unit_op.eq(is_op[Op.SCALEOUT]),
            self.dma_start.eq(issue & (is_op[Op.LOAD] | is_op[Op.STORE])),
        ]

        # ---- legality one instruction ahead: the contract's definitions (bitmos.semantics) on Amaranth
        # values, for ``ir_next`` with the registers as ``ir`` leaves them (a SETR in ``ir`` is seen),
        # registered as it becomes ``ir``. The result is only taken when ``ir`` issues, so the forwarding
        # does not wait for the issue decision; a stalled instruction keeps its result (registers only
        # change when an instruction issues).
        regs_after = {r: Mux(is_op[Op.SETR] & (reg == int(r)), val[:len(target)], target)
                      for r, target in regs.items()}
        self._legality(m, word_next, regs_after, next_cause)
        dma_busy, dma_addr = Signal(32), Signal.like(self.dma_addr)
        fl_next = word_next[Op.LOAD.name.lower()]   # load and store share field positions
        next_busy, next_addr = Signal(32), Signal.like(self.dma_addr)
        m.d.comb += [next_busy.eq(sem.dma_busy_cycles(fl_next, cfg, AMARANTH_OPS)),
                     next_addr.eq((regs_after[isa.Reg.EBASE] << 6) + fl_next["ext"]),
                     self.dma_addr.eq(dma_addr)]

        # a compute instruction's busy count is computed in the cycle after its issue, from ``issued``
        issued = Signal(64)
        issued_word = INSTRUCTION(issued)
        issued_is = {op: issued_word.opcode == int(op) for op in sem.COMPUTE_OPS}
        busy_of = {op: sem.controller_cycles(op, issued_word[op.name.lower()], regs, cfg, AMARANTH_OPS) - 2
                   for op in sem.COMPUTE_OPS}
        deferred = Signal()
        is_compute = Cat(is_op[op] for op in sem.COMPUTE_OPS).any()

        # IMEM's read address: two words past the one ``ir`` holds next cycle
        m.d.comb += self.imem.addr.eq(Mux(running, Mux(advance, pc + 3, pc + 2), priming))

        def take_next():   # ir <- ir_next (with its legality), ir_next <- the word IMEM delivers
            m.d.sync += [ir.eq(ir_next), ir_next.eq(self.imem.data), cause.eq(next_cause),
                         dma_busy.eq(next_busy), dma_addr.eq(next_addr)]

        with m.If(self.start & ~running & (priming == 0)):
            m.d.sync += [priming.eq(1), pc.eq(0), now.eq(0), busy_cnt.eq(0), dma_cnt.eq(0), deferred.eq(0),
                         self.done.eq(0), self.error.eq(0), self.cause.eq(0), self.cycles.eq(0)]
            m.d.sync += [r.eq(0) for r in regs.values()]
        with m.If(priming == 1):
            m.d.sync += [priming.eq(2), ir_next.eq(self.imem.data)]
        with m.If(priming == 2):
            m.d.sync += [priming.eq(0), running.eq(1)]
            take_next()
        with m.If(running):
            m.d.sync += now.eq(now + 1)
            with m.If(advance):
                m.d.sync += pc.eq(pc + 1)
                take_next()
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
                m.d.sync += [running.eq(0), self.done.eq(1), self.error.eq(1),
                             self.cause.eq(Mux(bad_pc, isa.CAUSE_PC_RANGE, cause)), self.cycles.eq(now + 1)]
            with m.If(issue):
                with m.If(is_op[Op.HALT]):
                    m.d.sync += [running.eq(0), self.done.eq(1), self.cycles.eq(now + 1)]
                with m.If(is_compute):   # held until the deferred count arrives next cycle
                    m.d.sync += [busy_cnt.eq(1), deferred.eq(1), issued.eq(ir)]
                # SETR: the registers as ``regs_after`` has them (the value is legal: it fits; SMUL: its low bits)
                m.d.sync += [target.eq(regs_after[r]) for r, target in regs.items()]
        return m

    def _legality(self, m, word, regs, cause):
        """``cause``: the highest-priority fault of ``word`` (causes 1-4; 0 if none) with registers ``regs``."""
        cfg = self._cfg
        is_op = {op: (word.opcode == int(op)) for op in Op}
        by_cause: dict[int, list] = {isa.CAUSE_ILLEGAL_FIELD: [], isa.CAUSE_BUFFER_RANGE: [],
                                     isa.CAUSE_EXT_RANGE: []}
        for op in Op:
            for flt in sem.faults(op, word.as_value(), word[op.name.lower()], regs, cfg, AMARANTH_OPS):
                by_cause[flt.cause].append(is_op[op] & flt.cond)
        bad = {code: Signal(name=f"bad_cause{code}") for code in by_cause}
        for code, conds in by_cause.items():
            m.d.comb += bad[code].eq(Cat(*conds).any())
        with m.If(word.opcode > max(Op)):
            m.d.comb += cause.eq(isa.CAUSE_ILLEGAL_OPCODE)
        with m.Elif(bad[isa.CAUSE_ILLEGAL_FIELD]):
            m.d.comb += cause.eq(isa.CAUSE_ILLEGAL_FIELD)
        with m.Elif(bad[isa.CAUSE_BUFFER_RANGE]):
            m.d.comb += cause.eq(isa.CAUSE_BUFFER_RANGE)
        with m.Elif(bad[isa.CAUSE_EXT_RANGE]):
            m.d.comb += cause.eq(isa.CAUSE_EXT_RANGE)
