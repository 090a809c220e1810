# amaranth: UnusedElaboratable=no
"""ScaleExpertUnit: quant and scaleout against bitmos.formats (via tests/rtl/golden.py), and cycles."""

import random
import unittest

from amaranth.sim import Simulator

from bitmos import isa, semantics
from bitmos.config import AcceleratorConfig, preset_config
from bitmos.rtl.scale_unit import ScaleExpertUnit

from . import golden
from .harness import WithMemories


def run_unit(cfg, st: golden.State, ins: isa.Instruction):
    """Run one quant/scaleout on the unit from golden state ``st``; returns (cycles, Q, META, O)."""
    dut = ScaleExpertUnit(cfg)
    mb = cfg.meta_bits
    meta_init = [golden.pack_meta(cfg, rec) for rec in st.meta]
    h = WithMemories(dut, {
        "xbuf": ("r", cfg.depth("X"), cfg.xbuf_line_bits, st.buf["X"], None),
        "sbuf": ("r", cfg.depth("S"), cfg.sbuf_line_bits, st.buf["S"], None),
        "qbuf": ("w", cfg.depth("Q"), cfg.qbuf_line_bits, st.buf["Q"], cfg.lanes),
        "obuf_r": ("r", cfg.depth("O"), cfg.obuf_line_bits, st.buf["O"], None),
        "meta_r": ("r", cfg.meta_tokens, mb, meta_init, None),
    })
    # obuf_w / meta_w share the memories of obuf_r / meta_r
    h._ports["obuf_w"] = ("w", 0, 0, None, None)
    h._ports["meta_w"] = ("w", 0, 0, None, None)
    h.mems["obuf_w"] = h.mems["obuf_r"]
    h.mems["meta_w"] = h.mems["meta_r"]
    res = {}
    r = st.regs

    async def tb(ctx):
        ctx.set(dut.k_features, r[0]); ctx.set(dut.rshift, r[1]); ctx.set(dut.oshift, r[2])
        ctx.set(dut.router, r[3]); ctx.set(dut.sin, r[4]); ctx.set(dut.smul, r[5]); ctx.set(dut.regs.bias, r[8])
        quant = ins.op is isa.Op.QUANT
        ctx.set(dut.op, 0 if quant else 1); ctx.set(dut.mode, ins["mode"])
        ctx.set(dut.a, ins["x"] if quant else ins["o"]); ctx.set(dut.b, ins["q"] if quant else ins["s"])
        ctx.set(dut.meta, ins["meta"]); ctx.set(dut.ntok, ins["ntok"])
        ctx.set(dut.ntiles, 0 if quant else ins["ntiles"])
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = 0
        while ctx.get(dut.busy):
            await ctx.tick()
            n += 1
        res["cycles"] = n
        res["Q"] = [ctx.get(h.mems["qbuf"].data[i]) for i in range(cfg.depth("Q"))]
        res["O"] = [ctx.get(h.mems["obuf_r"].data[i]) for i in range(cfg.depth("O"))]
        res["META"] = [ctx.get(h.mems["meta_r"].data[i]) for i in range(cfg.meta_tokens)]

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return res


def random_state(cfg, rng, K, extreme=False):
    st = golden.State(cfg, bytearray())
    C, E = cfg.cols, cfg.experts
    xmax = 32767 if extreme else rng.choice([300, 3000, 32767])
    for i in range(min(cfg.depth("X"), 64)):
        st.buf["X"][i] = sum(((rng.choice([-32768, 32767]) if extreme else rng.randint(-xmax, xmax)) & 0xFFFF)
                             << (16 * j) for j in range(C))
    for i in range(min(cfg.depth("S"), 32)):
        st.buf["S"][i] = sum((rng.randint(-32768, 32767) & 0xFFFF) << (16 * j)
                             for j in range(max(E, 1) * C))
    for i in range(min(cfg.depth("Q"), 32)):
        st.buf["Q"][i] = rng.getrandbits(cfg.qbuf_line_bits)
    for i in range(min(cfg.depth("O"), 32)):
        st.buf["O"][i] = rng.getrandbits(cfg.obuf_line_bits)
    for t in range(cfg.meta_tokens):
        bias = rng.choice([0, rng.randint(-(1 << 31), (1 << 31) - 1), rng.randint(-999, 999)]) if E >= 2 else 0
        st.meta[t] = (rng.getrandbits(rng.choice([8, 20, 32])), [rng.randint(0, 32768) for _ in range(E)], bias)
    # BIAS (FBI-LLM's beta . x from router row 0) on about half the runs of a config with a router
    st.regs = [K, rng.randrange(0, 24), rng.randrange(0, 40), rng.randrange(0, 4), rng.randrange(0, 4),
               rng.randint(-32768, 32767), 0, 0, int(E >= 2 and rng.random() < 0.5)]
    return st


