"""Verification wrapper: the Accelerator with its external memory and host sequencer in HDL.

The fast cocotb bench (:mod:`bitmos.rtl.cocotb_bench`, mode ``"fast"``) runs this wrapper instead
of the bare top: the external memory answers the DMA port inside the simulated model, with the
contract's timing (``ext_latency``, one beat of ``ext_bw_bits`` per cycle), and a small sequencer
performs the host's part of a run (clear, IMEM load, start, wait). cocotb only writes a program
and a memory image through the backdoor (the memories' arrays), raises ``go``, waits for
``finished`` (one await per program, not one per clock edge) and reads the results back.

* :class:`ExtMemoryModel`: the memory behind :class:`~bitmos.rtl.signatures.ExtMemSignature`.
* :class:`ProgramTestbed`: Accelerator + ExtMemoryModel + program memory + sequencer.

Neither is part of the accelerator: they exist for simulation only (the memory is as large as a
test needs, not ``ext_mem_mib``) and use only the top's public ports (``host``, ``ext``).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect
from amaranth.utils import ceil_log2, exact_log2

from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import RecordQueue, addr_bits, check_config, due_counter_bits
from bitmos.rtl.dma import ext_addr_bits
from bitmos.rtl.signatures import CAUSE_BITS, CYCLE_BITS, ExtMemSignature
from bitmos.rtl.top import Accelerator

__all__ = ["ExtMemoryModel", "ProgramTestbed", "TESTBED_NAME", "BENCH_TOP_NAME", "DEFAULT_ROW_BYTES",
           "testbed_verilog"]

#: Verilog module name of the wrapper.
TESTBED_NAME = "bitmos_testbed"
#: Verilog module name of the bench top (clock and reset generator around the wrapper).
BENCH_TOP_NAME = "bitmos_bench"
#: Bytes per backdoor row: one cocotb access moves a whole row, so wide rows make loading cheap.
DEFAULT_ROW_BYTES = 64


def _check_pow2(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or value & (value - 1):
        raise ValueError(f"{name} must be a power of two of at least {lo}, not {value!r}")
    return value


class ExtMemoryModel(wiring.Component):
    """Byte-addressed memory serving the DMA port with the contract's fixed timing.

    The bytes live in two banks of ``row_bytes``-wide rows, ``even`` (rows 0, 2, 4, ...) and
    ``odd``, so that a beat at any byte address, which spans at most two consecutive rows, is read
    or written in one cycle. The backdoor view of byte ``a`` is bank ``even`` if ``a // row_bytes``
    is even, row ``a // row_bytes // 2``, byte ``a % row_bytes`` (little-endian within a row).

    Timing (``ExtMemSignature``): a read request in cycle r returns beat b in cycle
    ``r + latency + b``, read from the memory as it is in that cycle (asynchronous read ports), a
    write beat of the same cycle included: requests are served in order, so a read requested after a
    write sees its bytes even where their beats meet. Write beats are stored in the cycle they are
    valid, each request's from its address on, requests in order. Up to ``queue`` requests of each
    direction wait (the DMA engine's transfers in flight).

    Checks (sticky until ``clear_status``): ``range_fault`` if a request reaches beyond
    ``mem_bytes`` (the model is smaller than the contract's address space: the test must size it),
    ``protocol_fault`` if a request finds its direction's queue full, ``req_len`` is not a whole,
    non-zero number of beats, a read's beats fall due while another read's are being served, or a
    write beat arrives that no write request announced.
    ``written_lo``/``written_hi`` bound the bytes written since ``clear_status`` (lo > hi: none), so
    a bench reads back only those rows.

    Parameters
    ----------
    mem_bytes : int
        Size of the model, a power of two >= 2 * row_bytes.
    data_bits : int
        Beat width (the config's ``ext_bw_bits``), a multiple of 8 with ``data_bits/8 <= row_bytes``.
    latency : int
        The config's ``ext_latency`` (>= 1).
    addr_bits : int
        Width of the port's ``req_addr``.
    row_bytes : int
        Backdoor row width in bytes, a power of two.
    queue : int
        Requests of each direction that may wait (the config's ``dma_slots``).
    """

    def __init__(self, *, mem_bytes: int, data_bits: int, latency: int, addr_bits: int,
                 row_bytes: int = DEFAULT_ROW_BYTES, queue: int = 1):
        _check_pow2("row_bytes", row_bytes, 1)
        _check_pow2("mem_bytes", mem_bytes, 2 * row_bytes)
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 1:
            raise ValueError(f"latency must be an integer >= 1, not {latency!r}")
        if not isinstance(data_bits, int) or data_bits % 8 or not 8 <= data_bits <= 8 * row_bytes:
            raise ValueError(f"data_bits must be a multiple of 8 between 8 and 8*row_bytes, not {data_bits!r}")
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 1:
            raise ValueError(f"queue must be an integer >= 1, not {queue!r}")
        self._mem_bytes, self._data_bits, self._latency, self._queue = mem_bytes, data_bits, latency, queue
        self._row_bytes = row_bytes
        self.even = Memory(shape=8 * row_bytes, depth=mem_bytes // row_bytes // 2, init=[])
        self.odd = Memory(shape=8 * row_bytes, depth=mem_bytes // row_bytes // 2, init=[])
        super().__init__({
            "ext": In(ExtMemSignature(addr_bits=addr_bits, data_bits=data_bits)),
            "clear_status": In(1),
            "range_fault": Out(1), "protocol_fault": Out(1),
            "written_lo": Out(ceil_log2(mem_bytes) + 1), "written_hi": Out(ceil_log2(mem_bytes) + 1),
        })

    @property
    def mem_bytes(self) -> int:
        return self._mem_bytes

    @property
    def row_bytes(self) -> int:
        return self._row_bytes

    def elaborate(self, platform):
        m = Module()
        m.submodules.even, m.submodules.odd = self.even, self.odd
        ext = self.ext
        nb, rb, lat = self._data_bits // 8, self._row_bytes, self._latency
        row_shift = exact_log2(rb)
        alen = len(ext.req_addr)

        def window(addr):
            """(even-bank row, odd-bank row, row parity, byte offset) of the two rows holding ``addr``."""
            row = addr >> row_shift
            return (row + 1) >> 1, row >> 1, row[0], addr[:row_shift] if row_shift else Const(0, 1)

        # --- requests: each direction's wait in a queue of ``queue`` (the DMA engine's transfers in flight)
        tick = Signal(due_counter_bits(lat))   # a read's first beat is at most ``lat`` cycles ahead
        m.d.sync += tick.eq(tick + 1)
        nbeats = ext.req_len >> exact_log2(nb)
        read_layout = data.StructLayout({"addr": alen, "beats": len(nbeats), "due": len(tick)})
        write_layout = data.StructLayout({"addr": alen, "beats": len(nbeats)})
        m.submodules.reads = reads = RecordQueue(read_layout, self._queue)
        m.submodules.writes = writes = RecordQueue(write_layout, self._queue)
        m.d.comb += [reads.w.payload.addr.eq(ext.req_addr), reads.w.payload.beats.eq(nbeats),
                     reads.w.payload.due.eq(tick + lat), reads.w.valid.eq(ext.req & ~ext.req_we),
                     writes.w.payload.addr.eq(ext.req_addr), writes.w.payload.beats.eq(nbeats),
                     writes.w.valid.eq(ext.req & ext.req_we)]
        read_head, write_head = reads.r.payload, writes.r.payload

        def running(beat, head, queue, name):
            """The address of a direction's beat in a cycle ``beat`` is high: its request's running pointer,
            or the next request's address when no beats are left (that request then leaves its queue).
            Returns (address, beats left of the current request)."""
            ptr, left = Signal(alen, name=f"{name}_ptr"), Signal(len(nbeats), name=f"{name}_left")
            addr = Signal(alen, name=f"{name}_addr")
            m.d.comb += [addr.eq(Mux(left != 0, ptr, head.addr)), queue.r.ready.eq(beat & (left == 0))]
            with m.If(beat):
                with m.If(left != 0):
                    m.d.sync += [ptr.eq(ptr + nb), left.eq(left - 1)]
                with m.Else():
                    m.d.sync += [ptr.eq(head.addr + nb), left.eq(head.beats - 1)]
            return addr, left

        # --- read: beat b of a request in cycle r is served in cycle r + lat + b, read from the memory as
        # it is in that cycle (comb read ports) with a write beat of the same cycle forwarded
        first = reads.r.valid & (read_head.due == tick)   # the oldest read's first beat is due
        serving = Signal()
        rd_addr, read_left = running(serving, read_head, reads, "read")
        m.d.comb += [serving.eq((read_left != 0) | first), ext.rvalid.eq(serving)]
        even_rd, odd_rd = self.even.read_port(domain="comb"), self.odd.read_port(domain="comb")
        e_row, o_row, parity, offset = window(rd_addr)
        m.d.comb += [even_rd.addr.eq(e_row), odd_rd.addr.eq(o_row)]
        # the row holding the beat's first byte comes first
        pair = Mux(parity, Cat(odd_rd.data, even_rd.data), Cat(even_rd.data, odd_rd.data))
        stored = pair.bit_select(offset * 8, 8 * nb)

        # --- write: each beat at its request's running pointer, byte enables over the two rows
        write = Signal()
        wr_addr, write_left = running(write, write_head, writes, "write")
        m.d.comb += write.eq(ext.wvalid & ((write_left != 0) | writes.r.valid))
        even_wr = self.even.write_port(granularity=8)
        odd_wr = self.odd.write_port(granularity=8)
        e_row, o_row, parity, offset = window(wr_addr)
        wide = Signal(16 * rb)
        lanes = Signal(2 * rb)
        m.d.comb += [wide.eq(ext.wdata << (offset * 8)), lanes.eq(Const((1 << nb) - 1, 2 * rb) << offset)]
        lo_data, hi_data = wide[:8 * rb], wide[8 * rb:]
        lo_en, hi_en = lanes[:rb], lanes[rb:]
        m.d.comb += [
            even_wr.addr.eq(e_row), odd_wr.addr.eq(o_row),
            even_wr.data.eq(Mux(parity, hi_data, lo_data)), odd_wr.data.eq(Mux(parity, lo_data, hi_data)),
            even_wr.en.eq(Mux(write, Mux(parity, hi_en, lo_en), 0)),
            odd_wr.en.eq(Mux(write, Mux(parity, lo_en, hi_en), 0)),
        ]
        # a read beat overlapping the write beat of its cycle carries the written bytes (requests are
        # ordered: the write was requested first, else their beats could not share a cycle)
        shift = Signal(signed(alen + 2))   # byte i of the read beat is byte i + shift of the write beat
        m.d.comb += shift.eq(rd_addr - wr_addr)
        wbytes = Array(ext.wdata.word_select(i, 8) for i in range(nb))
        merged = []
        for i in range(nb):
            j = shift + i
            hit = write & (j >= 0) & (j < nb)
            merged.append(Mux(hit, wbytes[j[:max(1, ceil_log2(nb))]], stored.word_select(i, 8)))
        m.d.comb += ext.rdata.eq(Cat(*merged))

        # --- checks
        whole_beats = ext.req_len[:exact_log2(nb)] == 0 if nb > 1 else Const(1)
        with m.If(self.clear_status):
            m.d.sync += [self.range_fault.eq(0), self.protocol_fault.eq(0),
                         self.written_lo.eq(self._mem_bytes), self.written_hi.eq(0)]
        with m.Else():
            with m.If(ext.req & (ext.req_addr + ext.req_len > self._mem_bytes)):
                m.d.sync += self.range_fault.eq(1)
            overlap = first & (read_left != 0)   # a read's beats due while another read's are served
            full = Mux(ext.req_we, ~writes.w.ready, ~reads.w.ready)
            with m.If((ext.req & (full | ~whole_beats | (nbeats == 0))) | (ext.wvalid & ~write) | overlap):
                m.d.sync += self.protocol_fault.eq(1)
            with m.If(write):
                with m.If(wr_addr < self.written_lo):
                    m.d.sync += self.written_lo.eq(wr_addr)
                with m.If(wr_addr + nb > self.written_hi):
                    m.d.sync += self.written_hi.eq(wr_addr + nb)
        return m


class ProgramTestbed(wiring.Component):
    """The Accelerator for ``cfg`` with an :class:`ExtMemoryModel` and a host sequencer.

    A run: the bench writes the program into ``progmem`` (backdoor), sets ``prog_words`` and the
    memory image (backdoor), raises ``go``. The sequencer pulses ``host.clear`` and waits for idle,
    writes the ``prog_words`` words into IMEM (one per cycle), pulses ``host.start``, waits for
    ``busy`` to fall and latches ``cycles``, ``error`` and ``cause``; then ``finished`` is high
    until ``go`` falls (a four-phase handshake, so the bench needs no clock edges of its own).

    Two inputs split a run for the native bench (:mod:`bitmos.rtl.native_bench`), which clears
    once and then restores a snapshot of the cleared model before every program: ``go`` with
    ``clear_only`` clears and raises ``finished`` without loading or starting; ``go`` with
    ``no_clear`` skips the clear. Both low (the cocotb bench never drives them): a whole run.

    Parameters
    ----------
    cfg : AcceleratorConfig
    mem_bytes : int
        Size of the external memory model (power of two).
    row_bytes : int
        Backdoor row width of the memory model.

    Attributes
    ----------
    go : In(1)
    clear_only, no_clear : In(1)
        See above (sampled with ``go``).
    prog_words : In
        Program length in words (1 .. imem_words).
    finished : Out(1)
    cycles : Out(CYCLE_BITS); error : Out(1); cause : Out(CAUSE_BITS)
        The accelerator's status latched when the run ended.
    range_fault, protocol_fault, written_lo, written_hi : Out
        The memory model's checks and write extent for this run (see :class:`ExtMemoryModel`).
    """

    def __init__(self, cfg: AcceleratorConfig, *, mem_bytes: int = 1 << 20, row_bytes: int = DEFAULT_ROW_BYTES):
        self._cfg = cfg = check_config(cfg)
        self.accel = Accelerator(cfg)
        self.memory = ExtMemoryModel(mem_bytes=mem_bytes, data_bits=cfg.ext_bw_bits, latency=cfg.ext_latency,
                                     addr_bits=ext_addr_bits(cfg), row_bytes=row_bytes, queue=cfg.dma_slots)
        self.progmem = Memory(shape=64, depth=cfg.imem_words, init=[])
        wa = ceil_log2(mem_bytes) + 1
        super().__init__({
            "go": In(1), "clear_only": In(1), "no_clear": In(1), "prog_words": In(addr_bits(cfg.imem_words) + 1),
            "finished": Out(1), "cycles": Out(CYCLE_BITS), "error": Out(1), "cause": Out(CAUSE_BITS),
            "range_fault": Out(1), "protocol_fault": Out(1), "written_lo": Out(wa), "written_hi": Out(wa),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self.accel
        m.submodules.ext_memory = mem = self.memory
        m.submodules.progmem = self.progmem
        connect(m, accel.ext, mem.ext)
        host = accel.host
        m.d.comb += [self.range_fault.eq(mem.range_fault), self.protocol_fault.eq(mem.protocol_fault),
                     self.written_lo.eq(mem.written_lo), self.written_hi.eq(mem.written_hi)]

        word = Signal(len(self.prog_words))
        prog_rd = self.progmem.read_port(domain="comb")
        m.d.comb += [prog_rd.addr.eq(word), host.imem_addr.eq(word), host.imem_data.eq(prog_rd.data)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.go):
                    m.d.sync += word.eq(0)
                    m.next = "CLEAR"
                    with m.If(self.no_clear):
                        m.next = "LOAD"
            with m.State("CLEAR"):
                # the accelerator is idle here (the previous run ended), so the pulse is taken
                m.d.comb += [host.clear.eq(1), mem.clear_status.eq(1)]
                m.d.sync += word.eq(0)
                m.next = "WAIT_CLEAR"
            with m.State("WAIT_CLEAR"):
                with m.If(~host.busy):
                    m.next = "LOAD"
                    with m.If(self.clear_only):
                        m.next = "FINISHED"
            with m.State("LOAD"):
                with m.If(word == self.prog_words):
                    m.next = "START"
                with m.Else():
                    m.d.comb += host.imem_we.eq(1)
                    m.d.sync += word.eq(word + 1)
            with m.State("START"):
                m.d.comb += host.start.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(~host.busy):
                    m.d.sync += [self.cycles.eq(host.cycles), self.error.eq(host.error),
                                 self.cause.eq(host.cause)]
                    m.next = "FINISHED"
            with m.State("FINISHED"):
                m.d.comb += self.finished.eq(1)
                with m.If(~self.go):
                    m.next = "IDLE"
        return m


#: Half clock period of the bench top, in ns (timescale 1ns/1ps).
HALF_PERIOD_NS = 5


def testbed_verilog(cfg: AcceleratorConfig, *, mem_bytes: int = 1 << 20, row_bytes: int = DEFAULT_ROW_BYTES,
                    bench_top: bool = True) -> str:
    """Verilog of the :class:`ProgramTestbed` plus the bench top ``bitmos_bench`` that clocks it.

    ``bench_top=False``: the wrapper alone (top module ``bitmos_testbed``), for the native bench,
    whose C++ main drives the clock and the ports itself.

    The clock and reset are generated inside the simulated model (``always #5 clk = ~clk``), so the
    simulator runs free between the bench's few accesses per program; a clock driven from cocotb
    costs a VPI round trip per edge (about 30x slower on Verilator, measured in docs/rtl.md). The
    top holds the wrapper's inputs as registers the bench writes. The signals and memories the
    bench touches carry ``/*verilator public_flat_rw*/``, so Verilator can be run without
    ``--public-flat-rw`` (every other signal stays optimisable); Icarus ignores the comment.
    """
    import re

    from amaranth import Shape

    from bitmos.rtl.emit import to_verilog

    tb = ProgramTestbed(cfg, mem_bytes=mem_bytes, row_bytes=row_bytes)
    text = to_verilog(tb, TESTBED_NAME)
    public = "/*verilator public_flat_rw*/"
    # the memories the bench loads and reads back: progmem (in the wrapper), even/odd (in the model)
    for name in ("progmem", "even", "odd"):
        text, n = re.subn(rf"(\n  reg \[\d+:0\] {name} \[\d+:0\])", rf"\1 {public}", text)
        if n != 1:
            raise RuntimeError(f"expected one memory {name!r} in the emitted wrapper, found {n}")
    if not bench_top:
        return "`timescale 1ns/1ps\n" + text
    decls, conns = [], [".clk(clk)", ".rst(rst)"]
    for path, member in tb.signature.members.flatten():
        name = "__".join(str(p) for p in path)
        width = Shape.cast(member.shape).width
        kind = "reg" if member.flow.name == "In" else "wire"
        rng = f"[{width - 1}:0] " if width > 1 else ""
        decls.append(f"  {kind} {rng}{name} {public};")
        if kind == "reg":
            decls.append(f"  initial {name} = 0;")
        conns.append(f".{name}({name})")
    top = "\n".join([
        "`timescale 1ns/1ps",
        f"module {BENCH_TOP_NAME};",
        f"  reg clk {public};",
        f"  reg rst {public};",
        "  initial clk = 0;",
        "  initial rst = 1;",
        *decls,
        f"  always #{HALF_PERIOD_NS} clk = ~clk;",
        f"  initial #{4 * HALF_PERIOD_NS + 1} rst = 0;   // two clock edges in reset",
        f"  {TESTBED_NAME} tb({', '.join(conns)});",
        "endmodule", ""])
    return "`timescale 1ns/1ps\n" + text + "\n" + top
