"""Hand-assembled programs for the RTL benches: one full layer (token and plane mode) and faults."""

from __future__ import annotations

import random

from bitmos import isa
from bitmos.config import AcceleratorConfig
from bitmos.isa import Instruction, Op, setr

I = Instruction.make


def layer_program(cfg: AcceleratorConfig, seed: int = 1) -> list[tuple[str, list[int], bytes]]:
    """A layer with K not a multiple of L: loads, quant/matmul/scaleout in both modes, stores."""
    rng = random.Random(seed)
    R, C, L = cfg.rows, cfg.cols, cfg.lanes
    K = 2 * L + 3
    nch, XL, nt = cfg.nchunks(K), cfg.xlines(K), 2
    xb, sb, wb, ob = (cfg.line_bits(b) // 8 for b in "XSWO")
    xoff = 0
    soff = xoff + R * XL * xb
    woff = soff + (2 * XL + nt) * sb
    out1 = woff + nt * nch * wb
    out2 = out1 + nt * R * ob
    size = out2 + nt * ob + 64
    mem = bytearray(size)
    for i in range(0, soff, 2):  # x: int16, moderate with a few extremes
        v = rng.choice([rng.randint(-2000, 2000), rng.randint(-32768, 32767)])
        mem[i:i + 2] = (v & 0xFFFF).to_bytes(2, "little")
    for i in range(soff, woff, 2):
        mem[i:i + 2] = (rng.randint(-32768, 32767) & 0xFFFF).to_bytes(2, "little")
    mem[woff:out1] = bytes(rng.getrandbits(8) for _ in range(out1 - woff))
    qoff = nch * cfg.act_bits
    prog = [
        I(Op.LOAD, buf="X", line=0, nlines=R * XL, ext=xoff),
        I(Op.LOAD, buf="S", line=0, nlines=2 * XL + nt, ext=soff),
        setr("K", K), setr("RSHIFT", 14), setr("OSHIFT", 30), setr("ROUTER", 0), setr("SIN", XL),
        setr("SMUL", -1234),
        I(Op.WAIT),
        I(Op.LOAD, buf="W", line=0, nlines=nt * nch, ext=woff),   # overlaps the quant
        I(Op.QUANT, mode="token", x=0, q=0, meta=0, ntok=R),
        I(Op.WAIT),
        I(Op.MATMUL, mode="token", q=0, w=0, o=0, ntiles=nt),
        I(Op.SCALEOUT, mode="token", o=0, s=2 * XL, meta=0, ntok=R, ntiles=nt),
        I(Op.STORE, buf="O", line=0, nlines=nt * R, ext=out1),
        I(Op.QUANT, mode="plane", x=XL, q=qoff, meta=R, ntok=1),
        I(Op.MATMUL, mode="plane", q=qoff, w=0, o=nt * R, ntiles=nt),
        I(Op.SCALEOUT, mode="plane", o=nt * R, s=2 * XL, meta=R, ntok=1, ntiles=nt),
        I(Op.WAIT),
        I(Op.STORE, buf="O", line=nt * R, nlines=nt, ext=out2),
        I(Op.NOP),
        I(Op.HALT),
    ]
    return [(f"layer K={K}", [isa.encode(i) for i in prog], bytes(mem))]


def error_programs(cfg: AcceleratorConfig) -> list[tuple[str, list[int], bytes]]:
    """Programs that fault with each cause, some while a DMA transfer is in flight."""
    enc = isa.encode
    load = enc(I(Op.LOAD, buf="W", line=0, nlines=4, ext=0))
    k = enc(setr("K", cfg.lanes))
    cases = {
        "illegal opcode": [k, 0x3F << 58],
        "reserved bit": [load, enc(I(Op.NOP)) | 1],
        "setr K 0": [(int(Op.SETR) << 58)],
        "setr reg 7": [(int(Op.SETR) << 58) | (7 << 52)],
        "setr SMUL 40000": [(int(Op.SETR) << 58) | (5 << 52) | 40000],
        "setr K 70000": [(int(Op.SETR) << 58) | 70000],
        # the next program must see K = 0 (reset), not the faulted SETR's value left in the queue
        "quant after a faulted setr": [enc(I(Op.QUANT, ntok=1)), enc(I(Op.HALT))],
        "nlines 0": [(int(Op.LOAD) << 58)],
        "plane ntok 2": [k, enc(I(Op.QUANT, mode="plane", ntok=1)) + (1 << 8)],
        "token ntok > R": [k, enc(I(Op.SCALEOUT, mode="token", ntok=1, ntiles=1)) + (cfg.rows << 8)],
        "load out of range": [load, enc(I(Op.LOAD, buf="X", line=cfg.depth("X") - 1, nlines=2, ext=0))],
        "matmul W out of range": [k, enc(I(Op.MATMUL, w=cfg.depth("W") - 1, ntiles=2))],
        "quant META out of range": [k, enc(I(Op.QUANT, meta=cfg.meta_tokens - 1, ntok=min(2, cfg.rows)))
                                    if cfg.rows >= 2 else enc(I(Op.QUANT, meta=cfg.meta_tokens, ntok=1))],
        "ext out of range": [load, enc(setr("EBASE", cfg.ext_mem_bytes // 64 - 1)),
                             enc(I(Op.STORE, buf="O", line=0, nlines=2, ext=0x100))],
        "pc runs off": [k, load],
    }
    # LOAD has no reserved bits below the opcode except none: use WAIT with a reserved bit instead
    cases["reserved bit of wait while DMA busy"] = [load, enc(I(Op.WAIT)) | (1 << 5)]
    return [(name, words, b"") for name, words in cases.items()]


def queue_programs(cfg: AcceleratorConfig, seed: int = 1) -> list[tuple[str, list[int], bytes]]:
    """Transfers queued behind each other that touch the same bytes (``dma_queue`` >= 2): the contract
    runs them in issue order, so each must see what the one before it did. The first case's load starts
    on the bytes of the store ahead of it, its first beat in the store's last beat's cycle (the memory
    must order them); the others reuse a buffer line a queued transfer reads or writes."""
    rng = random.Random(seed)
    xb, wb, ob = (cfg.line_bits(b) // 8 for b in "XWO")
    nb = cfg.ext_bw_bits // 8
    src, dst = 0, 1 << 13
    mem = bytes(rng.getrandbits(8) for _ in range(1 << 14))
    load, store = (lambda buf, line, n, ext: I(Op.LOAD, buf=buf, line=line, nlines=n, ext=ext),
                   lambda buf, line, n, ext: I(Op.STORE, buf=buf, line=line, nlines=n, ext=ext))
    cases = {
        "store, then load its last beat's bytes": [
            load("X", 0, 2, src), I(Op.WAIT),
            store("X", 0, 1, dst), load("X", 2, 1, dst + xb - nb), load("X", 3, 1, dst + 1),
            store("X", 1, 1, dst + xb - 2 * nb), load("X", 4, 2, dst),
            I(Op.WAIT), store("X", 2, 3, dst + 4 * xb), I(Op.HALT)],
        "load, then store the same line": [
            load("W", 5, 1, src), store("W", 5, 1, dst), load("O", 1, 2, src + 3 * nb), store("O", 1, 2, dst + ob),
            load("W", 6, 1, dst), I(Op.WAIT), store("W", 6, 1, dst + 4 * wb), I(Op.HALT)],
        "store, then load the same line": [
            load("X", 0, 1, src), I(Op.WAIT), store("X", 0, 1, dst), load("X", 0, 1, src + xb),
            store("X", 0, 1, dst + xb), I(Op.WAIT, keep=1), load("X", 0, 1, dst), I(Op.WAIT),
            store("X", 0, 1, dst + 2 * xb), I(Op.HALT)],
    }
    return [(name, [isa.encode(i) for i in prog], mem) for name, prog in cases.items()]
