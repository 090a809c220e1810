"""The cycle-accurate simulator of docs/isa.md.

``Simulator(cfg).run(words_or_program, memory, functional=True, trace=False) -> RunResult``.

* Both modes first run :func:`bitmos.sim.analysis.analyze`: legality, DMA hazards and timing come
  from the contract's definitions (:mod:`bitmos.semantics`) and never depend on data.
* Functional mode then executes the data effects of every instruction that issued on the machine
  state (buffers as byte arrays, one row per line), bit-exact with :mod:`bitmos.formats`: the array works on bit-packed ``uint64`` words with
  ``np.bitwise_count``; the scale unit runs vectorized over tokens, chunks and columns in int64 (every
  intermediate is bounded below 2^62, see docs/simulator.md) and falls back to exact Python integers
  in the one place (``scaleout`` on DMA-loaded accumulators) where a product can exceed that.
* Timing-only mode (``functional=False``) stops after the analysis and never touches data. Both modes
  give identical cycles, errors, traces and action counts by construction.

Errors a program causes are reported in the result (``error``, ``cause``, ``error_pc``), as the
hardware would; a DMA hazard (a simulator-only check) raises :class:`DMAHazardError`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitmos import formats
from bitmos.config import AcceleratorConfig
from bitmos.container import MemoryImage, Program
from bitmos.errors import ConfigError, FormatError
from bitmos.isa import BUFFERS, CAUSE_NAMES, CAUSE_NONE, CAUSE_PC_RANGE, Instruction, Op, Reg, decode, reg_value
from bitmos.sim.analysis import UNIT_CODES, Analysis, analyze
from bitmos.semantics import kv_half_lines, kv_page, olines, rope_table_lines, score_lines, weight_planes
from bitmos.sim.energy import count_actions

assert sys.byteorder == "little", "the simulator views buffer bytes as little-endian words"


@dataclass
class Trace:
    """Per-instruction timeline of a run (numpy arrays, one entry per issued instruction)."""
    pc: np.ndarray      # int64
    op: np.ndarray      # int64 opcode
    issue: np.ndarray   # int64: cycle the instruction issued (after any DMA wait)
    busy: np.ndarray    # int64: cycles its unit stays busy after the issue cycle
    unit: np.ndarray    # int8: index into UNIT_CODES ("ctrl", "dma", "scale", "array")

    def rows(self) -> list[dict[str, Any]]:
        return [{"pc": int(p), "op": Op(int(o)).name.lower(), "issue": int(i), "busy": int(b),
                 "unit": UNIT_CODES[int(u)]} for p, o, i, b, u in
                zip(self.pc, self.op, self.issue, self.busy, self.unit)]


@dataclass
class MachineState:
    """On-chip state: each buffer is a uint8 array [depth, line_bytes]; META as int64 arrays."""
    cfg: AcceleratorConfig
    buf: dict[str, np.ndarray] = field(default_factory=dict)
    meta_d: np.ndarray | None = None      # int64 [meta_tokens]
    meta_g: np.ndarray | None = None      # int64 [meta_tokens, max(E,1)]
    meta_b: np.ndarray | None = None      # int64 [meta_tokens]: the token's bias (0 unless BIAS was set)
    regs: dict[Reg, int] = field(default_factory=dict)

    @classmethod
    def reset(cls, cfg: AcceleratorConfig) -> "MachineState":
        st = cls(cfg)
        for b in "XWSQO":
            st.buf[b] = np.zeros((cfg.depth(b), cfg.line_bits(b) // 8), dtype=np.uint8)
        st.meta_d = np.zeros(cfg.meta_tokens, dtype=np.int64)
        st.meta_g = np.zeros((cfg.meta_tokens, max(cfg.experts, 1)), dtype=np.int64)
        st.meta_b = np.zeros(cfg.meta_tokens, dtype=np.int64)
        st.regs = {r: 0 for r in Reg}
        return st

    # typed views -----------------------------------------------------------------------------
    def xbuf(self) -> np.ndarray:
        return self.buf["X"].view("<i2")                       # [depth, C]

    def sbuf(self) -> np.ndarray:
        c, e = self.cfg.cols, max(self.cfg.experts, 1)
        return self.buf["S"].view("<i2").reshape(-1, e, c)      # [depth, E, C]

    def obuf(self) -> np.ndarray:
        return self.buf["O"].view("<i4")                       # [depth, C]


@dataclass
class RunResult:
    cycles: int
    done: bool
    error: bool
    cause: int
    error_pc: int | None
    error_message: str
    instructions: int               # instructions that issued (including halt and implicit tail nops)
    stall_cycles: int               # controller cycles spent waiting for the DMA engine
    dma_bytes_read: int             # external bytes read by loads
    dma_bytes_written: int          # external bytes written by stores
    counts: dict[str, int]          # per-action counts (bitmos.sim.energy.COUNT_KEYS)
    config: AcceleratorConfig
    functional: bool
    memory: bytearray | None = None  # final external memory (functional mode)
    state: MachineState | None = None
    trace: Trace | None = None

    @property
    def cause_name(self) -> str:
        return CAUSE_NAMES[self.cause]

    def seconds(self) -> float:
        return self.cycles / (self.config.clock_mhz * 1e6)


def _as_words(program) -> tuple[list[int], AcceleratorConfig | None]:
    if isinstance(program, Program):
        return list(program.words), program.config
    return [int(w) for w in program], None


#: The method of each compute instruction's data effect.
_COMPUTE = {Op.QUANT: "_quant", Op.MATMUL: "_matmul", Op.SCALEOUT: "_scaleout", Op.RESADD: "_resadd",
            Op.SILU: "_silu", Op.RMSNORM: "_rmsnorm", Op.LAYERNORM: "_layernorm", Op.ROPE: "_rope",
            Op.KVPACK: "_kvpack", Op.ATTN: "_attn"}


class Simulator:
    """Simulates programs on one :class:`AcceleratorConfig` (see module docstring)."""

    def __init__(self, cfg: AcceleratorConfig, *, check_hazards: bool = True):
        if not isinstance(cfg, AcceleratorConfig):
            raise TypeError(f"cfg must be an AcceleratorConfig, got {cfg!r}")
        self.cfg = cfg
        self.check_hazards = check_hazards

    # ---- entry point ---------------------------------------------------------------------------
    def run(self, program, memory=None, *, functional: bool = True, trace: bool = False) -> RunResult:
        cfg = self.cfg
        words, pcfg = _as_words(program)
        if pcfg is not None and pcfg.fingerprint() != cfg.fingerprint():
            raise ConfigError(f"program was compiled for config {pcfg.name!r} ({pcfg.fingerprint()}), "
                              f"simulator runs {cfg.name!r} ({cfg.fingerprint()})")
        if len(words) > cfg.imem_words:
            raise FormatError(f"program has {len(words)} words; instruction memory holds "
                              f"{cfg.imem_words} (imem_words)")
        for pc, w in enumerate(words):
            if not 0 <= w < (1 << 64):
                raise FormatError(f"word {w!r} at pc {pc} is not a 64-bit value")
        if isinstance(memory, MemoryImage):
            if memory.config_fingerprint != cfg.fingerprint():
                raise ConfigError(f"memory image was built for config fingerprint "
                                  f"{memory.config_fingerprint}, simulator runs {cfg.name!r} "
                                  f"({cfg.fingerprint()})")
            memory = memory.data
        if functional:
            return self._run_functional(words, bytearray(memory or b""), trace)
        an = analyze(words, cfg, check_hazards=self.check_hazards)
        return self._result_from_analysis(an, trace)

    def _result_from_analysis(self, an: Analysis, trace: bool, *, functional: bool = False,
                              memory: bytearray | None = None, state: MachineState | None = None) -> RunResult:
        dec, n = an.decoded, an.n_issued
        counts = count_actions(self.cfg, dec, n, nop_tail=an.nop_tail, faulted=an.error_pc is not None
                               and an.cause != CAUSE_PC_RANGE)
        tr = None
        if trace:
            pcs = np.arange(n, dtype=np.int64)
            tr = Trace(pcs, dec.op[:n].copy(), an.timing.issue, an.timing.busy,
                       _unit_codes(dec.op[:n]))
        return RunResult(cycles=an.cycles, done=True, error=an.cause != CAUSE_NONE, cause=an.cause,
                         error_pc=an.error_pc, error_message=an.error_message,
                         instructions=counts["instructions"], stall_cycles=an.timing.stall_cycles,
                         dma_bytes_read=counts["ext_read_bits"] // 8,
                         dma_bytes_written=counts["ext_write_bits"] // 8, counts=counts,
                         config=self.cfg, functional=functional, memory=memory, state=state, trace=tr)

    # ---- functional mode -----------------------------------------------------------------------
    def _run_functional(self, words: list[int], mem: bytearray, want_trace: bool) -> RunResult:
        """Analyse (legality, hazards, timing: data never changes them), then execute the data effects
        of the instructions that issue."""
        an = analyze(words, self.cfg, check_hazards=self.check_hazards)
        st = MachineState.reset(self.cfg)
        cache: dict[int, Instruction] = {}
        for w in words[:an.n_issued]:
            ins = cache.get(w)
            if ins is None:
                ins = cache[w] = decode(w)
            self._execute(st, ins, mem)
        return self._result_from_analysis(an, want_trace, functional=True, memory=mem, state=st)

    # ---- instruction semantics -------------------------------------------------------------------
    def _execute(self, st: MachineState, ins: Instruction, mem: bytearray) -> None:
        op = ins.op
        if op is Op.SETR:
            reg = Reg(ins["reg"])
            st.regs[reg] = reg_value(reg, ins["value"])
        elif op is Op.LOAD:
            self._dma(st, ins, mem, load=True)
        elif op is Op.STORE:
            self._dma(st, ins, mem, load=False)
        elif op in _COMPUTE:   # a compute unit's data effect (nop, wait, halt have none)
            getattr(self, _COMPUTE[op])(st, ins)

    def _dma(self, st: MachineState, ins: Instruction, mem: bytearray, *, load: bool) -> None:
        b = BUFFERS[ins["buf"]]
        arr = st.buf[b]
        line, nl = ins["line"], ins["nlines"]
        lb = arr.shape[1]
        a = st.regs[Reg.EBASE] * 64 + ins["ext"]
        nbytes = nl * lb
        if load:
            chunk = bytes(mem[a:a + nbytes])
            if len(chunk) < nbytes:  # bytes past the image are zero
                chunk += bytes(nbytes - len(chunk))
            arr[line:line + nl] = np.frombuffer(chunk, dtype=np.uint8).reshape(nl, lb)
        else:
            if len(mem) < a + nbytes:
                mem.extend(bytes(a + nbytes - len(mem)))
            mem[a:a + nbytes] = arr[line:line + nl].tobytes()

    def _quant(self, st: MachineState, ins: Instruction) -> None:
        cfg = self.cfg
        C, L, R, E, k = cfg.cols, cfg.lanes, cfg.rows, cfg.experts, cfg.act_bits
        K = st.regs[Reg.K]
        nch, xl = cfg.nchunks(K), cfg.xlines(K)
        ntok, x0 = ins["ntok"], ins["x"]
        xs = st.xbuf()[x0:x0 + ntok * xl].astype(np.int64).reshape(ntok, xl * C)[:, :K]   # [T, K]
        gates = None
        bias = np.zeros(ntok, dtype=np.int64)
        if E >= 2:
            r0 = st.regs[Reg.ROUTER]
            wr = st.sbuf()[r0:r0 + xl].astype(np.int64).transpose(1, 0, 2).reshape(E, xl * C)[:, :K]
            acc = xs @ wr.T                                                                  # [T, E], < 2^46
            if st.regs[Reg.BIAS]:   # row 0's sum is the bias; the logits are 0, so the gates are equal
                bias = _sat(_rshift_round(acc[:, 0], st.regs[Reg.RSHIFT]), formats.OUT_BITS)
                logits = np.zeros_like(acc)
            else:
                logits = _sat(_rshift_round(acc, st.regs[Reg.RSHIFT]), formats.LOGIT_BITS)
            gates = softmax_gates(logits)                                                    # [T, E]
        elif E == 1:
            gates = np.full((ntok, 1), formats.GATE_ONE, dtype=np.int64)
        if E >= 1:
            s0 = st.regs[Reg.SIN]
            sin_e = st.sbuf()[s0:s0 + xl].astype(np.int64).transpose(1, 0, 2).reshape(E, xl * C)[:, :K]
            s_in = _sat(_rshift_round(gates @ sin_e, formats.GATE_FRAC), formats.SCALE_BITS)  # [T, K]
            v = xs * s_in
        else:
            v = xs << formats.E0_V_SHIFT
        q, d = quantize(v, k)                                                                # [T, K], [T]
        # bit planes [T, k', nch*L] -> packed bytes [T, k', nch, L/8]
        if k == 1:
            bits = (q == 1)[:, None, :]
        else:
            u = q & ((1 << k) - 1)
            bits = ((u[:, None, :] >> np.arange(k)[None, :, None]) & 1).astype(bool)
        full = np.zeros((ntok, bits.shape[1], nch * L), dtype=bool)
        full[:, :, :K] = bits
        packed = np.packbits(full, axis=2, bitorder="little").reshape(ntok, bits.shape[1], nch, L // 8)
        Lb = L // 8
        qb = st.buf["Q"]
        q0 = ins["q"]
        if ins["mode"] == 0:
            lines = q0 + np.arange(nch)[:, None] * k + np.arange(k)[None, :]                # [nch, k]
            for t in range(ntok):
                qb[lines, t * Lb:(t + 1) * Lb] = packed[t].transpose(1, 0, 2)
        else:
            P = cfg.planes_per_row
            block = np.zeros((nch, P, R, Lb), dtype=np.uint8)
            for b in range(k):
                block[:, b // R, b % R] = packed[0, b]
            qb[q0:q0 + nch * P] = block.reshape(nch * P, R * Lb)
        m0 = ins["meta"]
        st.meta_d[m0:m0 + ntok] = d
        st.meta_b[m0:m0 + ntok] = bias
        if gates is not None:
            st.meta_g[m0:m0 + ntok, :E] = gates

    def _matmul(self, st: MachineState, ins: Instruction) -> None:
        cfg = self.cfg
        C, L, R, k = cfg.cols, cfg.lanes, cfg.rows, cfg.act_bits
        K = st.regs[Reg.K]
        nch = cfg.nchunks(K)
        Lb = L // 8
        ntiles, q0, w0, o0, mode = ins["ntiles"], ins["q"], ins["w"], ins["o"], ins["mode"]
        nb = nch * Lb
        nw = -(-nb // 8)
        # lane mask over the concatenated chunks: bit c*L + l is valid when < K
        maskbits = np.zeros(nw * 64, dtype=bool)
        maskbits[:K] = True
        mask = np.packbits(maskbits, bitorder="little").view(np.uint64)                   # [nw]
        qb = st.buf["Q"]
        if mode == 0:
            a = qb[q0:q0 + nch * k].reshape(nch, k, R, Lb).transpose(1, 2, 0, 3).reshape(k, R, nb)
            pw = np.array([formats.plane_weight(b, k) for b in range(k)], dtype=np.int64)
        else:
            P = cfg.planes_per_row
            blk = qb[q0:q0 + nch * P].reshape(nch, P, R, Lb)
            a = np.stack([blk[:, b // R, b % R] for b in range(k)]).reshape(k, 1, nb)
            pw = np.array([formats.plane_weight(b, k) for b in range(k)], dtype=np.int64)
        a64 = _to_u64(a, nw) & mask                                                       # [k, rows, nw]
        # WBUF line w + (n*nch + c)*nwp + p holds weight plane p of chunk c of tile n
        wbits = st.regs[Reg.WBITS]
        nwp = weight_planes(cfg, wbits)
        wb = st.buf["W"][w0:w0 + ntiles * nch * nwp].reshape(ntiles, nch, nwp, C, Lb).transpose(0, 2, 3, 1, 4)
        w64 = _to_u64(np.ascontiguousarray(wb).reshape(ntiles, nwp, C, nb), nw)          # [T, nwp, C, nw]
        rows = a64.shape[1]
        acc = np.zeros((ntiles, rows, C), dtype=np.int64)
        if k == 1:
            nmask = int(np.bitwise_count(mask).sum())
        else:
            pa_sum = np.bitwise_count(a64).sum(axis=-1, dtype=np.int64)                   # [k, rows]
        for n in range(ntiles):
            if wbits:   # integer weights: step (b, p) adds plane_weight(b) * plane_weight(p) * popcount(a & w)
                for p in range(nwp):
                    x = a64[:, :, None, :] & w64[n, p][None, None, :, :]
                    dot = np.bitwise_count(x).sum(axis=-1, dtype=np.int64)                # [k, rows, C]
                    acc[n] += formats.plane_weight(p, wbits) * np.tensordot(pw, dot, axes=(0, 0))
                continue
            wn = w64[n, 0][None, None, :, :]                                              # [1,1,C,nw]
            if k == 1:
                x = ~(a64[:, :, None, :] ^ wn) & mask
                dot = 2 * np.bitwise_count(x).sum(axis=-1, dtype=np.int64) - nmask        # [1, rows, C]
            else:
                x = a64[:, :, None, :] & wn
                dot = 2 * np.bitwise_count(x).sum(axis=-1, dtype=np.int64) - pa_sum[:, :, None]
            acc[n] = np.tensordot(pw, dot, axes=(0, 0))
        bits = cfg.acc_bits
        acc = ((acc + (1 << (bits - 1))) & ((1 << bits) - 1)) - (1 << (bits - 1))      # wrap to acc_bits
        ob = st.obuf()
        if mode == 0:
            ob[o0:o0 + ntiles * R] = acc.reshape(ntiles * R, C).astype(np.int32)
        else:
            ob[o0:o0 + ntiles] = acc[:, 0, :].astype(np.int32)

    def _scaleout(self, st: MachineState, ins: Instruction) -> None:
        cfg = self.cfg
        R, E = cfg.rows, cfg.experts
        ntiles, ntok, o0, s0, m0 = ins["ntiles"], ins["ntok"], ins["o"], ins["s"], ins["meta"]
        if ins["mode"] == 0:
            lines = o0 + np.arange(ntiles)[:, None] * R + np.arange(ntok)[None, :]          # [N, T]
        else:
            lines = (o0 + np.arange(ntiles))[:, None]
        ob = st.obuf()
        acc = ob[lines].astype(np.int64)                                                  # [N, T, C]
        d = st.meta_d[m0:m0 + ntok]                                                       # [T]
        if E == 0:
            s_out = np.full((1, 1, 1), st.regs[Reg.SMUL], dtype=np.int64)
        else:
            g = st.meta_g[m0:m0 + ntok, :E]                                               # [T, E]
            so = st.sbuf()[s0:s0 + ntiles].astype(np.int64)                              # [N, E, C]
            s_out = _sat(_rshift_round(np.einsum("te,nec->ntc", g, so), formats.GATE_FRAC),
                         formats.SCALE_BITS)                                              # [N, T, C]
        mult = d[None, :, None] * s_out                                                   # |.| < 2^47
        y = scale_exact(acc, mult, st.regs[Reg.OSHIFT], st.meta_b[m0:m0 + ntok][None, :, None])
        ob[lines] = y.astype(np.int32)

    # ---- the vector unit (docs/isa.md: resadd, silu, rmsnorm, layernorm, rope, kvpack, attn) -------------
    def _token_lines(self, ins: Instruction, base: int, nl: int) -> np.ndarray:
        """[ntok, nl] OBUF lines of a vector instruction's operand at ``base``: token mode base + n*R + t, plane
        mode base + n (ntok = 1)."""
        n = np.arange(nl)[None, :]
        if ins["mode"] == 0:
            return base + n * self.cfg.rows + np.arange(ins["ntok"])[:, None]
        return base + n

    def _vector_operand(self, st: MachineState, ins: Instruction, base: int) -> np.ndarray:
        """[ntok, NL*C] int64: the operand's K values per token, then zeros to the end of its last line."""
        K, C = st.regs[Reg.K], self.cfg.cols
        nl = olines(self.cfg, K)
        v = st.obuf()[self._token_lines(ins, base, nl)].astype(np.int64).reshape(ins["ntok"], nl * C)
        v[:, K:] = 0
        return v

    def _write_x(self, st: MachineState, ins: Instruction, x: np.ndarray) -> None:
        """Tokens' int16 values x [ntok, NL*C] (zero past K) to XBUF lines x + t*XL + n, n < XL (zero past NL)."""
        cfg = self.cfg
        xl = cfg.xlines(st.regs[Reg.K])
        out = np.zeros((x.shape[0], xl * cfg.cols), dtype=np.int16)
        out[:, :x.shape[1]] = x
        xb = st.xbuf()
        x0 = ins["x"]
        xb[x0:x0 + x.shape[0] * xl] = out.reshape(-1, cfg.cols)

    def _resadd(self, st: MachineState, ins: Instruction) -> None:
        nl = olines(self.cfg, st.regs[Reg.K])
        ob = st.obuf()
        r, o = self._token_lines(ins, ins["r"], nl), self._token_lines(ins, ins["o"], nl)
        ob[r] = _sat(ob[r].astype(np.int64) + ob[o].astype(np.int64), formats.RESID_BITS).astype(np.int32)

    def _silu(self, st: MachineState, ins: Instruction) -> None:
        F = self.cfg.out_frac_bits
        g, u = self._vector_operand(st, ins, ins["g"]), self._vector_operand(st, ins, ins["u"])
        y = silu_gate(g, u, F)
        self._write_x(st, ins, _sat(_shift_round(y, F - st.regs[Reg.XFRAC]), formats.X_BITS))

    def _rmsnorm(self, st: MachineState, ins: Instruction) -> None:
        K, C = st.regs[Reg.K], self.cfg.cols
        nl = olines(self.cfg, K)
        r = self._vector_operand(st, ins, ins["r"])                                       # [T, NL*C]
        gains = st.sbuf()[ins["s"]:ins["s"] + nl, 0, :].astype(np.int64).reshape(nl * C)
        self._write_x(st, ins, rms_norm(r[:, :K], gains[:K], st.regs[Reg.GEXP], st.regs[Reg.EPS],
                                        st.regs[Reg.XFRAC]))

    def _layernorm(self, st: MachineState, ins: Instruction) -> None:
        K = st.regs[Reg.K]
        v = self._vector_operand(st, ins, ins["r"])[:, :K]                                 # [T, K]
        mu = (v.sum(axis=1, keepdims=True) + K // 2) // K        # |sum| < 2^47: exact; floor as formats' //
        c = _sat(v - mu, formats.RESID_BITS)
        unit = np.full(K, 1 << formats.UNIT_GEXP, dtype=np.int64)
        self._write_x(st, ins, rms_norm(c, unit, formats.UNIT_GEXP, st.regs[Reg.EPS], st.regs[Reg.XFRAC]))

    def _rope(self, st: MachineState, ins: Instruction) -> None:
        cfg = self.cfg
        K, C, hd = st.regs[Reg.K], cfg.cols, st.regs[Reg.HDIM]
        nl, h, ntok = olines(cfg, K), hd // 2, ins["ntok"]
        lines = self._token_lines(ins, ins["q"], nl)                                    # [T, NL]
        ob = st.obuf()
        x = ob[lines].astype(np.int64).reshape(ntok, K // hd, 2, h)                    # [T, heads, lo/hi, h]
        tl = rope_table_lines(cfg, hd)
        tab = st.sbuf()[ins["s"]:ins["s"] + ntok * tl, 0, :].astype(np.int64).reshape(ntok, 2, h)
        cos, sin = tab[:, None, 0, :], tab[:, None, 1, :]                                # [T, 1, h]
        lo, hi = x[:, :, 0, :], x[:, :, 1, :]
        y = np.stack([_sat(_rshift_round(lo * cos - hi * sin, formats.ROPE_FRAC), formats.RESID_BITS),
                      _sat(_rshift_round(hi * cos + lo * sin, formats.ROPE_FRAC), formats.RESID_BITS)], axis=2)
        ob[lines] = y.reshape(ntok, nl, C).astype(np.int32)

    def _kv_area(self, st: MachineState, lines: int) -> np.ndarray:
        """The WBUF bytes of ``lines`` lines from KVW: a kv head's region or tile (a writable view)."""
        w0 = st.regs[Reg.KVW]
        return st.buf["W"][w0:w0 + lines].reshape(-1)

    def _kv_rows(self, st: MachineState, half: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Mantissas [hi - lo, HDIM] and exponents [hi - lo] (clamped to KV_EXP_MAX, int64) of positions lo..hi-1
        of a half (bytes from the half's position TPOS)."""
        hd, t0 = st.regs[Reg.HDIM], st.regs[Reg.TPOS]
        row, exp = formats.kv_offsets(np.arange(lo - t0, hi - t0), hd, kv_page(self.cfg))
        m = half[row[:, None] + np.arange(hd)].view(np.int8).astype(np.int64)
        return m, np.minimum(half[exp].astype(np.int64), formats.KV_EXP_MAX)

    def _kvpack(self, st: MachineState, ins: Instruction) -> None:
        hd, q0, ntok, t0 = st.regs[Reg.HDIM], st.regs[Reg.QPOS], ins["ntok"], st.regs[Reg.TPOS]
        lines = self._token_lines(ins, ins["o"], hd // self.cfg.cols)
        m, e = block_quantize(st.obuf()[lines].astype(np.int64).reshape(ntok, hd))
        half_lines = kv_half_lines(self.cfg, st.regs[Reg.KVMAX], hd)
        region = self._kv_area(st, 2 * half_lines)
        half = region[ins["kind"] * half_lines * self.cfg.wbuf_line_bits // 8:]
        row, exp = formats.kv_offsets(np.arange(q0 - t0, q0 - t0 + ntok), hd, kv_page(self.cfg))
        half[row[:, None] + np.arange(hd)] = m.astype(np.int8).view(np.uint8)
        half[exp] = e

    def _attn(self, st: MachineState, ins: Instruction) -> None:
        cfg = self.cfg
        C, F = cfg.cols, cfg.out_frac_bits
        hd, G, q0, T, t0 = st.regs[Reg.HDIM], st.regs[Reg.HGRP], st.regs[Reg.QPOS], ins["ntok"], st.regs[Reg.TPOS]
        hl, n = hd // C, q0 + T
        tile_end = min(t0 + st.regs[Reg.KVMAX], n)
        half_lines = kv_half_lines(cfg, st.regs[Reg.KVMAX], hd)
        visible = (np.arange(n)[None, :] <= q0 + np.repeat(np.arange(T), G)[:, None])      # [T*G, n]
        sl = score_lines(cfg, n)
        ob = st.obuf()             # every row's scratch, row r = t * HGRP + g
        scratch = ob[st.regs[Reg.SCR]:st.regs[Reg.SCR] + T * G * sl].reshape(T * G, sl * C)
        if ins["part"] != 2:
            lines = self._token_lines(ins, ins["q"], G * hl)                                # [T, G*HL]
            qm, eq = block_quantize(st.obuf()[lines].astype(np.int64).reshape(T * G, hd))
        if ins["part"] == 1:       # scores of the tile's positions into each row's scratch (0 where masked)
            km, ek = self._kv_rows(st, self._kv_area(st, half_lines), t0, tile_end)
            s = attention_scores(qm, eq, km, ek, F)
            scratch[:, t0:tile_end] = np.where(visible[:, t0:tile_end], s, 0)
            return
        if ins["part"] == 0:
            region = self._kv_area(st, 2 * half_lines)
            km, ek = self._kv_rows(st, region, 0, n)
            vm, ev = self._kv_rows(st, region[half_lines * cfg.wbuf_line_bits // 8:], 0, n)
            w = softmax_weights(attention_scores(qm, eq, km, ek, F), visible)              # [T*G, n] Q.30
            o = _sat(_rshift_round(w @ (vm << ev[:, None]), formats.ATT_WEIGHT_FRAC), formats.RESID_BITS)
            scratch[:] = 0
            scratch[:, :n] = w
        else:                      # values: the softmax first (the first tile), then the tile's weighted values
            if t0 == 0:
                w = np.zeros((T * G, sl * C), dtype=np.int64)
                w[:, :n] = softmax_weights(scratch[:, :n].astype(np.int64), visible)
                scratch[:] = w
            acc_lines = ob[st.regs[Reg.ACC]:st.regs[Reg.ACC] + T * G * 2 * hl].reshape(T * G, 2, hl * C)
            acc = np.zeros((T * G, hd), dtype=np.uint64)
            if t0 != 0:            # the 64-bit accumulators: low words, then high words
                acc = (acc_lines[:, 0].view(np.uint32).astype(np.uint64)
                       | (acc_lines[:, 1].view(np.uint32).astype(np.uint64) << np.uint64(32)))
            vm, ev = self._kv_rows(st, self._kv_area(st, half_lines), t0, tile_end)
            w = scratch[:, t0:tile_end].astype(np.int64)
            acc = acc + w.astype(np.uint64) @ (vm << ev[:, None]).astype(np.uint64)          # wraps mod 2^64
            acc_lines[:, 0] = (acc & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)
            acc_lines[:, 1] = (acc >> np.uint64(32)).astype(np.uint32).view(np.int32)
            if tile_end < n:
                return
            a = acc.view(np.int64)   # rshift_round by 30 without the rounding add (exact for any 64-bit value)
            o = _sat((a >> formats.ATT_WEIGHT_FRAC) + ((a >> (formats.ATT_WEIGHT_FRAC - 1)) & 1), formats.RESID_BITS)
        x = _sat(_shift_round(o, F - st.regs[Reg.XFRAC]), formats.X_BITS).reshape(T, G * hl, C)
        xl = cfg.xlines(st.regs[Reg.K])
        xb = st.xbuf()
        for t in range(T):
            xb[ins["x"] + t * xl:ins["x"] + t * xl + G * hl] = x[t]


# ---- vectorized reference arithmetic (bit-exact with bitmos.formats) --------------------------------

def block_quantize(v: np.ndarray, mant_bits: int = formats.HEAD_MANT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """formats.block_quantize of each row of an int64 [R, n] array: (mantissas [R, n], exponents [R])."""
    e = np.array([max(0, int(m).bit_length() - (mant_bits - 1)) for m in np.abs(v).max(axis=1)], dtype=np.int64)
    return _sat(_shift_round_rows(v, e), mant_bits), e


def _shift_round_rows(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """formats.shift_round of each value by its own shift (``s`` broadcast against ``v``'s leading axes)."""
    s = np.broadcast_to(s.reshape(s.shape + (1,) * (v.ndim - s.ndim)), v.shape)
    right = np.maximum(s, 0)
    half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
    return np.where(s >= 0, (v + half) >> right, v << np.maximum(-s, 0))


def attention_scores(qm: np.ndarray, eq: np.ndarray, km: np.ndarray, ek: np.ndarray, frac: int) -> np.ndarray:
    """formats.attention_head's scores (int32, Q.8) of each query row against n positions: qm [R, hd], eq [R],
    km [n, hd], ek [n] (int64). |dot * ATT_SCALE| < 2^40; a left-shifted score is clipped to 2^31 first and
    shifted at most 31 (either saturates it): exact in int64."""
    dot = (qm @ km.T) * formats.attention_scale(qm.shape[1])                            # [R, n]
    shift = 2 * frac + formats.ATT_SCALE_FRAC - formats.SCORE_FRAC - eq[:, None] - ek[None, :]
    # a left shift (large exponents) saturates whatever it shifts past 2^31: clipped first, it stays in int64
    top_bit = formats.SCORE_BITS - 1
    dot = np.where(shift < 0, np.clip(dot, -(1 << top_bit), 1 << top_bit), dot)
    return _sat(_shift_round_rows(dot, np.maximum(shift, -top_bit)), formats.SCORE_BITS)


def softmax_weights(scores: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """formats.attention_head's weights w_t (Q.30) from int32 scores [R, n] where ``visible`` [R, n] (the causal
    mask; each row sees at least one position); zero where masked."""
    floor = -(1 << (formats.SCORE_BITS - 1))
    top = np.where(visible, scores, floor).max(axis=1, keepdims=True)
    p = np.where(visible, exp2_weight(top - scores), 0)
    rcp = (1 << formats.ATT_RCP_SHIFT) // p.sum(axis=1, keepdims=True)                 # sum >= 2^15
    return _rshift_round(p * rcp, formats.ATT_RCP_SHIFT - formats.ATT_WEIGHT_FRAC)


def exp2_weight(d: np.ndarray) -> np.ndarray:
    """formats.exp2_weight elementwise on int64 distances d >= 0."""
    lut = np.array(formats.EXP2_LUT, dtype=np.int64)
    u = _rshift_round(np.minimum(d, formats.SOFTMAX_DIFF_MAX) * formats.LOG2E_Q10, formats.LOG2E_FRAC)
    n, f = u >> formats.EXP2_FRAC_BITS, u & (formats.EXP2_LUT_SIZE - 1)
    return np.where(n < formats.SOFTMAX_MAX_SHIFT, lut[f] >> np.minimum(n, formats.SOFTMAX_MAX_SHIFT - 1), 0)


def _shift_round(v: np.ndarray, s: int) -> np.ndarray:
    """formats.shift_round: rshift_round for s >= 0, an exact left shift for s < 0."""
    return _rshift_round(v, s) if s >= 0 else v << -s


def silu_gate(gate: np.ndarray, up: np.ndarray, frac: int) -> np.ndarray:
    """formats.silu_gate elementwise on int64 arrays (|g * sigmoid| < 2^46, |h * u| < 2^62: exact)."""
    lut = np.array(formats.SIGMOID_LUT, dtype=np.int64)
    half = formats.SILU_LUT_HALF
    i = np.clip(_shift_round(gate, frac - formats.SILU_IN_FRAC), -half, half - 1) + half
    h = _sat(_rshift_round(gate * lut[i], formats.GATE_FRAC), formats.RESID_BITS)
    return _sat(_rshift_round(h * up, frac), formats.RESID_BITS)


def rms_norm(r: np.ndarray, gains: np.ndarray, gexp: int, eps_q: int, out_frac: int) -> np.ndarray:
    """formats.rms_norm of each row of an int64 [T, K] array (|r' * RSQ * G| < 2^51: exact in int64; the
    per-token divide and square root in Python integers)."""
    import math
    k = r.shape[1]
    m = np.abs(r).max(axis=1)
    out = np.empty(r.shape, dtype=np.int64)
    for t in range(r.shape[0]):
        e = max(0, int(m[t]).bit_length() - formats.NORM_IN_BITS)
        rp = _rshift_round(r[t], e)
        ss = int(np.sum(rp * rp))
        eps_t = max(1, formats.rshift_round(eps_q, 2 * e))
        rsq = math.isqrt((k << (2 * formats.NORM_RSQ_SHIFT)) // (ss + k * eps_t))
        out[t] = _sat(_rshift_round(rp * rsq * gains, formats.NORM_RSQ_SHIFT + gexp - out_frac), formats.X_BITS)
    return out


def _rshift_round(v: np.ndarray, s: int) -> np.ndarray:
    """formats.rshift_round on int64 arrays (floor-based, so exact for negative values)."""
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def _sat(v: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(v, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def softmax_gates(logits: np.ndarray) -> np.ndarray:
    """formats.softmax_gates for each row of an int64 [T, E] array."""
    p = exp2_weight(logits.max(axis=1, keepdims=True) - logits)
    rcp = (1 << formats.SOFTMAX_RCP_SHIFT) // p.sum(axis=1, keepdims=True)
    return _rshift_round(p * rcp, formats.GATE_FRAC)


def quantize(v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """formats.quantize_token for each row of an int64 [T, K] array; returns (q [T, K], D [T]).

    |v_i| <= m, so |v_i * RQ| <= m * floor(Q * 2^32 / m) <= Q * 2^32 < 2^39: exact in int64.
    """
    qmax = formats.act_qmax(k)
    m = np.abs(v).max(axis=1) if v.shape[1] else np.zeros(v.shape[0], dtype=np.int64)
    d = np.where(m > 0, _rshift_round(m * formats.inv_q(k), formats.INVQ_SHIFT), 0)
    if k == 1:
        return np.where(v >= 0, 1, -1).astype(np.int64), d
    rq = (qmax << formats.RQ_SHIFT) // np.maximum(m, 1)
    q = np.clip(_rshift_round(v * rq[:, None], formats.RQ_SHIFT), -qmax, qmax)
    q[m == 0] = 0
    return q, d


def scale_exact(acc: np.ndarray, mult: np.ndarray, oshift: int, bias: np.ndarray | int = 0) -> np.ndarray:
    """sat32(rshift_round(acc * mult, oshift) + bias) exactly: int64 when the product stays below 2^62,
    Python integers otherwise (only possible when OBUF holds DMA-loaded values). |bias| < 2^31."""
    amax = int(np.abs(acc).max(initial=0))
    mmax = int(np.abs(mult).max(initial=0))
    if amax * mmax < (1 << 62):
        return _sat(_rshift_round(acc * mult, oshift) + bias, formats.OUT_BITS)
    p = np.broadcast_arrays(acc.astype(object), mult.astype(object), np.asarray(bias).astype(object))
    prod = p[0] * p[1]
    r = ((prod + (1 << (oshift - 1))) >> oshift if oshift else prod) + p[2]
    lo, hi = -(1 << 31), (1 << 31) - 1
    return np.vectorize(lambda t: max(lo, min(hi, t)), otypes=[np.int64])(r)


def _to_u64(a: np.ndarray, nw: int) -> np.ndarray:
    """Bytes [..., nb] -> uint64 words [..., nw] (zero padded)."""
    nb = a.shape[-1]
    if nb != nw * 8:
        pad = np.zeros(a.shape[:-1] + (nw * 8 - nb,), dtype=np.uint8)
        a = np.concatenate([a, pad], axis=-1)
    return np.ascontiguousarray(a).view(np.uint64)


def _unit_codes(op: np.ndarray) -> np.ndarray:
    from bitmos.sim.analysis import _UNIT_OF_OP
    return _UNIT_OF_OP[op].copy()
