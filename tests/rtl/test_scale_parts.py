# amaranth: UnusedElaboratable=no
"""The scale-expert unit's components alone (router, softmax, quantizer, scale-out) against bitmos.formats.

test_scale_unit.py runs them joined, through the sequencer, from buffer contents; these drive each
component's ports directly, so a failure names the component.
"""

import random

import pytest
from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from bitmos import formats as F
from bitmos import semantics
from bitmos.config import AcceleratorConfig
from bitmos.rtl.divider import SequentialDivider
from bitmos.rtl.quantizer import Quantizer
from bitmos.rtl.router import Router
from bitmos.rtl.scaleout import ScaleOut
from bitmos.rtl.softmax import Softmax

#: name -> config: experts 0..3, k = 1, 2, 4, 8, one and several lane groups (L/C), R above and below k.
CONFIGS = {
    "e0k1": AcceleratorConfig(rows=2, cols=8, lanes=8, act_bits=1, experts=0, ext_bw_bits=16),
    "e1k2": AcceleratorConfig(rows=3, cols=2, lanes=8, act_bits=2, experts=1, ext_bw_bits=16),
    "e2k8": AcceleratorConfig(rows=2, cols=4, lanes=16, act_bits=8, experts=2, ext_bw_bits=64),
    "e3k4": AcceleratorConfig(rows=4, cols=2, lanes=8, act_bits=4, experts=3, ext_bw_bits=16),
}
ROUTED = {name: cfg for name, cfg in CONFIGS.items() if cfg.experts >= 2}


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def pack(values, bits):
    """Little-endian line of ``bits``-bit two's complement elements."""
    return sum(F.to_unsigned(v, bits) << (bits * i) for i, v in enumerate(values))


def random_gates(rng, experts):
    return F.softmax_gates([rng.randint(-3000, 3000) for _ in range(experts)]) if experts >= 2 \
        else [F.GATE_ONE] * experts


@pytest.mark.parametrize("name", ROUTED)
def test_router(name):
    cfg = ROUTED[name]
    C, E, rng = cfg.cols, cfg.experts, random.Random(name)
    dut = Router(cfg)
    lines = [([rng.choice([-32768, 32767, rng.randint(-32768, 32767)]) for _ in range(C)],
              [[rng.randint(-32768, 32767) for _ in range(C)] for _ in range(E)],
              [rng.random() < 0.8 for _ in range(C)]) for _ in range(7)]
    expect = [sum(x[j] * w[e][j] for x, w, valid in lines for j in range(C) if valid[j]) for e in range(E)]

    async def bench(ctx):
        ctx.set(dut.accumulate, 1)
        for x, w, valid in lines:
            ctx.set(dut.x, pack(x, 16)); ctx.set(dut.weights, pack(sum(w, []), 16))
            ctx.set(dut.lane_valid, pack(valid, 1))
            await ctx.tick()
        ctx.set(dut.accumulate, 0)
        # lines registered, products registered, then added: the last line is in acc ROUTER_DRAIN cycles
        # after its own (one of them ticked above)
        await ctx.tick().repeat(semantics.ROUTER_DRAIN - 2)
        assert [ctx.get(dut.acc[e]) for e in range(E)] != expect or not any(lines[-1][2])
        await ctx.tick()
        assert [ctx.get(dut.acc[e]) for e in range(E)] == expect
        ctx.set(dut.clear, 1)   # a new token: clear wins over accumulate, the sums start from ``rounding``
        ctx.set(dut.rounding, 1 << 45)
        await ctx.tick()
        assert [ctx.get(dut.acc[e]) for e in range(E)] == [1 << 45] * E

    simulate(dut, bench)