def compare(tc, cfg, st, ins, label):
    res = run_unit(cfg, st, ins)
    K = st.regs[0]
    tc.assertEqual(res["cycles"] + 1, semantics.compute_cycles(ins, cfg, K), f"cycles {label}")
    if ins.op is isa.Op.QUANT:
        for t in range(ins["ntok"]):
            golden.quant_token(cfg, st, ins["mode"], ins["x"], ins["q"], ins["meta"], t)
        tc.assertEqual(res["Q"], st.buf["Q"], f"QBUF {label}")
        meta = [golden.pack_meta(cfg, rec) for rec in st.meta]
        tc.assertEqual(res["META"], meta, f"META {label}")
    else:
        R, C = cfg.rows, cfg.cols
        from bitmos import formats as F
        for n in range(ins["ntiles"]):
            for t in range(ins["ntok"]):
                line = ins["o"] + (n * R + t if ins["mode"] == 0 else n)
                d, g, bias = st.meta[ins["meta"] + t]
                vals = []
                for j in range(C):
                    acc = golden.field_of(st.buf["O"][line], j, 32, True)
                    s_out = st.regs[5] if cfg.experts == 0 else F.mix_scale(
                        g, [golden.field_of(st.buf["S"][ins["s"] + n], e * C + j, 16, True)
                            for e in range(cfg.experts)])
                    vals.append(F.scale_output(acc, d, s_out, st.regs[2], bias))
                st.buf["O"][line] = sum((v & 0xFFFFFFFF) << (32 * j) for j, v in enumerate(vals))
        tc.assertEqual(res["O"], st.buf["O"], f"OBUF {label}")


CONFIGS = {
    "tiny": preset_config("tiny"),
    "small": preset_config("small"),
    "medium": preset_config("medium"),
    "e1k2": AcceleratorConfig(rows=3, cols=2, lanes=8, act_bits=2, experts=1, ext_bw_bits=16),
    "e2k8r2": AcceleratorConfig(rows=2, cols=4, lanes=16, act_bits=8, experts=2, ext_bw_bits=64),
    "e3k4": AcceleratorConfig(rows=4, cols=2, lanes=8, act_bits=4, experts=3, ext_bw_bits=16),
}


class ScaleExpertUnitTestCase(unittest.TestCase):
    def test_params(self):
        with self.assertRaisesRegex(TypeError, r"cfg must be an AcceleratorConfig, not None"):
            ScaleExpertUnit(None)

    def test_quant(self):
        seed = 100
        for name, cfg in CONFIGS.items():
            L = cfg.lanes
            # nch = 1, 2, 2, 4: from 3 chunks on, chunk c+2 reuses chunk c's plane bank
            for K, mode in ((L - 3, 0), (2 * L, 1), (L + 5, 0), (4 * L - 1, 0), (3 * L + 1, 1)):
                seed += 1
                rng = random.Random(seed)
                st = random_state(cfg, rng, K, extreme=(seed % 4 == 0))
                ntok = 1 if mode else rng.randint(1, cfg.rows)
                ins = isa.Instruction.make("quant", mode=mode, x=rng.randrange(0, 3), q=rng.randrange(0, 3),
                                           meta=rng.randrange(0, 3), ntok=ntok)
                with self.subTest(cfg=name, K=K, mode=mode):
                    compare(self, cfg, st, ins, f"{name} K={K} mode={mode} seed={seed}")

    def test_quant_zero(self):
        # m = 0 (all x = 0): q = 0 (k = 1: +1), D = 0.
        for name in ("tiny", "small"):
            cfg = CONFIGS[name]
            st = random_state(cfg, random.Random(5), cfg.lanes)
            st.buf["X"] = [0] * cfg.depth("X")
            ins = isa.Instruction.make("quant", mode=0, x=0, q=0, meta=0, ntok=cfg.rows)
            with self.subTest(cfg=name):
                compare(self, cfg, st, ins, f"{name} zero")

    def test_quant_k0(self):
        # K = 0 (the reset value) is legal: no lines, no chunks; D = 0 in every token's META record.
        for name in ("tiny", "small"):
            cfg = CONFIGS[name]
            st = random_state(cfg, random.Random(6), 0)
            ins = isa.Instruction.make("quant", mode=0, x=0, q=0, meta=1, ntok=2)
            with self.subTest(cfg=name):
                compare(self, cfg, st, ins, f"{name} K=0")

    def test_scaleout(self):
        seed = 200
        for name, cfg in CONFIGS.items():
            for mode in (0, 1):
                seed += 1
                rng = random.Random(seed)
                st = random_state(cfg, rng, cfg.lanes)
                ntok = 1 if mode else rng.randint(1, cfg.rows)
                ins = isa.Instruction.make("scaleout", mode=mode, o=rng.randrange(0, 3), s=rng.randrange(0, 3),
                                           meta=rng.randrange(0, 3), ntok=ntok, ntiles=rng.randint(1, 3))
                with self.subTest(cfg=name, mode=mode):
                    compare(self, cfg, st, ins, f"{name} mode={mode} seed={seed}")
