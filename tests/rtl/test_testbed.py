# amaranth: UnusedElaboratable=no
"""The fast bench's external memory model (bitmos.rtl.testbed.ExtMemoryModel) in the Amaranth simulator.

The model stands in for the Python memory model of the edge-by-edge bench, so its port timing is
checked here cycle by cycle against the ExtMemSignature contract: read beat b of a request in cycle
r is valid exactly in cycle r + latency + b, from any byte address (beats straddle rows); write beats
land byte-exact; the range and protocol checks fire.
"""

import pytest
from amaranth.sim import Simulator

from bitmos.rtl.testbed import ExtMemoryModel, ProgramTestbed
from bitmos.config import preset_config

MEM, ROW = 128, 8


def _byte(a):
    return (a * 7 + 3) & 0xFF


def _fill(ctx, dut):
    for r in range(MEM // ROW):
        bank = dut.odd if r & 1 else dut.even
        ctx.set(bank.data[r >> 1], int.from_bytes(bytes(_byte(a) for a in range(r * ROW, (r + 1) * ROW)), "little"))


def _peek(ctx, dut, a):
    r = a // ROW
    bank = dut.odd if r & 1 else dut.even
    return (ctx.get(bank.data[r >> 1]) >> (8 * (a % ROW))) & 0xFF


@pytest.mark.parametrize("latency", [1, 2, 5])
@pytest.mark.parametrize("data_bits", [32, 64])
def test_read_beats_arrive_at_request_plus_latency_plus_b(latency, data_bits):
    nb = data_bits // 8
    dut = ExtMemoryModel(mem_bytes=MEM, data_bits=data_bits, latency=latency, addr_bits=16, row_bytes=ROW)
    seen = []

    async def bench(ctx):
        _fill(ctx, dut)
        ctx.set(dut.clear_status, 1)
        await ctx.tick()
        ctx.set(dut.clear_status, 0)
        for addr, beats in ((5, 3), (ROW * 3 - 1, 2)):     # unaligned; the second straddles two rows
            ctx.set(dut.ext.req, 1)
            ctx.set(dut.ext.req_addr, addr)
            ctx.set(dut.ext.req_len, beats * nb)
            got = {}
            for cycle in range(latency + beats + 3):
                if ctx.get(dut.ext.rvalid):
                    got[cycle] = ctx.get(dut.ext.rdata)
                await ctx.tick()
                ctx.set(dut.ext.req, 0)
            want = {latency + b: int.from_bytes(bytes(_byte(addr + b * nb + i) for i in range(nb)), "little")
                    for b in range(beats)}
            seen.append((got, want))
        assert not ctx.get(dut.range_fault) and not ctx.get(dut.protocol_fault)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for got, want in seen:
        assert got == want


def test_writes_are_byte_exact_and_bounded():
    nb = 4
    dut = ExtMemoryModel(mem_bytes=MEM, data_bits=32, latency=3, addr_bits=16, row_bytes=ROW)
    addr, beats = 13, 3      # bytes 13..24, straddling rows 1, 2 and 3

    async def bench(ctx):
        _fill(ctx, dut)
        ctx.set(dut.clear_status, 1)
        await ctx.tick()
        ctx.set(dut.clear_status, 0)
        ctx.set(dut.ext.req, 1)
        ctx.set(dut.ext.req_we, 1)
        ctx.set(dut.ext.req_addr, addr)
        ctx.set(dut.ext.req_len, beats * nb)
        await ctx.tick()
        ctx.set(dut.ext.req, 0)
        await ctx.tick()                      # the DMA engine reads its line first
        for b in range(beats):
            ctx.set(dut.ext.wvalid, 1)
            ctx.set(dut.ext.wdata, 0xA0B0C0D0 + b)
            await ctx.tick()
        ctx.set(dut.ext.wvalid, 0)
        await ctx.tick()
        written = bytearray(b"".join((0xA0B0C0D0 + b).to_bytes(4, "little") for b in range(beats)))
        for a in range(MEM):
            want = written[a - addr] if addr <= a < addr + len(written) else _byte(a)
            assert _peek(ctx, dut, a) == want, a
        assert (ctx.get(dut.written_lo), ctx.get(dut.written_hi)) == (addr, addr + beats * nb)
        assert not ctx.get(dut.protocol_fault) and not ctx.get(dut.range_fault)
        # a beat no request announced, and a request beyond the model, are flagged
        ctx.set(dut.ext.wvalid, 1)
        await ctx.tick()
        ctx.set(dut.ext.wvalid, 0)
        assert ctx.get(dut.protocol_fault) and not ctx.get(dut.range_fault)
        ctx.set(dut.ext.req, 1)
        ctx.set(dut.ext.req_we, 0)
        ctx.set(dut.ext.req_addr, MEM - 4)
        ctx.set(dut.ext.req_len, 8)
        await ctx.tick()
        ctx.set(dut.ext.req, 0)
        assert ctx.get(dut.range_fault)
        ctx.set(dut.clear_status, 1)
        await ctx.tick()
        assert not ctx.get(dut.range_fault) and not ctx.get(dut.protocol_fault)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_queued_requests_are_served_in_order_and_a_read_sees_a_write_of_its_cycle():
    """Two reads requested back to back (beat times r + latency + b, the second's after the first's), a
    write whose last beat shares its cycle with a read beat of the same bytes (the read carries the new
    bytes, the byte past them the old one), and a third read request while two wait (a protocol fault)."""
    lat, nb = 3, 4
    dut = ExtMemoryModel(mem_bytes=MEM, data_bits=32, latency=lat, addr_bits=16, row_bytes=ROW, queue=2)
    got = {}

    def old(a):
        return int.from_bytes(bytes(_byte(a + i) for i in range(nb)), "little")

    async def bench(ctx):
        _fill(ctx, dut)
        ctx.set(dut.clear_status, 1)
        await ctx.tick()
        ctx.set(dut.clear_status, 0)
        # cycle 0: read 2 beats at 9; cycle 2: read 1 beat at 30; cycle 3: write 2 beats at 40
        # cycle 4: read 1 beat at 42, due in cycle 7: bytes 42, 43 from the write's first beat (cycle 6),
        # 44, 45 from its last beat, in the read's own cycle
        requests = {0: (0, 9, 8), 2: (0, 30, 4), 3: (1, 40, 8), 4: (0, 42, 4)}
        writes = {6: 0x11223344, 7: 0x55667788}
        for cycle in range(12):
            we, addr, n = requests.get(cycle, (0, 0, 0))
            ctx.set(dut.ext.req, cycle in requests)
            ctx.set(dut.ext.req_we, we)
            ctx.set(dut.ext.req_addr, addr)
            ctx.set(dut.ext.req_len, n)
            ctx.set(dut.ext.wvalid, cycle in writes)
            ctx.set(dut.ext.wdata, writes.get(cycle, 0))
            if ctx.get(dut.ext.rvalid):
                got[cycle] = ctx.get(dut.ext.rdata)
            await ctx.tick()
        ctx.set(dut.ext.req, 0)
        ctx.set(dut.ext.wvalid, 0)
        assert not ctx.get(dut.protocol_fault) and not ctx.get(dut.range_fault)
        for a in range(MEM):
            want = (0x55667788 >> 8 * (a - 44)) & 0xFF if 44 <= a < 48 else \
                (0x11223344 >> 8 * (a - 40)) & 0xFF if 40 <= a < 44 else _byte(a)
            assert _peek(ctx, dut, a) == want, a
        for cycle in (0, 1, 2):   # three reads waiting with a queue of two
            ctx.set(dut.ext.req, 1)
            ctx.set(dut.ext.req_addr, 8 * cycle)
            ctx.set(dut.ext.req_len, 4)
            await ctx.tick()
        ctx.set(dut.ext.req, 0)
        assert ctx.get(dut.protocol_fault)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == {lat: old(9), lat + 1: old(13), 2 + lat: old(30), 4 + lat: 0x77881122}


@pytest.mark.parametrize("kwargs, err", [
    (dict(mem_bytes=100), "mem_bytes must be a power of two"),
    (dict(row_bytes=12), "row_bytes must be a power of two"),
    (dict(latency=0), "latency must be an integer >= 1"),
    (dict(data_bits=12), "data_bits must be a multiple of 8"),
    (dict(queue=0), "queue must be an integer >= 1"),
])
def test_model_parameters_are_checked(kwargs, err):
    args = dict(mem_bytes=MEM, data_bits=32, latency=2, addr_bits=16, row_bytes=ROW) | kwargs
    with pytest.raises(ValueError, match=err):
        ExtMemoryModel(**args)


def test_testbed_rejects_an_unsupported_config():
    import dataclasses
    with pytest.raises(ValueError, match="ext_latency"):
        ProgramTestbed(dataclasses.replace(preset_config("tiny"), ext_latency=0))
