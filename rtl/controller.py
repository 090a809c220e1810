"""Controller: fetch, decode, error checks and issue, implementing the ``bitmos.semantics.Timeline`` rule.

One instruction is looked at per cycle when no compute instruction is in flight. At that cycle the
controller checks it (docs/isa.md "Errors", causes 1-5 in that priority, before any DMA stall, as
``bitmos.sim`` does); a fault sets ``done``, ``error`` and ``cause`` and the run's cycle count is
that cycle + 1. ``load``/``store``/``wait``/``halt`` then wait until the DMA engine is idle. Issuing
a compute instruction starts its unit and holds the controller for exactly ``compute_cycles - 1``
more cycles (the units are built to finish inside that window); issuing a ``load``/``store`` starts
the DMA engine and marks it busy for exactly ``dma_cycles``. IMEM is read one cycle ahead: its read
address is the next pc.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from bitmos import isa, semantics
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config
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
        now = Signal(CYCLE_BITS)
        busy_cnt = Signal(32)
        dma_cnt = Signal(32)
        pc = self.pc
        regs = self.regs
        word = INSTRUCTION(self.imem.data)
        m.d.comb += [self.running.eq(running), self.word.eq(word), self.imem.en.eq(1)]

        # ---- decode --------------------------------------------------------------------------------
        nch = Signal(17)
        xl = Signal(20)
        m.d.comb += [nch.eq((regs.k + (cfg.lanes - 1)) // cfg.lanes), xl.eq(nch * (cfg.lanes // cfg.cols))]
        is_op = {op: (word.opcode == int(op)) for op in Op}
        cause = self._cause(m, word, is_op, nch, xl)
        quant_busy, matmul_busy, so_busy, dma_busy = self._busy_cycles(m, word, nch, xl)

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
        pc_next = Signal.like(pc)
        m.d.comb += [pc_next.eq(Mux(running, Mux(issue & ~is_op[Op.HALT], pc + 1, pc), 0)),
                     self.imem.addr.eq(pc_next)]

        with m.If(self.start & ~running):
            m.d.sync += [running.eq(1), pc.eq(0), now.eq(0), busy_cnt.eq(0), dma_cnt.eq(0),
                         self.done.eq(0), self.error.eq(0), self.cause.eq(0), self.cycles.eq(0)]
            m.d.sync += [getattr(regs, reg.name.lower()).eq(0) for reg in isa.Reg]
        with m.If(running):
            m.d.sync += [now.eq(now + 1), pc.eq(pc_next)]
            with m.If(busy_cnt != 0):
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
                with m.If(is_op[Op.QUANT]):
                    m.d.sync += busy_cnt.eq(quant_busy)
                with m.If(is_op[Op.MATMUL]):
                    m.d.sync += busy_cnt.eq(matmul_busy)
                with m.If(is_op[Op.SCALEOUT]):
                    m.d.sync += busy_cnt.eq(so_busy)
                with m.If(is_op[Op.SETR]):
                    val = word.setr.value
                    with m.Switch(word.setr.reg):
                        for r in isa.Reg:   # val_ok held: the value fits the register (SMUL: its low bits)
                            target = getattr(regs, r.name.lower())
                            with m.Case(int(r)):
                                m.d.sync += target.eq(val[:len(target)])
        return m

    def _cause(self, m, word, is_op, nch, xl):
        """The fault cause of the instruction at the head (0: none), in the priority of docs/isa.md."""
        bad_opcode = word.opcode > max(Op)
        bad_field = Signal()
        bad_range = Signal()
        bad_ext = Signal()
        bad_pc = Signal()
        m.d.comb += [bad_pc.eq(self.pc >= self._cfg.imem_words), bad_field.eq(self._field_fault(m, word, is_op)),
                     bad_range.eq(self._range_fault(m, word, is_op, nch, xl)),
                     bad_ext.eq(self._ext_fault(m, word, is_op))]
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
        return cause

    def _field_fault(self, m, word, is_op):
        """Cause 2: a reserved bit set, a field value the instruction forbids, a SETR value out of range."""
        R = self._cfg.rows
        f = {op: word[op.name.lower()] for op in Op}
        reserved = Const(0, 1)
        for op in Op:
            reserved = reserved | (is_op[op] & ((self.imem.data & isa.RESERVED_MASK[op]) != 0))
        field_faults = [reserved]
        for op in (Op.LOAD, Op.STORE):
            field_faults.append(is_op[op] & (f[op]["nlines"] == 0))
        for op in (Op.QUANT, Op.SCALEOUT):
            ntok, mode = f[op]["ntok"], f[op]["mode"]
            field_faults.append(is_op[op] & ((ntok == 0) | (mode & (ntok != 1)) | (~mode & (ntok > R))))
        for op in (Op.MATMUL, Op.SCALEOUT):
            field_faults.append(is_op[op] & (f[op]["ntiles"] == 0))
        reg, val = f[Op.SETR]["reg"], f[Op.SETR]["value"]
        val_ok = Signal()
        with m.Switch(reg):
            with m.Case(int(isa.Reg.K)):
                m.d.comb += val_ok.eq((val != 0) & (val < 65536))
            with m.Case(int(isa.Reg.RSHIFT), int(isa.Reg.OSHIFT)):
                m.d.comb += val_ok.eq(val < 64)
            with m.Case(int(isa.Reg.ROUTER), int(isa.Reg.SIN)):
                m.d.comb += val_ok.eq(val < 65536)
            with m.Case(int(isa.Reg.SMUL)):
                m.d.comb += val_ok.eq((val[15:] == 0) | (val[15:] == (1 << 17) - 1))
            with m.Case(int(isa.Reg.EBASE)):
                m.d.comb += val_ok.eq(1)
        field_faults.append(is_op[Op.SETR] & ~val_ok)
        return Cat(field_faults).any()

    def _range_fault(self, m, word, is_op, nch, xl):
        """Cause 3: a buffer line the instruction would read or write is past its buffer."""
        cfg = self._cfg
        R, k, E, P = cfg.rows, cfg.act_bits, cfg.experts, cfg.planes_per_row
        dep = cfg.depth
        regs = self.regs
        f = {op: word[op.name.lower()] for op in Op}

        def le(a, b):
            return a <= b

        ranges = []
        for op in (Op.LOAD, Op.STORE):
            b, line, nl = f[op]["buf"], f[op]["line"], f[op]["nlines"]
            depth_sel = Signal(17, name=f"depth_{op.name.lower()}")
            with m.Switch(b):
                for i, name in enumerate(isa.BUFFERS):
                    with m.Case(i):
                        m.d.comb += depth_sel.eq(dep(name))
            ranges.append(is_op[op] & ~le(line + nl, depth_sel))
        fq = f[Op.QUANT]
        wq = Mux(fq["mode"], nch * P, nch * k)
        q_ok = (le(fq["x"] + fq["ntok"] * xl, dep("X")) & le(fq["q"] + wq, dep("Q"))
                & le(fq["meta"] + fq["ntok"], cfg.meta_tokens))
        if E >= 2:
            q_ok = q_ok & le(regs.router + xl, dep("S"))
        if E >= 1:
            q_ok = q_ok & le(regs.sin + xl, dep("S"))
        ranges.append(is_op[Op.QUANT] & ~q_ok)
        fm = f[Op.MATMUL]
        wm = Mux(fm["mode"], nch * P, nch * k)
        m_ok = (le(fm["q"] + wm, dep("Q")) & le(fm["w"] + fm["ntiles"] * nch, dep("W"))
                & le(fm["o"] + fm["ntiles"] * Mux(fm["mode"], 1, R), dep("O")))
        ranges.append(is_op[Op.MATMUL] & ~m_ok)
        fs = f[Op.SCALEOUT]
        o_end = Mux(fs["mode"], fs["o"] + fs["ntiles"], fs["o"] + (fs["ntiles"] - 1) * R + fs["ntok"])
        s_ok = le(o_end, dep("O")) & le(fs["meta"] + fs["ntok"], cfg.meta_tokens)
        if E >= 1:
            s_ok = s_ok & le(fs["s"] + fs["ntiles"], dep("S"))
        ranges.append(is_op[Op.SCALEOUT] & ~s_ok)
        return Cat(ranges).any()

    def _ext_fault(self, m, word, is_op):
        """Cause 4: a load/store past external memory; drives ``dma_addr`` (load/store share field positions)."""
        cfg = self._cfg
        fl = word.load
        lbytes = [cfg.line_bits(b) // 8 for b in isa.BUFFERS]
        nbytes = Signal(40)
        with m.Switch(fl["buf"]):
            for i in range(4):
                with m.Case(i):
                    m.d.comb += nbytes.eq(fl["nlines"] * lbytes[i])
        ext_addr = Signal(40)
        m.d.comb += ext_addr.eq((self.regs.ebase << 6) + fl["ext"])
        m.d.comb += self.dma_addr.eq(ext_addr)
        return (is_op[Op.LOAD] | is_op[Op.STORE]) & (ext_addr + nbytes > cfg.ext_mem_bytes)

    def _busy_cycles(self, m, word, nch, xl):
        """Cycles after the issue cycle that quant, matmul, scaleout hold the controller and a load/store the DMA engine."""
        cfg = self._cfg
        R, C, L, k, E = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.experts
        G, P = L // C, cfg.planes_per_row
        fq, fm, fs, fl = word.quant, word.matmul, word.scaleout, word.load
        router_t = (xl + E + 4) if E >= 2 else 0
        tq = router_t + xl + 1 + nch * (G + Mux(fq["mode"], P, k)) + 1
        tt = Mux(fm["mode"], nch * P + (cfg.plane_rows + C - 1) + 1, nch * k + (R + C - 1) + R)
        quant_busy = fq["ntok"] * tq
        matmul_busy = fm["ntiles"] * tt
        so_busy = fs["ntiles"] * fs["ntok"] + semantics.SCALEOUT_PIPELINE
        bpl = [cfg.line_bits(b) // cfg.ext_bw_bits for b in isa.BUFFERS]
        dma_busy = Signal(32)
        with m.Switch(fl["buf"]):
            for i in range(4):
                with m.Case(i):
                    m.d.comb += dma_busy.eq(cfg.ext_latency + fl["nlines"] * bpl[i])
        return quant_busy, matmul_busy, so_busy, dma_busy
