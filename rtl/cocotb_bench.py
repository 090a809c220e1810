"""cocotb bench of the emitted Accelerator: external memory model, program runs, comparisons.

Run by :mod:`bitmos.rtl.runner` through ``cocotb_tools.runner`` (from the RTL tests and from
``bitmos verify``); the job file named by ``BITMOS_JOBS`` lists programs with their memory images
and expected results, which the caller computed (with the simulator: this module imports none of
bitmos). The memory model answers read requests with the config's latency and one beat of
``ext_bw_bits`` per cycle. Per-program results go to the job's report file.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


class ExtMemory:
    """Byte-addressed external memory on the ExtMemSignature port (fixed latency, no back-pressure)."""

    def __init__(self, dut, latency, bw_bits, image: bytearray):
        self.dut, self.lat, self.bw = dut, latency, bw_bits // 8
        self.mem = image
        self.beats = {}      # cycle -> data
        self.wptr = None
        self.cycle = 0

    def _read(self, a, n):
        if a + n > len(self.mem):
            self.mem.extend(bytes(a + n - len(self.mem)))
        return int.from_bytes(self.mem[a:a + n], "little")

    async def run(self):
        d = self.dut
        while True:
            await RisingEdge(d.clk)
            self.cycle += 1
            beat = self.beats.pop(self.cycle, None)
            d.ext__rvalid.value = beat is not None
            d.ext__rdata.value = beat or 0
            await ReadOnly()
            if int(d.ext__wvalid.value):
                a = self.wptr
                if a + self.bw > len(self.mem):
                    self.mem.extend(bytes(a + self.bw - len(self.mem)))
                self.mem[a:a + self.bw] = int(d.ext__wdata.value).to_bytes(self.bw, "little")
                self.wptr += self.bw
            if int(d.ext__req.value):
                addr, n = int(d.ext__req_addr.value), int(d.ext__req_len.value)
                if int(d.ext__req_we.value):
                    self.wptr = addr
                else:
                    for b in range(n // self.bw):
                        self.beats[self.cycle + self.lat + b] = self._read(addr + b * self.bw, self.bw)


async def wait_idle(dut):
    await ReadOnly()
    while int(dut.host__busy.value):
        await RisingEdge(dut.clk)
        await ReadOnly()
    await RisingEdge(dut.clk)


@cocotb.test()
async def run_programs(dut):
    with open(os.environ["BITMOS_JOBS"], encoding="utf-8") as f:
        job = json.load(f)
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
        mem.beats.clear()
        dut.host__start.value = 1
        await RisingEdge(dut.clk)
        dut.host__start.value = 0
        await wait_idle(dut)
        got = {"cycles": int(dut.host__cycles.value), "error": bool(int(dut.host__error.value)),
               "cause": int(dut.host__cause.value)}
        total_cycles += got["cycles"]
        exp = case["expect"]
        want_mem = bytes.fromhex(exp["memory"])
        n = max(len(want_mem), len(mem.mem))
        mem_ok = bytes(mem.mem).ljust(n, b"\0") == want_mem.ljust(n, b"\0")
        bad = [k for k in ("cycles", "error", "cause") if got[k] != exp[k]]
        results.append(dict(got, name=case["name"], memory_ok=mem_ok, ok=not bad and mem_ok))
        if bad or not mem_ok:
            results[-1]["memory"] = bytes(mem.mem).hex()  # the final memory, for diagnosis
            first = next((i for i in range(n) if (mem.mem[i] if i < len(mem.mem) else 0)
                          != (want_mem[i] if i < len(want_mem) else 0)), None)
            failures.append(f"{case['name']}: got {got}, expected "
                            f"{ {k: exp[k] for k in ('cycles', 'error', 'cause')} }, memory "
                            f"{'ok' if mem_ok else f'differs from byte {first}'}")
            dut._log.error(failures[-1])
    elapsed = time.time() - t0
    dut._log.info(f"{len(job['cases'])} programs, {total_cycles} run cycles in {elapsed:.2f} s wall "
                  f"({total_cycles / max(elapsed, 1e-9):.0f} run cycles/s incl. cocotb)")
    if "report" in job:
        with open(job["report"], "w") as f:
            json.dump({"programs": len(job["cases"]), "run_cycles": total_cycles, "wall_s": elapsed,
                       "failures": failures, "results": results}, f)
    assert not failures, "\n".join(failures)
