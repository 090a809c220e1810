"""bitmos.semantics: one definition per instruction, the same on Python integers and NumPy arrays."""

import dataclasses
import random

import numpy as np
import pytest

from bitmos import isa, semantics as sem
from bitmos.config import preset_config
from bitmos.isa import Op, Reg

NP = sem.Ops(select=np.where)


def _random_fields(rng: random.Random, op: Op) -> dict[str, int]:
    return {f.name: rng.randrange(0, 1 << f.width) for f in isa.SPECS[op]}


def _random_regs(rng: random.Random) -> dict[Reg, int]:
    return {Reg.K: rng.randrange(0, 3000), Reg.RSHIFT: 0, Reg.OSHIFT: 0, Reg.ROUTER: rng.randrange(0, 400),
            Reg.SIN: rng.randrange(0, 400), Reg.SMUL: 0, Reg.EBASE: rng.randrange(0, 1 << 20),
            Reg.WBITS: rng.choice([0, 0, 2, 1, 3, 8]), Reg.BIAS: rng.choice([0, 1]),
            Reg.XFRAC: rng.randrange(0, 16), Reg.GEXP: rng.randrange(0, 32), Reg.EPS: rng.randrange(0, 1 << 32),
            Reg.HDIM: rng.choice([0, 8, 16, 64, 128, rng.randrange(0, 1025)]),
            Reg.QPOS: rng.choice([0, rng.randrange(0, 70000)]), Reg.KVMAX: rng.choice([0, 16, 256, rng.randrange(0, 70000)]),
            Reg.KVW: rng.randrange(0, 70000), Reg.HGRP: rng.choice([0, 1, 4, rng.randrange(0, 256)]),
            Reg.SCR: rng.randrange(0, 70000), Reg.TPOS: rng.choice([0, 16, 256, rng.randrange(0, 70000)]),
            Reg.ACC: rng.randrange(0, 70000)}


def _config(preset: str):
    """A preset, or ``NAME+vector``: the preset with the vector unit."""
    name, _, unit = preset.partition("+")
    cfg = preset_config(name)
    return dataclasses.replace(cfg, vector_unit=1) if unit else cfg


@pytest.mark.parametrize("preset", ["tiny", "small", "asic32", "small+vector", "tiny+vector"])
def test_integer_and_array_evaluations_agree(preset):
    cfg = _config(preset)
    rng = random.Random(preset)
    for op in sem.legal_ops(cfg):
        rows = [(_random_fields(rng, op), _random_regs(rng)) for _ in range(200)]
        words = [isa.encode(isa.Instruction(op, tuple(f.items()))) if all(
            fl.minimum <= f[fl.name] <= fl.max_value for fl in isa.SPECS[op]) else (int(op) << isa.OPCODE_LO)
            for f, _ in rows]
        fa = {name: np.array([f[name] for f, _ in rows], dtype=np.int64) for name in rows[0][0]}
        ra = {r: np.array([g[r] for _, g in rows], dtype=np.int64) for r in Reg}
        wa = np.array(words, dtype=np.uint64)
        got = sem.faults(op, wa, fa, ra, cfg, NP)
        cyc = sem.controller_cycles(op, fa, ra, cfg, NP)
        for i, ((f, g), w) in enumerate(zip(rows, words)):
            want = sem.faults(op, w, f, g, cfg)
            assert [bool(x.cond) for x in want] == [bool(np.broadcast_to(x.cond, (len(rows),))[i]) for x in got]
            assert sem.controller_cycles(op, f, g, cfg) == np.broadcast_to(cyc, (len(rows),))[i]
            if op in sem.DMA_OPS:
                assert sem.dma_busy_cycles(f, cfg) == sem.dma_busy_cycles(fa, cfg, NP)[i]


def test_footprint_is_what_the_range_check_and_the_hazard_check_read():
    cfg = preset_config("small")
    regs = {r: 0 for r in Reg} | {Reg.K: 200, Reg.ROUTER: 10, Reg.SIN: 30}
    so = dict(mode=0, o=5, s=2, meta=1, ntok=3, ntiles=4)
    (o, o_plane, s_out, meta) = sem.footprint(Op.SCALEOUT, so, regs, cfg)
    # token mode: each tile's rows are R lines apart, ntok of them used; the plane-mode access is guarded off
    assert (o.buffer, o.base, o.stride, o.width, o.count, o.end) == ("O", 5, cfg.rows, 3, 4, 5 + 3 * cfg.rows + 3)
    assert o.when is True and o_plane.when is False
    plane = sem.footprint(Op.SCALEOUT, dict(so, mode=1, ntok=1), regs, cfg)
    assert [(a.when, a.end) for a in plane[:2]] == [(False, 5 + 3 * cfg.rows + 1), (True, 5 + 4)]
    mm = sem.footprint(Op.MATMUL, dict(mode=0, q=0, w=0, o=7, ntiles=3), regs, cfg)
    assert [(a.buffer, a.when, a.end) for a in mm[2:]] == [("O", True, 7 + 3 * cfg.rows), ("O", False, 7 + 3)]
    assert (s_out.buffer, s_out.end) == ("S", 6) and (meta.buffer, meta.end) == ("META", 4)
    q = sem.footprint(Op.QUANT, dict(mode=1, x=0, q=0, meta=0, ntok=1), regs, cfg)
    assert [a.what for a in q] == ["QBUF lines", "XBUF lines", "META records", "SBUF router lines",
                                   "SBUF s_in lines"]
    assert q[0].end == sem.nchunks(cfg, 200) * cfg.planes_per_row and q[3].base == 10
    # a buffer fault holds exactly when an access ends past its buffer's depth
    big = dict(so, o=cfg.depth("O") - 3 * cfg.rows - 3)
    assert not any(f.cond for f in sem.faults(Op.SCALEOUT, isa.encode(isa.Instruction.make(Op.SCALEOUT, **big)),
                                              big, regs, cfg))
    big["o"] += 1
    flt = sem.first_fault(isa.Instruction.make(Op.SCALEOUT, **big), 0, regs, cfg)
    assert flt.cause == isa.CAUSE_BUFFER_RANGE and flt.access.buffer == "O"


def test_timeline_moves():
    t = sem.Timeline()
    assert t.transfer(10) == 0 and t.now == 1 and t.dma_free == 11
    assert t.compute(4) == 1 and t.now == 5
    assert t.sync() == 11 and t.stall_cycles == 6 and t.now == 12


def test_timeline_queue():
    # latency 6, transfers of 4 beats (busy 10): each issues when the transfer `queue` places back is done; its
    # beats start 6 after its issue cycle or when the previous transfer's end
    t = sem.Timeline(queue=2, latency=6)
    assert [t.transfer(10) for _ in range(3)] == [0, 1, 11]      # done 11, 15 (queued behind), 22 (latency)
    assert t.done == [15, 22] and t.dma_ready == 15 and t.dma_free == 22 and t.stall_cycles == 9
    assert t.sync(keep=1) == 15 and t.now == 16
    assert t.sync() == 22 and t.now == 23
    one = sem.Timeline(queue=1, latency=6)
    assert [one.transfer(10) for _ in range(3)] == [0, 11, 22] and one.dma_free == 33
    with pytest.raises(ValueError, match="at least one transfer"):
        sem.Timeline(queue=0)
