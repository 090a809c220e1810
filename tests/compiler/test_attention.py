"""bitmos.compiler.attention: kvpack and attn programs against bitmos.formats (reference_attention), the naive
reference machine and the timing-only simulator, over a growing KV cache; and their refusals."""

import dataclasses

import numpy as np
import pytest

from bitmos import formats as F
from bitmos.compiler.attention import (compile_attention, kv_positions, read_attention_result,
                                       read_kv_cache, reference_attention, write_attention_operands)
from bitmos.config import preset_config
from bitmos.errors import UnsupportedError
from bitmos.semantics import kv_page
from bitmos.sim import Simulator

from tests.reference_machine import ReferenceMachine


def vec(name: str, **over):
    return dataclasses.replace(preset_config(name), vector_unit=1, **over)


def generate(cfg, blocks, *, H, Hkv, hd, kv_max, xfrac=9, scale=(20, 20, 22), naive=False, seed=0, special=None):
    """Attention over consecutive token blocks (sizes ``blocks``) growing one cache; every block checked against
    reference_attention (output and cache), the timing-only simulator (cycles, counts) and, with ``naive``, the
    reference machine (memory bit for bit). Returns the compiled blocks and their cycles."""
    rng = np.random.default_rng(seed)
    sim = Simulator(cfg)
    mem, cache, pos, out = bytearray(), None, 0, []
    for T in blocks:
        q, k, v = (rng.integers(-(1 << s), 1 << s, (T, n * hd)) for s, n in zip(scale, (H, Hkv, Hkv)))
        if special is not None:
            special(pos, q, k, v)
        ca = compile_attention(cfg, T, pos, n_heads=H, n_kv_heads=Hkv, head_dim=hd, kv_max=kv_max, xfrac=xfrac)
        write_attention_operands(mem, ca, q, k, v)
        ref_mem, cycles = bytearray(mem), 0
        for p in ca.programs:
            r = sim.run(p, mem)
            assert r.done and not r.error, r.error_message
            t = sim.run(p, None, functional=False)
            assert (t.cycles, t.counts) == (r.cycles, r.counts)
            mem, cycles = r.memory, cycles + r.cycles
            if naive:
                nr = ReferenceMachine(cfg, ref_mem, grow_memory=True).run(list(p.words))
                assert nr.cycles == r.cycles
                ref_mem = nr.memory
        if naive:
            assert bytes(mem) == bytes(ref_mem[:len(mem)]) and not any(ref_mem[len(mem):])
        want, cache = reference_attention(q, k, v, cache, pos, n_heads=H, n_kv_heads=Hkv, head_dim=hd,
                                          frac=cfg.out_frac_bits, xfrac=xfrac)
        np.testing.assert_array_equal(read_attention_result(mem, ca), want)
        for got, w in zip(read_kv_cache(mem, ca, pos + T), cache):
            np.testing.assert_array_equal(got, w)
        out.append((ca, cycles))
        pos += T
    return out


@pytest.mark.parametrize("preset,H,Hkv,hd,queue", [("small", 4, 4, 32, 0), ("small", 4, 2, 8, 0), ("tiny", 2, 1, 4, 0),
                                                   ("small", 4, 4, 32, 4), ("tiny", 2, 1, 4, 8)])
def test_prefill_then_decode_matches_formats_and_the_naive_machine(preset, H, Hkv, hd, queue):
    # queue: dma_queue, the next kv head's transfers all queued while this one attends (wait keep: its stores not)
    cfg = vec(preset, dma_queue=queue)
    blocks = [cfg.rows + 1, 1, 1, 2]            # a prefill of two programs (masked positions), then decode
    kv_max = kv_positions(cfg, sum(blocks))
    runs = generate(cfg, blocks, H=H, Hkv=Hkv, hd=hd, kv_max=kv_max, naive=True, seed=hd)
    assert runs[0][0].mode == "token" and len(runs[0][0].programs) == 2
    assert all(not p.tiled and p.double for ca, _ in runs for p in ca.plans)