@pytest.mark.parametrize("experts", [2, 3, 4, 5, 8])
def test_softmax_first_max_index(experts):
    """The largest logit's index from the pairwise compares is the first one, as a left-to-right scan
    takes it, with ties in every position and the int16 extremes."""
    class FirstMax(wiring.Component):
        def __init__(self):
            super().__init__({f"l{e}": Out(signed(F.LOGIT_BITS)) for e in range(experts)} | {"top": Out(4)})

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.top.eq(Softmax._first_max_index(m, [getattr(self, f"l{e}") for e in range(experts)]))
            return m

    dut, rng = FirstMax(), random.Random(experts)
    pool = [-32768, -1, 0, 1, 7, 32767]
    cases = [[rng.choice(pool) for _ in range(experts)] for _ in range(200)]
    cases += [[rng.randint(-32768, 32767) for _ in range(experts)] for _ in range(50)]

    async def bench(ctx):
        for ls in cases:
            for e, v in enumerate(ls):
                ctx.set(getattr(dut, f"l{e}"), v)
            assert ctx.get(dut.top) == ls.index(max(ls)), ls

    sim = Simulator(dut)     # combinational: no clock
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("name", ROUTED)
def test_softmax(name):
    cfg = ROUTED[name]
    E, rng = cfg.experts, random.Random(name)
    dut = Softmax(cfg)
    big = 1 << (F.ROUTER_ACC_BITS - 2)      # router sums are below 2^46 in magnitude (formats.ROUTER_ACC_BITS)
    cases = [([rng.randint(-big + 1, big - 1) for _ in range(E)], rng.randrange(0, 64)) for _ in range(20)]
    cases += [([rng.randint(-big + 1, big - 1) for _ in range(E)], s) for s in (45, 46, 47, 48, 63)]
    cases += [([0] * E, 0), ([big - 1] + [-big + 1] * (E - 1), 0), ([5 << 20] * E, 12)]   # ties, saturation
    # around the last nonzero p (u >> EXP2_FRAC_BITS is 15 at d = 2,839, 16 at 2,840) and the widest d, 2^16 - 1
    edges = [0, -2839, -2840, -2841, 32767, -32768, 100, -100]
    cases += [([edges[(i + e) % len(edges)] for e in range(E)], 0) for i in range(len(edges))]

    # under register BIAS: router row 0 is beta . x, saturated to 32 bits, at and off its thresholds
    bias_cases = [([a] + [0] * (E - 1), s) for s in (0, 1, 9, 16, 17, 40)
                  for t in ((1 << (31 + s)) - ((1 << s) >> 1), -(1 << (31 + s)) - ((1 << s) >> 1))
                  for a in (t - 1, t) if -big < a < big]
    bias_cases += [(acc, rshift) for acc, rshift in cases[:10]]

    async def bench(ctx):
        for bias_on, runs in ((0, cases), (1, bias_cases)):
            ctx.set(dut.regs.bias, bias_on)
            for acc, rshift in runs:
                ctx.set(dut.regs.rshift, rshift)
                # the router's sums start from RSHIFT's rounding half (2^(s-1), 2^46 from s = 47 on)
                rounding = ctx.get(dut.rounding)
                assert rounding == (0 if rshift == 0 else 1 << min(rshift - 1, 46)), rshift
                for e, a in enumerate(acc):
                    ctx.set(dut.acc[e], a + rounding)
                ctx.set(dut.active, 1)
                for step in range(E + semantics.GATES_FIXED):
                    ctx.set(dut.step, step)
                    await ctx.tick()
                ctx.set(dut.active, 0)
                logits = [0 if bias_on else F.sat(F.rshift_round(a, rshift), F.LOGIT_BITS) for a in acc]
                assert [ctx.get(dut.gates[e]) for e in range(E)] == F.softmax_gates(logits), (acc, rshift)
                bias = F.sat(F.rshift_round(acc[0], rshift), F.OUT_BITS) if bias_on else 0
                assert ctx.get(dut.bias) == bias, (acc, rshift, bias_on)

    simulate(dut, bench)


