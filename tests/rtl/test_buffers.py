# amaranth: UnusedElaboratable=no
"""Buffers: block-RAM-friendly port structure and the OBUF live-value table against a dict model."""

import collections
import random
import re

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from bitmos.config import preset_config
from bitmos.rtl.buffers import Buffers


def memory_ports(cfg):
    """{memory name: (width, depth, write ports, read ports)} of the elaborated Buffers."""
    txt = rtlil.convert(Buffers(cfg))
    shapes = {name: (int(w), int(d)) for w, d, name in
              re.findall(r"memory width (\d+) size (\d+) \\(\S+)", txt)}
    ports = collections.Counter()
    for kind, body in re.findall(r"cell \\?\$(memwr_v2|memrd_v2) \S+\n((?:    .*\n)*?)  end", txt):
        name = re.search(r'parameter \\MEMID "\\\\(.*)"', body).group(1)
        ports[name, kind] += 1
    return {n: (*shapes[n], ports[n, "memwr_v2"], ports[n, "memrd_v2"]) for n in shapes}


@pytest.mark.parametrize("name", ["tiny", "small", "medium"])
def test_wide_memories_have_one_write_port(name):
    # A memory with two write ports cannot be a block RAM (Yosys builds it from flip-flops: 16 k of
    # them for tiny's OBUF before the live-value table); only the 1-bit table may have two.
    mems = memory_ports(preset_config(name))
    assert {"o_compute", "o_dma", "o_lvt"} <= set(mems)
    for mem, (width, depth, nwr, nrd) in mems.items():
        assert nwr == (2 if mem == "o_lvt" else 1), mem
        assert nrd <= 2, mem
    assert mems["o_lvt"][0] == 1


def test_obuf_live_value_table_matches_a_two_write_port_memory():
    cfg = preset_config("tiny")
    dut = Buffers(cfg)
    width, depth = cfg.obuf_line_bits, cfg.depth("O")
    rng = random.Random(7)
    model = [0] * depth
    mismatches = []

    async def tb(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        while ctx.get(dut.clearing):
            await ctx.tick()
        pending = []   # (port, expected) of the reads issued last cycle
        for cycle in range(3000):
            for port, want in pending:
                got = ctx.get(port.data)
                if got != want:
                    mismatches.append((cycle, port.addr.name, got, want))
            pending = []
            writes = {}
            ca, da = rng.randrange(depth), rng.randrange(depth)
            cw, dw = rng.random() < 0.5, rng.random() < 0.5
            cd, dd = rng.getrandbits(width), rng.getrandbits(width)
            ctx.set(dut.o_wr.addr, ca); ctx.set(dut.o_wr.data, cd); ctx.set(dut.o_wr.en, cw)
            ctx.set(dut.o_dma_wr.addr, da); ctx.set(dut.o_dma_wr.data, dd); ctx.set(dut.o_dma_wr.en, dw)
            if cw:
                writes[ca] = cd
            if dw:
                writes[da] = dd   # the DMA port wins a same-line clash
            for port in (dut.o_rd, dut.o_dma_rd):
                a, en = rng.randrange(depth), rng.random() < 0.8
                ctx.set(port.addr, a); ctx.set(port.en, en)
                # reads are not transparent: the line as it was before this cycle's writes; except a compute
                # read of the line the DMA writes in that cycle, which is undefined (a hazard, docs/isa.md:
                # the DMA bank's compute port is transparent so that bank is one true-dual-port RAM)
                if en and not (port is dut.o_rd and dw and da == a):
                    pending.append((port, model[a]))
            await ctx.tick()
            for a, v in writes.items():
                model[a] = v

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert not mismatches, mismatches[:5]