def test_saturating_and_zero_values_and_the_longest_context():
    cfg = vec("small")
    H, Hkv, hd = 2, 1, 8
    kv_max = kv_page(cfg)                       # 16 positions: the last block ends at the region's end

    def special(pos, q, k, v):
        q[0, :hd] = (1 << 31) - 1                # the largest query: exponent 24, scores saturate
        k[0] = -(1 << 31)
        v[0] = 0                                 # a zero value row: exponent 0
        if pos == 0:
            q[1] = 0                             # a zero query: every score 0, uniform weights

    runs = generate(cfg, [4, 4, 4, 3, 1], H=H, Hkv=Hkv, hd=hd, kv_max=kv_max, scale=(31, 31, 31), special=special,
                    naive=True)
    assert runs[-1][0].pos0 + 1 == kv_max


def test_plane_mode():
    # XBUF of 1 KiB (128 lines of 4 int16): 4 tokens of K = 160 need 160 lines, so one token a program
    cfg = vec("small", xbuf_kib=1, wbuf_kib=4)
    H, Hkv, hd = 10, 2, 16
    runs = generate(cfg, [4, 1], H=H, Hkv=Hkv, hd=hd, kv_max=64, naive=True)
    ca = runs[0][0]
    assert ca.mode == "plane" and len(ca.programs) == 4


def test_a_cache_longer_than_wbuf_is_read_tile_by_tile():
    # WBUF of 1 KiB: 64 lines of 16 bytes, a page 16 positions of 9 lines a half (head_dim 8): two whole regions
    # fit up to 16 positions; past that the block's own page is staged and the older pages read in tiles of one
    # page, double-buffered. OBUF of 3 KiB (192 lines) keeps two query heads' scratch and accumulators for 4 tokens
    # up to 48 positions; the prefill block at 48..51 attends each kv head's group of 2 in two passes.
    cfg = vec("small", wbuf_kib=1, obuf_kib=3)
    runs = generate(cfg, [16, 16, 16, 4, 1, 1], H=4, Hkv=2, hd=8, kv_max=64, naive=True, seed=3)
    plans = [(ca.pos0 + blk.stop, p) for ca, _ in runs for blk, p in zip(ca.blocks(), ca.plans)]
    assert all(p.tiled == (n > 16) for n, p in plans)
    assert all(p.double and p.tile_pages == 1 for n, p in plans if p.tiled)
    assert [(n, p.group_pass) for n, p in plans if p.tiled and p.group_pass == 1] == [(52, 1)]
    # the last decode token (position 53): per kv head and half, the 3 old pages (9 lines each) once and of its own
    # page the 5 rows before it (40 bytes: 3 lines) and the exponents' line
    ca = runs[-1][0]
    assert ca.pos0 == 53 and ca.kv_bytes["read"] == 2 * 2 * (3 * 9 + 3 + 1) * 16


def test_operands_kv_head_by_kv_head_where_the_block_s_do_not_fit_obuf():
    # OBUF of 3 KiB (192 lines): 4 tokens' q, k and v of 8 heads of 8 (3 x 16 lines x 4 apart) fill it, so each
    # kv head's lines come in turn into two alternating slots (token mode kept: 4 tokens a program)
    cfg = vec("small", obuf_kib=3)
    runs = generate(cfg, [5, 1], H=8, Hkv=8, hd=8, kv_max=16, naive=True, seed=6)
    assert runs[0][0].mode == "token" and not runs[0][0].plans[0].staged
    assert runs[-1][0].plans[0].staged             # one decode token's operands (plane mode) fit whole
    # the same with a WBUF of 1 KiB: the prefill blocks past 16 positions tiled, their operands in slots
    cfg = vec("small", obuf_kib=3, wbuf_kib=1)
    runs = generate(cfg, [16, 16, 4, 1], H=8, Hkv=8, hd=8, kv_max=48, naive=True, seed=7)
    plans = [p for ca, _ in runs for p in ca.plans]
    assert any(p.tiled and not p.staged for p in plans) and any(not p.tiled and not p.staged for p in plans)


def test_a_dma_queue_overlaps_the_transfers_and_changes_only_cycles():
    # dma_queue = 4 (four transfers in flight): the tiled cache of the test above, every block against formats and
    # the naive machine under the queue's hazard rule; a decode step's small transfers (a new position's rows and
    # exponent lines, per kv head) overlap their latencies
    blocks = [16, 16, 16, 4, 1, 1]
    one = generate(vec("small", wbuf_kib=1, obuf_kib=3), blocks, H=4, Hkv=2, hd=8, kv_max=64, naive=True, seed=3)
    four = generate(vec("small", wbuf_kib=1, obuf_kib=3, dma_queue=4), blocks, H=4, Hkv=2, hd=8, kv_max=64,
                    naive=True, seed=3)
    assert all(c4 <= c1 for (_, c1), (_, c4) in zip(one, four))
    assert four[-1][1] < one[-1][1]


