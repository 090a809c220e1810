# amaranth: UnusedElaboratable=no
"""SystolicArray: matmul results against the plane_dot reference and the T_tile cycle formula."""

import random
import unittest

from amaranth.sim import Simulator

from bitmos import isa, semantics
from bitmos.config import AcceleratorConfig, preset_config
from bitmos.rtl.array import SystolicArray

from .golden import field_of, matmul_tile
from .harness import WithMemories


def run_matmul(cfg, qinit, winit, K, mode, q, w, o, ntiles, wbits=0):
    dut = SystolicArray(cfg)
    h = WithMemories(dut, {
        "qbuf": ("r", cfg.depth("Q"), cfg.qbuf_line_bits, qinit, None),
        "wbuf": ("r", cfg.depth("W"), cfg.wbuf_line_bits, winit, None),
        "obuf": ("w", cfg.depth("O"), cfg.obuf_line_bits, [], None),
    })
    res = {}

    async def tb(ctx):
        ctx.set(dut.k_features, K); ctx.set(dut.regs.wbits, wbits)
        ctx.set(dut.mode, mode); ctx.set(dut.q, q); ctx.set(dut.w, w)
        ctx.set(dut.o, o); ctx.set(dut.ntiles, ntiles); ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = 0
        while ctx.get(dut.busy):
            await ctx.tick()
            n += 1
        res["cycles"] = n
        res["obuf"] = [ctx.get(h.mems["obuf"].data[i]) for i in range(cfg.depth("O"))]

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return res


def check_case(tc, cfg, K, mode, ntiles, seed, fill=None, wbits=0):
    rng = random.Random(seed)
    qd, wd = min(cfg.depth("Q"), 64), min(cfg.depth("W"), 64)
    gen = fill or (lambda bits: rng.getrandbits(bits))
    qinit = [gen(cfg.qbuf_line_bits) for _ in range(qd)]
    winit = [gen(cfg.wbuf_line_bits) for _ in range(wd)]
    nch = cfg.nchunks(K)
    W = cfg.act_bits if mode == 0 else cfg.planes_per_row
    q = rng.randrange(0, qd - nch * W + 1)
    w = rng.randrange(0, wd - ntiles * nch * (wbits or 1) + 1)
    o = rng.randrange(0, 8)
    res = run_matmul(cfg, qinit, winit, K, mode, q, w, o, ntiles, wbits)
    ins = isa.Instruction.make("matmul", mode=mode, q=q, w=w, o=o, ntiles=ntiles)
    tc.assertEqual(res["cycles"] + 1, semantics.compute_cycles(ins, cfg, K, wbits))
    qfull = qinit + [0] * (cfg.depth("Q") - qd)
    wfull = winit + [0] * (cfg.depth("W") - wd)
    for n in range(ntiles):
        rows = matmul_tile(cfg, qfull, wfull, K, mode, q, w, n, wbits)
        for i, vals in enumerate(rows):
            line = o + (n * cfg.rows + i if mode == 0 else n)
            got = [field_of(res["obuf"][line], j, 32, True) for j in range(cfg.cols)]
            tc.assertEqual(got, vals, f"K={K} mode={mode} WBITS={wbits} tile={n} row={i} q={q} w={w} o={o}")


CONFIGS = {
    "tiny": preset_config("tiny"),
    "small": preset_config("small"),
    "medium": preset_config("medium"),
    "r3k4": AcceleratorConfig(rows=3, cols=2, lanes=8, act_bits=4, experts=2, ext_bw_bits=16),
    "r2k8": AcceleratorConfig(rows=2, cols=4, lanes=16, act_bits=8, experts=1, ext_bw_bits=64),
    "k2": AcceleratorConfig(rows=4, cols=2, lanes=8, act_bits=2, experts=0, acc_bits=16, ext_bw_bits=16),
    # more drain rows than S + C at K <= L, so the tile interval is the drain's (token R = 8, plane Ra = 8)
    "r8c2k1": AcceleratorConfig(rows=8, cols=2, lanes=8, act_bits=1, experts=0, acc_bits=16, ext_bw_bits=16),
    "r8c1k8": AcceleratorConfig(rows=8, cols=1, lanes=8, act_bits=8, experts=0, acc_bits=16, ext_bw_bits=8),
    # integer weight planes: ternary-capable with k = 2 (P = 1, Ra = 2), and up to 4-bit weights with
    # k = 4 over 3 rows (P = 2: plane groups and weight planes interleave)
    "k2w2": AcceleratorConfig(rows=2, cols=2, lanes=8, act_bits=2, weight_bits=2, experts=0, acc_bits=16,
                              ext_bw_bits=16),
    "r3k4w4": AcceleratorConfig(rows=3, cols=2, lanes=8, act_bits=4, weight_bits=4, experts=2, ext_bw_bits=16),
    # PB-LLM's int8 salient part: 8-bit weights against 8-bit activations (64 plane steps per chunk, 32-bit sums)
    "k8w8": AcceleratorConfig(rows=2, cols=2, lanes=8, act_bits=8, weight_bits=8, experts=1, acc_bits=32,
                              ext_bw_bits=16),
}


