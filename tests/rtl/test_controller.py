# amaranth: UnusedElaboratable=no
"""The controller's DMA timeline (bitmos.rtl.controller.TransferSlots) against the contract's Timeline.

Whole programs with queued transfers run in tests/rtl/test_top.py; here random issue sequences drive
the slots alone, so every (queue, latency, beats, gap) combination is checked cycle by cycle."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from bitmos.rtl.controller import TransferSlots
from bitmos.semantics import Timeline


@pytest.mark.parametrize("queue,latency", [(1, 3), (2, 1), (3, 4), (4, 20), (8, 2)])
def test_slots_follow_the_timeline(queue, latency):
    """Each cycle, for every ``back``: ``done`` says whether the transfer ``back`` places before the next
    is done, exactly when the Timeline's done cycle has come."""
    rng = random.Random(queue * 100 + latency)
    dut = TransferSlots(queue, latency)
    # an issue attempt every few cycles; it goes ahead only when the slot it reuses is done
    plan = [(rng.randint(0, 6) if rng.random() < 0.7 else 0, rng.randint(1, 9)) for _ in range(150)]
    mismatches = []

    async def bench(ctx):
        ctx.set(dut.reset, 1)
        await ctx.tick()
        ctx.set(dut.reset, 0)
        done_at = []   # done cycles of the transfers issued so far (Timeline's rule)
        tl = Timeline(queue, latency)
        cycle = 0
        for gap, beats in plan:
            for _ in range(gap):
                await ctx.tick()
                cycle += 1
            while True:   # wait for a free slot as the controller does, checking every ``back`` meanwhile
                for back in range(1, queue + 1):
                    ctx.set(dut.back, back)
                    want = len(done_at) < back or done_at[-back] <= cycle
                    if ctx.get(dut.done) != want:
                        mismatches.append((cycle, back, want))
                ctx.set(dut.back, queue)
                if ctx.get(dut.done):
                    break
                await ctx.tick()
                cycle += 1
            tl.now = cycle
            tl.transfer(latency + beats)
            done_at.append(tl.done[-1])
            ctx.set(dut.issue, 1)
            ctx.set(dut.busy_cycles, latency + beats)
            await ctx.tick()
            cycle += 1
            ctx.set(dut.issue, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("kwargs", [dict(queue=0, latency=1), dict(queue=True, latency=1), dict(queue=2, latency=-1)])
def test_slots_refuse_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        TransferSlots(**kwargs)
