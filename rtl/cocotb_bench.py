"""cocotb benches of the emitted Accelerator: program runs and comparisons.

Run by :mod:`bitmos.rtl.runner` through ``cocotb_tools.runner`` (from the RTL tests, the benchmark
and ``bitmos verify``); the job file named by ``BITMOS_JOBS`` lists programs with their memory images
and expected results, which the caller computed (with the simulator: this module imports none of
bitmos). Per-program results go to the job's report file. Two benches, same job and report format:

* ``run_programs_fast`` (the default, mode ``"fast"``): the design is the verification wrapper
  :class:`bitmos.rtl.testbed.ProgramTestbed`, whose memory model and host sequencer run inside the
  simulator. Per program the bench writes the program and the changed rows of the memory image
  through the backdoor (the memories' arrays), raises ``go``, awaits ``finished`` once, and reads
  back the status and the rows the DMA engine wrote.
* ``run_programs`` (mode ``"edge"``, for debugging): the bare ``bitmos_accel`` with a Python memory
  model that is awaited on every clock edge (the original bench; 20-100x slower on Verilator).
"""

import collections
import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, ReadOnly, ReadWrite, RisingEdge

from bitmos.rtl.native_bench import check_case


def _load_job():
    with open(os.environ["BITMOS_JOBS"], encoding="utf-8") as f:
        return json.load(f)


def _check(case, got, final_memory, results, failures, log, extra_fault=None):
    """Compare one run with its expectation (:func:`bitmos.rtl.native_bench.check_case`, one comparison for
    every bench) and log a failure as it happens."""
    before = len(failures)
    check_case(case, got, final_memory, results, failures, extra_fault)
    if len(failures) > before:
        log.error(failures[-1])


def _finish(job, dut, failures, results, total_cycles, elapsed, sim_cycles=None, phases=None):
    dut._log.info(f"{len(job['cases'])} programs, {total_cycles} run cycles in {elapsed:.2f} s wall "
                  f"({total_cycles / max(elapsed, 1e-9):.0f} run cycles/s incl. cocotb)")
    if "report" in job:
        with open(job["report"], "w") as f:
            json.dump({"programs": len(job["cases"]), "run_cycles": total_cycles, "wall_s": elapsed,
                       "sim_cycles": sim_cycles, "phases": phases, "failures": failures, "results": results}, f)
    assert not failures, "\n".join(failures)