def quant_token(cfg, rng, K, xmax):
    """Inputs of one token (x, S_in, gates) and what quantize_token makes of them (planes, D)."""
    L, k, E, nch = cfg.lanes, cfg.act_bits, cfg.experts, cfg.nchunks(K)
    x = [rng.randint(-xmax, xmax) for _ in range(nch * L)]
    s_in = [[rng.randint(-32768, 32767) for _ in range(nch * L)] for _ in range(E)]
    gates = random_gates(rng, E)
    v = F.quant_input(x, [F.mix_scale(gates, [s[i] for s in s_in]) for i in range(K)] if E else None)
    q, d = F.quantize_token(v, k)
    planes = F.activation_planes(q + [0] * (nch * L - K), k) if k > 1 else \
        [sum(1 << i for i in range(K) if q[i] > 0)]   # lanes past K are 0 in every plane
    return x, s_in, gates, planes, d


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("extra", [0, 3], ids=["K=L*chunks", "K=partial"])
def test_quantizer(name, extra):
    """Drive the pipeline as the sequencer does: track every line, wait MIX_LATENCY - 1 cycles (the
    read is not here), start RQ, wait rq_cycles, gather chunk c into bank c mod 2, and check each
    chunk's plane words GATHER_LATENCY - 1 cycles after its last line, from its bank, and D where the
    META write reads it."""
    cfg = CONFIGS[name]
    R, C, L, k, P = cfg.rows, cfg.cols, cfg.lanes, cfg.act_bits, cfg.planes_per_row
    G, rng = L // C, random.Random(f"{name}{extra}")
    K = 3 * L - extra
    nch = cfg.nchunks(K)
    # the second token is smaller: a max left over from the first one would show
    tokens = [quant_token(cfg, rng, K, 32767), quant_token(cfg, rng, K, 300)]
    dut = Quantizer(cfg)

    async def bench(ctx):
        for x, s_in, gates, planes, d in tokens:
            for e, g in enumerate(gates):
                ctx.set(dut.gates[e], g)

            def line(n):   # XBUF line n of the token and its SBUF input-scale line
                ctx.set(dut.x, pack(x[n * C:(n + 1) * C], 16))
                ctx.set(dut.scales, pack(sum((s[n * C:(n + 1) * C] for s in s_in), []), 16))
                ctx.set(dut.lane_valid, pack([n * C + j < K for j in range(C)], 1))

            def check(c):   # chunk c's plane words from its bank
                chunk = [(p >> (c * L)) & ((1 << L) - 1) for p in planes]
                ctx.set(dut.write_bank, c % 2)
                ctx.set(dut.plane_mode, 0)
                for b in range(k):   # token mode: plane b in every slot
                    ctx.set(dut.write_index, b)
                    assert ctx.get(dut.line) == sum(chunk[b] << (L * i) for i in range(R)), (c, b)
                ctx.set(dut.plane_mode, 1)
                for p in range(P):   # plane mode: planes p*R .. p*R+R-1 in slots 0..R-1
                    ctx.set(dut.write_index, p)
                    want = sum(chunk[p * R + i] << (L * i) for i in range(R) if p * R + i < k)
                    assert ctx.get(dut.line) == want, (c, p)

            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            ctx.set(dut.track_max, 1)
            for n in range(nch * G):
                line(n)
                await ctx.tick()
            ctx.set(dut.track_max, 0)
            await ctx.tick().repeat(semantics.MIX_LATENCY - 1)
            ctx.set(dut.rq_start, 1)
            await ctx.tick()
            ctx.set(dut.rq_start, 0)
            for _ in range(semantics.rq_cycles(cfg) - 1):   # 0 for k = 1
                await ctx.tick()
            pending = {}   # chunk -> cycles until its last line is in its bank
            for c in range(nch):
                ctx.set(dut.gather, 1)
                ctx.set(dut.bank, c % 2)
                for g in range(G):
                    line(c * G + g)
                    ctx.set(dut.group, g)
                    await ctx.tick()
                    pending = {n: t - 1 for n, t in pending.items()}
                    for n in [n for n, t in pending.items() if t == 0]:
                        check(n)
                        del pending[n]
                ctx.set(dut.gather, 0)
                pending[c] = semantics.GATHER_LATENCY - 2
            while pending:
                await ctx.tick()
                pending = {n: t - 1 for n, t in pending.items()}
                for n in [n for n, t in pending.items() if t <= 0]:
                    check(n)
                    del pending[n]
            assert ctx.get(dut.d) == d   # by the cycle of the META write, which follows the last plane word

    simulate(dut, bench)


