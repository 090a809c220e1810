"""Programs for attention on the vector unit (docs/isa.md: ``kvpack``, ``attn``) with the KV cache in external memory.

:func:`compile_attention` builds, for one layer's attention over a block of new tokens (their rotated queries and
keys and their values, int32 as the linears and ``rope`` leave them), one program per block of up to R tokens (one
token in plane mode, when R tokens' operands do not fit OBUF): load the operands into OBUF; then for each kv head
pack the block's keys and values into its cache (``kvpack``: block floating point, ``formats.kv_offsets``), attend
with its group of query heads (``attn``: the int16 input of o_proj, XFRAC fraction bits, into XBUF) and store the
rows it added back to the cache; finally store the output.

The cache: one region per kv head of ``kv_max`` positions (``formats.kv_offsets``: a key half, then a value half,
each pages of a WBUF line's bytes in positions, head_dim + 1 lines a page), the layer's regions one after another
from ``kv_base``; it persists in external memory between programs, the caller keeps it (and places each layer's).

Two ways to attend, chosen per block by what WBUF holds:

* whole (``attn`` part 0): both halves of the pages the block's positions need are staged in WBUF (the whole pages
  of a half in one transfer, of a page they fill in part only its lines), packed, attended, and the changed lines
  stored (page by page: the rows' lines, the exponents' line). Where two such regions fit, the next kv head's
  pages come in while the current one attends.
* tiled (parts 1 and 2), for a cache longer than that: only the pages holding the block's own positions are
  staged for ``kvpack``; the positions before them are read tile by tile, every key tile (one transfer) scored into
  the rows' scratch in OBUF, then every value tile (one transfer) weighted into the rows' 64-bit accumulators, the
  block's own pages as the last tile of each pass, the next tile loading while one is used where two tiles fit.
  Every byte of the cache is read once per pass of a query-head group, and the output is the whole attention's
  bit for bit. Where OBUF cannot keep the scratch of every query head of a group, the group is attended in
  passes of fewer heads, each reading the tiles again (counted in ``kv_bytes``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from bitmos import formats as F
from bitmos.compiler.vector import token_or_plane
from bitmos.config import AcceleratorConfig
from bitmos.container import Program
from bitmos.errors import UnsupportedError
from bitmos.isa import REG_RANGE, Instruction, Op, Reg, encode, setr
from bitmos.semantics import kv_half_lines, kv_page, olines, rope_unaligned, score_lines

ALIGN = 64


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def kv_positions(cfg: AcceleratorConfig, positions: int) -> int:
    """``positions`` rounded up to a whole number of pages (``semantics.kv_page``): a region that holds them."""
    g = kv_page(cfg)
    return -(-positions // g) * g


def kv_half_bytes(cfg: AcceleratorConfig, kv_max: int, head_dim: int) -> int:
    """External bytes of one half (keys or values) of a kv head's region of kv_max positions."""
    return kv_max // kv_page(cfg) * F.kv_page_bytes(kv_page(cfg), head_dim)


def kv_region_bytes(cfg: AcceleratorConfig, kv_max: int, head_dim: int) -> int:
    """External bytes of one kv head's region (its two halves), 64-byte aligned."""
    return _align(2 * kv_half_bytes(cfg, kv_max, head_dim))


@dataclass(frozen=True)
class BlockPlan:
    """How one block's programs attend: ``tiled`` (else whole), ``double`` (two regions or two tiles in WBUF),
    ``tile_pages`` (tiled: pages of a tile), ``group_pass`` (tiled: query heads a pass, dividing HGRP),
    ``staged`` (every head's q, k and v loaded into OBUF at the start, three transfers; else kv head by kv head
    into two alternating slots, three transfers a head, where the whole block's do not fit)."""
    tiled: bool
    double: bool
    tile_pages: int = 0
    group_pass: int = 0
    staged: bool = False


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
    regions: dict[str, int]          # "q", "k", "v" (operands), "result" -> byte address
    programs: list[Program] = field(default_factory=list)
    plans: list[BlockPlan] = field(default_factory=list)     # one a program
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

    def half_address(self, h: int, kind: int) -> int:
        """Byte address of kv head ``h``'s key half (kind 0) or value half (1)."""
        return self.head_region(h) + kind * kv_half_bytes(self.config, self.kv_max, self.head_dim)


