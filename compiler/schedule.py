"""Tiling and scheduling of one binarized linear: compute stream, DMA placement, waits.

The schedule is built in two steps (docs/compiler.md has the picture):

1. A *logical* program: the compute instructions (``quant`` per token group, ``matmul`` + ``scaleout``
   per (weight block, group, tile chunk)) in order, each tagged with the buffer *resources* (slots) it
   touches, and the DMA transfers each placed where a sequential program would put them (a load just
   before its first reader, a store just after its producer).
2. Placement: every transfer gets a window [earliest, deadline) of compute positions -- a load may be
   hoisted up to the last instruction that still uses the slot's old contents, a store may sink down
   to the next instruction that overwrites its lines. Walking the compute stream with the
   :class:`bitmos.semantics.Timeline`, transfers are issued earliest-deadline-first whenever the DMA engine
   is idle (or the stall is shorter than the idle gap the next instruction would leave); a transfer
   whose deadline is reached is issued regardless. A ``wait`` is emitted before any compute
   instruction that touches a slot of a transfer issued since the last ``wait`` (so the program obeys
   the hazard rule under its strictest reading).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import UnsupportedError
from bitmos.isa import Instruction, Op, Reg, setr
from bitmos.semantics import Timeline, compute_cycles, weight_planes

from bitmos.compiler.lower import LayerSpec, ceil_div

MAX_NLINES = (1 << 16) - 1      # the nlines field
EXT_WINDOW = 1 << 24            # the ext field: 16 MiB window above EBASE*64
MAX_MATMUL_TILES = 511          # matmul ntiles field (9 bits)
MAX_SCALEOUT_TILES = 255        # scaleout ntiles field (8 bits)


@dataclass
class Regions:
    """External addresses (bytes) of a layer's regions."""
    weights: int
    sbuf: int
    input: int
    output: int


@dataclass
class Tiling:
    """Every size the schedule uses (all line counts are in the buffer's own lines)."""
    mode: str                 # "token" or "plane"
    K: int
    N: int
    T: int
    nch: int                  # K-chunks of L inputs
    XL: int                   # XBUF lines per token
    NT: int                   # output tiles of C outputs
    g: int                    # tokens per group (plane mode: 1)
    ngroups: int
    x_slot: int               # XBUF lines per x slot (g*XL)
    nxs: int                  # x slots (2 = double-buffered)
    q_slot: int               # QBUF lines per group (nch*k or nch*P)
    groups_per_block: int     # groups whose planes stay in QBUF while all weight blocks pass (token block)
    tpb: int                  # tiles per weight block (one DMA transfer)
    w_slot: int               # WBUF lines per weight slot (tpb*wlines)
    nws: int                  # weight slots (2 = double-buffered)
    w_resident: bool          # every weight block of the program fits at once: loaded once
    mt: int                   # tiles per matmul / scaleout
    rowstride: int            # OBUF lines per tile in a slab (R in token mode, 1 in plane mode)
    slab: int                 # OBUF lines per slab (mt*rowstride)
    nslabs: int
    router_line: int
    sin_line: int
    sout_line: int            # first S_out line (resident) or first S_out slot
    sout_resident: bool
    nss: int                  # S_out slots when streamed (each tpb lines)
    out_resident: bool        # plane mode: all outputs of the program stay in OBUF, one store at the end
    wlines: int               # WBUF lines per output tile: nch * weight planes (1 sign, WBITS integer)
    w_bits: int               # register WBITS of the layer (0 = sign weights)
    taper: bool = False       # the last weight blocks halve down to one tile (a short unhidden last matmul)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _unsupported(name: str, what: str, field: str | None = None) -> None:
    """``field``: the config field that, grown, would make the layer fit."""
    raise UnsupportedError(f"layer {name!r}: {what}", field=field)


