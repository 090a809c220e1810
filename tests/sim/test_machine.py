"""Simulator tests: hand-computed timing, functional results vs the naive model, errors, hazards."""

import dataclasses
import itertools
import struct
import unittest

import numpy as np
from hypothesis import given, settings, strategies as st

from bitmos import formats as F
from bitmos.config import AcceleratorConfig, preset_config
from bitmos.container import MemoryImage, Program
from bitmos.errors import ConfigError, FormatError
from bitmos.isa import (VECTOR_OPS, CAUSE_BUFFER_RANGE, CAUSE_EXT_RANGE, CAUSE_ILLEGAL_FIELD, CAUSE_ILLEGAL_OPCODE,
                        CAUSE_PC_RANGE, Op, assemble, decode)
from bitmos.semantics import Timeline
from bitmos.sim import DMAHazardError, Simulator

from tests.progen import random_program
from tests.reference_machine import ReferenceMachine

SMALL = preset_config("small")   # R = C = 4, L = 32, k = 8, E = 4, ext_bw 64, latency 20


def run_both(cfg, words, mem=b"", **kw):
    a = Simulator(cfg, **kw).run(words, bytearray(mem), trace=True)
    b = Simulator(cfg, **kw).run(words, bytearray(mem), functional=False, trace=True)
    for f in ("cycles", "error", "cause", "error_pc", "stall_cycles", "counts", "instructions",
              "dma_bytes_read", "dma_bytes_written"):
        assert getattr(a, f) == getattr(b, f), (f, getattr(a, f), getattr(b, f))
    for f in ("issue", "busy", "unit", "op", "pc"):
        np.testing.assert_array_equal(getattr(a.trace, f), getattr(b.trace, f), err_msg=f)
    return a


def assert_matches_naive(tc, cfg, words, mem):
    r = run_both(cfg, words, mem)
    tc.assertFalse(r.error, r.error_message)
    # the machine's memory model (the image is the start of a zero memory); the hazard rule in its strictest
    # reading (tests/progen.py waits wherever it asks)
    nm = ReferenceMachine(cfg, mem, grow_memory=True)
    ref = nm.run(words)
    for b in "XWSQO":
        for i, line in enumerate(nm.buf[b]):
            got = int.from_bytes(r.state.buf[b][i].tobytes(), "little")
            if got != line:
                tc.fail(f"{b}BUF line {i}: simulator {got:#x}, naive {line:#x}")
    for i, (d, g, bias) in enumerate(nm.meta):
        tc.assertEqual(int(r.state.meta_d[i]), d, f"META {i} D")
        tc.assertEqual([int(v) for v in r.state.meta_g[i, :cfg.experts]], g[:cfg.experts], f"META {i} gates")
        tc.assertEqual(int(r.state.meta_b[i]), bias, f"META {i} bias")
    tc.assertEqual(bytes(r.memory), bytes(ref.memory))
    tc.assertEqual((ref.cycles, ref.stall_cycles, ref.instructions), (r.cycles, r.stall_cycles, r.instructions))
    return r


class TestTiming(unittest.TestCase):
    def test_overlap_and_stall(self):
        words = assemble("""
            setr K 64                                   ; issue 0, now 1
            load buf=W line=0 nlines=2 ext=0            ; issue 1: busy 20 + ceil(2*128/64) = 24, free at 1+1+24 = 26
            matmul mode=token q=0 w=8 o=0 ntiles=1      ; issue 2: 1 + max(2*8 + 4, 4) + (3 + 4 + 2) = 30 cycles, now 32
            wait                                        ; 32 >= 26: no stall, issue 32, now 33
            load buf=O line=0 nlines=4 ext=0            ; issue 33: busy 20 + 4*128/64 = 28, free at 62
            halt                                        ; waits 62 - 34 = 28 cycles, issue 62, run ends at 63
        """)
        r = run_both(SMALL, words, bytes(4096))
        self.assertEqual(r.cycles, 63)
        self.assertEqual(r.stall_cycles, 28)
        self.assertEqual(list(r.trace.issue), [0, 1, 2, 32, 33, 62])
        self.assertEqual(list(r.trace.busy), [0, 24, 29, 0, 28, 0])
        self.assertTrue(r.done and not r.error)

    def test_back_to_back_dma_stalls(self):
        words = assemble("""
            load buf=X line=0 nlines=4 ext=0    ; issue 0: busy 20 + 4*64/64 = 24, free at 25
            load buf=X line=4 nlines=4 ext=64   ; waits until 25 (stall 24), busy 24, free at 50
            nop                                 ; issue 26
            halt                                ; waits 50 - 27 = 23, ends at 51
        """)
        r = run_both(SMALL, words, bytes(4096))
        self.assertEqual(r.cycles, 51)
        self.assertEqual(r.stall_cycles, 24 + 23)

    def test_compute_cycle_formulas(self):
        # K = 64 on small: nch = 2, XL = 2*32/4 = 16, P = ceil(8/4) = 2, Ra = 4, L/C = 8
        # T_quant token = (XL+E+24) + (XL+5) + 40 + ((nch-1)*T + L/C + 7 + k) + 1, T = max(8, 8) = 8
        #               = 44 + 21 + 40 + (8 + 8 + 7 + 8) + 1 = 137
        # T_quant plane = 44 + 21 + 40 + (8 + 8 + 7 + 2) + 1 = 131 (T = max(8, P) = 8)
        # T_tile plane = max(nch*P + C, Ra) = max(4 + 4, 4) = 8, T_drain = 3 + min(8, 4) + 2 = 9
        words = assemble("""
            setr K 64
            quant mode=token x=0 q=0 meta=0 ntok=2      ; 1 + 2*137 = 275
            quant mode=plane x=0 q=0 meta=0 ntok=1      ; 1 + 131 = 132
            matmul mode=plane q=0 w=0 o=0 ntiles=3      ; 1 + 3*8 + 9 = 34
            scaleout mode=token o=0 s=0 meta=0 ntok=3 ntiles=2   ; 1 + 2*3 + 9 = 16
            halt
        """)
        r = run_both(SMALL, words)
        self.assertEqual(list(r.trace.issue), [0, 1, 276, 408, 442, 458])
        self.assertEqual(r.cycles, 459)

    def test_timeline_class_agrees(self):
        for seed in range(5):
            words, mem = random_program(SMALL, seed)
            tl = Timeline()
            k = wbits = 0
            for w in words:
                ins = decode(w)
                if ins.op is Op.SETR and ins["reg"] == 0:
                    k = ins["value"]
                if ins.op is Op.SETR and ins["reg"] == 7:
                    wbits = ins["value"]
                tl.step(ins, SMALL, k, wbits)
                if ins.op is Op.HALT:
                    break
            r = Simulator(SMALL).run(words, mem, functional=False)
            self.assertEqual(r.cycles, tl.now)
            self.assertEqual(r.stall_cycles, tl.stall_cycles)


