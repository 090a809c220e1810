# amaranth: UnusedElaboratable=no
"""The shared RTL helpers of ``bitmos.rtl.common``: Countdown and the two-stage arithmetic (Amaranth simulator).

The pipelined forms must equal their one-stage definitions bit for bit (``formats.rshift_round`` and a
plain product), with the stated latency, for edge values as well as random ones.
"""

from __future__ import annotations

import collections
import random

import pytest
from amaranth import Module, Shape, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from bitmos import formats as F
from bitmos.rtl.common import (Countdown, RecordQueue, ShiftSaturation, first_max_onehot, onehot_select,
                               pipelined_product, registered, rounding_half)


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_countdown_zero_is_registered_with_the_count():
    dut = Countdown(8)

    async def bench(ctx):
        assert ctx.get(dut.zero) == 1 and ctx.get(dut.count) == 0
        ctx.set(dut.load, 1); ctx.set(dut.value, 3)
        await ctx.tick()
        ctx.set(dut.load, 0)
        seen = []
        for _ in range(5):
            seen.append((ctx.get(dut.count), ctx.get(dut.zero)))
            await ctx.tick()
        assert seen == [(3, 0), (2, 0), (1, 0), (0, 1), (0, 1)]
        ctx.set(dut.load, 1); ctx.set(dut.value, 0)   # loading 0 is zero at once
        await ctx.tick()
        assert (ctx.get(dut.count), ctx.get(dut.zero)) == (0, 1)

    simulate(dut, bench)


def test_countdown_refuses_a_bad_width():
    with pytest.raises(ValueError, match="positive integer"):
        Countdown(0)


class _Pipelined(wiring.Component):
    """``a * b`` and ``sat(rshift_round(a * b, s), 40)`` through the helpers under test."""

    def __init__(self, a_shape, b_shape):
        self._a, self._b = a_shape, b_shape
        super().__init__({"a": In(a_shape), "b": In(b_shape), "s": In(6),
                          "product": Out(signed(96)), "rounded": Out(signed(40))})

    def elaborate(self, platform):
        m = Module()
        product = pipelined_product(m, self.a, self.b, "p")
        m.d.comb += self.product.eq(product)
        half = Signal.like(rounding_half(self.s), name="half")
        m.d.sync += half.eq(rounding_half(self.s))
        # the scale-out's two stages: the rounding half added, then the shift saturated to 40 bits
        total = registered(m, product + half, "r_sum")
        clamp = ShiftSaturation(m, self.s, len(total), 40, "r", half_added=True)
        m.d.comb += self.rounded.eq(registered(m, clamp(total), "r"))
        return m


@pytest.mark.parametrize("a_shape,b_shape", [(signed(32), 32), (signed(65), signed(16)), (17, signed(18)),
                                             (signed(34), signed(34))],
                         ids=["s32xu32", "s65xs16", "u17xs18", "s34xs34"])
def test_pipelined_product_and_rounding_are_exact(a_shape, b_shape):
    rng = random.Random(7)
    dut = _Pipelined(a_shape, b_shape)

    def values(shape):
        shape = Shape.cast(shape)
        width, is_signed = shape.width, shape.signed
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if is_signed else (0, (1 << width) - 1)
        edges = [lo, hi, 0, 1, -1 if is_signed else 2]
        return edges + [rng.randint(lo, hi) for _ in range(40)]

    cases = [(a, b, rng.randrange(0, 64)) for a in values(a_shape) for b in values(b_shape)[:8]]
    cases += [(a, b, 0) for a, b in zip(values(a_shape), values(b_shape))]

    async def bench(ctx):
        for a, b, s in cases:
            ctx.set(dut.s, s)     # the shift (a layer register) holds still before the product arrives
            await ctx.tick()
            ctx.set(dut.a, a); ctx.set(dut.b, b)
            await ctx.tick().repeat(2)
            assert ctx.get(dut.product) == a * b, (a, b)
            await ctx.tick().repeat(2)
            assert ctx.get(dut.rounded) == F.sat(F.rshift_round(a * b, s), 40), (a, b, s)

    simulate(dut, bench)


class _FirstMax(wiring.Component):
    """first_max_onehot and onehot_select of n unsigned values (combinational)."""

    def __init__(self, n, width):
        self._n = n
        super().__init__({**{f"v{i}": In(width) for i in range(n)}, "onehot": Out(n), "largest": Out(width)})

    def elaborate(self, platform):
        m = Module()
        values = [getattr(self, f"v{i}") for i in range(self._n)]
        onehot = first_max_onehot(m, values, "top")
        m.d.comb += [self.onehot.eq(onehot), self.largest.eq(onehot_select(onehot, values))]
        return m