def test_row_groups_share_the_cache_lines_and_change_only_cycles():
    # attn_rows = 4: a block's 4 query heads of one kv head take each key and value line together
    one, four = vec("small"), vec("small", attn_rows=4)
    blocks = [5, 1]
    by_rows = [generate(cfg, blocks, H=4, Hkv=1, hd=8, kv_max=16, naive=True, seed=8) for cfg in (one, four)]
    for (ca1, c1), (ca4, c4) in zip(*by_rows):
        assert c4 < c1
    # the decode step (1 token, 4 rows): the whole attention's per-group terms once instead of four times
    from bitmos.semantics import ATT_ROW_FIXED
    kv = 2 * (-(-6 * 8 // 16) + 1)               # key and value pass over 6 positions of 8 bytes
    assert by_rows[0][1][1] - by_rows[1][1][1] == 3 * (kv + ATT_ROW_FIXED)


def test_single_buffering_whole_and_tiled():
    # WBUF of 1 KiB, head_dim 16 (17 lines a page of a half): one whole region of a page (34 lines) fits but not
    # two; past 16 positions the block's own page leaves room for one tile of one page
    cfg = vec("small", wbuf_kib=1)
    runs = generate(cfg, [4, 4, 4, 4, 4, 1, 1], H=2, Hkv=1, hd=16, kv_max=32, naive=True, seed=4)
    plans = [p for ca, _ in runs for p in ca.plans]
    assert not plans[0].tiled and not plans[0].double
    assert plans[-1].tiled and not plans[-1].double and plans[-1].tile_pages == 1


def test_cycles_are_the_contract_formula():
    from bitmos.semantics import ATT_ROW_FIXED, ATTN_PIPELINE, KVPACK_FIXED, KVPACK_PIPELINE, compute_cycles
    from bitmos.isa import Instruction, Reg
    cfg = vec("small")                           # C = 4, WBUF lines of 16 bytes
    regs = {Reg.HDIM: 32, Reg.HGRP: 2, Reg.QPOS: 37, Reg.TPOS: 0, Reg.KVMAX: 48}
    attn = Instruction.make("attn", mode="token", q=0, x=0, ntok=3)
    N, HL = 40, 8                                # QPOS + ntok, HDIM / C
    row = 3 * HL + 2 * (N * 32 // 16 + -(-N // 16)) + N // 4 + ATT_ROW_FIXED
    assert compute_cycles(attn, cfg, 64, regs=regs) == 1 + 3 * 2 * row + ATTN_PIPELINE
    assert ATT_ROW_FIXED == 55
    from bitmos.semantics import ATT_SOFTMAX_FIXED
    assert ATT_SOFTMAX_FIXED == 45
    regs.update({Reg.TPOS: 16, Reg.KVMAX: 32})   # a tile of positions 16..39 (m = 24 of its 32)
    m, SL = 24, 10
    scores = Instruction.make("attn", mode="token", q=0, x=0, ntok=3, part="scores")
    assert compute_cycles(scores, cfg, 64, regs=regs) == 1 + 6 * (2 * HL + m * 32 // 16 + 2 + 10) + 4
    values = Instruction.make("attn", mode="token", q=0, x=0, ntok=3, part="values")
    assert compute_cycles(values, cfg, 64, regs=regs) == 1 + 6 * (m * 32 // 16 + 2 + 4 * HL + 8) + 4
    regs.update({Reg.TPOS: 0})                   # the first tile (m = 32) runs the softmax first
    assert compute_cycles(values, cfg, 64, regs=regs) == 1 + 6 * (3 * SL + 45 + 64 + 2 + 4 * HL + 8) + 4
    # attn_rows = 4: the 6 rows in two groups, each WBUF pass and fixed drain once a group
    cfg4 = vec("small", attn_rows=4)
    assert compute_cycles(values, cfg4, 64, regs=regs) == 1 + 6 * (3 * SL + 4 * HL) + 2 * (45 + 64 + 2 + 8) + 4
    regs.update({Reg.TPOS: 0, Reg.KVMAX: 48})
    assert compute_cycles(attn, cfg4, 64, regs=regs) == (
        1 + 6 * (3 * HL + N // 4) + 2 * (2 * (N * 32 // 16 + -(-N // 16)) + ATT_ROW_FIXED) + ATTN_PIPELINE)
    pack = Instruction.make("kvpack", mode="token", o=0, kind="v", ntok=3)
    assert compute_cycles(pack, cfg, 64, regs=regs) == 1 + 3 * (2 * HL + KVPACK_FIXED) + KVPACK_PIPELINE


def test_grouped_query_heads_share_their_kv_head():
    cfg = vec("small")
    H, Hkv, hd = 4, 1, 8
    rng = np.random.default_rng(5)
    q = rng.integers(-(1 << 20), 1 << 20, (1, H * hd))
    q[0, hd:2 * hd] = q[0, :hd]                  # query heads 0 and 1 equal: so must their outputs be
    k, v = rng.integers(-(1 << 20), 1 << 20, (2, 1, hd))
    ca = compile_attention(cfg, 1, 0, n_heads=H, n_kv_heads=Hkv, head_dim=hd, kv_max=16, xfrac=9)
    mem = bytearray()
    write_attention_operands(mem, ca, q, k, v)
    mem = Simulator(cfg).run(ca.programs[0], mem).memory
    x = read_attention_result(mem, ca)
    np.testing.assert_array_equal(x[0, :hd], x[0, hd:2 * hd])
    # one position: its weight is exactly 1, so the output is the value row requantized
    vm, ev = F.block_quantize(list(map(int, v[0])))
    np.testing.assert_array_equal(x[0, :hd], [F.requantize(m << ev, cfg.out_frac_bits, 9, 16) for m in vm])


@pytest.mark.parametrize("kwargs,match,field", [
    (dict(cfg=preset_config("small")), "no vector unit", "vector_unit"),
    (dict(head_dim=6), "head_dim 6", None),
    (dict(n_kv_heads=3), "3 kv heads", None),
    (dict(kv_max=24), "multiple of 16", None),
    (dict(kv_max=16, tokens=1, pos0=16), "hold positions up to 17", None),
    (dict(cfg=vec("small", wbuf_kib=1)), "WBUF", "wbuf_kib"),
    (dict(cfg=vec("small", obuf_kib=1)), "OBUF", "obuf_kib"),
])
def test_refusals_name_what_to_change(kwargs, match, field):
    args = dict(cfg=vec("small"), tokens=2, pos0=0, n_heads=4, n_kv_heads=2, head_dim=32, kv_max=32, xfrac=9)
    args.update(kwargs)
    cfg = args.pop("cfg")
    with pytest.raises(UnsupportedError, match=match) as e:
        compile_attention(cfg, args.pop("tokens"), args.pop("pos0"), **args)
    assert e.value.field == field


def test_a_mutated_cache_byte_changes_the_output():
    """The simulator reads the cache from external memory: a flipped exponent byte of position 0 changes what the
    decode step attends to (the check the tests above make can fail)."""
    cfg = vec("small")
    H, Hkv, hd = 2, 1, 8
    rng = np.random.default_rng(9)
    mem = bytearray()
    ca0 = compile_attention(cfg, 2, 0, n_heads=H, n_kv_heads=Hkv, head_dim=hd, kv_max=16, xfrac=9)
    q, k, v = (rng.integers(-(1 << 20), 1 << 20, (2, n * hd)) for n in (H, Hkv, Hkv))
    write_attention_operands(mem, ca0, q, k, v)
    sim = Simulator(cfg)
    for p in ca0.programs:
        mem = sim.run(p, mem).memory
    ca1 = compile_attention(cfg, 1, 2, n_heads=H, n_kv_heads=Hkv, head_dim=hd, kv_max=16, xfrac=9)
    write_attention_operands(mem, ca1, q[:1], k[:1], v[:1])
    good = read_attention_result(sim.run(ca1.programs[0], bytearray(mem)).memory, ca1)
    bad_mem = bytearray(mem)
    bad_mem[ca1.half_address(0, 1) + F.kv_offsets(0, hd, 16)[1]] ^= 0x04
    bad = read_attention_result(sim.run(ca1.programs[0], bad_mem).memory, ca1)
    assert (good != bad).any()