class TestErrors(unittest.TestCase):
    def check(self, text_or_words, cause, pc, cycles, cfg=SMALL, match=""):
        words = assemble(text_or_words) if isinstance(text_or_words, str) else text_or_words
        r = run_both(cfg, words, bytes(1024))
        self.assertTrue(r.error and r.done)
        self.assertEqual((r.cause, r.error_pc, r.cycles), (cause, pc, cycles), r.error_message)
        if match:
            self.assertRegex(r.error_message, match)
        return r

    def test_illegal_opcode(self):
        words = assemble("nop\nnop") + [0x3F << 58]
        self.check(words, CAUSE_ILLEGAL_OPCODE, 2, 3, match=r"pc 2: illegal opcode.*0x3f")

    def test_reserved_bit(self):
        words = assemble("nop") + [(int(Op.WAIT) << 58) | 1 << 6]
        self.check(words, CAUSE_ILLEGAL_FIELD, 1, 2, match=r"reserved bit\(s\) \[6\]")
        # wait's keep field [5:0]: below the transfers the DMA engine keeps in flight (small: dma_queue = 0, one)
        self.check(assemble("nop\nwait keep=1"), CAUSE_ILLEGAL_FIELD, 1, 2,
                   match=r"wait keep=1: keeps 1 transfer\(s\) in flight, and this config's DMA engine keeps 1")
        r = run_both(dataclasses.replace(SMALL, dma_queue=2), assemble("nop\nwait keep=1\nhalt"))
        self.assertFalse(r.error)

    def test_zero_count_and_bad_register(self):
        self.check([int(Op.LOAD) << 58], CAUSE_ILLEGAL_FIELD, 0, 1, match="nlines")
        self.check([(int(Op.SETR) << 58) | (9 << 52)], CAUSE_ILLEGAL_FIELD, 0, 1, match="reg")
        # BIAS: 0..1, and 1 only with a router (E >= 2)
        self.check(assemble("setr BIAS 1") + [(int(Op.SETR) << 58) | (8 << 52) | 2], CAUSE_ILLEGAL_FIELD, 1, 2,
                   match="BIAS")
        self.check("setr BIAS 1", CAUSE_ILLEGAL_FIELD, 0, 1, cfg=preset_config("tiny"), match="BIAS = 1 needs a router")
        self.check([(int(Op.SETR) << 58) | (1 << 52) | 64], CAUSE_ILLEGAL_FIELD, 0, 1, match="RSHIFT")
        # WBITS: 0 (sign) or 2..weight_bits (small: 2); 1 and 3 are no format this config has
        self.check("setr WBITS 2\nsetr WBITS 1", CAUSE_ILLEGAL_FIELD, 1, 2, match="WBITS")
        self.check("setr WBITS 3", CAUSE_ILLEGAL_FIELD, 0, 1, match="WBITS")
        self.check([(int(Op.SETR) << 58) | (7 << 52) | 9], CAUSE_ILLEGAL_FIELD, 0, 1, match="WBITS")

    def test_mode_ntok(self):
        self.check("setr K 8\nquant mode=plane ntok=2", CAUSE_ILLEGAL_FIELD, 1, 2, match="plane.*ntok=2")
        self.check("scaleout mode=token ntok=5 ntiles=1", CAUSE_ILLEGAL_FIELD, 0, 1, match="ntok=5")

    def test_buffer_range(self):
        dO = SMALL.depth("O")
        self.check(f"load buf=O line={dO - 1} nlines=2", CAUSE_BUFFER_RANGE, 0, 1, match="OBUF")
        # matmul w + ntiles*nch > depth(W): K = 1024 -> nch = 32
        dW = SMALL.depth("W")
        self.check(f"setr K 1024\nmatmul mode=plane w={dW - 32} ntiles=2", CAUSE_BUFFER_RANGE, 1, 2,
                   match="WBUF")
        self.check(f"scaleout mode=token o={dO - 4} ntok=4 ntiles=1\n"
                   f"scaleout mode=token o={dO - 4} ntok=4 ntiles=2", CAUSE_BUFFER_RANGE, 1, (1 + 1 * 4 + 9) + 1)
        self.check(f"setr K 32\nsetr SIN {SMALL.depth('S') - 1}\nquant x=0 ntok=1", CAUSE_BUFFER_RANGE, 2,
                   3, match="s_in")
        self.check(f"setr K 32\nquant meta={SMALL.meta_tokens - 1} ntok=2", CAUSE_BUFFER_RANGE, 1, 2,
                   match="META")

    def test_ext_range_does_not_wait_for_dma(self):
        last = SMALL.ext_mem_bytes // 64 - 1
        # EBASE*64 + 9 lines * 8 bytes = ext_mem_bytes - 64 + 72 > ext_mem_bytes.
        # the first load keeps the DMA busy until cycle 25; the faulting load is refused at its issue
        # cycle 2 without waiting: the run ends at 2 + 1 = 3
        self.check(f"load buf=X line=0 nlines=4 ext=0\nsetr EBASE {last}\nload buf=X line=0 nlines=9 ext=0",
                   CAUSE_EXT_RANGE, 2, 3, match="external")

    def test_pc_range(self):
        cfg = preset_config("tiny")
        # setr issues at 0, nops at 1..imem_words-1 (implicit zeros), pc reaches imem_words at cycle 1024
        r = self.check("setr K 16", CAUSE_PC_RANGE, cfg.imem_words, cfg.imem_words + 1, cfg=cfg)
        self.assertEqual(r.instructions, cfg.imem_words)

    def test_program_too_long(self):
        cfg = preset_config("tiny")
        with self.assertRaisesRegex(FormatError, "instruction memory holds 1024"):
            Simulator(cfg).run([0] * 1025)

    def test_config_mismatch(self):
        with self.assertRaisesRegex(ConfigError, "compiled for config 'tiny'"):
            Simulator(SMALL).run(Program([0], preset_config("tiny")))
        with self.assertRaisesRegex(ConfigError, "memory image was built"):
            Simulator(SMALL).run(assemble("halt"), MemoryImage(bytearray(8), "0123"))