def weight_blocks(tiles: range, tpb: int, taper: bool) -> list[range]:
    """The weight blocks (one DMA transfer each) of output tiles ``tiles``: ``tpb`` tiles each, or, with
    ``taper``, the last ``tpb`` tiles split into blocks of tpb/2, tpb/4, ..., 1, 1 tiles.

    Why taper: when the DMA engine is the bottleneck (decode), nothing overlaps the matmul of the last
    block once its transfer is in, so that matmul is the program's unhidden tail; halving the blocks toward
    the end shrinks it to one tile's matmul for log2(tpb) more transfers."""
    n = len(tiles)
    tail: list[int] = []
    if taper:
        r = min(tpb, n)
        while r > 1:
            h = (r + 1) // 2
            tail.append(h)
            r -= h
        tail.append(r)
    rest = n - sum(tail)
    whole, part = [tpb] * (rest // tpb), [rest % tpb] if rest % tpb else []
    # untapered, the short block is last (as ever); tapered, first, so the tail stays one halving run
    sizes = part + whole + tail if taper else whole + part
    out, start = [], tiles.start
    for b in sizes:
        out.append(range(start, start + b))
        start += b
    assert start == tiles.stop, (sizes, n)
    return out


def make_tiling(spec: LayerSpec, cfg: AcceleratorConfig, tokens: int, mode: str, tpb: int | None = None,
                taper: bool = False) -> Tiling:
    """Sizes for ``spec`` at ``tokens`` tokens in ``mode``; raises UnsupportedError if nothing fits."""
    name = spec.name
    R, C, k, E = cfg.rows, cfg.cols, cfg.act_bits, cfg.experts
    K, N, T = spec.d_in, spec.d_out, tokens
    if T < 1:
        raise UnsupportedError(f"layer {name!r}: token count {T} must be >= 1")
    nch, XL, NT = cfg.nchunks(K), cfg.xlines(K), ceil_div(N, C)
    dX, dW, dS, dQ, dO = (cfg.depth(b) for b in "XWSQO")
    if mode == "plane" and T != 1:
        raise UnsupportedError(f"layer {name!r}: plane mode computes one token, got tokens = {T}")
    # -- tokens per group ------------------------------------------------------------------------
    if XL > dX:
        _unsupported(name, f"one token's input needs {XL} XBUF lines (K = {K}), XBUF has {dX}", "xbuf_kib")
    if mode == "token":
        g = min(R, T, dX // XL, cfg.meta_tokens)
        q_slot = nch * k
    else:
        g = 1
        q_slot = nch * cfg.planes_per_row
    if q_slot > dQ:
        _unsupported(name, f"one token's activation planes need {q_slot} QBUF lines (K = {K}, {mode} mode), "
                           f"QBUF has {dQ}", "qbuf_kib")
    ngroups = ceil_div(T, g)
    x_slot = g * XL
    nxs = min(2, dX // x_slot)
    gpb = min(dQ // q_slot, cfg.meta_tokens // g, ngroups)
    # -- SBUF ------------------------------------------------------------------------------------
    router_line = 0
    sin_line = XL if E >= 2 else 0
    fixed = (XL if E >= 2 else 0) + (XL if E >= 1 else 0)
    if E >= 1 and fixed + 1 > dS:
        _unsupported(name, f"router and S_in need {fixed} SBUF lines plus one S_out line (K = {K}), SBUF has {dS}",
                     "sbuf_kib")
    sout_line = fixed
    # -- weights ---------------------------------------------------------------------------------
    wlines = nch * weight_planes(cfg, spec.w_bits)     # one line per chunk and weight plane
    if wlines > dW:
        _unsupported(name, f"one output tile's weights need {wlines} WBUF lines (K = {K}"
                           f"{f', {spec.w_bits} weight planes' if spec.w_bits else ''}), WBUF has {dW}", "wbuf_kib")
    max_tpb = min(NT, max(1, (dW // 2) // wlines), MAX_MATMUL_TILES)
    if E >= 1:
        room = dS - fixed
        sout_resident = NT <= room
        if not sout_resident:
            max_tpb = min(max_tpb, max(1, room // 2))
    else:
        sout_resident = True
    tpb = max_tpb if tpb is None else max(1, min(tpb, max_tpb))
    w_slot = tpb * wlines
    nws = dW // w_slot
    nblocks = len(weight_blocks(range(NT), tpb, taper))
    w_resident = nblocks <= nws
    nss = 0
    if E >= 1 and not sout_resident:
        nss = (dS - fixed) // tpb
    # -- outputs ---------------------------------------------------------------------------------
    rowstride = R if mode == "token" else 1
    if rowstride > dO:
        _unsupported(name, f"one output tile needs {rowstride} OBUF lines in token mode, OBUF has {dO}",
                     "obuf_kib")
    out_resident = mode == "plane" and NT <= dO
    if out_resident:
        mt = min(tpb, MAX_SCALEOUT_TILES)
        nslabs = 1
        slab = NT
    else:
        per = dO // rowstride
        mt = min(tpb, MAX_SCALEOUT_TILES, max(1, per // 2) if per >= 2 else 1)
        slab = mt * rowstride
        nslabs = dO // slab
    return Tiling(mode, K, N, T, nch, XL, NT, g, ngroups, x_slot, nxs, q_slot, gpb, tpb, w_slot, nws,
                  w_resident, mt, rowstride, slab, nslabs, router_line, sin_line, sout_line, sout_resident,
                  nss, out_resident, wlines, spec.w_bits, taper)


# ---- the logical program --------------------------------------------------------------------------

@dataclass
class _Dma:
    store: bool
    buf: str
    line: int
    nlines: int
    addr: int                 # absolute external byte address
    res: tuple                # the resource (slot) it touches
    pos: int                  # logical position (index of the next compute instruction)
    note: str
    earliest: int = 0
    deadline: int = 0
    seq: int = 0


@dataclass
class Schedule:
    """One program's instructions, listing comments and timing."""
    words: list[int]
    comments: dict[int, str]
    cycles: int
    stall_cycles: int
    compute_cycles: int
    dma_busy_cycles: int
    counts: dict[str, int] = field(default_factory=dict)


def _line_bytes(cfg: AcceleratorConfig, buf: str) -> int:
    return cfg.line_bits(buf) // 8


def build_program(spec: LayerSpec, cfg: AcceleratorConfig, til: Tiling, regions: Regions,
                  groups: range, tiles: range, *, label: str = "") -> Schedule:
    """The instructions for groups ``groups`` x output tiles ``tiles`` of one layer (self-contained)."""
    E = cfg.experts
    R = cfg.rows
    name = label or spec.name
    mode = til.mode
    compute: list[tuple[Instruction, tuple, str]] = []
    dmas: list[_Dma] = []
    xb, wb, sb, ob = (_line_bytes(cfg, b) for b in "XWSO")

    def cmp(ins: Instruction, res: tuple, note: str) -> None:
        compute.append((ins, res, note))

    def dma(store: bool, buf: str, line: int, nlines: int, addr: int, res, note: str) -> None:
        dmas.append(_Dma(store, buf, line, nlines, addr, res, len(compute), note))

    # Registers.
    cmp(setr(Reg.K, til.K), (), f"{name}: K = {til.K}")
    if E >= 2:
        cmp(setr(Reg.RSHIFT, spec.rshift), (), "router logit shift")
        cmp(setr(Reg.ROUTER, til.router_line), (), "SBUF line of the router weights")
    if E >= 1:
        cmp(setr(Reg.SIN, til.sin_line), (), "SBUF line of S_in")
    else:
        cmp(setr(Reg.SMUL, spec.smul), (), "per-layer output scale")
    cmp(setr(Reg.OSHIFT, spec.oshift), (), "output shift")
    if til.w_bits:   # back to the reset value (sign weights) at the end, so a layer never inherits it
        cmp(setr(Reg.WBITS, til.w_bits), (), f"{til.w_bits}-bit integer weights (ternary: {til.w_bits} planes)")
    if spec.bias:    # likewise reset at the end
        cmp(setr(Reg.BIAS, 1), (), "router row 0 is beta: each token's beta . x is added to its outputs")
    # SBUF: router + S_in (+ S_out when resident) in one transfer.
    if E >= 1:
        fixed = til.sout_line
        dma(False, "S", 0, fixed, regions.sbuf, ("S", "in"), "router + S_in")
        if til.sout_resident:
            dma(False, "S", fixed, len(tiles), regions.sbuf + (fixed + tiles.start) * sb, ("S", "out"),
                f"S_out tiles {tiles.start}..{tiles.stop - 1}")
    in_res = (("S", "in"),) if E >= 1 else ()
    blocks = weight_blocks(tiles, til.tpb, til.taper)
    gl = list(groups)
    token_blocks = [gl[i:i + til.groups_per_block] for i in range(0, len(gl), til.groups_per_block)]
    xseq = wseq = sseq = slabseq = 0
    first_tb = True
    for tb in token_blocks:
        # -- quantize every group of the token block into its QBUF slot -------------------------------
        for m, j in enumerate(tb):
            t0 = j * til.g
            ntok = min(til.g, til.T - t0)
            xs = xseq % til.nxs
            xseq += 1
            dma(False, "X", xs * til.x_slot, ntok * til.XL, regions.input + t0 * til.XL * xb, ("X", xs),
                f"x tokens {t0}..{t0 + ntok - 1}")
            cmp(Instruction.make(Op.QUANT, mode=mode, x=xs * til.x_slot, q=m * til.q_slot, meta=m * til.g,
                                 ntok=ntok), (("X", xs), ("Q", m)) + in_res,
                f"{name}: quantize tokens {t0}..{t0 + ntok - 1}")
        # -- every weight block against every group ---------------------------------------------------
        for bi, blk in enumerate(blocks):
            if til.w_resident:
                ws = bi
                need_load = first_tb
            else:
                ws = wseq % til.nws
                wseq += 1
                need_load = True
            if need_load:
                dma(False, "W", ws * til.w_slot, len(blk) * til.wlines, regions.weights + blk.start * til.wlines * wb,
                    ("W", ws), f"weights tiles {blk.start}..{blk.stop - 1}")
            if E >= 1 and not til.sout_resident:
                ss = sseq % til.nss
                sseq += 1
                sres = ("S", "out", ss)
                sbase = til.sout_line + ss * til.tpb
                dma(False, "S", sbase, len(blk), regions.sbuf + (til.sout_line + blk.start) * sb, sres,
                    f"S_out tiles {blk.start}..{blk.stop - 1}")
            else:
                sres = ("S", "out")
                sbase = til.sout_line + (blk.start - tiles.start)
            for m, j in enumerate(tb):
                t0 = j * til.g
                ntok = min(til.g, til.T - t0)
                for c0 in range(blk.start, blk.stop, til.mt):
                    nt = min(til.mt, blk.stop - c0)
                    if til.out_resident:
                        obase = c0 - tiles.start
                        ores = ("O", 0)
                    else:
                        sl = slabseq % til.nslabs
                        slabseq += 1
                        obase = sl * til.slab
                        ores = ("O", sl)
                    where = f"tiles {c0}..{c0 + nt - 1} (outputs {c0 * cfg.cols}..{(c0 + nt) * cfg.cols - 1})"
                    cmp(Instruction.make(Op.MATMUL, mode=mode, q=m * til.q_slot,
                                         w=ws * til.w_slot + (c0 - blk.start) * til.wlines, o=obase, ntiles=nt),
                        (("Q", m), ("W", ws), ores), f"{name}: matmul tokens {t0}..{t0 + ntok - 1} x {where}")
                    s_line = sbase + (c0 - blk.start) if E >= 1 else 0
                    cmp(Instruction.make(Op.SCALEOUT, mode=mode, o=obase, s=s_line, meta=m * til.g, ntok=ntok,
                                         ntiles=nt), (ores, sres), f"{name}: scale outputs {where}")
                    if not til.out_resident:
                        if mode == "token":
                            nl = (nt - 1) * R + ntok
                            addr = regions.output + (j * til.NT + c0) * R * ob
                        else:
                            nl = nt
                            addr = regions.output + c0 * ob
                        dma(True, "O", obase, nl, addr, ores, f"store y tokens {t0}..{t0 + ntok - 1} x {where}")
        first_tb = False
    if til.out_resident:
        dma(True, "O", 0, len(tiles), regions.output + tiles.start * ob, ("O", 0),
            f"store y tiles {tiles.start}..{tiles.stop - 1}")
    if til.w_bits:
        cmp(setr(Reg.WBITS, 0), (), "sign weights again (the reset value)")
    if spec.bias:
        cmp(setr(Reg.BIAS, 0), (), "no bias again (the reset value)")
    return _place(compute, dmas, cfg, til.K, til.w_bits,
                  home=min(regions.weights, regions.sbuf, regions.input, regions.output) // 64)


def _place(compute, dmas: list[_Dma], cfg: AcceleratorConfig, K: int, w_bits: int, home: int = 0) -> Schedule:
    """Turn the logical program into instructions: DMA windows, EDF placement, waits, halt. With a DMA queue,
    both placements (:func:`_place_with`: transfers queued, and each transfer after a drain as for one in flight)
    are built and the one of fewer cycles kept, so a queue never makes a program slower than its v2 placement
    would run on the same machine."""
    if cfg.dma_slots == 1:
        return _place_with(compute, dmas, cfg, K, w_bits, home, queued=False)
    return min((_place_with(compute, dmas, cfg, K, w_bits, home, queued=q) for q in (True, False)),
               key=lambda sch: sch.cycles)


def _place_with(compute, dmas: list[_Dma], cfg: AcceleratorConfig, K: int, w_bits: int, home: int,
                queued: bool) -> Schedule:
    """:func:`_place` with transfers queued behind each other (``queued``) or each issued after a drain."""
    n = len(compute)
    touches: dict[tuple, list[int]] = {}
    for i, (_, res, _) in enumerate(compute):
        for r in res:
            touches.setdefault(r, []).append(i)
    for s, d in enumerate(dmas):
        lst = touches.get(d.res, [])
        k = bisect.bisect_left(lst, d.pos)
        d.deadline = lst[k] if k < len(lst) else n
        if d.store:
            d.earliest = d.pos
        else:
            d.earliest = lst[k - 1] + 1 if k > 0 else 0
        d.seq = s
    order = sorted(dmas, key=lambda d: (d.earliest, d.seq))
    # Compute-bound programs never stall the controller for a transfer that could still wait; DMA-bound
    # ones may, when the stall is shorter than the DMA idle time it avoids.
    Q = cfg.dma_slots if queued else 1                  # the transfers the placement keeps in flight
    per_transfer = cfg.ext_latency if Q == 1 else 0     # a queue overlaps the latencies: paid about once
    dma_total = sum(1 + per_transfer + -(-d.nlines * cfg.line_bits(d.buf) // cfg.ext_bw_bits) for d in dmas)
    dma_bound = dma_total > sum(compute_cycles(c[0], cfg, K, w_bits) for c in compute)
    ready: list[tuple[int, int, _Dma]] = []
    nxt = 0
    tl = Timeline.of(cfg)
    words: list[int] = []
    comments: dict[int, str] = {}
    since_wait: list = []       # the resource of each transfer issued since the last wait retired it, in order
    ebase = -1
    counts = {"load": 0, "store": 0, "wait": 0, "setr": 0, "quant": 0, "matmul": 0, "scaleout": 0}
    dma_busy = 0
    compute_total = 0

    def emit(ins: Instruction, note: str | None = None) -> None:
        nonlocal dma_busy, compute_total
        if note:
            comments[len(words)] = note
        words.append(ins.encode())
        _, busy = tl.step(ins, cfg, K, w_bits)
        if ins.op in (Op.LOAD, Op.STORE):
            dma_busy += busy + 1
        elif ins.op not in (Op.WAIT, Op.HALT):
            compute_total += busy + 1
        counts[ins.op.name.lower()] = counts.get(ins.op.name.lower(), 0) + 1

    def retire(res, live: int) -> None:
        """Before an instruction on ``res``: if one of the last ``live`` transfers may touch them, wait for it,
        keeping the transfers issued after it in flight (``wait keep``)."""
        recent = since_wait[max(0, len(since_wait) - live):]
        hits = [i for i, r in enumerate(recent) if r in res]
        if hits:
            keep = len(recent) - 1 - hits[-1]
            emit(Instruction.make(Op.WAIT, keep=keep))
            del since_wait[:len(since_wait) - keep]

    def issue(d: _Dma) -> None:
        nonlocal ebase
        if Q == 1 and since_wait:
            # A DMA instruction waits for the engine anyway; an explicit wait first costs one cycle and
            # retires the outstanding transfer for the hazard rule's strictest reading too. (A queue takes the
            # transfer behind the others: their data moves in issue order.)
            emit(Instruction.make(Op.WAIT))
            since_wait.clear()
        lb = cfg.line_bits(d.buf) // 8
        done = 0
        while done < d.nlines:
            nl = min(MAX_NLINES, d.nlines - done)
            addr = d.addr + done * lb
            off = addr - ebase * 64
            if ebase < 0 or not 0 <= off < EXT_WINDOW:
                ebase = home if 0 <= addr - home * 64 < EXT_WINDOW else addr // 64
                off = addr - ebase * 64
                emit(setr(Reg.EBASE, ebase), f"external window at {ebase * 64:#x}")
            op = Op.STORE if d.store else Op.LOAD
            emit(Instruction.make(op, buf=d.buf, line=d.line + done, nlines=nl, ext=off), d.note)
            since_wait.append(d.res)
            done += nl

    for i in range(n + 1):
        while nxt < len(order) and order[nxt].earliest <= i:
            d = order[nxt]
            heapq.heappush(ready, (d.deadline, d.seq, d))
            nxt += 1
        if i == n:
            while ready:
                issue(heapq.heappop(ready)[2])
            break
        ins, res, note = compute[i]
        c_i = compute_cycles(ins, cfg, K, w_bits)
        # (a) transfers whose deadline is this instruction: issue now, whatever the stall
        while ready and ready[0][0] <= i:
            issue(heapq.heappop(ready)[2])
        # (b) wait for the transfers this instruction depends on (before issuing more, or a wait with one
        #     transfer in flight would also drain those)
        retire(res, Q)
        # (c) prefetch / write back while it pays: the DMA is idle, or the stall is shorter than the idle
        #     gap the DMA engine would otherwise have during this instruction
        #     (queued: while a slot is free; in a compute-bound program only while the port would fall idle
        #     before this instruction ends, so no backlog builds up in front of a store the compute waits for)
        while ready:
            if queued:
                if tl.dma_ready > tl.now or (not dma_bound and tl.dma_free > tl.now + c_i):
                    break
            else:
                stall = tl.dma_free - tl.now
                if stall > 0 and (not dma_bound or stall >= tl.now + c_i - tl.dma_free):
                    break
            issue(heapq.heappop(ready)[2])
        emit(ins, note)
    assert nxt == len(order) and not ready
    emit(Instruction.make(Op.HALT), "end of program")
    return Schedule(words, comments, tl.now, tl.stall_cycles, compute_total, dma_busy, counts)
