"""Programs for the vector unit (docs/isa.md: ``resadd``, ``silu``, ``rmsnorm``, ``layernorm``, ``rope``) on tokens in
external memory.

The decoder layer's residual adds, SwiGLU gate products, norms and rotary embeddings run on the vector unit of a
config with ``vector_unit = 1``. :func:`compile_vector` builds, for one operation on ``tokens`` tokens of K values,
one program per block of tokens: load the operand lines into OBUF (and an RMSNorm's gains or the tokens' rotary
table into SBUF), the one instruction, store the result, halt. Its memory image holds the gains; :func:`write_vector_operands` and
:func:`read_vector_result` are the host's side, as ``write_layer_input`` / ``read_layer_output`` are a linear's.

External layout (one region per operand and one for the result, 64-byte aligned, in this order): an operand
region holds each block as the OBUF lines the instruction reads, token mode (up to R tokens a block) value i of
the block's token t at line (i // C)*R + t, element i % C, plane mode (one token a block, when R tokens' lines
do not fit OBUF twice) at line i // C; a block takes NL*R (or NL) lines of C int32, NL = ceil(K / C). The result
of ``silu`` / ``rmsnorm`` / ``layernorm`` is each token's XL XBUF lines of int16 in token order (zeros past K);
``resadd`` and ``rope`` write theirs back over the first operand's region (updated in place). A ``rope``'s table
region holds each token's cos and sin rows (HDIM/C SBUF lines a token, :func:`write_rope_table`).

Activations cross external memory around each operation, as around each linear today; keeping them on chip
across a whole layer is the fused-program step after this one (docs/compiler.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.container import Program
from bitmos.errors import UnsupportedError
from bitmos.isa import Instruction, Op, Reg, encode, setr
from bitmos.semantics import olines, rope_table_lines, rope_unaligned

#: The vector unit's operations and their operand names (the first is the one ``resadd`` updates).
VECTOR_OPS = {"resadd": ("residual", "addend"), "silu": ("gate", "up"), "rmsnorm": ("residual",),
              "layernorm": ("values",), "rope": ("values",)}
#: The operations whose result is written back over their first operand.
IN_PLACE = ("resadd", "rope")
ALIGN = 64


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class CompiledVector:
    """One vector operation on ``tokens`` tokens of K values: its programs, memory image and layout."""
    op: str
    K: int
    tokens: int
    mode: str                       # "token" (up to R tokens per program) or "plane" (one)
    block: int                      # tokens per program (the last may have fewer)
    regions: dict[str, int]         # operand names, "gains" / "table", "result" (not in place) -> byte address
    programs: list[Program]
    memory: bytearray               # the image: zeros but for an RMSNorm's gains
    config: AcceleratorConfig
    params: dict[str, int] = field(default_factory=dict)   # the registers it sets: XFRAC, GEXP, EPS, HDIM

    @property
    def stride(self) -> int:
        """OBUF lines between a token's consecutive lines (R in token mode, 1 in plane mode)."""
        return self.config.rows if self.mode == "token" else 1

    @property
    def olines(self) -> int:
        return olines(self.config, self.K)

    @property
    def block_bytes(self) -> int:
        """External bytes of one block of an operand region (its NL * stride OBUF lines, 64-byte aligned)."""
        return _align(self.olines * self.stride * self.config.line_bits("O") // 8)

    def blocks(self) -> list[range]:
        return [range(s, min(s + self.block, self.tokens)) for s in range(0, self.tokens, self.block)]


def _fits(cfg: AcceleratorConfig, op: str, K: int, block: int, stride: int, head_dim: int) -> tuple[str, str] | None:
    """None if a block of ``block`` tokens fits the buffers, else (what is too small, its config field)."""
    nl = olines(cfg, K)
    span = (nl - 1) * stride + block
    need_o = (nl * stride) * (len(VECTOR_OPS[op]) - 1) + span
    if need_o > cfg.depth("O"):
        return f"OBUF ({need_o} lines needed, {cfg.depth('O')} deep)", "obuf_kib"
    if op not in IN_PLACE and block * cfg.xlines(K) > cfg.depth("X"):
        return f"XBUF ({block * cfg.xlines(K)} lines needed, {cfg.depth('X')} deep)", "xbuf_kib"
    if op == "rmsnorm" and nl > cfg.depth("S"):
        return f"SBUF ({nl} gain lines needed, {cfg.depth('S')} deep)", "sbuf_kib"
    if op == "rope" and block * rope_table_lines(cfg, head_dim) > cfg.depth("S"):
        need = block * rope_table_lines(cfg, head_dim)
        return f"SBUF ({need} rotary table lines needed, {cfg.depth('S')} deep)", "sbuf_kib"
    return None


def token_or_plane(cfg: AcceleratorConfig, tokens: int, fits, what: str) -> tuple[str, int]:
    """(mode, tokens a program): token mode, up to R tokens a program, where such a block fits the buffers, else
    plane mode, one token (and for a single token: its lines are then adjacent, not R apart, so a transfer moves
    only them); ``fits(block, stride)`` is None or (what is too small, its config field). Raises
    UnsupportedError naming the buffer (``what`` does not fit) when one token does not fit either."""
    block = min(cfg.rows, tokens)
    if tokens > 1 and fits(block, cfg.rows) is None:
        return "token", block
    why = fits(1, 1)
    if why is not None:
        raise UnsupportedError(f"{what} does not fit config {cfg.name!r}: {why[0]}", field=why[1])
    return "plane", 1


def _slot0_lines(cfg: AcceleratorConfig, rows: np.ndarray) -> bytes:
    """SBUF lines holding ``rows`` ([n, C*m] int16 values, C a line) in expert slot 0 (value (0, j))."""
    rows = np.asarray(rows, dtype=np.int64)
    nlines = rows.size // cfg.cols
    out = np.zeros((nlines, max(cfg.experts, 1), cfg.cols), dtype="<i2")
    out[:, 0, :] = rows.reshape(nlines, cfg.cols)
    return out.tobytes()


def compile_vector(op: str, cfg: AcceleratorConfig, tokens: int, K: int, *, xfrac: int = 0,
                   gains: list[int] | np.ndarray | None = None, gexp: int = 0, eps_q: int = 0, head_dim: int = 0,
                   base: int = 0, timing_only: bool = False) -> CompiledVector:
    """Programs and image for vector operation ``op`` (one of :data:`VECTOR_OPS`) on ``tokens``
    tokens of K values; ``xfrac``: fraction bits of the int16 result (silu, the norms); ``gains`` (int16, K of
    them), ``gexp``: the RMSNorm's; ``eps_q``: either norm's epsilon (formats.rms_norm, formats.layer_norm);
    ``head_dim``: the rotary embedding's (even, head_dim / 2 a multiple of C, dividing K). Regions start at
    ``base``. ``timing_only``: no memory image
    (empty; the gains may be omitted): the programs for the simulator's timing-only mode, at any size.

    Raises UnsupportedError (a config without the vector unit, or a token that does not fit its buffers)."""
    if op not in VECTOR_OPS:
        raise UnsupportedError(f"unknown vector operation {op!r}; known: {', '.join(VECTOR_OPS)}")
    if not cfg.vector_unit:
        raise UnsupportedError(f"config {cfg.name!r} has no vector unit (vector_unit = 0), so {op} runs on the host",
                               field="vector_unit")
    if tokens < 1 or not 1 <= K <= 65535:
        raise UnsupportedError(f"{op}: {tokens} tokens of K = {K} values (need tokens >= 1, 1 <= K <= 65535)")
    params = {}
    if op != "resadd":
        params["XFRAC"] = xfrac
    if op == "layernorm":
        params["EPS"] = eps_q
    if op == "rope":
        params = {"HDIM": head_dim}
        if head_dim < 2 or rope_unaligned(cfg, head_dim) or K % head_dim:
            raise UnsupportedError(f"rope: head_dim {head_dim} must be even, half of it a multiple of cols = "
                                   f"{cfg.cols}, and divide K = {K}")
    if op == "rmsnorm":
        if timing_only and gains is None:
            gains = np.zeros(K, dtype=np.int64)
        if gains is None or len(gains) != K:
            raise UnsupportedError(f"rmsnorm needs K = {K} gains")
        params.update(GEXP=gexp, EPS=eps_q)
    mode, block = token_or_plane(cfg, tokens, lambda b, stride: _fits(cfg, op, K, b, stride, head_dim),
                                 f"{op} of one token of K = {K} values")
    cv = CompiledVector(op, K, tokens, mode, block, {}, [], bytearray(), cfg, params)
    C, nl, xl, stride, block_bytes = cfg.cols, cv.olines, cfg.xlines(K), cv.stride, cv.block_bytes
    xb, sb = cfg.line_bits("X") // 8, cfg.line_bits("S") // 8
    tl = rope_table_lines(cfg, head_dim)
    regions = cv.regions
    at = _align(base)
    for name in VECTOR_OPS[op]:
        regions[name] = at
        at = _align(at + len(cv.blocks()) * block_bytes)
    if op == "rmsnorm":
        regions["gains"] = at
        at = _align(at + nl * sb)
    if op == "rope":
        regions["table"] = at
        at = _align(at + tokens * tl * sb)
    if op not in IN_PLACE:
        regions["result"] = at
        at = _align(at + tokens * xl * xb)
    cv.memory = bytearray(0 if timing_only else at - base)
    if op == "rmsnorm" and not timing_only:
        flat = np.zeros(nl * C, dtype=np.int64)
        flat[:K] = np.asarray(gains, dtype=np.int64)
        blob = _slot0_lines(cfg, flat)
        lo = regions["gains"] - base
        cv.memory[lo:lo + len(blob)] = blob

    for i, blk in enumerate(cv.blocks()):
        ntok = len(blk)
        words: list[int] = []

        def dma(kind: Op, buf: str, line: int, nlines: int, addr: int) -> None:
            words.append(encode(setr(Reg.EBASE, addr // ALIGN)))
            words.append(encode(Instruction.make(kind, buf=buf, line=line, nlines=nlines, ext=addr % ALIGN)))

        words.append(encode(setr(Reg.K, K)))
        for reg, value in params.items():
            words.append(encode(setr(Reg[reg], value)))
        lines = (nl - 1) * stride + ntok
        obuf_at = {}
        for j, name in enumerate(VECTOR_OPS[op]):
            obuf_at[name] = j * nl * stride
            dma(Op.LOAD, "O", obuf_at[name], lines, regions[name] + i * block_bytes)
        if op == "rmsnorm":
            dma(Op.LOAD, "S", 0, nl, regions["gains"])
        if op == "rope":
            dma(Op.LOAD, "S", 0, ntok * tl, regions["table"] + blk.start * tl * sb)
        words.append(encode(Instruction.make(Op.WAIT)))
        if op in IN_PLACE:
            if op == "resadd":
                ins = Instruction.make(Op.RESADD, mode=mode, r=0, o=obuf_at["addend"], ntok=ntok)
            else:
                ins = Instruction.make(Op.ROPE, mode=mode, q=0, s=0, ntok=ntok)
            words.append(encode(ins))
            dma(Op.STORE, "O", 0, lines, regions[VECTOR_OPS[op][0]] + i * block_bytes)
        else:
            if op == "silu":
                ins = Instruction.make(Op.SILU, mode=mode, g=0, u=obuf_at["up"], x=0, ntok=ntok)
            elif op == "layernorm":
                ins = Instruction.make(Op.LAYERNORM, mode=mode, r=0, x=0, ntok=ntok)
            else:
                ins = Instruction.make(Op.RMSNORM, mode=mode, r=0, x=0, s=0, ntok=ntok)
            words.append(encode(ins))
            dma(Op.STORE, "X", 0, ntok * xl, regions["result"] + blk.start * xl * xb)
        words.append(encode(Instruction.make(Op.HALT)))
        if len(words) > cfg.imem_words:
            raise UnsupportedError(f"{op}: a program of {len(words)} words does not fit IMEM ({cfg.imem_words})",
                                   field="imem_words")
        cv.programs.append(Program(words, cfg, {"vector": op, "block": i, "K": K}))
    return cv


def _operand_lines(cv: CompiledVector, values: np.ndarray) -> np.ndarray:
    """[tokens, K] int32 -> the operand region's lines [nblocks * NL * stride, C] (zeros where no value)."""
    C, nl, st = cv.config.cols, cv.olines, cv.stride
    blocks = cv.blocks()
    out = np.zeros((len(blocks), nl, st, C), dtype="<i4")
    padded = np.zeros((cv.tokens, nl * C), dtype=np.int64)
    padded[:, :cv.K] = values
    for i, blk in enumerate(blocks):
        for t, tok in enumerate(blk):
            out[i, :, t, :] = padded[tok].reshape(nl, C)
    return out


def write_vector_operands(memory: bytearray, cv: CompiledVector, *operands: np.ndarray, base: int = 0) -> None:
    """Write the operation's operands (each [tokens, K] int32 values, in ``VECTOR_OPS[op]`` order) into their
    regions of ``memory`` (an image starting at address ``base``)."""
    names = VECTOR_OPS[cv.op]
    if len(operands) != len(names):
        raise ValueError(f"{cv.op} takes {len(names)} operand(s) ({', '.join(names)}), got {len(operands)}")
    block_bytes = cv.block_bytes
    for name, v in zip(names, operands):
        v = np.asarray(v, dtype=np.int64)
        if v.shape != (cv.tokens, cv.K):
            raise ValueError(f"{cv.op} operand {name}: shape {v.shape}, expected ({cv.tokens}, {cv.K})")
        if v.min(initial=0) < -(1 << 31) or v.max(initial=0) >= 1 << 31:
            raise ValueError(f"{cv.op} operand {name}: values outside int32")
        lines = _operand_lines(cv, v)
        at = cv.regions[name] - base
        for i in range(lines.shape[0]):
            blob = lines[i].tobytes()
            memory[at + i * block_bytes:at + i * block_bytes + len(blob)] = blob


def write_rope_table(memory: bytearray, cv: CompiledVector, cos, sin, *, base: int = 0) -> None:
    """Each token's rotary table (``cos``, ``sin``: [tokens, head_dim / 2] Q1.14, the rows of
    ``formats.rope_table`` at the tokens' positions) into a ``rope``'s table region."""
    cfg = cv.config
    h = cv.params["HDIM"] // 2
    cos, sin = np.asarray(cos, dtype=np.int64), np.asarray(sin, dtype=np.int64)
    if cos.shape != (cv.tokens, h) or sin.shape != (cv.tokens, h):
        raise ValueError(f"rope table: cos {cos.shape} and sin {sin.shape}, expected ({cv.tokens}, {h}) each")
    blob = _slot0_lines(cfg, np.concatenate([cos, sin], axis=1))     # per token: cos lines, then sin lines
    at = cv.regions["table"] - base
    memory[at:at + len(blob)] = blob


def read_vector_result(memory: bytes | bytearray, cv: CompiledVector, *, base: int = 0) -> np.ndarray:
    """The result [tokens, K]: int32 values written in place (resadd, rope: from the first operand's region), int16
    values (silu and the norms)."""
    C, nl, st = cv.config.cols, cv.olines, cv.stride
    if cv.op in IN_PLACE:
        out = np.zeros((cv.tokens, cv.K), dtype=np.int64)
        for i, blk in enumerate(cv.blocks()):
            at = cv.regions[VECTOR_OPS[cv.op][0]] - base + i * cv.block_bytes
            lines = np.frombuffer(bytes(memory[at:at + nl * st * C * 4]), dtype="<i4").reshape(nl, st, C)
            for t, tok in enumerate(blk):
                out[tok] = lines[:, t, :].reshape(-1)[:cv.K]
        return out
    xl = cv.config.xlines(cv.K)
    at = cv.regions["result"] - base
    n = cv.tokens * xl * C
    x = np.frombuffer(bytes(memory[at:at + 2 * n]), dtype="<i2").reshape(cv.tokens, xl * C)
    return x[:, :cv.K].astype(np.int64)


def reference(cv: CompiledVector, *operands: np.ndarray, gains=None, cos=None, sin=None) -> np.ndarray:
    """The result as :mod:`bitmos.formats` defines it, token by token (for tests and checks)."""
    cfg = cv.config
    out = []
    for t in range(cv.tokens):
        ops = [list(map(int, o[t])) for o in operands]
        if cv.op == "resadd":
            out.append([F.residual_add(a, b) for a, b in zip(*ops)])
        elif cv.op == "layernorm":
            out.append(F.layer_norm(ops[0], cv.params["EPS"], cv.params["XFRAC"]))
        elif cv.op == "rope":
            hd = cv.params["HDIM"]
            c, s = list(map(int, cos[t])), list(map(int, sin[t]))
            out.append([v for g in range(cv.K // hd) for v in F.rope_rotate(ops[0][g * hd:(g + 1) * hd], c, s)])
        elif cv.op == "silu":
            h = F.silu_gate(ops[0], ops[1], cfg.out_frac_bits)
            out.append([F.requantize(v, cfg.out_frac_bits, cv.params["XFRAC"], F.X_BITS) for v in h])
        else:
            out.append(F.rms_norm(ops[0], list(map(int, gains)), cv.params["GEXP"], cv.params["EPS"],
                                  cv.params["XFRAC"]))
    return np.array(out, dtype=np.int64)


__all__ = ["VECTOR_OPS", "CompiledVector", "token_or_plane", "compile_vector", "write_vector_operands", "write_rope_table",
           "read_vector_result", "reference"]
