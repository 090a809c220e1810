# amaranth: UnusedElaboratable=no
"""XnorPopcountPE against its contract (Amaranth simulator): the weight-dependent half of
``bitmos.formats.plane_weight * plane_dot`` two cycles after the step, which with the array's row term
(written out here independently) is the reference product."""

import random
import unittest

from amaranth import Module, Signal
from amaranth.sim import Simulator

from bitmos import formats as F
from bitmos.rtl.pe import XnorPopcountPE, popcount


def run_pe(lanes, k, acc_bits, steps):
    """steps: list of (a, w, mask, plane, valid, clear) per cycle; returns the accumulator after each
    clock edge, three idle cycles appended (a is masked here for the AND form, as the array does)."""
    dut = XnorPopcountPE(lanes=lanes, act_bits=k, acc_bits=acc_bits)
    out = []

    async def tb(ctx):
        for a, w, mask, plane, valid, clear in steps + [(0, 0, 0, 0, 0, 0)] * 3:
            ctx.set(dut.a, a if k == 1 else a & mask); ctx.set(dut.w, w); ctx.set(dut.mask, mask)
            ctx.set(dut.plane, plane); ctx.set(dut.valid, valid); ctx.set(dut.clear, clear)
            await ctx.tick()
            out.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


def pe_part(a, w, mask, plane, k):
    """What the PE adds for one step: 2^(b+1) * agree, ones' complemented for the sign plane."""
    if k == 1:
        return 2 * bin(~(a ^ w) & mask).count("1")
    x = bin(a & w & mask).count("1") << (plane + 1)
    return ~x if plane == k - 1 else x


def row_part(a, mask, plane, k):
    """The array's row term for one step: -total (XNOR), -(total << b), or (total << b) + 1 (sign)."""
    if k == 1:
        return -bin(mask).count("1")
    t = bin(a & mask).count("1") << plane
    return t + 1 if plane == k - 1 else -t


def model(steps, k, acc_bits):
    """Accumulator after each edge: the add of step c lands at the edge ending cycle c + 2 (two
    popcount registers); clear wins over an add due in the same cycle."""
    acc, out, pipe = 0, [], [None, None]
    for a, w, mask, plane, valid, clear in steps + [(0, 0, 0, 0, 0, 0)] * 3:
        due = pipe.pop(0)
        if clear:
            acc = 0
        elif due is not None:
            acc = F.to_signed(acc + due, acc_bits)
        pipe.append(pe_part(a, w, mask, plane, k) if valid else None)
        out.append(acc)
    return out


class PopcountTestCase(unittest.TestCase):
    def test_widths(self):
        rng = random.Random(5)
        for n in (1, 2, 3, 4, 7, 16, 33, 64):
            with self.subTest(n=n):
                v, o = Signal(n), Signal(8)
                m = Module()
                m.d.comb += o.eq(popcount(m, v))      # the pipelined form is checked in the PE
                vals = [0, (1 << n) - 1] + [rng.getrandbits(n) for _ in range(20)]

                async def tb(ctx, vals=vals):
                    for x in vals:
                        ctx.set(v, x)
                        self.assertEqual(ctx.get(o), bin(x).count("1"), x)

                sim = Simulator(m)
                sim.add_testbench(tb)
                sim.run()


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
        with self.assertRaisesRegex(ValueError, r"weight_bits must be 1..8, not 9"):
            XnorPopcountPE(lanes=8, act_bits=4, acc_bits=16, weight_bits=9)
        with self.assertRaisesRegex(ValueError, r"weight_bits = 2 needs act_bits >= 2"):
            XnorPopcountPE(lanes=8, act_bits=1, acc_bits=16, weight_bits=2)

    def test_split_is_the_product(self):
        # PE part + row term = plane_weight * plane_dot, for every plane and extreme operands
        rng = random.Random(9)
        for k in (1, 2, 4, 8):
            for _ in range(200):
                L = rng.choice([1, 5, 16])
                a, w, mask = (rng.choice([0, (1 << L) - 1, rng.getrandbits(L)]) for _ in range(3))
                b = rng.randrange(k)
                self.assertEqual(pe_part(a, w, mask, b, k) + row_part(a, mask, b, k),
                                 F.plane_weight(b, k) * F.plane_dot(a, w, mask, k), (k, L, a, w, mask, b))

    def test_directed(self):
        for k in (1, 2, 4, 8):
            with self.subTest(k=k):
                L, full = 16, (1 << 16) - 1
                steps = [(0, 0, 0, 0, 0, 1)]
                for b in range(k):  # all +1, all -1 weights, extreme activations, partial mask
                    steps += [(full, full, full, b, 1, 0), (full, 0, full, b, 1, 0), (0, full, full, b, 1, 0),
                              (0x5A5A, 0xFFFF, 0x00FF, b, 1, 0), (full, 0, 0, b, 1, 0)]
                self.assertEqual(run_pe(L, k, 16, steps), model(steps, k, 16))

    def test_random(self):
        # random steps, gaps, and clears (also in the cycle a step's add is due: clear wins)
        rng = random.Random(1234)
        for k in (1, 2, 4, 8):
            for L in (8, 32):
                with self.subTest(k=k, L=L):
                    steps = [(rng.getrandbits(L), rng.getrandbits(L), rng.choice([(1 << L) - 1, rng.getrandbits(L)]),
                              rng.randrange(k), int(rng.random() < 0.8), int(rng.random() < 0.1)) for _ in range(60)]
                    self.assertEqual(run_pe(L, k, 24, steps), model(steps, k, 24))

    def test_wrap(self):
        # 8-bit activations, all +1 weights: the accumulator wraps at acc_bits = 16.
        L, k = 64, 8
        steps = [((1 << L) - 1, (1 << L) - 1, (1 << L) - 1, 6, 1, 0) for i in range(20)]
        self.assertEqual(run_pe(L, k, 16, steps), model(steps, k, 16))
