# amaranth: UnusedElaboratable=no
"""XnorPopcountPE against bitmos.formats.plane_dot / plane_weight (Amaranth simulator)."""

import random
import unittest

from amaranth.sim import Simulator

from bitmos import formats as F
from bitmos.rtl.pe import XnorPopcountPE


def run_pe(lanes, k, acc_bits, steps):
    """steps: list of (a, w, mask, plane, first); returns the accumulator after each step."""
    dut = XnorPopcountPE(lanes=lanes, act_bits=k, acc_bits=acc_bits)
    out = []

    async def tb(ctx):
        for a, w, mask, plane, first in steps:
            ctx.set(dut.a, a); ctx.set(dut.w, w); ctx.set(dut.mask, mask)
            ctx.set(dut.plane, plane); ctx.set(dut.first, first); ctx.set(dut.valid, 1)
            await ctx.tick()
            out.append(ctx.get(dut.acc))
        ctx.set(dut.valid, 0)
        await ctx.tick()
        out.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


def model(steps, k, acc_bits):
    acc, out = 0, []
    for a, w, mask, plane, first in steps:
        acc = (0 if first else acc) + F.plane_weight(plane, k) * F.plane_dot(a, w, mask, k)
        acc = F.to_signed(acc, acc_bits)
        out.append(acc)
    return out + [acc]


class XnorPopcountPETestCase(unittest.TestCase):
    def test_params(self):
        with self.assertRaisesRegex(TypeError, r"lanes must be an integer, not '8'"):
            XnorPopcountPE(lanes="8", act_bits=1, acc_bits=16)
        with self.assertRaisesRegex(ValueError, r"lanes must be at least 1, not 0"):
            XnorPopcountPE(lanes=0, act_bits=1, acc_bits=16)
        with self.assertRaisesRegex(ValueError, r"act_bits must be 1, 2, 4 or 8, not 3"):
            XnorPopcountPE(lanes=8, act_bits=3, acc_bits=16)
        with self.assertRaisesRegex(ValueError, r"acc_bits must be 16..32, not 33"):
            XnorPopcountPE(lanes=8, act_bits=1, acc_bits=33)

    def test_directed(self):
        for k in (1, 2, 4, 8):
            with self.subTest(k=k):
                L, full = 16, (1 << 16) - 1
                steps = []
                for b in range(k):  # all +1, all -1 weights, extreme activations, partial mask
                    steps += [(full, full, full, b, b == 0), (full, 0, full, b, 0), (0, full, full, b, 0),
                              (0x5A5A, 0xFFFF, 0x00FF, b, 0), (full, 0, 0, b, 0)]
                self.assertEqual(run_pe(L, k, 16, steps), model(steps, k, 16))

    def test_random(self):
        rng = random.Random(1234)
        for k in (1, 2, 4, 8):
            for L in (8, 32):
                with self.subTest(k=k, L=L):
                    steps = [(rng.getrandbits(L), rng.getrandbits(L), rng.choice([(1 << L) - 1, rng.getrandbits(L)]),
                              rng.randrange(k), rng.random() < 0.1) for _ in range(60)]
                    self.assertEqual(run_pe(L, k, 24, steps), model(steps, k, 24))

    def test_wrap(self):
        # 8-bit activations, all +1 weights: the accumulator wraps at acc_bits = 16.
        L, k = 64, 8
        steps = [((1 << L) - 1, (1 << L) - 1, (1 << L) - 1, 6, i == 0) for i in range(20)]
        self.assertEqual(run_pe(L, k, 16, steps), model(steps, k, 16))