class ExtMemory:
    """Byte-addressed external memory on the ExtMemSignature port (fixed latency, no back-pressure).

    Requests are served in order: a read's beat b, due ``latency + b`` cycles after its request, carries
    the bytes as they are in its cycle, a write beat of that cycle included (the signals are read
    once the cycle has settled, then the beat is driven); write beats go to the oldest write request
    with beats left."""

    def __init__(self, dut, latency, bw_bits, image: bytearray):
        self.dut, self.lat, self.bw = dut, latency, bw_bits // 8
        self.mem = image
        self.reads = collections.deque()    # [first beat's cycle, address, beats] in request order
        self.writes = collections.deque()   # [address, beats left]
        self.cycle = 0

    def _grow(self, end):
        if end > len(self.mem):
            self.mem.extend(bytes(end - len(self.mem)))

    async def run(self):
        d = self.dut
        while True:
            await RisingEdge(d.clk)
            self.cycle += 1
            await ReadWrite()    # this cycle's register outputs (a store's beat) have settled
            if int(d.ext__wvalid.value):
                w = self.writes[0]
                self._grow(w[0] + self.bw)
                self.mem[w[0]:w[0] + self.bw] = int(d.ext__wdata.value).to_bytes(self.bw, "little")
                w[0] += self.bw
                w[1] -= 1
                if w[1] == 0:
                    self.writes.popleft()
            beat = None
            if self.reads and self.reads[0][0] <= self.cycle:
                r = self.reads[0]
                self._grow(r[1] + self.bw)
                beat = int.from_bytes(self.mem[r[1]:r[1] + self.bw], "little")
                r[0], r[1], r[2] = r[0] + 1, r[1] + self.bw, r[2] - 1
                if r[2] == 0:
                    self.reads.popleft()
            d.ext__rvalid.value = beat is not None
            d.ext__rdata.value = beat or 0
            await ReadOnly()
            if int(d.ext__req.value):
                addr, n = int(d.ext__req_addr.value), int(d.ext__req_len.value)
                if int(d.ext__req_we.value):
                    self.writes.append([addr, n // self.bw])
                else:
                    self.reads.append([self.cycle + self.lat, addr, n // self.bw])


async def wait_idle(dut):
    await ReadOnly()
    while int(dut.host__busy.value):
        await RisingEdge(dut.clk)
        await ReadOnly()
    await RisingEdge(dut.clk)


@cocotb.test()
async def run_programs(dut):
    """Edge-by-edge bench on the bare accelerator (debugging mode)."""
    job = _load_job()
    cfg = job["config"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for sig in ("host__imem_we", "host__clear", "host__start", "ext__rvalid"):
        getattr(dut, sig).value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    mem = ExtMemory(dut, cfg["ext_latency"], cfg["ext_bw_bits"], bytearray())
    cocotb.start_soon(mem.run())
    failures, results, total_cycles, t0 = [], [], 0, time.time()
    for case in job["cases"]:
        dut.host__clear.value = 1
        await RisingEdge(dut.clk)
        dut.host__clear.value = 0
        await wait_idle(dut)
        for a, w in enumerate(case["words"]):
            dut.host__imem_we.value = 1
            dut.host__imem_addr.value = a
            dut.host__imem_data.value = w
            await RisingEdge(dut.clk)
        dut.host__imem_we.value = 0
        mem.mem = bytearray(bytes.fromhex(case["memory"]))
        mem.reads.clear()
        mem.writes.clear()
        dut.host__start.value = 1
        await RisingEdge(dut.clk)
        dut.host__start.value = 0
        await wait_idle(dut)
        got = {"cycles": int(dut.host__cycles.value), "error": bool(int(dut.host__error.value)),
               "cause": int(dut.host__cause.value)}
        total_cycles += got["cycles"]
        _check(case, got, mem.mem, results, failures, dut._log)
    _finish(job, dut, failures, results, total_cycles, time.time() - t0)


class BackdoorMemory:
    """The bench's view of the wrapper's external memory model (two banks of wide rows).

    ``mirror`` holds what the model's arrays contain; loading an image writes only the rows that
    differ from it (successive programs of one layer share their weights), and reading back after a
    run fetches only the rows inside the run's write extent (``written_lo``/``written_hi``).
    """

    def __init__(self, dut, mem_bytes, row_bytes):
        self.even, self.odd = dut.tb.ext_memory.even, dut.tb.ext_memory.odd
        self.size, self.rb = mem_bytes, row_bytes
        self.mirror = bytearray(mem_bytes)   # the arrays start at zero (init=[])
        self.extent = 0                      # bytes of mirror that may be non-zero

    def _row(self, r):
        return (self.odd if r & 1 else self.even)[r >> 1]

    def load(self, image: bytes) -> int:
        """Make the model hold ``image`` followed by zeros; returns the number of rows written."""
        if len(image) > self.size:
            raise ValueError(f"the memory image has {len(image)} bytes, the model {self.size}")
        rb, written = self.rb, 0
        end = max(len(image), self.extent)
        new = bytes(image).ljust(end, b"\0")
        for r in range((end + rb - 1) // rb):
            lo, hi = r * rb, min((r + 1) * rb, end)
            if self.mirror[lo:hi] != new[lo:hi]:
                self.mirror[lo:hi] = new[lo:hi]
                self._row(r).value = int.from_bytes(self.mirror[lo:lo + rb], "little")
                written += 1
        self.extent = len(image)
        return written

    def read_back(self, lo: int, hi: int) -> None:
        """Refresh ``mirror`` from the rows covering bytes [lo, hi) (the run's writes)."""
        rb = self.rb
        for r in range(lo // rb, (hi + rb - 1) // rb):
            self.mirror[r * rb:(r + 1) * rb] = int(self._row(r).value).to_bytes(rb, "little")
        self.extent = max(self.extent, hi)


@cocotb.test()
async def run_programs_fast(dut):
    """The default bench: clock, memory model and host sequencer inside the simulated model."""
    job = _load_job()
    tb = job["testbed"]
    await FallingEdge(dut.rst)   # the bench top generates clock and reset itself
    mem = BackdoorMemory(dut, tb["mem_bytes"], tb["row_bytes"])
    failures, results, total_cycles, t0 = [], [], 0, time.time()
    t_sim0 = get_sim_time("ns")
    progmem = dut.tb.progmem
    imem_words = len(progmem)
    t_log = time.time()
    phases = {"load": 0.0, "run": 0.0, "check": 0.0}   # wall seconds: backdoor writes, simulation, read-back
    for case in job["cases"]:
        words = case["words"]
        if not 1 <= len(words) <= imem_words:
            failures.append(f"{case['name']}: {len(words)} program words; IMEM holds 1..{imem_words}")
            results.append({"name": case["name"], "ok": False, "memory_ok": False})
            continue
        t_a = time.time()
        for a, w in enumerate(words):
            progmem[a].value = w
        dut.prog_words.value = len(words)
        mem.load(bytes.fromhex(case["memory"]))
        dut.go.value = 1
        t_b = time.time()
        await RisingEdge(dut.finished)
        t_c = time.time()
        phases["load"] += t_b - t_a
        phases["run"] += t_c - t_b
        got = {"cycles": int(dut.cycles.value), "error": bool(int(dut.error.value)),
               "cause": int(dut.cause.value)}
        lo, hi = int(dut.written_lo.value), int(dut.written_hi.value)
        if lo < hi:
            mem.read_back(lo, hi)
        fault = None
        if int(dut.range_fault.value):
            fault = (f"the program reached beyond the external memory model's {mem.size} bytes "
                     "(the test must size the model: runner mem_bytes)")
        elif int(dut.protocol_fault.value):
            fault = "the DMA port broke the ExtMemSignature protocol (overlapping or unannounced transfer)"
        total_cycles += got["cycles"]
        final = mem.mirror[:max(mem.extent, len(case["expect"]["memory"]) // 2)]
        _check(case, got, final, results, failures, dut._log, fault)
        dut.go.value = 0
        phases["check"] += time.time() - t_c
        if t_c - t_log > 10:   # a sign of life in sim.log for long batches
            t_log = t_c
            dut._log.info(f"{len(results)}/{len(job['cases'])} programs, {total_cycles} program cycles")
        await FallingEdge(dut.finished)
    elapsed = time.time() - t0
    sim_cycles = int((get_sim_time("ns") - t_sim0) // 10)   # every simulated cycle, clears included
    dut._log.info(f"wall seconds by phase: {phases}")
    _finish(job, dut, failures, results, total_cycles, elapsed, sim_cycles, phases)