class TestHazards(unittest.TestCase):
    def test_load_then_quant(self):
        words = assemble("setr K 32\nload buf=X line=0 nlines=8 ext=0\nquant x=4 ntok=1\nhalt")
        for functional in (True, False):
            with self.assertRaisesRegex(DMAHazardError, r"quant at pc 2 .* load at pc 1 \(lines 0..7\)"):
                Simulator(SMALL).run(words, bytearray(4096), functional=functional)
        r = Simulator(SMALL, check_hazards=False).run(words, bytearray(4096))
        self.assertFalse(r.error)
        ok = assemble("setr K 32\nload buf=X line=0 nlines=8 ext=0\nwait\nquant x=4 ntok=1\nhalt")
        self.assertFalse(run_both(SMALL, ok, bytes(4096)).error)

    def test_strided_scaleout(self):
        # token scaleout with ntok=1, R=4 touches OBUF lines 0 and 4 only; a store of line 1 is no hazard
        free = assemble("store buf=O line=1 nlines=2 ext=0\nscaleout o=0 ntok=1 ntiles=2\nhalt")
        run_both(SMALL, free, bytes(4096))
        bad = assemble("store buf=O line=1 nlines=2 ext=0\nscaleout o=0 ntok=2 ntiles=2\nhalt")
        with self.assertRaisesRegex(DMAHazardError, "scaleout at pc 1"):
            Simulator(SMALL).run(bad, bytearray(4096), functional=False)
        with self.assertRaisesRegex(DMAHazardError, "store at pc 0"):
            Simulator(SMALL).run(bad, bytearray(4096))

    def test_random_programs_without_waits_agree(self):
        for seed in range(20):
            words, mem = random_program(SMALL, seed, length=30)
            words = [w for w in words if w >> 58 != Op.WAIT]
            res = []
            for functional in (True, False):
                try:
                    Simulator(SMALL).run(words, bytearray(mem), functional=functional)
                    res.append(None)
                except DMAHazardError as exc:
                    res.append((exc.pc, exc.dma_pc, str(exc)))
            self.assertEqual(res[0], res[1], f"seed {seed}")


