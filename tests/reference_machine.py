"""The one deliberately naive reference interpreter of the bitmos ISA, for the test suites.

Written line by line from docs/isa.md: Python integers, one element at a time, every buffer line one
little-endian integer. It uses only the contract -- the reference arithmetic of ``bitmos.formats``,
the decoder of ``bitmos.isa`` and the geometry of ``bitmos.config`` -- and shares nothing with
``bitmos.semantics`` (its range checks, hazard rule, cycle formulas and timing rule are transcribed
here from docs/isa.md) nor with bitmos.sim's vectorized code: it is the independent second
implementation the simulator, the compiler and (through the RTL benches) the RTL are checked against. Slow; small shapes only.

Users:
* tests/compiler (via tests/compiler/helpers.py): every compiled program runs here and on
  bitmos.sim; the memories and cycle counts must agree. ``golden`` is the per-layer reference y_int.
* tests/sim/test_machine.py: bitmos.sim's buffers, META and memory must match this machine's bit
  for bit after a random or directed program.

Legal programs only: instead of modelling a fault, it raises ``ReferenceMachineError`` for anything
docs/isa.md makes a fault --
* a buffer line a load/store/quant/matmul/scaleout would touch at or beyond its depth, or a META
  record beyond ``meta_tokens`` (cause 3);
* an illegal ntok for the mode of a quant/scaleout (cause 2);
* an external address beyond ``ext_mem_mib`` (cause 4);
* running past the end of the program or of IMEM without ``halt`` (cause 5)
(illegal opcodes and fields raise ``bitmos.isa.DecodeError`` from the decoder), and, optionally, for
* ``check_hazards=True`` (default): the DMA hazard rule in its strictest reading -- the last Q =
  max(1, dma_queue) transfers that no ``wait`` (``wait keep=n``: all but the last n) or ``halt`` retired
  may be in flight: no compute instruction may touch the lines they read or write (a compute
  instruction's lines taken as the whole span of its range check); transfers move their data in issue
  order, so they never conflict with each other;
* ``grow_memory=False`` (default): a transfer past the end of the memory image (a compiled layer's
  image holds every byte its programs touch). With ``grow_memory=True`` the image is the start of an
  external memory of zeros, as on the machine: loads past it read zeros and stores extend it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.isa import BUFFERS, Op, Reg, decode, reg_value


#: The vector unit's opcodes and registers (docs/isa.md: 0x09-0x0f; registers 9-17).
VECTOR = (Op.RESADD, Op.SILU, Op.RMSNORM, Op.LAYERNORM, Op.ROPE, Op.KVPACK, Op.ATTN)
VECTOR_REGISTERS = (Reg.XFRAC, Reg.GEXP, Reg.EPS, Reg.HDIM, Reg.QPOS, Reg.KVMAX, Reg.KVW, Reg.HGRP, Reg.SCR,
                    Reg.TPOS, Reg.ACC)


#: The method that executes each instruction with a data effect (setr and wait are handled in ``run``).
HANDLERS = {Op.LOAD: "dma", Op.STORE: "dma", Op.QUANT: "quant", Op.MATMUL: "matmul", Op.SCALEOUT: "scaleout",
            Op.RESADD: "resadd", Op.SILU: "vector_to_x", Op.RMSNORM: "vector_to_x", Op.LAYERNORM: "vector_to_x",
            Op.ROPE: "rope", Op.KVPACK: "kvpack", Op.ATTN: "attn"}


class ReferenceMachineError(Exception):
    pass


@dataclass
class RefResult:
    cycles: int                 # the run's cycle count (Timeline: the halt's issue cycle + 1)
    memory: bytearray           # external memory after the run
    error: str | None = None    # always None: a fault raises ReferenceMachineError instead
    instructions: int = 0       # instructions issued, halt included
    stall_cycles: int = 0


def field(line: int, idx: int, bits: int, signed: bool = True) -> int:
    """Element idx of a line of bits-wide elements (element 0 in the least significant bits)."""
    u = (line >> (idx * bits)) & ((1 << bits) - 1)
    return F.to_signed(u, bits) if signed else u


def set_field(line: int, idx: int, bits: int, value: int) -> int:
    mask = ((1 << bits) - 1) << (idx * bits)
    return (line & ~mask) | ((value & ((1 << bits) - 1)) << (idx * bits))


class ReferenceMachine:
    def __init__(self, cfg: AcceleratorConfig, memory: bytes, *, check_hazards: bool = True,
                 grow_memory: bool = False):
        self.cfg = cfg
        self.check_hazards = check_hazards
        self.grow_memory = grow_memory
        self.mem = bytearray(memory)
        self.depth = {b: cfg.depth(b) for b in "XWSQO"}
        self.buf = {b: [0] * self.depth[b] for b in "XWSQO"}          # each line one little-endian integer
        self.meta = [(0, [0] * cfg.experts, 0) for _ in range(cfg.meta_tokens)]   # (D, gates, bias)
        self.regs = {r: 0 for r in Reg}
        self.inflight: list[tuple[int, str, int, int]] = []   # (pc, buf, lo, hi): the last Q since the last wait
        self.slots = cfg.dma_slots                            # Q: transfers the DMA engine keeps in flight

    # element access -------------------------------------------------------------------------------
    def x(self, line: int, j: int) -> int:
        return field(self.buf["X"][line], j, 16)

    def s(self, line: int, e: int, j: int) -> int:
        return field(self.buf["S"][line], e * self.cfg.cols + j, 16)

    def set_o(self, line: int, j: int, value: int) -> None:
        self.buf["O"][line] = set_field(self.buf["O"][line], j, 32, F.to_unsigned(value, 32))

    # checks ---------------------------------------------------------------------------------------
    def fail(self, pc: int, msg: str):
        raise ReferenceMachineError(f"pc {pc}: {msg}")

    def touch(self, buf: str, lo: int, hi: int, pc: int, what: str, transfer: bool = False) -> None:
        """Lines [lo, hi) of buf are about to be read or written: range check, then (a compute instruction, not a
        ``transfer``: transfers move their data in issue order) hazard check against the transfers in flight."""
        if lo < 0 or hi > self.depth[buf]:
            self.fail(pc, f"{what} touches {buf} lines [{lo},{hi}) beyond depth {self.depth[buf]}")
        if self.check_hazards and not transfer:
            for ipc, b, a, z in self.inflight:
                if b == buf and a < hi and lo < z:
                    self.fail(pc, f"hazard: {what} touches {buf} lines [{lo},{hi}) while the transfer "
                                  f"at pc {ipc} ([{a},{z})) has not been waited for")

    def touch_meta(self, lo: int, n: int, pc: int, what: str) -> None:
        if lo + n > self.cfg.meta_tokens:
            self.fail(pc, f"{what} touches META records [{lo},{lo + n}) beyond {self.cfg.meta_tokens}")

    def check_ntok(self, ins, pc: int) -> None:
        plane, ntok = ins["mode"] == 1, ins["ntok"]
        if (plane and ntok != 1) or (not plane and ntok > self.cfg.rows):
            self.fail(pc, f"illegal ntok={ntok} for {'plane' if plane else 'token'} mode")

    # timing (docs/isa.md "Cycles" and "Timing", transcribed) ----------------------------------------
    def cycles(self, ins) -> int:
        """Cycles a compute instruction holds the controller (1 for the others)."""
        c = self.cfg
        R, C, L, k, E = c.rows, c.cols, c.lanes, c.act_bits, c.experts
        K = self.regs[Reg.K]
        nch = -(-K // L)
        XL = nch * L // C
        P, Ra = -(-k // R), min(k, R)
        if ins.op is Op.QUANT:
            W = k if ins["mode"] == 0 else P
            T = max(L // C, W)
            d_rq = 40 if k >= 2 else 1
            q_pass = (nch - 1) * T + L // C + 7 + W if nch else 0
            t_quant = (XL + E + 24 if E >= 2 else 0) + (XL + 5) + d_rq + q_pass + 1
            return 1 + ins["ntok"] * t_quant
        if ins.op is Op.MATMUL:
            # tiles start every max(S + C, D) cycles; the last adds 3 + min(S + C, D) + 2; S counts
            # every chunk once per weight plane (WBITS planes for integer weights, else one)
            wp = self.regs[Reg.WBITS] or 1
            steps = (nch * k if ins["mode"] == 0 else nch * P) * wp
            drain_rows = R if ins["mode"] == 0 else Ra
            t_tile = max(steps + C, drain_rows)
            return 1 + ins["ntiles"] * t_tile + 3 + min(steps + C, drain_rows) + 2
        if ins.op is Op.SCALEOUT:
            return 1 + ins["ntiles"] * ins["ntok"] + 9
        NL = -(-K // C)
        if ins.op is Op.RESADD:
            return 1 + ins["ntok"] * 2 * NL + 3
        if ins.op is Op.SILU:
            return 1 + ins["ntok"] * (NL + XL) + 10
        if ins.op is Op.RMSNORM:
            return 1 + ins["ntok"] * (2 * NL + XL + 82) + 8
        if ins.op is Op.LAYERNORM:
            return 1 + ins["ntok"] * (3 * NL + XL + 82 + 37) + 8
        if ins.op is Op.ROPE:
            return 1 + ins["ntok"] * NL + 6
        HL = self.regs[Reg.HDIM] // C
        if ins.op is Op.KVPACK:
            return 1 + ins["ntok"] * (2 * HL + 2) + 4
        if ins.op is Op.ATTN:
            N, WB, T0 = self.regs[Reg.QPOS] + ins["ntok"], c.wbuf_line_bits // 8, self.regs[Reg.TPOS]
            m = min(T0 + self.regs[Reg.KVMAX], N) - T0
            KL, EL, SL = -(-m * self.regs[Reg.HDIM] // WB), -(-m // WB), -(-N // C)
            rows = ins["ntok"] * self.regs[Reg.HGRP]
            groups = -(-rows // max(1, c.attn_rows))      # rows that share each WBUF line a pass reads
            if ins["part"] == 0:
                per_row, per_group = 3 * HL + -(-m // C), 2 * (KL + EL) + 55
            elif ins["part"] == 1:
                per_row, per_group = 2 * HL, KL + EL + 10
            else:
                per_row, per_group = 4 * HL + (3 * SL if T0 == 0 else 0), KL + EL + 8 + (45 if T0 == 0 else 0)
            return 1 + rows * per_row + groups * per_group + 4
        return 1

    def step_time(self, ins) -> None:
        """t and the transfers' done cycles after ``ins`` (t_(i+1) from t_i): a transfer waits for the transfer Q
        back to be done, its beats start ext_latency after its issue cycle or when the previous transfer's end,
        whichever is later; wait keep=n waits for all but the last n to be done, halt for all."""
        if ins.op in (Op.LOAD, Op.STORE):
            slot = self.done[-self.slots] if len(self.done) >= self.slots else 0
            s = max(self.t, slot)
            bits = ins["nlines"] * self.cfg.line_bits(BUFFERS[ins["buf"]])
            beats = -(-bits // self.cfg.ext_bw_bits)
            start = max([s + 1 + self.cfg.ext_latency] + self.done[-1:])   # after the previous data phase
            self.done.append(start + beats)
        elif ins.op in (Op.WAIT, Op.HALT):     # until at most `keep` (the latest) transfers are not done
            keep = ins["keep"] if ins.op is Op.WAIT else 0
            s = max([self.t] + self.done[:len(self.done) - keep])
        else:
            self.t += self.cycles(ins)
            return
        self.stalls += s - self.t
        self.t = s + 1

    # the program ----------------------------------------------------------------------------------
    def run(self, words: list[int]) -> RefResult:
        self.t = self.stalls = 0
        self.done: list[int] = []
        pc = 0
        while True:
            if pc >= self.cfg.imem_words or pc >= len(words):
                self.fail(pc, "ran past the program")
            ins = decode(words[pc], pc=pc)
            op = ins.op
            if op is Op.HALT:
                self.step_time(ins)
                return RefResult(self.t, self.mem, None, pc + 1, self.stalls)
            if op in VECTOR and not self.cfg.vector_unit:
                self.fail(pc, f"{op.name.lower()} on a config without the vector unit")
            if op is Op.SETR:
                reg, value = Reg(ins["reg"]), reg_value(Reg(ins["reg"]), ins["value"])
                if reg in VECTOR_REGISTERS and not self.cfg.vector_unit:
                    self.fail(pc, f"register {reg.name} on a config without the vector unit")
                if reg is Reg.HDIM and (value % 2 or (value // 2) % self.cfg.cols):
                    self.fail(pc, f"HDIM = {value}: must be even with half of it a multiple of cols")
                if reg in (Reg.KVMAX, Reg.TPOS) and value % (self.cfg.wbuf_line_bits // 8):
                    self.fail(pc, f"{reg.name} = {value}: not a multiple of a WBUF line's bytes")
                if reg is Reg.WBITS and not (value == 0 or 2 <= value <= self.cfg.weight_bits):
                    self.fail(pc, f"WBITS = {value}: allowed 0 or 2..weight_bits = {self.cfg.weight_bits}")
                if reg is Reg.BIAS and value and self.cfg.experts < 2:
                    self.fail(pc, f"BIAS = {value} on a config without a router (experts = {self.cfg.experts})")
                self.regs[reg] = value
            elif op is Op.WAIT:
                if ins["keep"] >= self.slots:
                    self.fail(pc, f"wait keep={ins['keep']}: the DMA engine keeps {self.slots} transfer(s) in flight")
                self.inflight = self.inflight[max(0, len(self.inflight) - ins["keep"]):] if ins["keep"] else []
            elif op in HANDLERS:
                getattr(self, HANDLERS[op])(ins, pc)
            self.step_time(ins)
            pc += 1

    def dma(self, ins, pc: int) -> None:
        load = ins.op is Op.LOAD
        b = BUFFERS[ins["buf"]]
        lo, n = ins["line"], ins["nlines"]
        self.touch(b, lo, lo + n, pc, "load" if load else "store", transfer=True)
        lb = self.cfg.line_bits(b) // 8
        addr = self.regs[Reg.EBASE] * 64 + ins["ext"]
        if addr + n * lb > self.cfg.ext_mem_bytes:
            self.fail(pc, "external address out of range")
        if not self.grow_memory and addr + n * lb > len(self.mem):
            self.fail(pc, f"transfer beyond the memory image ({addr + n * lb} > {len(self.mem)})")
        for a in range(n):
            at = addr + a * lb
            if load:
                chunk = bytes(self.mem[at:at + lb]).ljust(lb, b"\0")      # bytes past the image are zero
                self.buf[b][lo + a] = int.from_bytes(chunk, "little")
            else:
                if len(self.mem) < at + lb:
                    self.mem.extend(bytes(at + lb - len(self.mem)))
                self.mem[at:at + lb] = self.buf[b][lo + a].to_bytes(lb, "little")
        self.inflight = (self.inflight + [(pc, b, lo, lo + n)])[-self.slots:]

    def quant(self, ins, pc: int) -> None:
        cfg = self.cfg
        C, L, R, E, k = cfg.cols, cfg.lanes, cfg.rows, cfg.experts, cfg.act_bits
        K = self.regs[Reg.K]
        nch, XL, P = cfg.nchunks(K), cfg.xlines(K), cfg.planes_per_row
        plane, ntok = ins["mode"] == 1, ins["ntok"]
        self.check_ntok(ins, pc)
        self.touch("X", ins["x"], ins["x"] + ntok * XL, pc, "quant")
        self.touch("Q", ins["q"], ins["q"] + nch * (P if plane else k), pc, "quant")
        self.touch_meta(ins["meta"], ntok, pc, "quant")
        if E >= 2:
            self.touch("S", self.regs[Reg.ROUTER], self.regs[Reg.ROUTER] + XL, pc, "quant router")
        if E >= 1:
            self.touch("S", self.regs[Reg.SIN], self.regs[Reg.SIN] + XL, pc, "quant s_in")
        Lmask = (1 << L) - 1
        for t in range(ntok):
            x = [self.x(ins["x"] + t * XL + i // C, i % C) for i in range(K)]
            bias = 0
            if E >= 2:
                router = [[self.s(self.regs[Reg.ROUTER] + i // C, e, i % C) for i in range(K)] for e in range(E)]
                if self.regs[Reg.BIAS]:   # BIAS = 1: row 0 gives the bias, every logit is 0
                    bias = F.bias_term(x, router[0], self.regs[Reg.RSHIFT])
                    g = F.softmax_gates([0] * E)
                else:
                    g = F.softmax_gates(F.router_logits(x, router, self.regs[Reg.RSHIFT]))
            elif E == 1:
                g = [F.GATE_ONE]
            else:
                g = []
            s_in = [F.mix_scale(g, [self.s(self.regs[Reg.SIN] + i // C, e, i % C) for e in range(E)])
                    for i in range(K)] if E >= 1 else None
            v = F.quant_input(x, s_in)
            q, D = F.quantize_token(v, k)
            planes = F.activation_planes(q, k)      # plane b: bit i = element i (lanes >= K are 0)
            for c in range(nch):
                words = [(pl >> (c * L)) & Lmask for pl in planes]
                if not plane:
                    for b in range(k):       # slot t of line q + c*k + b
                        line = ins["q"] + c * k + b
                        self.buf["Q"][line] = set_field(self.buf["Q"][line], t, L, words[b])
                else:
                    for p in range(P):       # the whole line q + c*P + p: slot i = plane p*R + i
                        val = 0
                        for i in range(R):
                            b = p * R + i
                            if b < k:
                                val |= words[b] << (i * L)
                        self.buf["Q"][ins["q"] + c * P + p] = val
            self.meta[ins["meta"] + t] = (D, list(g) + [0] * (E - len(g)), bias)

    def matmul(self, ins, pc: int) -> None:
        cfg = self.cfg
        C, L, R, k = cfg.cols, cfg.lanes, cfg.rows, cfg.act_bits
        K = self.regs[Reg.K]
        nch, P, Ra = cfg.nchunks(K), cfg.planes_per_row, cfg.plane_rows
        plane, nt = ins["mode"] == 1, ins["ntiles"]
        wbits = self.regs[Reg.WBITS]
        wp = wbits or 1                      # weight planes per chunk
        self.touch("Q", ins["q"], ins["q"] + nch * (P if plane else k), pc, "matmul")
        self.touch("W", ins["w"], ins["w"] + nt * nch * wp, pc, "matmul")
        self.touch("O", ins["o"], ins["o"] + (nt if plane else nt * R), pc, "matmul")
        Lmask = (1 << L) - 1
        for n in range(nt):
            for j in range(C):
                for i in (range(1) if plane else range(R)):
                    acc = 0
                    for c in range(nch):
                        for wq in range(wp):
                            mask = sum(1 << l for l in range(L) if c * L + l < K)
                            wword = field(self.buf["W"][ins["w"] + (n * nch + c) * wp + wq], j, L, signed=False)
                            ws = F.plane_weight(wq, wbits) if wbits else 1
                            if not plane:
                                for b in range(k):
                                    a = field(self.buf["Q"][ins["q"] + c * k + b], i, L, signed=False)
                                    acc += ws * F.plane_weight(b, k) * F.plane_dot(a, wword, mask, k, wbits)
                            else:
                                for p in range(P):
                                    for ii in range(Ra):
                                        b = p * R + ii
                                        if b < k:
                                            a = field(self.buf["Q"][ins["q"] + c * P + p], ii, L, signed=False)
                                            acc += ws * F.plane_weight(b, k) * F.plane_dot(a, wword, mask, k, wbits)
                    acc = F.to_signed(acc, cfg.acc_bits)      # acc_bits wide, wraps
                    self.set_o(ins["o"] + n if plane else ins["o"] + n * R + i, j, acc)

    def scaleout(self, ins, pc: int) -> None:
        cfg = self.cfg
        C, R, E = cfg.cols, cfg.rows, cfg.experts
        plane, nt, ntok = ins["mode"] == 1, ins["ntiles"], ins["ntok"]
        self.check_ntok(ins, pc)
        self.touch("O", ins["o"], ins["o"] + (nt if plane else (nt - 1) * R + ntok), pc, "scaleout")
        if E >= 1:
            self.touch("S", ins["s"], ins["s"] + nt, pc, "scaleout")
        self.touch_meta(ins["meta"], ntok, pc, "scaleout")
        for n in range(nt):
            for t in range(ntok):
                line = ins["o"] + n if plane else ins["o"] + n * R + t
                D, g, bias = self.meta[ins["meta"] + t]
                for j in range(C):
                    if E == 0:
                        s_out = self.regs[Reg.SMUL]
                    else:
                        s_out = F.mix_scale(g, [self.s(ins["s"] + n, e, j) for e in range(E)])
                    acc = field(self.buf["O"][line], j, 32)
                    self.set_o(line, j, F.scale_output(acc, D, s_out, self.regs[Reg.OSHIFT], bias))


    # the vector unit (docs/isa.md: "Data layouts", the vector unit's semantics) ---------------------
    def token_values(self, ins, base: int, t: int, pc: int, what: str) -> list[int]:
        """The K int32 values of token t of the operand at OBUF line ``base``."""
        C, R, K = self.cfg.cols, self.cfg.rows, self.regs[Reg.K]
        plane = ins["mode"] == 1
        out = []
        for i in range(K):
            line = base + i // C if plane else base + (i // C) * R + t
            out.append(field(self.buf["O"][line], i % C, 32))
        return out

    def touch_tokens(self, ins, base: int, pc: int, what: str) -> None:
        C, R, K = self.cfg.cols, self.cfg.rows, self.regs[Reg.K]
        NL = -(-K // C)
        self.touch("O", base, base + (NL if ins["mode"] == 1 else (NL - 1) * R + ins["ntok"]), pc, what)

    def resadd(self, ins, pc: int) -> None:
        C, R, K = self.cfg.cols, self.cfg.rows, self.regs[Reg.K]
        NL, plane = -(-K // C), ins["mode"] == 1
        self.check_ntok(ins, pc)
        span = NL if plane else (NL - 1) * R + ins["ntok"]
        r0, o0 = ins["r"], ins["o"]
        if r0 != o0 and r0 < o0 + span and o0 < r0 + span:
            self.fail(pc, "resadd: addend and residual lines overlap")
        self.touch_tokens(ins, r0, pc, "resadd residual")
        self.touch_tokens(ins, o0, pc, "resadd addend")
        for t in range(ins["ntok"]):
            for n in range(NL):    # whole lines, values past K included
                rl, ol = (r0 + n, o0 + n) if plane else (r0 + n * R + t, o0 + n * R + t)
                old_r, old_o = self.buf["O"][rl], self.buf["O"][ol]
                for j in range(C):
                    self.set_o(rl, j, F.residual_add(field(old_r, j, 32), field(old_o, j, 32)))

    def rope(self, ins, pc: int) -> None:
        """Rotate-half rotary embedding of each head of each token, in place, with its table from SBUF."""
        C, R, K, hd = self.cfg.cols, self.cfg.rows, self.regs[Reg.K], self.regs[Reg.HDIM]
        self.check_ntok(ins, pc)
        if hd == 0 or K % hd:
            self.fail(pc, f"rope: K = {K} is not a whole number of heads of HDIM = {hd}")
        h = hd // 2
        self.touch_tokens(ins, ins["q"], pc, "rope values")
        self.touch("S", ins["s"], ins["s"] + ins["ntok"] * 2 * (h // C), pc, "rope table")
        plane = ins["mode"] == 1
        for t in range(ins["ntok"]):
            tab = ins["s"] + t * 2 * (h // C)
            cos = [self.s(tab + j // C, 0, j % C) for j in range(h)]
            sin = [self.s(tab + h // C + j // C, 0, j % C) for j in range(h)]
            x = self.token_values(ins, ins["q"], t, pc, "values")
            y = []
            for g in range(K // hd):
                y += F.rope_rotate(x[g * hd:(g + 1) * hd], cos, sin)
            for i, v in enumerate(y):
                line = ins["q"] + i // C if plane else ins["q"] + (i // C) * R + t
                self.set_o(line, i % C, v)

    def vector_to_x(self, ins, pc: int) -> None:
        """silu, rmsnorm, layernorm: each token's K int16 values to XBUF lines x + t*XL + i // C, zeros past K."""
        cfg, regs = self.cfg, self.regs
        C, L, K = cfg.cols, cfg.lanes, regs[Reg.K]
        XL = -(-K // L) * L // C
        self.check_ntok(ins, pc)
        if ins.op is Op.SILU:
            self.touch_tokens(ins, ins["g"], pc, "silu gate")
            self.touch_tokens(ins, ins["u"], pc, "silu up")
        elif ins.op is Op.RMSNORM:
            self.touch_tokens(ins, ins["r"], pc, "rmsnorm residual")
            self.touch("S", ins["s"], ins["s"] + -(-K // C), pc, "rmsnorm gains")
        else:
            self.touch_tokens(ins, ins["r"], pc, "layernorm input")
        self.touch("X", ins["x"], ins["x"] + ins["ntok"] * XL, pc, ins.op.name.lower())
        for t in range(ins["ntok"]):
            if ins.op is Op.SILU:
                h = F.silu_gate(self.token_values(ins, ins["g"], t, pc, "gate"),
                                self.token_values(ins, ins["u"], t, pc, "up"), cfg.out_frac_bits)
                x = [F.requantize(v, cfg.out_frac_bits, regs[Reg.XFRAC], F.X_BITS) for v in h]
            elif ins.op is Op.LAYERNORM:
                x = F.layer_norm(self.token_values(ins, ins["r"], t, pc, "input"), regs[Reg.EPS], regs[Reg.XFRAC])
            else:
                gains = [self.s(ins["s"] + i // C, 0, i % C) for i in range(K)]
                x = F.rms_norm(self.token_values(ins, ins["r"], t, pc, "residual"), gains, regs[Reg.GEXP],
                               regs[Reg.EPS], regs[Reg.XFRAC])
            x += [0] * (XL * C - K)
            for n in range(XL):
                line = 0
                for j in range(C):
                    line = set_field(line, j, 16, F.to_unsigned(x[n * C + j], 16))
                self.buf["X"][ins["x"] + t * XL + n] = line


    # attention (docs/isa.md: the KV-cache region, kvpack, attn) -----------------------------------
    def head_values(self, base: int, t: int, n: int, plane: bool) -> list[int]:
        """Values 0..n-1 of token t of an operand at OBUF ``base`` (an operand of n values)."""
        C, R = self.cfg.cols, self.cfg.rows
        return [field(self.buf["O"][base + i // C if plane else base + (i // C) * R + t], i % C, 32)
                for i in range(n)]

    def half_lines(self) -> int:
        """Lines of one half of the region at KVW, or of a tile: KVMAX / WB pages of HDIM + 1 lines."""
        return self.regs[Reg.KVMAX] // (self.cfg.wbuf_line_bits // 8) * (self.regs[Reg.HDIM] + 1)

    def kv_byte(self, p: int, part: str, i: int = 0) -> int:
        """Byte of position p (>= TPOS) in a half from its first line (docs/isa.md: pages of P = WB positions,
        each [rows P x H][exponents P]): ``part`` "m" (row byte i) or "e"."""
        H, P = self.regs[Reg.HDIM], self.cfg.wbuf_line_bits // 8
        j = p - self.regs[Reg.TPOS]
        page = (j // P) * P * (H + 1)
        return page + (j % P) * H + i if part == "m" else page + P * H + j % P

    def kv_get(self, first: int, b: int) -> int:
        WB = self.cfg.wbuf_line_bits // 8
        return (self.buf["W"][first + b // WB] >> (8 * (b % WB))) & 0xFF

    def kv_set(self, first: int, b: int, value: int) -> None:
        WB = self.cfg.wbuf_line_bits // 8
        self.buf["W"][first + b // WB] = set_field(self.buf["W"][first + b // WB], b % WB, 8, value & 0xFF)

    def kv_rows(self, first: int, lo: int, hi: int) -> list[tuple[list[int], int]]:
        """(mantissas, exponent read as at most KV_EXP_MAX) of positions lo..hi-1 of the half at line ``first``."""
        H = self.regs[Reg.HDIM]
        return [([F.to_signed(self.kv_get(first, self.kv_byte(p, "m", i)), 8) for i in range(H)],
                 min(self.kv_get(first, self.kv_byte(p, "e")), F.KV_EXP_MAX)) for p in range(lo, hi)]

    def kvpack(self, ins, pc: int) -> None:
        C, R, H, regs = self.cfg.cols, self.cfg.rows, self.regs[Reg.HDIM], self.regs
        self.check_ntok(ins, pc)
        if H == 0 or regs[Reg.QPOS] < regs[Reg.TPOS] or regs[Reg.QPOS] + ins["ntok"] > regs[Reg.TPOS] + regs[Reg.KVMAX]:
            self.fail(pc, f"kvpack: HDIM = {H}, positions {regs[Reg.QPOS]}..+{ins['ntok']} outside the region "
                          f"{regs[Reg.TPOS]}..+{regs[Reg.KVMAX]}")
        plane, HL = ins["mode"] == 1, H // C
        self.touch("O", ins["o"], ins["o"] + (HL if plane else (HL - 1) * R + ins["ntok"]), pc, "kvpack values")
        half = self.half_lines()
        self.touch("W", regs[Reg.KVW], regs[Reg.KVW] + 2 * half, pc, "kvpack region")
        first = regs[Reg.KVW] + ins["kind"] * half
        for t in range(ins["ntok"]):
            p = regs[Reg.QPOS] + t
            m, e = F.block_quantize(self.head_values(ins["o"], t, H, plane), 8)
            for i, v in enumerate(m):
                self.kv_set(first, self.kv_byte(p, "m", i), v)
            self.kv_set(first, self.kv_byte(p, "e"), e)

    def scores(self, qh: tuple[list[int], int], keys: list[tuple[list[int], int]]) -> list[int]:
        """attention_head's scores of one query row against ``keys``."""
        F_, sc = self.cfg.out_frac_bits, F.attention_scale(len(qh[0]))
        return [F.sat(F.shift_round(sum(a * b for a, b in zip(qh[0], km)) * sc, 2 * F_ + 7 - qh[1] - ek), 32)
                for km, ek in keys]

    @staticmethod
    def weights(scores: list[int]) -> list[int]:
        """attention_head's weights from the scores a row sees."""
        p_ = [F.exp2_weight(max(scores) - s_) for s_ in scores]
        rcp = (1 << 46) // sum(p_)
        return [F.rshift_round(v * rcp, 16) for v in p_]

    def write_x(self, ins, t: int, g: int, o: list[int]) -> None:
        C, HL = self.cfg.cols, self.regs[Reg.HDIM] // self.cfg.cols
        XL = -(-self.regs[Reg.K] // self.cfg.lanes) * self.cfg.lanes // C
        for i, v in enumerate(o):
            x = F.requantize(v, self.cfg.out_frac_bits, self.regs[Reg.XFRAC], F.X_BITS)
            line = ins["x"] + t * XL + g * HL + i // C
            self.buf["X"][line] = set_field(self.buf["X"][line], i % C, 16, F.to_unsigned(x, 16))

    def attn(self, ins, pc: int) -> None:
        cfg, regs = self.cfg, self.regs
        C, R, L, H, G = cfg.cols, cfg.rows, cfg.lanes, regs[Reg.HDIM], regs[Reg.HGRP]
        part, T0, M = ins["part"], regs[Reg.TPOS], regs[Reg.KVMAX]
        self.check_ntok(ins, pc)
        plane, HL, ntok = ins["mode"] == 1, H // C, ins["ntok"]
        N, XL = regs[Reg.QPOS] + ntok, -(-regs[Reg.K] // L) * L // C
        if H == 0 or G == 0 or (part == 0 and (T0 != 0 or N > M)) or (part != 0 and T0 >= N):
            self.fail(pc, f"attn part {part}: HDIM = {H}, HGRP = {G}, TPOS = {T0}, KVMAX = {M}, QPOS + ntok = {N}")
        SL, end = -(-N // C), min(T0 + M, N)
        if part != 2:
            self.touch("O", ins["q"], ins["q"] + (G * HL if plane else (G * HL - 1) * R + ntok), pc, "attn queries")
        half = self.half_lines()
        self.touch("W", regs[Reg.KVW], regs[Reg.KVW] + (2 * half if part == 0 else half), pc, "attn region")
        self.touch("O", regs[Reg.SCR], regs[Reg.SCR] + ntok * G * SL, pc, "attn scratch")
        if part == 2:
            self.touch("O", regs[Reg.ACC], regs[Reg.ACC] + ntok * G * 2 * HL, pc, "attn accumulators")
        if part == 0 or (part == 2 and T0 + M >= N):
            self.touch("X", ins["x"], ins["x"] + (ntok - 1) * XL + G * HL, pc, "attn output")
        F_ = cfg.out_frac_bits
        o_at = lambda line, j: F.to_signed(field(self.buf["O"][line], j, 32), 32)   # noqa: E731
        if part == 0:
            keys = self.kv_rows(regs[Reg.KVW], 0, N)
            vals = self.kv_rows(regs[Reg.KVW] + half, 0, N)
            for t in range(ntok):
                seen = regs[Reg.QPOS] + t + 1
                q_all = self.head_values(ins["q"], t, G * H, plane)
                for g in range(G):
                    qh = F.block_quantize(q_all[g * H:(g + 1) * H], 8)
                    self.write_x(ins, t, g, F.attention_head(qh, keys[:seen], vals[:seen], F_))
                    w = self.weights(self.scores(qh, keys[:seen]))     # the row's scratch: its weights
                    w += [0] * (SL * C - len(w))
                    for j, v in enumerate(w):
                        self.set_o(regs[Reg.SCR] + (t * G + g) * SL + j // C, j % C, v)
            return
        rows = self.kv_rows(regs[Reg.KVW], T0, end)
        for t in range(ntok):
            seen = regs[Reg.QPOS] + t + 1
            q_all = self.head_values(ins["q"], t, G * H, plane) if part == 1 else None
            for g in range(G):
                scr = regs[Reg.SCR] + (t * G + g) * SL
                if part == 1:
                    qh = F.block_quantize(q_all[g * H:(g + 1) * H], 8)
                    for p, s_ in zip(range(T0, end), self.scores(qh, rows)):
                        self.set_o(scr + p // C, p % C, s_ if p < seen else 0)
                    continue
                if T0 == 0:
                    w = self.weights([o_at(scr + p // C, p % C) for p in range(seen)])
                    w += [0] * (SL * C - len(w))
                    for p, v in enumerate(w):
                        self.set_o(scr + p // C, p % C, v)
                acc_line = regs[Reg.ACC] + (t * G + g) * 2 * HL
                acc = []
                for i in range(H):
                    a = 0 if T0 == 0 else (field(self.buf["O"][acc_line + i // C], i % C, 32, signed=False)
                                           | field(self.buf["O"][acc_line + HL + i // C], i % C, 32, signed=False)
                                           << 32)
                    for p, (vm, ev) in zip(range(T0, end), rows):
                        a += o_at(scr + p // C, p % C) * (vm[i] << ev)
                    a %= 1 << 64
                    self.set_o(acc_line + i // C, i % C, a & 0xFFFFFFFF)
                    self.set_o(acc_line + HL + i // C, i % C, a >> 32)
                    acc.append(F.to_signed(a, 64))
                if T0 + M >= N:
                    self.write_x(ins, t, g, [F.sat(F.rshift_round(a, 30), 32) for a in acc])


def run(cfg: AcceleratorConfig, words: list[int], memory: bytes, **options) -> RefResult:
    """Run a program on a fresh machine (options: check_hazards, grow_memory)."""
    return ReferenceMachine(cfg, memory, **options).run(words)


def golden(lin, cfg: AcceleratorConfig, x: list[list[int]]) -> list[list[int]]:
    """The reference y_int of an exported layer, per token, straight from bitmos.formats."""
    k = lin.act_bits
    E = lin.experts
    xf = cfg.x_frac_bits if lin.x_frac is None else lin.x_frac   # the layer's calibrated input format, if any
    if lin.bias is not None:   # fbi: the bias shift into output units
        rshift = xf + lin.bias_exp - cfg.out_frac_bits
    elif E >= 2:
        rshift = xf + lin.router_exp - F.LOGIT_FRAC
    if E >= 1:
        oshift = xf + lin.s_in_exp + lin.s_out_exp - cfg.out_frac_bits
    else:
        oshift = xf + F.E0_V_SHIFT + lin.smul_exp - cfg.out_frac_bits   # v = x * 2^E0_V_SHIFT
    signs = lin.weights().astype(int).tolist()    # +-1, or {-1, 0, +1} for ternary layers
    out = []
    for xt in x:
        if E >= 2:
            g = F.softmax_gates(F.router_logits(xt, lin.router.astype(int).tolist(), rshift))
        elif E == 1:
            g = [F.GATE_ONE]
        s_in = [F.mix_scale(g, [int(lin.s_in[e, i]) for e in range(E)]) for i in range(lin.d_in)] if E >= 1 else None
        v = F.quant_input(list(xt), s_in)
        q, D = F.quantize_token(v, k)
        bias = F.bias_term(list(xt), lin.bias.astype(int).tolist(), rshift) if lin.bias is not None else 0
        row = []
        for o in range(lin.d_out):
            acc = sum(a * b for a, b in zip(q, signs[o]))
            s_out = F.mix_scale(g, [int(lin.s_out[e, o]) for e in range(E)]) if E >= 1 else lin.smul
            row.append(F.scale_output(acc, D, s_out, oshift, bias))
        out.append(row)
    return out