@pytest.mark.parametrize("name", CONFIGS)
def test_scaleout(name):
    cfg = CONFIGS[name]
    C, E, rng = cfg.cols, cfg.experts, random.Random(name)
    dut = ScaleOut(cfg)
    items = []
    for n in range(12):
        acc = [rng.choice([-(1 << 31), (1 << 31) - 1, rng.randint(-(1 << 31), (1 << 31) - 1)]) for _ in range(C)]
        d, gates = rng.getrandbits(rng.choice([8, 20, 32])), [rng.randint(0, F.GATE_ONE) for _ in range(E)]
        s_out = [[rng.randint(-32768, 32767) for _ in range(C)] for _ in range(E)]
        smul, oshift = rng.randint(-32768, 32767), rng.randrange(0, 64)
        y = [F.scale_output(acc[j], d, F.mix_scale(gates, [s[j] for s in s_out]) if E else smul, oshift)
             for j in range(C)]
        items.append((n + 3, acc, d, gates, s_out, smul, oshift, pack(y, 32)))

    lag = semantics.SCALEOUT_PIPELINE - 2

    async def bench(ctx):
        ctx.set(dut.valid, 1)
        for line, acc, d, gates, s_out, smul, oshift, y in items:
            ctx.set(dut.line, line); ctx.set(dut.acc_line, pack(acc, 32))
            ctx.set(dut.meta.d, d)
            for e, g in enumerate(gates):
                ctx.set(dut.meta.gates[e], g)
            ctx.set(dut.scales, pack(sum(s_out, []), 16))
            ctx.set(dut.regs.smul, smul); ctx.set(dut.regs.oshift, oshift)
            await ctx.tick()
            ctx.set(dut.line, 0); ctx.set(dut.acc_line, 0)   # the next item's inputs must not reach it
            ctx.set(dut.valid, 0)
            for _ in range(lag):   # the read is not here: SCALEOUT_PIPELINE - 1 cycles to the write
                assert ctx.get(dut.obuf_w.en) == 0
                await ctx.tick()
            assert (ctx.get(dut.obuf_w.en), ctx.get(dut.obuf_w.addr), ctx.get(dut.obuf_w.data)) == (1, line, y)
            await ctx.tick()
            assert ctx.get(dut.obuf_w.en) == 0
            ctx.set(dut.valid, 1)
        ctx.set(dut.valid, 0)
        await ctx.tick().repeat(semantics.SCALEOUT_PIPELINE)
        assert ctx.get(dut.obuf_w.en) == 0

    simulate(dut, bench)


@pytest.mark.parametrize("bits", [(31, 19, 16), (39, 31, 39), (8, 3, 5)], ids=["rcp", "rq", "small"])
def test_divider(bits):
    nd, nv, nq = bits
    dut = SequentialDivider(dividend_bits=nd, divisor_bits=nv, quotient_bits=nq)
    rng = random.Random(nd)
    cases = [(1 << (nd - 1), 1 << (nv - 1)), ((1 << nd) - 1, (1 << nv) - 1)]
    while len(cases) < 40:
        a, b = rng.getrandbits(nd), rng.randint(1, (1 << nv) - 1)
        if a // b < 1 << nq:   # the quotient fits: the divider's precondition
            cases.append((a, b))
    cases = [(a, b) for a, b in cases if a // b < 1 << nq]

    async def bench(ctx):
        for a, b in cases:
            ctx.set(dut.dividend, a); ctx.set(dut.divisor, b); ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0); ctx.set(dut.dividend, 0); ctx.set(dut.divisor, 1)
            for _ in range(dut.cycles - 2):
                await ctx.tick()
                assert not ctx.get(dut.done)
            await ctx.tick()
            assert ctx.get(dut.done) and ctx.get(dut.quotient) == a // b, (a, b)

    simulate(dut, bench)
    assert dut.cycles == nq + 1
    with pytest.raises(ValueError, match="quotient_bits .40. cannot exceed dividend_bits .39."):
        SequentialDivider(dividend_bits=39, divisor_bits=8, quotient_bits=40)


def test_parameters():
    with pytest.raises(ValueError, match="a router needs at least 2 experts, not 1"):
        Router(CONFIGS["e1k2"])
    with pytest.raises(ValueError, match="a softmax needs at least 2 experts, not 0"):
        Softmax(CONFIGS["e0k1"])
    for cls in (Router, Softmax, Quantizer, ScaleOut):
        with pytest.raises(TypeError, match="cfg must be an AcceleratorConfig, not None"):
            cls(None)