class TestDMAQueue(unittest.TestCase):
    """dma_queue (contract v2.4): up to Q transfers in flight, their beats in issue order, latencies overlapped."""
    LOADS = "\n".join(f"load buf=X line={8 * i} nlines=8 ext={64 * i}" for i in range(4)) + "\nhalt"

    def test_four_loads_by_hand(self):
        # SMALL: one 64-bit beat per XBUF line, latency 20: a lone transfer of 8 lines is done 1 + 20 + 8 after
        # its issue; queued, its beats follow the previous transfer's
        words = assemble(self.LOADS)
        for q, issues, cycles in ((0, [0, 29, 58, 87, 116], 117),      # v2: each waits for the last to be done
                                  (1, [0, 29, 58, 87, 116], 117),
                                  (2, [0, 1, 29, 37, 66], 67),          # done 29, 37, 58 (latency again), 66
                                  (4, [0, 1, 2, 3, 53], 54)):           # beats back to back: done 29, 37, 45, 53
            with self.subTest(dma_queue=q):
                cfg = dataclasses.replace(SMALL, dma_queue=q)
                r = run_both(cfg, words, bytes(4096))
                self.assertEqual((list(r.trace.issue), r.cycles), (issues, cycles))
                self.assertEqual(r.memory, Simulator(SMALL).run(words, bytearray(4096)).memory)

    def test_fingerprint_and_rtl(self):
        from bitmos.rtl.common import check_config
        self.assertEqual(dataclasses.replace(SMALL, dma_queue=0).fingerprint(), SMALL.fingerprint())
        self.assertNotEqual(dataclasses.replace(SMALL, dma_queue=2).fingerprint(), SMALL.fingerprint())
        for q in (2, 3, 64):   # the RTL builds the queue (tests/rtl runs it)
            self.assertEqual(check_config(dataclasses.replace(SMALL, dma_queue=q)).dma_slots, q)
        with self.assertRaisesRegex(ConfigError, "'dma_queue' = 65 is out of range"):
            AcceleratorConfig.from_dict({**SMALL.to_dict(), "dma_queue": 65})

    def test_hazards_reach_back_q_transfers(self):
        two = "setr K 32\nload buf=X line=0 nlines=8 ext=0\nload buf=X line=8 nlines=8 ext=64\n"
        quant = assemble(two + "quant x=0 ntok=1\nhalt")           # reads lines 0..7 of the first load
        # transfers on the same lines never conflict (their data moves in issue order): the store reads what the
        # load before it brought, the last load lands after the store read its lines
        ordered = assemble(two + "store buf=X line=0 nlines=8 ext=512\nload buf=X line=0 nlines=8 ext=128\n"
                                 "load buf=X line=0 nlines=8 ext=192\nhalt")
        for q in (1, 2, 4):
            cfg = dataclasses.replace(SMALL, dma_queue=q)
            for functional in (True, False):
                if q == 1:       # the second load waited for the first: it is done
                    self.assertFalse(Simulator(cfg).run(quant, bytearray(4096), functional=functional).error)
                else:
                    with self.assertRaisesRegex(DMAHazardError, r"quant at pc 3 .* load at pc 1 \(lines 0..7\)"):
                        Simulator(cfg).run(quant, bytearray(4096), functional=functional)
            r = run_both(cfg, ordered, bytes(range(256)) * 16)
            self.assertEqual(bytes(r.memory[512:576]), bytes(range(64)))
            ref = ReferenceMachine(cfg, bytes(range(256)) * 16).run(ordered)
            self.assertEqual((ref.cycles, bytes(ref.memory)), (r.cycles, bytes(r.memory)))
        # wait keep=1 retires the first load only: the quant may read it, not the second
        cfg = dataclasses.replace(SMALL, dma_queue=4)
        self.assertFalse(run_both(cfg, assemble(two + "wait keep=1\nquant x=0 ntok=1\nhalt"), bytes(4096)).error)
        with self.assertRaisesRegex(DMAHazardError, r"quant at pc 4 .* load at pc 2 \(lines 8..15\)"):
            Simulator(cfg).run(assemble(two + "wait keep=1\nquant x=8 ntok=1\nhalt"), bytearray(4096))
        # and its timing: the wait ends when the first load is done (30), not the second (38)
        r = run_both(cfg, assemble(two + "wait keep=1\nquant x=0 ntok=1\nhalt"), bytes(4096))
        self.assertEqual(r.trace.issue[:5].tolist(), [0, 1, 2, 30, 31])

    def test_timeline_class_and_naive_machine_agree(self):
        for q in (2, 3, 8):
            cfg = dataclasses.replace(SMALL, dma_queue=q)
            for seed in range(4):
                with self.subTest(dma_queue=q, seed=seed):
                    words, mem = random_program(cfg, seed, length=40, mem_bytes=1 << 12)
                    tl = Timeline.of(cfg)
                    k = wbits = 0
                    for w in words:
                        ins = decode(w)
                        k = ins["value"] if ins.op is Op.SETR and ins["reg"] == 0 else k
                        wbits = ins["value"] if ins.op is Op.SETR and ins["reg"] == 7 else wbits
                        tl.step(ins, cfg, k, wbits)
                        if ins.op is Op.HALT:
                            break
                    r = Simulator(cfg).run(words, bytearray(mem), functional=False)
                    self.assertEqual((r.cycles, r.stall_cycles), (tl.now, tl.stall_cycles))
                    assert_matches_naive(self, cfg, words, mem)


def small_cfg(k, E, R=4, C=4, L=32, **kw):
    return AcceleratorConfig(rows=R, cols=C, lanes=L, act_bits=k, experts=E, xbuf_kib=2, wbuf_kib=2,
                             sbuf_kib=2, qbuf_kib=2, obuf_kib=2, meta_tokens=16, imem_words=1024, **kw)


