"""Controller: fetch, decode, error checks and issue, implementing the ``bitmos.semantics.Timeline`` rule.

One instruction is looked at per cycle when no compute instruction is in flight. At that cycle the
controller checks it (docs/isa.md "Errors", causes 1-5 in that priority, before any DMA stall); the
fault conditions and the busy cycles are the contract's definitions in :mod:`bitmos.semantics`,
elaborated here on Amaranth values, the same text the simulator evaluates on integers and arrays; a fault sets ``done``, ``error`` and ``cause`` and the run's cycle count is
that cycle + 1. A ``load``/``store`` then waits until the transfer Q back is done (a queue slot is
free), ``wait keep=n`` until the transfer n + 1 back is, ``halt`` until the last one is
(:class:`TransferSlots`, the contract's ``Timeline``). Issuing a compute instruction starts its unit
and holds the controller for exactly ``compute_cycles - 1`` more cycles (the units are built to
finish inside that window); issuing a ``load``/``store`` starts the DMA engine and counts the cycles
until that transfer is done.

Three choices keep the block RAM and the multipliers off the issue path (contract v2, docs/fpga.md),
none of them visible in the contract's cycles: the instruction issues from an instruction register
``ir``, not from IMEM's output; its legality is found in a pipeline behind it, a four-word queue
(``ir_next3``: the registers it will see, as the instructions ahead leave them, are formed as it moves
up, forwarding one SETR a cycle into ``regs_for2``; ``ir_next2``: the products of count fields and
those registers; ``ir_next``: those sums compared with the buffer depths, the cause registered; the
split is :func:`bitmos.semantics.faults`' ``stage``), so IMEM is read five words ahead and four
priming cycles after ``start`` fill the queue (not counted);
and a compute instruction's busy count, items x per-item cycles + tail, is built in the three cycles
after its issue (operands, product, sum) from a copy of the issued word and per-item cycles held
ready in registers, computed from the committed K every cycle (the controller is held meanwhile;
every compute instruction takes at least 7 cycles, and a SETR of K is committed two cycles before
the operands are taken).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from bitmos import isa
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import AMARANTH_OPS, Countdown, addr_bits, check_config, registered
from bitmos.rtl.dma import BEATS_BITS, ext_addr_bits
from bitmos.rtl.layouts import INSTRUCTION
from bitmos.rtl.signatures import CAUSE_BITS, CYCLE_BITS, REGISTERS, LayerRegistersSignature

__all__ = ["Controller", "TransferSlots"]

Op = isa.Op


class TransferSlots(wiring.Component):
    """The DMA engine's timeline as the controller keeps it (``bitmos.semantics.Timeline``): one countdown
    per queue slot, counting the cycles until that slot's transfer is done; transfer j takes slot j mod Q.

    A transfer issued while the previous one has ``prev`` cycles left is done ``max(latency, prev - 1) +
    beats`` cycles after its issue cycle's next (its data phase starts ``latency`` after its issue or
    when the previous one's ends, whichever is later), which is ``busy_cycles + max(0, prev - 1 -
    latency)`` with ``busy_cycles = latency + beats`` (``bitmos.semantics.dma_busy_cycles``).

    Parameters
    ----------
    queue : int
        Transfers in flight at most (``AcceleratorConfig.dma_slots``).
    latency : int
        ``ext_latency``.

    Attributes
    ----------
    reset : In(1)
        Every slot done (the start of a run).
    issue : In(1)
        A transfer issues this cycle, busy ``busy_cycles`` (In(32)) cycles after it when nothing is ahead.
    back : In(range(1, queue + 1))
        Which transfer ``done`` is about: the one ``back`` places before the next to issue.
    done : Out(1)
    """

    def __init__(self, queue: int, latency: int):
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 1:
            raise ValueError(f"queue must be a positive integer, not {queue!r}")
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
            raise ValueError(f"latency must be a non-negative integer, not {latency!r}")
        self._queue, self._latency = queue, latency
        super().__init__({"reset": In(1), "issue": In(1), "busy_cycles": In(32),
                          "back": In(range(1, queue + 1)), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        q, lat = self._queue, self._latency
        counts = [Countdown(32) for _ in range(q)]
        for i, c in enumerate(counts):
            m.submodules[f"slot{i}"] = c
        if q == 1:   # one slot: every transfer, the previous and the one waited for are slot 0
            slot = before = which = Const(0, 1)
        else:
            slot = Signal(range(q))    # the next transfer's
            before = Signal(range(q))  # the previous transfer's
            which = Signal(range(q))   # the one ``back`` places before the next
            m.d.comb += [before.eq(Mux(slot == 0, q - 1, slot - 1)),
                         which.eq(Mux(slot >= self.back, slot - self.back, slot + q - self.back))]
            with m.If(self.reset):
                m.d.sync += slot.eq(0)
            with m.Elif(self.issue):
                m.d.sync += slot.eq(Mux(slot == q - 1, 0, slot + 1))
        prev = Array(c.count for c in counts)[before]
        carry = Mux(prev > lat + 1, prev - (lat + 1), 0)   # the previous phase outlasting this latency
        for i, c in enumerate(counts):
            m.d.comb += [c.load.eq(self.reset | (self.issue & (slot == i))),
                         c.value.eq(Mux(self.reset, 0, self.busy_cycles + carry))]
        m.d.comb += self.done.eq(Array(c.zero for c in counts)[which])
        return m


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
    dma_beats : Out(BEATS_BITS)
        Its beat count (nlines x beats per line), registered a cycle ahead like the address, so no
        multiply hangs off the issue decision in the DMA engine.
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
            "dma_addr": Out(ext_addr_bits(cfg)), "dma_beats": Out(BEATS_BITS),
            "regs": Out(LayerRegistersSignature()),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg

        running = Signal()
        priming = Signal(3)      # the four cycles after start fill the instruction queue
        now = Signal(CYCLE_BITS)
        m.submodules.busy_count = busy = Countdown(32)   # cycles the issued compute instruction still holds
        m.submodules.dma_slots = slots = TransferSlots(cfg.dma_slots, cfg.ext_latency)
        pc = self.pc
        ir = Signal(64)          # the instruction at pc: issued this cycle if legal and not stalled
        ir_next = Signal(64)     # pc + 1: its staged legality values are compared this cycle
        ir_next2 = Signal(64)    # pc + 2: its legality values (products) are computed this cycle
        ir_next3 = Signal(64)    # pc + 3: the registers it will see are found this cycle
        word, word_next, word_next2 = INSTRUCTION(ir), INSTRUCTION(ir_next), INSTRUCTION(ir_next2)
        m.d.comb += [self.running.eq(running | (priming != 0)), self.word.eq(word), self.imem.en.eq(1)]

        is_op = {op: (word.opcode == int(op)) for op in Op}
        regs = {reg: getattr(self.regs, reg.name.lower()) for reg in REGISTERS}
        compute_ops = [op for op in sem.COMPUTE_OPS if op in sem.legal_ops(cfg)]

        # ---- issue ----------------------------------------------------------------------------------
        bad_pc = Signal()
        cause = Signal(CAUSE_BITS)   # of ``ir``: pc range now, the others found in the two cycles before
        m.d.comb += bad_pc.eq(pc >= cfg.imem_words)
        head = running & busy.zero
        dma_op = is_op[Op.LOAD] | is_op[Op.STORE] | is_op[Op.WAIT] | is_op[Op.HALT]
        fault = head & (bad_pc | (cause != 0))
        # the transfer a synchronising instruction waits for: for a load/store the one Q back (its slot is
        # reused), for wait keep=n the one n + 1 back, for halt the last one (transfers finish in order)
        m.d.comb += slots.back.eq(Mux(is_op[Op.LOAD] | is_op[Op.STORE], cfg.dma_slots,
                                      Mux(is_op[Op.WAIT], word.wait.keep + 1, 1)))
        stall = head & ~fault & dma_op & ~slots.done
        issue = head & ~fault & ~stall
        advance = issue & ~is_op[Op.HALT]
        m.d.comb += [
            self.array_start.eq(issue & is_op[Op.MATMUL]),
            self.unit_start.eq(issue & (is_op[Op.QUANT] | is_op[Op.SCALEOUT])),
            self.unit_op.eq(is_op[Op.SCALEOUT]),
            self.dma_start.eq(issue & (is_op[Op.LOAD] | is_op[Op.STORE])),
        ]

        # ---- legality two instructions ahead: the contract's definitions (bitmos.semantics) on Amaranth
        # values. ``take`` is when the queue moves (an issue, or a priming cycle); the values staged for
        # ``ir_next2`` then move with it into ``ir_next``. ``regs_for2`` holds the registers as ``ir`` and
        # ``ir_next`` will leave them (their SETRs forwarded, a cycle before, as the word entered
        # ``ir_next2``) without waiting for the issue decision: the result is only used if they issue,
        # and a stalled queue keeps it (registers change only at issue).
        take = Signal()
        regs_after = self._after_setr(word, regs)           # as ``ir`` leaves them
        regs_for2 = {r: Signal.like(target, name=f"regs_for2_{r.name.lower()}") for r, target in regs.items()}
        # the footprints' register-derived line counts of ``regs_for2``, found with them a cycle before,
        # so the legality stage multiplies a count field by a register
        def counts_of(rs):
            return sem.register_counts(cfg, rs, AMARANTH_OPS)
        counts_for2 = {name: Signal(v.shape(), name=f"counts_for2_{name}")
                       for name, v in counts_of(regs_for2).items()}
        next_cause = Signal(CAUSE_BITS)
        self._legality(m, word_next2, regs_for2, counts_for2, next_cause, take)
        dma_busy, dma_addr, dma_beats = Signal(32), Signal.like(self.dma_addr), Signal(BEATS_BITS)
        fl_next = word_next[Op.LOAD.name.lower()]   # load and store share field positions
        next_beats, next_addr = Signal(BEATS_BITS), Signal.like(self.dma_addr)
        m.d.comb += [next_beats.eq(sem.transfer_beats(fl_next, cfg, AMARANTH_OPS)),
                     next_addr.eq((regs_after[isa.Reg.EBASE] << 6) + fl_next["ext"]),
                     self.dma_addr.eq(dma_addr), self.dma_beats.eq(dma_beats)]

        # a compute instruction's busy count, built in the three cycles after its issue from ``issued``
        # and the per-item and tail cycles of each op and mode, registered from the committed K
        issued = Signal(64)
        issued_word = INSTRUCTION(issued)
        issued_is = {op: issued_word.opcode == int(op) for op in compute_ops}
        busy_of = {}
        for op in compute_ops:
            f_issued = issued_word[op.name.lower()]
            held = [[v if isinstance(v, int) else registered(m, v, f"{op.name.lower()}_mode{mode}_{what}")
                     for what, v in zip(("item", "tail"),
                                        sem.item_cycles(op, regs[isa.Reg.K], mode, cfg, AMARANTH_OPS,
                                                        w_bits=regs[isa.Reg.WBITS]))]
                    for mode in (0, 1)]
            per_item = Mux(f_issued["mode"], held[1][0], held[0][0])
            tail = Mux(f_issued["mode"], held[1][1], held[0][1])
            busy_of[op] = (sem.compute_items(op, f_issued), per_item, tail)
        # after issue: the operands of the op and mode registered, their product, then + tail
        deferred = Signal(2)
        items, per_item_of, product, tail_of = Signal(16), Signal(32), Signal(48), Signal(32)
        is_compute = Cat(is_op[op] for op in compute_ops).any()

        # IMEM's read address: four words past the one ``ir`` holds next cycle
        m.d.comb += self.imem.addr.eq(Mux(running, Mux(advance, pc + 5, pc + 4), priming))

        m.d.comb += take.eq((priming != 0) | (running & advance))
        with m.If(take):   # the queue moves: ir <- ir_next (with its cause), ..., ir_next3 <- IMEM
            m.d.sync += [ir.eq(ir_next), ir_next.eq(ir_next2), ir_next2.eq(ir_next3), ir_next3.eq(self.imem.data),
                         cause.eq(next_cause), dma_addr.eq(next_addr), dma_beats.eq(next_beats),
                         dma_busy.eq(cfg.ext_latency + next_beats)]   # sem.dma_busy_cycles
            # ir_next3 moves up: it will see the registers as ir_next2 leaves them
            after2 = self._after_setr(word_next2, regs_for2)
            m.d.sync += [regs_for2[r].eq(after2[r]) for r in regs]
            m.d.sync += [counts_for2[name].eq(v) for name, v in counts_of(after2).items()]

        with m.If(self.start & ~running & (priming == 0)):
            m.d.comb += [busy.load.eq(1), slots.reset.eq(1)]   # the busy count to 0 (value's default), every slot done
            m.d.sync += [priming.eq(1), pc.eq(0), now.eq(0), deferred.eq(0),
                         self.done.eq(0), self.error.eq(0), self.cause.eq(0), self.cycles.eq(0),
                         ir.eq(0), ir_next.eq(0), ir_next2.eq(0), ir_next3.eq(0)]   # NOPs: nothing stale is forwarded
            m.d.sync += [r.eq(0) for r in regs.values()] + [r.eq(0) for r in regs_for2.values()]
            m.d.sync += [counts_for2[name].eq(v) for name, v in sem.register_counts(cfg, {r: 0 for r in regs}).items()]
        with m.If(priming != 0):
            m.d.sync += priming.eq(priming + 1)
            with m.If(priming == 4):
                m.d.sync += [priming.eq(0), running.eq(1)]
        with m.If(running):
            m.d.sync += now.eq(now + 1)
            with m.If(advance):
                m.d.sync += pc.eq(pc + 1)
            with m.If(deferred == 1):
                m.d.sync += deferred.eq(2)
                for op, (n, per_item, tail) in busy_of.items():
                    with m.If(issued_is[op]):
                        m.d.sync += [items.eq(n), per_item_of.eq(per_item), tail_of.eq(tail)]
            with m.Elif(deferred == 2):
                m.d.sync += [deferred.eq(3), product.eq(items * per_item_of)]
            with m.Elif(deferred == 3):
                # 1 + n*item + tail cycles from issue: 4 of them have passed when the count starts
                m.d.sync += deferred.eq(0)
                m.d.comb += [busy.load.eq(1), busy.value.eq(product + tail_of - 3)]
            with m.If(self.dma_start):
                m.d.comb += [slots.issue.eq(1), slots.busy_cycles.eq(dma_busy)]
            with m.If(fault):
                m.d.sync += [running.eq(0), self.done.eq(1), self.error.eq(1),
                             self.cause.eq(Mux(bad_pc, isa.CAUSE_PC_RANGE, cause)), self.cycles.eq(now + 1)]
            with m.If(issue):
                with m.If(is_op[Op.HALT]):
                    m.d.sync += [running.eq(0), self.done.eq(1), self.cycles.eq(now + 1)]
                with m.If(is_compute):   # held until the deferred count arrives three cycles later
                    m.d.sync += [deferred.eq(1), issued.eq(ir)]
                    m.d.comb += [busy.load.eq(1), busy.value.eq(3)]
                # SETR: the registers as ``regs_after`` has them (the value is legal: it fits; SMUL: its low bits)
                m.d.sync += [target.eq(regs_after[r]) for r, target in regs.items()]
        return m

    @staticmethod
    def _after_setr(word, regs):
        """The registers as instruction ``word`` leaves them: its SETR value where it writes one (the
        value's low bits: a legal value fits)."""
        f = word[Op.SETR.name.lower()]
        is_setr = word.opcode == int(Op.SETR)
        return {r: Mux(is_setr & (f["reg"] == int(r)), f["value"][:len(target)], target)
                for r, target in regs.items()}

    def _legality(self, m, word, regs, counts, cause, take):
        """``cause``: the highest-priority fault (causes 1-4; 0 if none) of the instruction ``word`` holds
        now, with registers ``regs`` (and their :func:`bitmos.semantics.register_counts`, ``counts``),
        known one ``take`` later: the values :func:`bitmos.semantics.faults` stages (each guarded by its
        opcode) are registered at ``take``, and compared after it."""
        cfg = self._cfg
        n_staged = 0

        def stage(value):
            nonlocal n_staged
            if isinstance(value, (bool, int)):
                return value
            reg = Signal(value.shape(), name=f"legality_stage{n_staged}")
            n_staged += 1
            with m.If(take):
                m.d.sync += reg.eq(value)
            return reg

        opcode = stage(word.opcode)
        legal = sem.legal_ops(cfg)
        assert list(legal) == list(range(len(legal))), "legal opcodes are 0..n-1, so one compare finds the rest"
        staged_is = {op: opcode == int(op) for op in legal}
        by_cause: dict[int, list] = {isa.CAUSE_ILLEGAL_FIELD: [], isa.CAUSE_BUFFER_RANGE: [],
                                     isa.CAUSE_EXT_RANGE: []}
        for op in legal:
            for flt in sem.faults(op, word.as_value(), word[op.name.lower()], regs, cfg, AMARANTH_OPS, stage, counts):
                by_cause[flt.cause].append(staged_is[op] & flt.cond)
        bad = {code: Signal(name=f"bad_cause{code}") for code in by_cause}
        for code, conds in by_cause.items():
            m.d.comb += bad[code].eq(Cat(*conds).any())
        with m.If(opcode > max(legal)):
            m.d.comb += cause.eq(isa.CAUSE_ILLEGAL_OPCODE)
        with m.Elif(bad[isa.CAUSE_ILLEGAL_FIELD]):
            m.d.comb += cause.eq(isa.CAUSE_ILLEGAL_FIELD)
        with m.Elif(bad[isa.CAUSE_BUFFER_RANGE]):
            m.d.comb += cause.eq(isa.CAUSE_BUFFER_RANGE)
        with m.Elif(bad[isa.CAUSE_EXT_RANGE]):
            m.d.comb += cause.eq(isa.CAUSE_EXT_RANGE)