def _slot_lines(cfg: AcceleratorConfig, head_dim: int, group: int, stride: int) -> int:
    """OBUF lines of one kv head's operands: its group's queries, its keys and its values, each HDIM / C lines a
    token at ``stride``."""
    return (group + 2) * (head_dim // cfg.cols) * stride


#: Tiles a pass over the old positions aims at: a tile loads while the one before it is used, so the pass costs
#: about its transfers plus one tile's compute; more tiles shorten that tail, each costing a transfer's latency.
TILES_PER_PASS = 8


def _plan(cfg: AcceleratorConfig, old: int, ntok: int, head_dim: int, group: int,
          operand_lines: int) -> BlockPlan | tuple[str, str]:
    """The plan of a block of ``ntok`` tokens after ``old`` cached positions, or (what does not fit, its field):
    whole where two regions of its pages fit WBUF (one head's load overlaps the other's attention) or its
    positions are all in its own pages; else tiled (the loads of small tiles overlap the passes), and where even
    that does not fit, whole in one region."""
    page = kv_page(cfg)
    hp = kv_half_lines(cfg, page, head_dim)            # WBUF lines of one page of a half
    n = old + ntok
    whole = 2 * -(-n // page) * hp
    depth_w, depth_o = cfg.depth("W"), cfg.depth("O")
    sl, hl = score_lines(cfg, n), head_dim // cfg.cols
    scratch = ntok * group * sl                           # every query row's scores, then weights
    whole_plan: BlockPlan | tuple[str, str] = (
        (f"OBUF ({operand_lines + scratch} lines needed, {depth_o} deep)", "obuf_kib")
        if operand_lines + scratch > depth_o else BlockPlan(False, 2 * whole <= depth_w))
    if whole <= depth_w and (2 * whole <= depth_w or old < page):
        return whole_plan
    own = 2 * (-(-n // page) - old // page) * hp          # both halves of the pages the block's positions are in
    free = depth_w - own
    gp = next((g for g in range(group, 0, -1)
               if group % g == 0 and operand_lines + ntok * g * (sl + 2 * hl) <= depth_o), 0)
    if free >= hp and gp:
        double = free >= 2 * hp
        pages = min(free // (2 * hp) if double else free // hp, -(-(old // page) // TILES_PER_PASS))
        return BlockPlan(True, double, max(1, pages), gp)
    if whole <= depth_w:
        return whole_plan
    if free < hp:
        return (f"WBUF ({own + hp} lines needed for the block's own pages and one tile, {depth_w} deep)",
                "wbuf_kib")
    need = operand_lines + ntok * (sl + 2 * hl)
    return f"OBUF ({need} lines needed for one query head's scores and accumulators, {depth_o} deep)", "obuf_kib"


def compile_attention(cfg: AcceleratorConfig, tokens: int, pos0: int, *, n_heads: int, n_kv_heads: int,
                      head_dim: int, kv_max: int, xfrac: int, kv_base: int = 0,
                      base: int | None = None) -> CompiledAttention:
    """Programs for ``tokens`` new tokens at positions ``pos0``.. of one layer (queries of ``n_heads`` heads, keys
    and values of ``n_kv_heads``, ``head_dim`` each) against its cache of ``kv_max`` positions a kv head at
    ``kv_base``; ``xfrac``: fraction bits of the int16 output (o_proj's x_frac). Operand and result regions start
    at ``base`` (default: after the layer's cache). The programs never depend on data: the same serve the
    simulator's timing-only mode.

    Raises UnsupportedError (no vector unit, a shape the unit cannot take, or buffers too small)."""
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
    G = n_heads // n_kv_heads

    def block_plan(old: int, ntok: int, stride: int) -> BlockPlan | tuple[str, str]:
        """The operands staged whole where that fits as well as (no more passes than) a slot a head."""
        by_head = _plan(cfg, old, ntok, head_dim, G, 2 * _slot_lines(cfg, head_dim, G, stride))
        staged = _plan(cfg, old, ntok, head_dim, G, (olines(cfg, K_q) + 2 * olines(cfg, K_kv)) * stride)
        if not isinstance(staged, tuple) and (isinstance(by_head, tuple) or staged.group_pass == by_head.group_pass):
            return dataclasses.replace(staged, staged=True)
        return by_head

    def fits(block: int, stride: int) -> tuple[str, str] | None:
        if block * cfg.xlines(K_q) > cfg.depth("X"):
            return f"XBUF ({block * cfg.xlines(K_q)} lines needed, {cfg.depth('X')} deep)", "xbuf_kib"
        plan = block_plan(pos0 + tokens - block, block, stride)   # the last block's
        return plan if isinstance(plan, tuple) else None

    mode, block = token_or_plane(cfg, tokens, fits, "attention of one token")
    params = {"K": K_q, "HDIM": head_dim, "XFRAC": xfrac}
    ca = CompiledAttention(cfg, tokens, pos0, n_heads, n_kv_heads, head_dim, kv_max, kv_base, mode, block, {},
                           params=params)
    at = _align(kv_base + n_kv_heads * ca.region_bytes if base is None else base)
    for name in ("q", "k", "v"):
        ca.regions[name] = at
        at = _align(at + len(ca.blocks()) * ca.block_bytes(name))
    ca.regions["result"] = at
    for i, blk in enumerate(ca.blocks()):
        plan = block_plan(pos0 + blk.start, len(blk), ca.stride)
        if isinstance(plan, tuple):     # an earlier block never needs more than the last, which fitted
            raise UnsupportedError(f"attention: {plan[0]}", field=plan[1])
        ca.plans.append(plan)
        ca.programs.append(_BlockProgram(ca, i, blk, plan).build())
    return ca


class _BlockProgram:
    """The program of one block (see the module docstring): its words, the cache bytes it moves."""

    def __init__(self, ca: CompiledAttention, i: int, blk: range, plan: BlockPlan):
        self.ca, self.i, self.blk, self.plan = ca, i, blk, plan
        cfg = ca.config
        self.wb, self.page = cfg.wbuf_line_bits // 8, kv_page(cfg)
        self.hp = kv_half_lines(cfg, self.page, ca.head_dim)   # WBUF lines of one page of a half
        self.words: list[int] = []
        self.transfers = 0      # loads and stores emitted so far (a wait keep counts the newest of them)

    def emit(self, ins: Instruction) -> None:
        self.words.append(encode(ins))

    def dma(self, kind: Op, buf: str, line: int, nlines: int, addr: int) -> None:
        self.emit(setr(Reg.EBASE, addr // ALIGN))
        self.emit(Instruction.make(kind, buf=buf, line=line, nlines=nlines, ext=addr % ALIGN))
        self.transfers += 1
        if buf == "W":
            self.ca.kv_bytes["read" if kind is Op.LOAD else "written"] += nlines * self.wb

    def load_half(self, h: int, kind: int, w0: int, lo: int, hi: int, what: str = "both") -> None:
        """Positions lo..hi-1 of kv head h's half ``kind`` (lo on a page) into WBUF from line w0: the whole pages
        and the rows of a page they fill in part in one transfer (``what`` "rows" or "both"), that page's exponent
        line in another ("exps" or "both")."""
        if hi <= lo:
            return
        hd = self.ca.head_dim
        full, part = divmod(hi - lo, self.page)
        at = self.ca.half_address(h, kind) + lo // self.page * self.hp * self.wb
        if what != "exps":
            self.dma(Op.LOAD, "W", w0, full * self.hp + -(-part * hd // self.wb), at)
        if part and what != "rows":
            self.dma(Op.LOAD, "W", w0 + full * self.hp + hd, 1, at + (full * self.hp + hd) * self.wb)

    def store_rows(self, h: int, kind: int, w0: int, first: int, lo: int, hi: int) -> None:
        """The lines of positions lo..hi-1 of half ``kind`` held at WBUF w0 from position ``first`` (a page) back
        to kv head h's half: page by page, its rows' lines and its exponent line."""
        hd = self.ca.head_dim
        for p0 in range(lo - lo % self.page, hi, self.page):
            a, b = max(lo, p0) - p0, min(hi, p0 + self.page) - p0
            pl = (p0 - first) // self.page * self.hp            # the page's first line in WBUF
            at = self.ca.half_address(h, kind) + p0 // self.page * self.hp * self.wb
            r0, r1 = a * hd // self.wb, -(-b * hd // self.wb)
            self.dma(Op.STORE, "W", w0 + pl + r0, r1 - r0, at + r0 * self.wb)
            self.dma(Op.STORE, "W", w0 + pl + hd, 1, at + hd * self.wb)

    def build(self) -> Program:
        ca, cfg, plan = self.ca, self.ca.config, self.plan
        stride, hd, C = ca.stride, ca.head_dim, cfg.cols
        ntok, old = len(self.blk), ca.pos0 + self.blk.start      # positions the cache holds before this block
        n = old + ntok
        hl, G = hd // C, ca.n_heads // ca.n_kv_heads
        # staged: q, k, v of every head one after another; else two OBUF slots of one kv head's operands (its
        # group's queries, its keys, its values), alternating by head so that the next head's come in while this
        # one attends; the score scratch (and accumulators) after them
        self.slot_lines = _slot_lines(cfg, hd, G, stride)
        self.scr = ((olines(cfg, ca.features("q")) + 2 * olines(cfg, ca.features("k"))) * stride if plan.staged
                    else 2 * self.slot_lines)
        for reg, value in ca.params.items():
            self.emit(setr(Reg[reg], value))
        self.emit(setr(Reg.SCR, self.scr))
        self.emit(setr(Reg.QPOS, old))
        if plan.staged:
            for name in ("q", "k", "v"):
                self.dma(Op.LOAD, "O", self.operand(0, name),
                         (olines(cfg, ca.features(name)) - 1) * stride + ntok,
                         ca.regions[name] + self.i * ca.block_bytes(name))
        if plan.tiled:
            self.tiled(old, n, G)
        else:
            self.whole(old, n, G)
        xl, xb = cfg.xlines(ca.features("q")), cfg.line_bits("X") // 8
        self.dma(Op.STORE, "X", 0, ntok * xl, ca.regions["result"] + self.blk.start * xl * xb)
        self.emit(Instruction.make(Op.HALT))
        if len(self.words) > cfg.imem_words:
            raise UnsupportedError(f"attention: a program of {len(self.words)} words does not fit IMEM "
                                   f"({cfg.imem_words})", field="imem_words")
        return Program(self.words, cfg, {"attention": self.i, "pos0": old})

    def operand(self, h: int, name: str) -> int:
        """OBUF line of kv head h's operand ``name`` (q: its group's queries; k; v): in the staged operands, or in
        its slot."""
        ca = self.ca
        hl, G, stride = ca.head_dim // ca.config.cols, ca.n_heads // ca.n_kv_heads, ca.stride
        if self.plan.staged:
            nq, nk = olines(ca.config, ca.features("q")), olines(ca.config, ca.features("k"))
            return {"q": h * G * hl, "k": nq + h * hl, "v": nq + nk + h * hl}[name] * stride
        return (h % 2) * self.slot_lines + {"q": 0, "k": G * hl, "v": (G + 1) * hl}[name] * stride

    def load_operands(self, h: int, ntok: int) -> None:
        """Kv head h's lines of the block's q, k and v (a linear's output layout, so a head's lines are one run of
        its operand's) into its slot: three transfers (none where the operands are staged)."""
        ca, cfg = self.ca, self.ca.config
        if self.plan.staged:
            return
        hl, G, stride = ca.head_dim // cfg.cols, ca.n_heads // ca.n_kv_heads, ca.stride
        line_bytes = cfg.line_bits("O") // 8
        for name, heads in (("q", G), ("k", 1), ("v", 1)):
            first = h * heads * hl * stride                  # the head's first line in the block's operand
            self.dma(Op.LOAD, "O", self.operand(h, name), (heads * hl - 1) * stride + ntok,
                     ca.regions[name] + self.i * ca.block_bytes(name) + first * line_bytes)

    def pack(self, h: int, ntok: int) -> None:
        """kvpack of kv head h's keys and values (from its slot) into the region at KVW."""
        for kind in ("k", "v"):
            self.emit(Instruction.make(Op.KVPACK, mode=self.ca.mode, o=self.operand(h, kind), kind=kind, ntok=ntok))

    def whole(self, old: int, n: int, G: int) -> None:
        """Each kv head's pages (both halves) staged, packed, attended (part 0) and its new lines stored. With two
        regions the next head's pages load while this head attends: a load waits for the DMA engine to be idle,
        so one transfer goes out before the attention and, where the block has two tokens or more, the attention
        is split between its tokens (the causal mask is each token's own) so that the value half goes out between
        the halves; else it goes right after."""
        ca, hl, ntok = self.ca, self.ca.head_dim // self.ca.config.cols, n - old
        pages = -(-n // self.page)
        half = pages * self.hp
        self.emit(setr(Reg.HGRP, G))
        self.emit(setr(Reg.TPOS, 0))
        self.emit(setr(Reg.KVMAX, pages * self.page))
        region = [0, 2 * half] if self.plan.double else [0, 0]

        def load(h: int, key_rows: bool, rest: bool) -> None:
            w0 = region[h % 2]
            if key_rows:
                self.load_half(h, 0, w0, 0, old, "rows")
            if rest:     # the short transfers first: a load issues once the one before it is done, so the
                # long transfer last lets the attention that follows run beside it
                self.load_operands(h, ntok)
                self.load_half(h, 0, w0, 0, old, "exps")
                self.load_half(h, 1, w0 + half, 0, old, "exps")
                self.load_half(h, 1, w0 + half, 0, old, "rows")

        load(0, True, True)
        self.emit(Instruction.make(Op.WAIT))
        xl = ca.config.xlines(ca.features("q"))
        slots = ca.config.dma_slots                         # a queue (> 1) takes every transfer without waiting
        for h in range(ca.n_kv_heads):
            w0 = region[h % 2]
            self.emit(setr(Reg.KVW, w0))
            self.emit(setr(Reg.QPOS, old))
            self.pack(h, ntok)
            ahead = h + 1 < ca.n_kv_heads and self.plan.double
            if ahead and slots > 1:
                # the next head's transfers all go out now, behind this head's; its own stores follow the
                # attention, and the head's end waits for the loads only (wait keep: the stores stay queued)
                load(h + 1, True, True)
                self.emit(Instruction.make(Op.ATTN, mode=ca.mode, q=self.operand(h, "q"), x=h * G * hl,
                                           ntok=ntok, part="whole"))
                before = self.transfers
                for kind in (0, 1):
                    self.store_rows(h, kind, w0 + kind * half, 0, old, n)
                self.emit(Instruction.make(Op.WAIT, keep=min(self.transfers - before, slots - 1)))
                continue
            if ahead:
                load(h + 1, True, False)
            split = ntok // 2 if ahead else 0               # tokens 0 .. split - 1, then the rest
            q, x = self.operand(h, "q"), h * G * hl
            for t0, t1 in ((0, split), (split, ntok)):
                if t1 == t0:
                    continue
                if t0:                                      # the second half: the value half loads meanwhile
                    load(h + 1, False, True)
                    self.emit(setr(Reg.QPOS, old + t0))
                self.emit(Instruction.make(Op.ATTN, mode=ca.mode, q=q + t0, x=x + t0 * xl, ntok=t1 - t0,
                                           part="whole"))
            # the rows this block added, after the attention (a transfer may not touch lines a compute uses)
            for kind in (0, 1):
                self.store_rows(h, kind, w0 + kind * half, 0, old, n)
            if ahead and not split:
                load(h + 1, False, True)
            elif h + 1 < ca.n_kv_heads:
                self.emit(Instruction.make(Op.WAIT))
                load(h + 1, True, True)
            self.emit(Instruction.make(Op.WAIT))

    def tiled(self, old: int, n: int, G: int) -> None:
        """Each kv head: its block's own pages staged and packed (the region at WBUF 0), then per pass of
        ``group_pass`` query heads the scores of every key tile and the weighted values of every value tile. One
        step's tile loads while an earlier step computes, wherever its buffer is not in use until then."""
        ca, plan, hl, ntok = self.ca, self.plan, self.ca.head_dim // self.ca.config.cols, n - old
        first = old // self.page * self.page                 # the region's first position (a page)
        own = -(-n // self.page) - first // self.page        # its pages
        half = own * self.hp
        tile_lines = plan.tile_pages * self.hp
        bufs = [2 * half, 2 * half + tile_lines] if plan.double else [2 * half, 2 * half]
        gp = plan.group_pass
        self.emit(setr(Reg.HGRP, gp))
        self.emit(setr(Reg.ACC, self.scr + ntok * gp * score_lines(ca.config, n)))
        step = plan.tile_pages * self.page
        old_tiles = [(t0, min(t0 + step, first)) for t0 in range(0, first, step)]
        # the program's steps: a head's start (None), then its attn steps (part, head, first query head, tile's
        # first position, its end, its WBUF line, the half it loads or None for the staged region)
        steps: list[tuple | None] = []
        for h in range(ca.n_kv_heads):
            steps.append(None)
            for s in range(0, G, gp):
                for kind, part in ((0, "scores"), (1, "values")):
                    steps += [(part, h, s, t0, t1, bufs[j % 2], kind) for j, (t0, t1) in enumerate(old_tiles)]
                    steps.append((part, h, s, first, first + own * self.page, kind * half, None))
        issued: set[int] = set()
        slots = ca.config.dma_slots

        def load(i: int) -> None:
            _, h, _, t0, t1, w0, kind = steps[i]
            self.load_half(h, kind, w0, t0, t1)
            issued.add(i)

        def prefetch(j: int) -> None:
            """The first tile after step j not yet loaded, if no step from j until it uses its buffer."""
            busy: set[int] = set()
            for i in range(j, len(steps)):
                st = steps[i]
                if st is None:                                # a head start rewrites the region
                    busy.update((0, half))
                    continue
                if i > j and st[6] is not None and i not in issued:
                    if st[5] not in busy:
                        load(i)
                    return
                busy.add(st[5])

        for j, st in enumerate(steps):
            if st is None:                                    # a head's start: its own pages, packed, stored
                h = steps[j + 1][1]
                self.emit(setr(Reg.KVW, 0))
                self.emit(setr(Reg.TPOS, first))
                self.emit(setr(Reg.KVMAX, own * self.page))
                self.load_operands(h, ntok)
                for kind in (0, 1):
                    self.load_half(h, kind, kind * half, first, old)
                self.emit(Instruction.make(Op.WAIT))
                self.pack(h, ntok)
                for kind in (0, 1):
                    self.store_rows(h, kind, kind * half, first, old, n)
                continue
            part, h, s, t0, t1, w0, kind = st
            if kind is not None and j not in issued:
                load(j)
                self.emit(Instruction.make(Op.WAIT))
            prefetch(j)
            self.emit(setr(Reg.KVW, w0))
            self.emit(setr(Reg.TPOS, t0))
            self.emit(setr(Reg.KVMAX, -(-(t1 - t0) // self.page) * self.page))
            self.emit(Instruction.make(Op.ATTN, mode=ca.mode, q=self.operand(h, "q") + s * hl * ca.stride,
                                       x=(h * G + s) * hl, ntok=ntok, part=part))
            if slots > 1 and j + 1 < len(steps):
                # the tile after next goes out into the buffer this step read before the wait, which then
                # leaves it in flight (wait keep): the port streams one tile behind the other
                before = self.transfers
                prefetch(j + 1)
                self.emit(Instruction.make(Op.WAIT, keep=min(self.transfers - before, slots - 1)))
            else:
                self.emit(Instruction.make(Op.WAIT))


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
    hd, size = ca.head_dim, kv_half_bytes(ca.config, ca.kv_max, ca.head_dim)
    row, exp = F.kv_offsets(np.arange(positions), hd, kv_page(ca.config))
    km, ek, vm, ev = [], [], [], []
    for h in range(ca.n_kv_heads):
        for kind, (m, e) in enumerate(((km, ek), (vm, ev))):
            at = ca.half_address(h, kind)
            blob = np.frombuffer(bytes(memory[at:at + size]).ljust(size, b"\0"), dtype=np.uint8)
            m.append(blob[row[:, None] + np.arange(hd)].view(np.int8))
            e.append(blob[exp])
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


__all__ = ["BlockPlan", "CompiledAttention", "compile_attention", "kv_half_bytes", "write_attention_operands", "read_attention_result",
           "read_kv_cache", "reference_attention", "kv_positions", "kv_region_bytes"]