@pytest.mark.parametrize("n", [1, 2, 5])
def test_first_max_onehot_takes_the_first_largest(n):
    rng = random.Random(n)
    width = 31
    dut = _FirstMax(n, width)
    top = (1 << width) - 1
    cases = [[0] * n, [top] * n, list(range(n)), list(range(n))[::-1]]
    cases += [[rng.choice([0, 5, top, rng.randrange(top)]) for _ in range(n)] for _ in range(60)]   # many ties

    async def bench(ctx):
        for vals in cases:
            for i, v in enumerate(vals):
                ctx.set(getattr(dut, f"v{i}"), v)
            first = vals.index(max(vals))
            assert ctx.get(dut.onehot) == 1 << first, vals
            assert ctx.get(dut.largest) == max(vals), vals

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


class _ShiftSaturation(wiring.Component):
    """ShiftSaturation of one signed ``in_bits`` value by a shift register of ``s_bits``."""

    def __init__(self, in_bits, out_bits, s_bits, half_added):
        self._bits, self._half_added = (in_bits, out_bits), half_added
        super().__init__({"v": In(signed(in_bits)), "s": In(s_bits), "out": Out(signed(out_bits))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.out.eq(ShiftSaturation(m, self.s, *self._bits, "t", half_added=self._half_added)(self.v))
        return m


def _shift_saturation_cases(in_bits, out_bits, shifts):
    """Every shift with v at both saturation thresholds (with and without the rounding half) and one off them, the
    limits of v, and 0."""
    top = 1 << (in_bits - 1)
    for s in shifts:
        half = (1 << s) >> 1     # the thresholds with the half (rounding) and without it (half added)
        for t in {(1 << (out_bits - 1 + s)) - h for h in (half, 0)} | {-(1 << (out_bits - 1 + s)) - h for h in (half, 0)}:
            for v in (t - 1, t, t + 1):
                if -top <= v < top:
                    yield v, s
        yield from ((v, s) for v in (-top, top - 1, 0, -1, 1))


@pytest.mark.parametrize("half_added", [False, True], ids=["rounding", "half-added"])
@pytest.mark.parametrize("in_bits,out_bits,s_bits,exhaustive", [(8, 3, 4, True), (8, 7, 4, True), (48, 16, 6, False),
                                                                 (48, 32, 6, False), (82, 34, 6, False)])
def test_shift_saturation_is_sat_of_rshift_round(in_bits, out_bits, s_bits, exhaustive, half_added):
    """sat(rshift_round(v, s)), or with ``half_added`` sat(v >> s) (the caller added the half), for every shift."""
    dut = _ShiftSaturation(in_bits, out_bits, s_bits, half_added)
    want = (lambda v, s: F.sat(v >> s, out_bits)) if half_added else \
        (lambda v, s: F.sat(F.rshift_round(v, s), out_bits))
    shifts = range(1 << s_bits)
    if exhaustive:
        cases = [(v, s) for s in shifts for v in range(-(1 << (in_bits - 1)), 1 << (in_bits - 1))]
    else:
        rng = random.Random(in_bits * out_bits)
        cases = list(_shift_saturation_cases(in_bits, out_bits, shifts))
        cases += [(rng.randint(-(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1), rng.choice(shifts)) for _ in range(200)]
    cases.sort(key=lambda c: c[1])

    async def bench(ctx):
        shift = None
        for v, s in cases:
            if s != shift:        # the shift is a layer register: its registered terms settle in one cycle
                ctx.set(dut.s, s)
                await ctx.tick()
                shift = s
            ctx.set(dut.v, v)
            assert ctx.get(dut.out) == want(v, s), (v, s)

    simulate(dut, bench)


def test_shift_saturation_refuses_an_output_as_wide_as_its_input():
    with pytest.raises(ValueError, match="out_bits"):
        ShiftSaturation(Module(), Signal(6), 16, 16, "t")


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_record_queue_is_first_in_first_out(depth):
    """Random writes and reads against a deque: order, full/empty flags, a record readable the cycle
    after its write, a write and a read in one cycle."""
    layout = data.StructLayout({"a": 5, "b": 3})
    dut = RecordQueue(layout, depth)
    rng = random.Random(depth)

    async def bench(ctx):
        model = collections.deque()
        for _ in range(300):
            put, take = rng.random() < 0.5, rng.random() < 0.5
            assert ctx.get(dut.w.ready) == (len(model) < depth)
            assert ctx.get(dut.r.valid) == bool(model)
            if model:
                got = ctx.get(dut.r.payload)
                assert (got.a, got.b) == model[0]
            rec = (rng.randrange(32), rng.randrange(8))
            ctx.set(dut.w.valid, put)
            ctx.set(dut.w.payload, {"a": rec[0], "b": rec[1]})
            ctx.set(dut.r.ready, take)
            took = take and bool(model)
            if put and len(model) < depth:
                model.append(rec)
            if took:
                model.popleft()
            await ctx.tick()

    simulate(dut, bench)


def test_record_queue_refuses_depth_0():
    with pytest.raises(ValueError, match="at least one record"):
        RecordQueue(data.StructLayout({"a": 1}), 0)