class SystolicArrayTestCase(unittest.TestCase):
    def test_params(self):
        with self.assertRaisesRegex(TypeError, r"cfg must be an AcceleratorConfig, not 'small'"):
            SystolicArray("small")
        with self.assertRaisesRegex(ValueError, r"cfg.ext_latency must be at least 1 for the RTL, not 0"):
            SystolicArray(AcceleratorConfig(ext_latency=0))
        with self.assertRaisesRegex(ValueError, r"cfg.ext_bw_bits = 1024 must divide the X line width 64"):
            SystolicArray(AcceleratorConfig(ext_bw_bits=1024))

    def test_random(self):
        seed = 0
        for name, cfg in CONFIGS.items():
            L = cfg.lanes
            for K in (1, L, 2 * L + 3):
                for mode in (0, 1):
                    seed += 1
                    with self.subTest(cfg=name, K=K, mode=mode):
                        check_case(self, cfg, K, mode, 1 + seed % 3, seed)

    def test_integer_weights(self):
        """Every legal WBITS of the configs that take integer weights, both modes, partial chunks."""
        seed = 100
        for name, cfg in CONFIGS.items():
            if cfg.weight_bits < 2:
                continue
            L = cfg.lanes
            for wbits in (0, *range(2, cfg.weight_bits + 1)):
                for K in (1, L + 3, 2 * L):
                    for mode in (0, 1):
                        seed += 1
                        with self.subTest(cfg=name, wbits=wbits, K=K, mode=mode):
                            check_case(self, cfg, K, mode, 1 + seed % 3, seed, wbits=wbits)

    def test_integer_weight_extremes(self):
        """q = -1 everywhere (all-ones planes) against all-ones weight planes (w = -1: the sign x sign
        plane steps are positive) and against lines of which only every wbits-th is set (one plane of
        each chunk, which one depending on where w falls): the widest sums of either sign."""
        cfg = CONFIGS["r3k4w4"]
        for wbits in (2, 4):
            for top_only in (False, True):
                def fill(bits, n=[0], wbits=wbits, top_only=top_only):
                    if bits == cfg.qbuf_line_bits:
                        return (1 << bits) - 1
                    n[0] += 1
                    return (1 << bits) - 1 if not top_only or n[0] % wbits == 0 else 0
                with self.subTest(wbits=wbits, top_only=top_only):
                    check_case(self, cfg, 3 * cfg.lanes - 1, 0, 2, 7, fill=fill, wbits=wbits)

    def test_drain_bound_interval(self):
        # T_tile = max(S + C, D): S + C = 1 + 2 < R = 8 (token), 1 + 1 < Ra = 8 (plane), 3 tiles each
        for name, mode in (("r8c2k1", 0), ("r8c1k8", 1), ("r8c1k8", 0)):
            cfg = CONFIGS[name]
            with self.subTest(cfg=name, mode=mode):
                check_case(self, cfg, 3, mode, 3, 11)

    def test_extremes(self):
        # All-ones activation planes (q = -1 in every lane) against all +1 and all -1 weights.
        for name in ("tiny", "small"):
            cfg = CONFIGS[name]
            for bit in (0, 1):
                with self.subTest(cfg=name, weights=bit):
                    check_case(self, cfg, 3 * cfg.lanes - 1, 0, 2, 7,
                               fill=lambda bits, bit=bit: ((1 << bits) - 1) if bits == cfg.qbuf_line_bits
                               else ((1 << bits) - 1) * bit)