class TestFunctional(unittest.TestCase):
    def test_random_programs_every_mode(self):
        """quant/matmul/scaleout in both modes for k in {1,2,4,8} and E in {0,1,4}, vs the naive model."""
        for k, E in itertools.product([1, 2, 4, 8], [0, 1, 4]):
            for geom in ((4, 4, 32), (3, 2, 16)):
                cfg = small_cfg(k, E, *geom)
                with self.subTest(k=k, E=E, geom=geom):
                    words, mem = random_program(cfg, seed=7 * k + E, length=25, mem_bytes=1 << 12)
                    assert_matches_naive(self, cfg, words, mem)

    def test_presets(self):
        for name in ("tiny", "small", "medium"):
            cfg = preset_config(name)
            words, mem = random_program(cfg, seed=1, length=30, mem_bytes=1 << 13)
            assert_matches_naive(self, cfg, words, mem)

    def layer(self, cfg, K, x, signs, s=None, ntok=1, mode="token", smul=3, oshift=8):
        """A directed one-layer program: x [ntok][K] int16, signs [C][K] (+1/-1), S lines (E>=1)."""
        C, L = cfg.cols, cfg.lanes
        nch, XL = cfg.nchunks(K), cfg.xlines(K)
        mem = bytearray(1 << 14)
        xb = np.zeros((ntok, XL * C), dtype="<i2")
        xb[:, :K] = x
        mem[0:xb.nbytes] = xb.tobytes()
        wbits = np.zeros((nch, C, L), dtype=bool)
        for j in range(C):
            for i in range(K):
                wbits[i // L, j, i % L] = signs[j][i] > 0
        wb = np.packbits(wbits, axis=2, bitorder="little").tobytes()
        mem[4096:4096 + len(wb)] = wb
        if s is not None:
            mem[8192:8192 + len(s)] = s
        E = cfg.experts
        sl = (2 * XL + 1) if E else 0
        text = f"""
            setr K {K}
            setr RSHIFT 8
            setr OSHIFT {oshift}
            setr SMUL {smul}
            setr ROUTER 0
            setr SIN {XL}
            load buf=X line=0 nlines={ntok * XL} ext=0
            load buf=W line=0 nlines={nch} ext=4096
            {f'load buf=S line=0 nlines={sl} ext=8192' if E else 'nop'}
            wait
            quant mode={mode} x=0 q=0 meta=0 ntok={ntok}
            matmul mode={mode} q=0 w=0 o=0 ntiles=1
            store buf=O line=0 nlines={cfg.rows if mode == 'token' else 1} ext=12288
            wait
            scaleout mode={mode} o=0 s={2 * XL if E else 0} meta=0 ntok={ntok} ntiles=1
            halt
        """
        words = assemble(text)
        r = assert_matches_naive(self, cfg, words, mem)
        raw = np.frombuffer(bytes(r.memory[12288:12288 + 4 * C * ntok]), dtype="<i4").reshape(ntok, C)
        return r, raw

    def test_edge_cases(self):
        rng = np.random.default_rng(0)
        for k, E in itertools.product([1, 2, 4, 8], [0, 1, 4]):
            cfg = small_cfg(k, E)
            C = cfg.cols
            K = 45                           # not a multiple of lanes (32)
            Sbytes = rng.integers(-2 ** 15, 2 ** 15, size=(2 * cfg.xlines(K) + 1) * max(E, 1) * C,
                                  dtype=np.int64).astype("<i2").tobytes() if E else None
            with self.subTest(k=k, E=E):
                x = rng.integers(-300, 300, size=(2, K))
                # all +1 weights in column 0, all -1 in column 1, random in the others
                signs = [[1] * K, [-1] * K] + [list(rng.choice([-1, 1], size=K)) for _ in range(C - 2)]
                r, raw = self.layer(cfg, K, x, signs, Sbytes, ntok=2)
                q_sum = raw[:, 0]
                np.testing.assert_array_equal(raw[:, 1], -q_sum)   # all -1 column = -(all +1 column)
                # saturating activations and a zero token (m = 0: q = 0, or +1 when k = 1)
                x2 = np.array([[32767] * K, [0] * K])
                r, raw = self.layer(cfg, K, x2, signs, Sbytes, ntok=2)
                self.assertEqual(int(r.state.meta_d[1]), 0)
                self.assertEqual(raw[1, 0], K if k == 1 else 0)
                if E == 0:
                    q = cfg.act_qmax
                    self.assertEqual(raw[0, 0], K * q)              # every lane quantizes to +Q
                r, raw = self.layer(cfg, K, x[:1], signs, Sbytes, ntok=1, mode="plane")

    def test_acc_wrap(self):
        """acc_bits = 16 with K*(2^k-1) beyond range wraps (two's complement), as docs/isa.md says."""
        cfg = AcceleratorConfig(rows=1, cols=1, lanes=512, act_bits=8, acc_bits=16, experts=0, xbuf_kib=1,
                                wbuf_kib=64, sbuf_kib=1, qbuf_kib=64, obuf_kib=1, meta_tokens=1,
                                imem_words=64)
        K = 320                                  # 320 * 127 = 40640 > 2^15 - 1
        x = np.full((1, K), 1000)
        r, raw = self.layer(cfg, K, x, [[1] * K], None, ntok=1, smul=1, oshift=0)
        self.assertEqual(raw[0, 0], F.to_signed(K * 127, 16))

    def test_scaleout_exact_big_products(self):
        """OBUF values loaded by DMA make acc*D*s_out exceed 2^63: exact big-int path."""
        cfg = small_cfg(8, 0)
        acc = [2 ** 31 - 1, -2 ** 31, 123456789, -1]
        mem = bytearray(struct.pack("<4i", *acc))
        x = [0] * cfg.xlines(32) * cfg.cols
        x[0] = 32767
        mem += bytearray(64 - len(mem)) + struct.pack(f"<{len(x)}h", *x)
        words = assemble("""
            setr K 32
            setr SMUL -32768
            setr OSHIFT 20
            load buf=O line=0 nlines=1 ext=0
            load buf=X line=0 nlines=8 ext=64
            wait
            quant x=0 q=0 meta=0 ntok=1
            scaleout o=0 s=0 meta=0 ntok=1 ntiles=1
            halt
        """)
        r = assert_matches_naive(self, cfg, words, bytes(mem))
        d = int(r.state.meta_d[0])
        got = [int(v) for v in r.state.obuf()[0]]
        self.assertEqual(got, [F.scale_output(a, d, -32768, 20) for a in acc])


def with_vector(cfg):
    return dataclasses.replace(cfg, vector_unit=1)


class TestVectorUnit(unittest.TestCase):
    """resadd / silu / rmsnorm (the vector unit): against the naive machine, bitmos.formats and the cycle table."""

    def test_random_programs_against_the_naive_machine(self):
        cfgs = [with_vector(preset_config("small")), with_vector(preset_config("tiny")),
                with_vector(small_cfg(4, 1, 3, 2, 16)), with_vector(dataclasses.replace(small_cfg(8, 4), obuf_kib=4)),
                dataclasses.replace(with_vector(preset_config("small")), attn_rows=3),
                dataclasses.replace(with_vector(preset_config("small")), dma_queue=4)]
        for i, cfg in enumerate(cfgs):
            seeds = [100 * i + seed for seed in range(4)] if i < 5 else range(504, 508)   # seeds with all attn parts
            for seed in seeds:
                with self.subTest(cfg=i, seed=seed):
                    words, mem = random_program(cfg, seed=seed, length=30, mem_bytes=1 << 12)
                    assert_matches_naive(self, cfg, words, mem)
            words = [w for seed in seeds for w in random_program(cfg, seed=seed, length=30, mem_bytes=1 << 12)[0]]
            self.assertTrue({int(op) for op in VECTOR_OPS} <= {w >> 58 for w in words})
            # attn's three parts (whole; a tile's scores; a tile's values) all among them
            self.assertEqual({decode(w)["part"] for w in words if w >> 58 == int(Op.ATTN)}, {0, 1, 2})

    def directed(self, cfg, K, r, y, mode, ntok, xfrac=8, gexp=14, eps=1 << 10, gains=None):
        """r, y [ntok][K] int32 in OBUF (r at line 0, y apart), gains [K] int16 in SBUF line 0..; runs
        resadd, then rmsnorm of the sum and silu(r, y), and returns the result and the inputs' lines."""
        C, R = cfg.cols, cfg.rows
        nl = -(-K // C)
        span = nl if mode == "plane" else (nl - 1) * R + ntok
        # lines hold junk past K (and between token rows): no operation may read it into a result
        ob = np.random.default_rng(K).integers(-(1 << 31), 1 << 31, (2 * span + 1, C)).astype("<i4")
        for t in range(ntok):
            for i in range(K):
                line = i // C if mode == "plane" else (i // C) * R + t
                ob[line, i % C] = r[t][i]
                ob[span + 1 + line, i % C] = y[t][i]
        sb = np.zeros((nl, max(cfg.experts, 1), C), dtype="<i2")
        for i in range(K):
            sb[i // C, 0, i % C] = gains[i]
        xl = cfg.xlines(K)
        mem = bytearray(ob.tobytes()) + bytearray(sb.tobytes())
        prog = f"""
            setr K {K}
            setr XFRAC {xfrac}
            setr GEXP {gexp}
            setr EPS {eps}
            load buf=O line=0 nlines={2 * span + 1} ext=0
            wait
            load buf=S line=0 nlines={nl} ext={ob.nbytes}
            wait
            silu mode={mode} g=0 u={span + 1} x={ntok * xl} ntok={ntok}
            layernorm mode={mode} r={span + 1} x={2 * ntok * xl} ntok={ntok}
            resadd mode={mode} r=0 o={span + 1} ntok={ntok}
            rmsnorm mode={mode} r=0 x=0 s=0 ntok={ntok}
            halt
        """
        res = assert_matches_naive(self, cfg, assemble(prog), bytes(mem))
        xs = res.state.xbuf()
        got_norm = [[int(v) for v in xs[t * xl:(t + 1) * xl].reshape(-1)] for t in range(ntok)]
        got_silu = [[int(v) for v in xs[(ntok + t) * xl:(ntok + t + 1) * xl].reshape(-1)] for t in range(ntok)]
        self.got_layernorm = [[int(v) for v in xs[(2 * ntok + t) * xl:(2 * ntok + t + 1) * xl].reshape(-1)]
                              for t in range(ntok)]
        return res, got_norm, got_silu, xl

    def test_directed_against_formats(self):
        rng = np.random.default_rng(5)
        for cfg in (with_vector(preset_config("small")), with_vector(small_cfg(4, 0, 3, 2, 16))):
            C = cfg.cols
            for K, mode, ntok in ((37, "token", 3), (64, "plane", 1), (5, "token", 1)):
                with self.subTest(C=C, K=K, mode=mode):
                    r = rng.integers(-(1 << 31), 1 << 31, (ntok, K)).tolist()
                    r[0][0] = (1 << 31) - 1           # sums that saturate
                    y = rng.integers(-(1 << 31), 1 << 31, (ntok, K)).tolist()
                    y[0][0] = (1 << 30)
                    y[0][1 % K] = -(1 << 18)          # past the sigmoid table's ends, and inside it
                    gains = rng.integers(-(1 << 15), 1 << 15, K).tolist()
                    res, norm, silu, xl = self.directed(cfg, K, r, y, mode, ntok, xfrac=7, gexp=13, eps=12345,
                                                        gains=gains)
                    F16 = cfg.out_frac_bits
                    for t in range(ntok):
                        s = [F.residual_add(a, b) for a, b in zip(r[t], y[t])]
                        want = F.rms_norm(s, gains, 13, 12345, 7)
                        self.assertEqual(norm[t], want + [0] * (xl * C - K))
                        h = F.silu_gate(r[t], y[t], F16)
                        self.assertEqual(silu[t], [F.requantize(v, F16, 7, 16) for v in h] + [0] * (xl * C - K))
                        self.assertEqual(self.got_layernorm[t], F.layer_norm(y[t], 12345, 7) + [0] * (xl * C - K))
                    # cycles: the table of docs/isa.md by hand (4 setr, 2 x (load + wait) and halt around)
                    nl = -(-K // C)
                    self.assertEqual(
                        [int(b) + 1 for b, o in zip(res.trace.busy, res.trace.op) if o >= int(Op.RESADD)],
                        [1 + ntok * (nl + xl) + 10, 1 + ntok * (3 * nl + xl + 82 + 37) + 8, 1 + ntok * 2 * nl + 3,
                         1 + ntok * (2 * nl + xl + 82) + 8])

    def test_rope_rotates_every_head_with_its_token_position(self):
        cfg = with_vector(preset_config("small"))            # C = 4: HDIM 16 -> h = 8, two lines a half
        C, R, hd, heads, ntok = cfg.cols, cfg.rows, 16, 3, 3
        K = heads * hd
        nl = K // C
        rng = np.random.default_rng(9)
        x = rng.integers(-(1 << 31), 1 << 31, (ntok, K))
        x[0, 0] = (1 << 31) - 1                              # a rotation that saturates
        cos_t, sin_t = F.rope_table([10000 ** (-2 * j / hd) for j in range(hd // 2)], 40)
        pos = [3, 17, 39]
        ob = np.zeros(((nl - 1) * R + ntok, C), dtype="<i4")
        for t in range(ntok):
            for i in range(K):
                ob[(i // C) * R + t, i % C] = x[t, i]
        sb = np.zeros((ntok * hd // C, cfg.experts, C), dtype="<i2")
        for t, p in enumerate(pos):
            row = np.array(cos_t[p] + sin_t[p]).reshape(-1, C)
            sb[t * hd // C:(t + 1) * hd // C, 0, :] = row
        mem = bytearray(ob.tobytes()) + bytearray(sb.tobytes())
        prog = assemble(f"""
            setr K {K}
            setr HDIM {hd}
            load buf=O line=0 nlines={ob.shape[0]} ext=0
            wait
            load buf=S line=0 nlines={sb.shape[0]} ext={ob.nbytes}
            wait
            rope mode=token q=0 s=0 ntok={ntok}
            halt""")
        res = assert_matches_naive(self, cfg, prog, bytes(mem))
        got = res.state.obuf()
        for t, p in enumerate(pos):
            want = []
            for g in range(heads):
                want += F.rope_rotate(list(map(int, x[t, g * hd:(g + 1) * hd])), cos_t[p], sin_t[p])
            self.assertEqual([int(got[(i // C) * R + t, i % C]) for i in range(K)], want)
        busy = [int(b) + 1 for b, o in zip(res.trace.busy, res.trace.op) if o == int(Op.ROPE)]
        self.assertEqual(busy, [1 + ntok * nl + 6])
        for bad, why in (("setr HDIM 12", "HDIM must be even with half of it a multiple of cols = 4"),
                         ("setr K 40\nsetr HDIM 16\nrope mode=plane q=0 s=0 ntok=1", "not a whole number of heads")):
            r = run_both(cfg, assemble(bad + "\nhalt"))
            self.assertEqual(r.cause, CAUSE_ILLEGAL_FIELD, bad)
            self.assertIn(why, r.error_message)

    def test_attention_faults_and_counts(self):
        cfg = with_vector(SMALL)          # C = 4, WBUF lines of 16 bytes
        head = "setr K 64\nsetr HDIM 16\nsetr KVMAX 32\nsetr HGRP 2\nsetr SCR 100\n"
        for bad, cause, why in (
                ("setr KVMAX 24", CAUSE_ILLEGAL_FIELD, "multiple of a WBUF line's 16 bytes"),
                (head + "setr QPOS 31\nattn mode=token q=0 x=0 ntok=2", CAUSE_ILLEGAL_FIELD, "QPOS + ntok <= KVMAX"),
                (head + "setr HGRP 0\nattn mode=plane q=0 x=0 ntok=1", CAUSE_ILLEGAL_FIELD, "HGRP > 0"),
                ("setr KVMAX 16\nkvpack mode=plane o=0 kind=k ntok=1", CAUSE_ILLEGAL_FIELD, "HDIM > 0"),
                (head + f"setr KVW {cfg.depth('W') - 10}\nkvpack mode=plane o=0 kind=v ntok=1", CAUSE_BUFFER_RANGE,
                 "WBUF KV-cache region lines"),
                (head + f"setr QPOS 30\nsetr SCR {cfg.depth('O') - 1}\nattn mode=plane q=0 x=0 ntok=1", CAUSE_BUFFER_RANGE,
                 "OBUF score scratch lines")):
            r = run_both(cfg, assemble(bad + "\nhalt"))
            self.assertEqual(r.cause, cause, bad)
            self.assertIn(why, r.error_message)
        # one decode row of 2 query heads over 20 positions: the counts of sim/energy.py, by hand
        r = run_both(cfg, assemble(head + "setr QPOS 19\nattn mode=plane q=0 x=0 ntok=1\nhalt"))
        self.assertFalse(r.error, r.error_message)
        rows, n, hd = 2, 20, 16
        self.assertEqual(r.counts["vector_mul8s"], rows * n * hd)
        self.assertEqual(r.counts["vector_recips"], rows)
        self.assertEqual(r.counts["w_read_bits"], rows * 2 * (n * hd // 16 + 2) * cfg.wbuf_line_bits)
        self.assertEqual(r.counts["x_write_bits"], rows * (hd // 4) * cfg.xbuf_line_bits)

    def test_attention_parts_faults_and_counts(self):
        cfg = with_vector(SMALL)          # C = 4, WBUF lines of 16 bytes: a page 16 positions
        head = "setr K 64\nsetr HDIM 16\nsetr KVMAX 16\nsetr HGRP 2\nsetr SCR 100\nsetr ACC 200\nsetr QPOS 19\n"
        for bad, cause, why in (
                ("setr TPOS 8", CAUSE_ILLEGAL_FIELD, "TPOS must be a multiple of a WBUF line's 16 bytes"),
                (head + "setr TPOS 16\nattn mode=plane q=0 x=0 ntok=1 part=whole", CAUSE_ILLEGAL_FIELD,
                 "TPOS = 0 and QPOS + ntok <= KVMAX"),
                (head + "setr TPOS 32\nattn mode=plane q=0 x=0 ntok=1 part=scores", CAUSE_ILLEGAL_FIELD,
                 "TPOS < QPOS + ntok"),
                (head + "setr TPOS 32\nkvpack mode=plane o=0 kind=k ntok=1", CAUSE_ILLEGAL_FIELD,
                 "TPOS <= QPOS and QPOS + ntok <= TPOS + KVMAX"),
                (head + f"setr ACC {cfg.depth('O') - 4}\nattn mode=plane q=0 x=0 ntok=1 part=values",
                 CAUSE_BUFFER_RANGE, "OBUF accumulator lines"),
                (head + f"setr SCR {cfg.depth('O') - 6}\nattn mode=plane q=0 x=0 ntok=1 part=scores",
                 CAUSE_BUFFER_RANGE, "OBUF score scratch lines")):      # 2 rows of 5 lines
            r = run_both(cfg, assemble(bad + "\nhalt"))
            self.assertEqual(r.cause, cause, bad)
            self.assertIn(why, r.error_message)
        # a word whose part field is 3 is no instruction
        word = assemble(head + "attn mode=plane q=0 x=0 ntok=1 part=values")[-1] | (3 << 16)
        r = run_both(cfg, assemble(head) + [word] + assemble("halt"))
        self.assertEqual(r.cause, CAUSE_ILLEGAL_FIELD)
        # 2 query rows of one decode token at position 19 (n = 20): the scores of the tile 16..31 (m = 4 positions),
        # then the values of the tile 0..15 (the first: the softmax over 20 positions, no output yet)
        r = run_both(cfg, assemble(head + "setr TPOS 16\nattn mode=plane q=0 x=0 ntok=1 part=scores\nhalt"))
        rows, n, hd, m = 2, 20, 16, 4
        self.assertFalse(r.error, r.error_message)
        self.assertEqual(r.counts["vector_mul8s"], rows * m * hd)
        self.assertEqual(r.counts["w_read_bits"], rows * (m * hd // 16 + 1) * cfg.wbuf_line_bits)
        self.assertEqual(r.counts["o_write_bits"], rows * 1 * cfg.obuf_line_bits)      # ceil(4 / 4) score lines
        self.assertEqual((r.counts["vector_recips"], r.counts["x_write_bits"]), (0, 0))
        r = run_both(cfg, assemble(head + "setr TPOS 0\nattn mode=plane q=0 x=0 ntok=1 part=values\nhalt"))
        self.assertFalse(r.error, r.error_message)
        self.assertEqual((r.counts["vector_recips"], r.counts["vector_lut_reads"]), (rows, rows * n))
        self.assertEqual(r.counts["vector_mul16s"], rows * 16 * hd)
        self.assertEqual(r.counts["x_write_bits"], 0)                                  # 0 + 16 < 20: not the last
        self.assertEqual(r.counts["o_read_bits"], rows * (3 * 5 + 4 + 2 * 4) * cfg.obuf_line_bits)

    def test_zero_token_divides_by_k_not_zero(self):
        cfg = with_vector(preset_config("small"))
        K = 8
        res, norm, _, xl = self.directed(cfg, K, [[0] * K], [[0] * K], "plane", 1, eps=0, gains=[1 << 14] * K)
        self.assertEqual(norm[0], [0] * (xl * cfg.cols))

    def test_without_the_unit_its_opcodes_and_registers_fault(self):
        for word, cause, text in (
                (assemble("resadd mode=token r=0 o=16 ntok=1")[0], CAUSE_ILLEGAL_OPCODE, "illegal opcode"),
                (assemble("rmsnorm mode=plane r=0 x=0 s=0 ntok=1")[0], CAUSE_ILLEGAL_OPCODE, "illegal opcode"),
                (assemble("layernorm mode=plane r=0 x=0 ntok=1")[0], CAUSE_ILLEGAL_OPCODE, "illegal opcode"),
                (assemble("setr EPS 3")[0], CAUSE_ILLEGAL_FIELD, "belongs to the vector unit")):
            r = run_both(SMALL, [assemble("setr K 16")[0], word, assemble("halt")[0]])
            self.assertEqual((r.error, r.cause, r.error_pc), (True, cause, 1))
            self.assertIn(text, r.error_message)
            r = run_both(with_vector(SMALL), [assemble("setr K 16")[0], word, assemble("halt")[0]])
            self.assertFalse(r.error, r.error_message)

    def test_resadd_operands_must_be_the_same_lines_or_apart(self):
        cfg = with_vector(SMALL)   # K = 16: NL = 4 lines per token, token mode spans (4-1)*4 + 2 = 14 lines
        for o, bad in ((0, False), (14, False), (13, True), (1, True)):
            r = run_both(cfg, assemble(f"setr K 16\nresadd mode=token r=0 o={o} ntok=2\nhalt"))
            self.assertEqual(r.cause if r.error else 0, CAUSE_ILLEGAL_FIELD if bad else 0, o)
        r = run_both(cfg, assemble(f"setr K 16\nrmsnorm mode=token r={cfg.depth('O') - 13} x=0 s=0 ntok=2\nhalt"))
        self.assertEqual(r.cause, CAUSE_BUFFER_RANGE)
        self.assertIn("OBUF residual lines", r.error_message)


class TestModesAgree(unittest.TestCase):
    @settings(max_examples=40, deadline=None)
    @given(seed=st.integers(0, 2 ** 31), faults=st.booleans(),
           preset=st.sampled_from(["tiny", "small", "medium", "small+vector"]))
    def test_functional_equals_timing(self, seed, faults, preset):
        name, _, unit = preset.partition("+")
        cfg = with_vector(preset_config(name)) if unit else preset_config(name)
        words, mem = random_program(cfg, seed, length=20, mem_bytes=1 << 12, faults=faults)
        try:
            run_both(cfg, words, mem)
        except DMAHazardError:   # a planted fault can move a load next to a compute instruction
            for functional in (True, False):
                with self.assertRaises(DMAHazardError):
                    Simulator(cfg).run(words, bytearray(mem), functional=functional)


if __name__ == "__main__":
    unittest.main()
