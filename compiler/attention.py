"""Programs for attention on the vector unit (docs/isa.md: ``kvpack``, ``attn``) with the KV cache in external memory.

:func:`compile_attention` builds, for one layer's attention over a block of new tokens (their rotated queries and
keys and their values, int32 as the linears and ``rope`` leave them), one program per block of up to R tokens (one
token in plane mode, when R tokens' operands do not fit OBUF): load the operands into OBUF; then for each kv head
load the positions its cache already holds into WBUF, pack the block's keys and values into it (``kvpack``: block
floating point, ``formats.kv_offsets``), attend with its group of query heads (``attn``: the int16 input of
o_proj, XFRAC fraction bits, into XBUF) and store the rows it added back to the cache; finally store the output.

The cache: one region per kv head of ``kv_max`` positions (``formats.kv_offsets``: pages of a WBUF line's bytes in
positions, 2 (head_dim + 1) lines a page), the layer's regions one after another from ``kv_base``; it persists in
external memory between programs, the caller keeps it (and places each layer's). A block loads the pages holding
the positions before it (the whole pages in one transfer, of a page they fill in part only their lines), packs its
rows in, attends, and stores the lines it changed (page
by page: the rows' lines and the exponents' line of each area). Double buffering: where two regions fit WBUF, the
next kv head's pages come in while the current one attends.

A kv head's whole cache is staged in WBUF (``attn`` reads every position from there), so the longest context is
what one region of WBUF holds; a longer one is refused naming ``wbuf_kib``. Tiling the positions (every tile's scores
kept in OBUF's scratch, then the values tile by tile, so the definition stays exact) is the step after this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bitmos import formats as F
from bitmos.compiler.vector import token_or_plane
from bitmos.config import AcceleratorConfig
from bitmos.container import Program
from bitmos.errors import UnsupportedError
from bitmos.isa import REG_RANGE, Instruction, Op, Reg, encode, setr
from bitmos.semantics import kv_page, kv_region_lines, olines, rope_unaligned, score_lines

ALIGN = 64


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def kv_positions(cfg: AcceleratorConfig, positions: int) -> int:
    """``positions`` rounded up to a whole number of pages (``semantics.kv_page``): a region that holds them."""
    g = kv_page(cfg)
    return -(-positions // g) * g


def kv_region_bytes(cfg: AcceleratorConfig, kv_max: int, head_dim: int) -> int:
    """External bytes of one kv head's region (kv_max / page pages), 64-byte aligned."""
    return _align(kv_max // kv_page(cfg) * F.kv_page_bytes(kv_page(cfg), head_dim))


@dataclass
class CompiledAttention:
    """One layer's attention over ``tokens`` new tokens at positions ``pos0``.. : programs and layout."""
    config: AcceleratorConfig
    tokens: int
    pos0: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    kv_max: int
    kv_base: int                     # byte address of the layer's first kv head region
    mode: str                        # "token" (up to R tokens a program) or "plane" (one)
    block: int
    double_buffered: bool
    regions: dict[str, int]          # "q", "k", "v" (operands), "result" -> byte address
    programs: list[Program] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)   # the registers every program sets first
    kv_bytes: dict[str, int] = field(default_factory=lambda: {"read": 0, "written": 0})   # the cache's, all programs

    @property
    def stride(self) -> int:
        return self.config.rows if self.mode == "token" else 1

    @property
    def region_bytes(self) -> int:
        return kv_region_bytes(self.config, self.kv_max, self.head_dim)

    def features(self, name: str) -> int:
        return (self.n_heads if name == "q" else self.n_kv_heads) * self.head_dim

    def block_bytes(self, name: str) -> int:
        return _align(olines(self.config, self.features(name)) * self.stride * self.config.line_bits("O") // 8)

    def blocks(self) -> list[range]:
        return [range(s, min(s + self.block, self.tokens)) for s in range(0, self.tokens, self.block)]

    def head_region(self, h: int) -> int:
        """Byte address of kv head ``h``'s cache region."""
        return self.kv_base + h * self.region_bytes


def _fits(cfg: AcceleratorConfig, K_q: int, K_kv: int, block: int, stride: int, kv_max: int) -> tuple[str, str] | None:
    """None if a block fits the buffers, else (what is too small, its config field)."""
    need_o = olines(cfg, K_q) * stride + 2 * olines(cfg, K_kv) * stride + score_lines(cfg, kv_max)
    if need_o > cfg.depth("O"):
        return f"OBUF ({need_o} lines needed, {cfg.depth('O')} deep)", "obuf_kib"
    if block * cfg.xlines(K_q) > cfg.depth("X"):
        return f"XBUF ({block * cfg.xlines(K_q)} lines needed, {cfg.depth('X')} deep)", "xbuf_kib"
    return None


def compile_attention(cfg: AcceleratorConfig, tokens: int, pos0: int, *, n_heads: int, n_kv_heads: int,
                      head_dim: int, kv_max: int, xfrac: int, kv_base: int = 0,
                      base: int | None = None) -> CompiledAttention:
    """Programs for ``tokens`` new tokens at positions ``pos0``.. of one layer (queries of ``n_heads`` heads, keys
    and values of ``n_kv_heads``, ``head_dim`` each) against its cache of ``kv_max`` positions a kv head at
    ``kv_base``; ``xfrac``: fraction bits of the int16 output (o_proj's x_frac). Operand and result regions start
    at ``base`` (default: after the layer's cache). The programs never depend on data: the same serve the
    simulator's timing-only mode.

    Raises UnsupportedError (no vector unit, a shape the unit cannot take, or a cache that does not fit)."""
    if not cfg.vector_unit:
        raise UnsupportedError(f"config {cfg.name!r} has no vector unit (vector_unit = 0), so attention runs on the "
                               "host", field="vector_unit")
    if tokens < 1 or pos0 < 0:
        raise UnsupportedError(f"attention: {tokens} tokens at position {pos0} (need tokens >= 1, position >= 0)")
    if head_dim < 2 or rope_unaligned(cfg, head_dim) or head_dim > REG_RANGE[Reg.HDIM][1]:
        raise UnsupportedError(f"attention: head_dim {head_dim} must be even, half of it a multiple of cols = "
                               f"{cfg.cols}, at most {REG_RANGE[Reg.HDIM][1]}")
    if n_kv_heads < 1 or n_heads % n_kv_heads or n_heads // n_kv_heads > REG_RANGE[Reg.HGRP][1]:
        raise UnsupportedError(f"attention: {n_heads} query heads over {n_kv_heads} kv heads (need a whole group of "
                               f"at most {REG_RANGE[Reg.HGRP][1]} query heads a kv head)")
    g = kv_page(cfg)
    if kv_max % g or kv_max < pos0 + tokens or kv_max > REG_RANGE[Reg.KVMAX][1]:
        raise UnsupportedError(f"attention: a cache of kv_max = {kv_max} positions must hold positions up to "
                               f"{pos0 + tokens}, be a multiple of {g} (a WBUF line's bytes) and at most "
                               f"{REG_RANGE[Reg.KVMAX][1]}")
    K_q, K_kv = n_heads * head_dim, n_kv_heads * head_dim
    if K_q > 65535:
        raise UnsupportedError(f"attention: {n_heads} heads of {head_dim} = {K_q} features > 65535")
    rl = kv_region_lines(cfg, kv_max, head_dim)
    if rl > cfg.depth("W"):
        raise UnsupportedError(f"attention: one kv head's cache of {kv_max} positions ({rl} lines) does not fit "
                               f"config {cfg.name!r}'s WBUF ({cfg.depth('W')} lines)", field="wbuf_kib")
    mode, block = token_or_plane(cfg, tokens, lambda b, stride: _fits(cfg, K_q, K_kv, b, stride, kv_max),
                                 "attention of one token")
    params = {"K": K_q, "HDIM": head_dim, "HGRP": n_heads // n_kv_heads, "KVMAX": kv_max, "XFRAC": xfrac}
    ca = CompiledAttention(cfg, tokens, pos0, n_heads, n_kv_heads, head_dim, kv_max, kv_base, mode, block,
                           2 * rl <= cfg.depth("W"), {}, params=params)
    at = _align(kv_base + n_kv_heads * ca.region_bytes if base is None else base)
    for name in ("q", "k", "v"):
        ca.regions[name] = at
        at = _align(at + len(ca.blocks()) * ca.block_bytes(name))
    ca.regions["result"] = at
    for i, blk in enumerate(ca.blocks()):
        ca.programs.append(_block_program(ca, i, blk))
    return ca


def _block_program(ca: CompiledAttention, i: int, blk: range) -> Program:
    cfg, stride, hd, C = ca.config, ca.stride, ca.head_dim, ca.config.cols
    wb, page = cfg.wbuf_line_bits // 8, kv_page(cfg)
    page_lines = F.kv_page_bytes(page, hd) // wb
    rl = kv_region_lines(cfg, ca.kv_max, hd)
    ntok, old = len(blk), ca.pos0 + blk.start          # positions the cache holds before this block
    G, hl = ca.n_heads // ca.n_kv_heads, hd // C
    words: list[int] = []

    def emit(ins: Instruction) -> None:
        words.append(encode(ins))

    def dma(kind: Op, buf: str, line: int, nlines: int, addr: int) -> None:
        emit(setr(Reg.EBASE, addr // ALIGN))
        emit(Instruction.make(kind, buf=buf, line=line, nlines=nlines, ext=addr % ALIGN))

    def load_pages(h: int, w0: int, positions: int) -> None:
        """Kv head h's first ``positions`` positions into its region at WBUF w0: of a page they fill in part, the
        lines of their rows and exponents (a transfer each part); then the whole pages, one transfer, last, so that
        the attention that follows overlaps it."""
        full, part = divmod(positions, page)
        if part:
            lines(Op.LOAD, h, w0, full * page, positions)
        if full:
            dma(Op.LOAD, "W", w0, full * page_lines, ca.head_region(h))
            ca.kv_bytes["read"] += full * page_lines * wb

    def lines(kind: Op, h: int, w0: int, lo: int, hi: int) -> None:
        """The lines of positions [lo, hi)'s rows and exponents, page by page, between kv head h's region in
        external memory and at WBUF w0: three transfers a page, its key rows, its value rows, and its two exponent
        lines (adjacent: the key exponents' line, then the values')."""
        for first in range(lo - lo % page, hi, page):
            a, b = max(lo, first) - first, min(hi, first + page) - first    # positions a..b-1 of the page
            for start, end in ((a * hd, b * hd), ((page + a) * hd, (page + b) * hd),
                               (2 * page * hd + a, 2 * page * hd + page + b)):
                off = first // page * page_lines + start // wb
                n = first // page * page_lines + -(-end // wb) - off
                dma(kind, "W", w0 + off, n, ca.head_region(h) + off * wb)
                ca.kv_bytes["read" if kind is Op.LOAD else "written"] += n * wb

    o_q = 0
    o_k = olines(cfg, ca.features("q")) * stride
    o_v = o_k + olines(cfg, ca.features("k")) * stride
    scr = o_v + olines(cfg, ca.features("v")) * stride
    for reg, value in ca.params.items():
        emit(setr(Reg[reg], value))
    emit(setr(Reg.SCR, scr))
    emit(setr(Reg.QPOS, old))
    for name, o in (("q", o_q), ("k", o_k), ("v", o_v)):
        dma(Op.LOAD, "O", o, (olines(cfg, ca.features(name)) - 1) * stride + ntok,
            ca.regions[name] + i * ca.block_bytes(name))
    region = [0, rl] if ca.double_buffered else [0, 0]
    if old:
        load_pages(0, region[0], old)
    emit(Instruction.make(Op.WAIT))
    for h in range(ca.n_kv_heads):
        w0 = region[h % 2]
        emit(setr(Reg.KVW, w0))
        for kind, o in (("k", o_k), ("v", o_v)):
            emit(Instruction.make(Op.KVPACK, mode=ca.mode, o=o + h * hl * stride, kind=kind, ntok=ntok))
        nxt = h + 1 < ca.n_kv_heads and old > 0
        if nxt and ca.double_buffered:       # the next head's cache comes in while this one attends
            load_pages(h + 1, region[(h + 1) % 2], old)
        emit(Instruction.make(Op.ATTN, mode=ca.mode, q=o_q + h * G * hl * stride, x=h * G * hl, ntok=ntok))
        # the rows this block added, after the attention (a transfer may not touch lines a compute uses)
        lines(Op.STORE, h, w0, old, old + ntok)
        emit(Instruction.make(Op.WAIT))
        if nxt and not ca.double_buffered:
            load_pages(h + 1, region[0], old)
            emit(Instruction.make(Op.WAIT))
    xl, xb = cfg.xlines(ca.features("q")), cfg.line_bits("X") // 8
    dma(Op.STORE, "X", 0, ntok * xl, ca.regions["result"] + blk.start * xl * xb)
    emit(Instruction.make(Op.HALT))
    if len(words) > cfg.imem_words:
        raise UnsupportedError(f"attention: a program of {len(words)} words does not fit IMEM ({cfg.imem_words})",
                               field="imem_words")
    return Program(words, cfg, {"attention": i, "pos0": ca.pos0 + blk.start})


def write_attention_operands(memory: bytearray, ca: CompiledAttention, q, k, v) -> None:
    """The block's rotated queries q [tokens, n_heads * head_dim], rotated keys and values [tokens, n_kv_heads *
    head_dim] (int32 values) into their regions of ``memory`` (an image whose byte 0 is address 0)."""
    cfg, C, st = ca.config, ca.config.cols, ca.stride
    for name, val in (("q", q), ("k", k), ("v", v)):
        val = np.asarray(val, dtype=np.int64)
        K = ca.features(name)
        if val.shape != (ca.tokens, K):
            raise ValueError(f"attention operand {name}: shape {val.shape}, expected ({ca.tokens}, {K})")
        if val.min(initial=0) < -(1 << 31) or val.max(initial=0) >= 1 << 31:
            raise ValueError(f"attention operand {name}: values outside int32")
        nl = olines(cfg, K)
        padded = np.zeros((ca.tokens, nl * C), dtype=np.int64)
        padded[:, :K] = val
        for i, blk in enumerate(ca.blocks()):
            lines = np.zeros((nl, st, C), dtype="<i4")
            for t, tok in enumerate(blk):
                lines[:, t, :] = padded[tok].reshape(nl, C)
            at = ca.regions[name] + i * ca.block_bytes(name)
            _put(memory, at, lines.tobytes())


def _put(memory: bytearray, at: int, blob: bytes) -> None:
    if len(memory) < at + len(blob):
        memory.extend(bytes(at + len(blob) - len(memory)))
    memory[at:at + len(blob)] = blob


def read_attention_result(memory: bytes | bytearray, ca: CompiledAttention) -> np.ndarray:
    """The int16 input of o_proj [tokens, n_heads * head_dim] the programs stored."""
    K = ca.features("q")
    xl, C = ca.config.xlines(K), ca.config.cols
    at, n = ca.regions["result"], ca.tokens * xl * C
    x = np.frombuffer(bytes(memory[at:at + 2 * n]), dtype="<i2").reshape(ca.tokens, xl * C)
    return x[:, :K].astype(np.int64)


def read_kv_cache(memory: bytes | bytearray, ca: CompiledAttention, positions: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The layer's cache of its first ``positions`` positions from external memory: key mantissas [positions,
    n_kv_heads, head_dim], key exponents [positions, n_kv_heads], value mantissas, value exponents (int64)."""
    hd, size = ca.head_dim, ca.region_bytes
    k_row, v_row, k_exp, v_exp = F.kv_offsets(np.arange(positions), hd, kv_page(ca.config))
    km, ek, vm, ev = [], [], [], []
    for h in range(ca.n_kv_heads):
        at = ca.head_region(h)
        blob = np.frombuffer(bytes(memory[at:at + size]).ljust(size, b"\0"), dtype=np.uint8)
        km.append(blob[k_row[:, None] + np.arange(hd)].view(np.int8))
        vm.append(blob[v_row[:, None] + np.arange(hd)].view(np.int8))
        ek.append(blob[k_exp])
        ev.append(blob[v_exp])
    st = lambda a: np.stack(a, axis=1).astype(np.int64)   # noqa: E731
    return st(km), st(ek), st(vm), st(ev)


def reference_attention(q, k, v, cache: tuple | None, pos0: int, *, n_heads: int, n_kv_heads: int, head_dim: int,
                        frac: int, xfrac: int) -> tuple[np.ndarray, tuple]:
    """What the programs compute, from :mod:`bitmos.formats` token by token: (o_proj's int16 input [tokens,
    n_heads * head_dim], the cache (km, ek, vm, ev) of positions 0 .. pos0 + tokens - 1). ``cache``: the cache of
    positions before ``pos0`` (:func:`read_kv_cache`'s arrays), or None when pos0 = 0. For tests and checks."""
    T, G = len(q), n_heads // n_kv_heads
    rows = {"km": [], "ek": [], "vm": [], "ev": []}
    if cache is not None:
        for name, a in zip(("km", "ek", "vm", "ev"), cache):
            rows[name] = [[(list(map(int, a[p, h])) if a.ndim == 3 else int(a[p, h])) for h in range(n_kv_heads)]
                          for p in range(pos0)]
    out = []
    for t in range(T):
        km_t, ek_t, vm_t, ev_t = [], [], [], []
        for h in range(n_kv_heads):
            kh, e1 = F.block_quantize(list(map(int, k[t][h * head_dim:(h + 1) * head_dim])))
            vh, e2 = F.block_quantize(list(map(int, v[t][h * head_dim:(h + 1) * head_dim])))
            km_t.append(kh), ek_t.append(e1), vm_t.append(vh), ev_t.append(e2)
        rows["km"].append(km_t), rows["ek"].append(ek_t), rows["vm"].append(vm_t), rows["ev"].append(ev_t)
        x = []
        for hq in range(n_heads):
            h = hq // G
            qh = F.block_quantize(list(map(int, q[t][hq * head_dim:(hq + 1) * head_dim])))
            seen = range(pos0 + t + 1)
            keys = [(rows["km"][p][h], rows["ek"][p][h]) for p in seen]
            vals = [(rows["vm"][p][h], rows["ev"][p][h]) for p in seen]
            o = F.attention_head(qh, keys, vals, frac)
            x += [F.requantize(val, frac, xfrac, F.X_BITS) for val in o]
        out.append(x)
    cache_out = tuple(np.array(rows[n], dtype=np.int64) for n in ("km", "ek", "vm", "ev"))
    return np.array(out, dtype=np.int64), cache_out


__all__ = ["CompiledAttention", "compile_attention", "write_attention_operands", "read_attention_result",
           "read_kv_cache", "reference_attention", "kv_positions", "kv_region_bytes"]
