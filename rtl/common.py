"""Helpers every block uses: config checking and the arithmetic of bitmos.formats (rounding, saturation, mixing)."""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import formats as F
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig

__all__ = ["Countdown", "RecordQueue", "due_counter_bits", "ShiftSaturation", "AMARANTH_OPS", "check_config", "rshift_round", "sat", "mix_scale", "mix_sum", "registered",
           "pipelined_mix_scale", "pipelined_product", "rounding_half", "addr_bits", "signed_lanes", "expert_lanes",
           "first_max_onehot", "onehot_select"]


#: The contract's definitions (bitmos.semantics) evaluated on Amaranth values: a choice is a mux.
AMARANTH_OPS = sem.Ops(select=Mux)


def check_config(cfg, name: str = "cfg") -> AcceleratorConfig:
    """Return ``cfg`` if it is an AcceleratorConfig the RTL supports, else raise naming ``name``.

    Raises
    ------
    TypeError
        ``cfg`` is not an :class:`AcceleratorConfig`.
    ValueError
        ``ext_latency`` is 0 (the external port answers a request no earlier than the next cycle), or
        a DMA-reachable line width (X, W, S, O) is not a multiple of ``ext_bw_bits`` (the DMA engine
        assembles one line from whole beats), or ``vector_unit`` is 1 (the RTL does not build that unit yet).
    """
    if not isinstance(cfg, AcceleratorConfig):
        raise TypeError(f"{name} must be an AcceleratorConfig, not {cfg!r}")
    if cfg.vector_unit:
        raise ValueError(f"{name}.vector_unit = 1: the RTL has no vector unit yet (residual add, SiLU, RMSNorm "
                         "run on the simulator only); use a config with vector_unit = 0 for the RTL")
    if cfg.ext_latency < 1:
        raise ValueError(f"{name}.ext_latency must be at least 1 for the RTL, not {cfg.ext_latency!r}")
    for buf in "XWSO":
        if cfg.line_bits(buf) % cfg.ext_bw_bits:
            raise ValueError(f"{name}.ext_bw_bits = {cfg.ext_bw_bits!r} must divide the {buf} line width "
                             f"{cfg.line_bits(buf)} for the RTL DMA engine")
    return cfg


def unsupported_reason(cfg: AcceleratorConfig) -> str | None:
    """Why the RTL cannot build ``cfg`` (:func:`check_config`'s message), or None if it can."""
    try:
        check_config(cfg)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def refuse_unsupported(cfg: AcceleratorConfig) -> None:
    """A one-line ConfigError, before anything is built, if the RTL cannot build ``cfg``."""
    why = unsupported_reason(cfg)
    if why is not None:
        from bitmos.errors import ConfigError
        raise ConfigError(f"config {cfg.name!r} is not supported by the RTL: {why}")


def addr_bits(depth: int) -> int:
    """Address width of a memory of ``depth`` rows (at least 1)."""
    return max(1, ceil_log2(depth))


def rounding_half(s: Value) -> Value:
    """2^(s-1) for a shift ``s`` >= 1, 0 for s = 0: what formats.rshift_round adds before shifting."""
    return (Value.cast(1).as_unsigned() << s) >> 1


def rshift_round(v: Value, s: Value, width: int) -> Value:
    """formats.rshift_round for a signed ``v`` and a variable shift ``s`` >= 0; result ``width`` bits."""
    return ((v.as_signed() + rounding_half(s)) >> s)[:width].as_signed()


class ShiftSaturation:
    """``formats.sat(formats.rshift_round(v, s), out_bits)`` for signed ``in_bits``-bit values ``v`` and a shift
    ``s`` that is a layer register: what depends on ``s`` alone is registered (one cycle after ``s`` changes),
    so each call is an add and a shift beside two compares of ``v`` against registered thresholds, not the
    rounding half's decode, the add, the shift and the saturation's compares in series.

    With h = 2^(s-1) (0 at s = 0) and r = (v + h) >> s: r >= 2^(b-1) iff v >= 2^(b-1+s) - h, which is
    (2^b - 1) << (s - 1) for s >= 1, and r < -2^(b-1) iff v < -(2^b + 1) << (s - 1): constants shifted, no
    subtract. Past the range of ``v`` a threshold is clamped to one ``v`` never reaches; for s >= in_bits,
    r is 0 for every ``v``.

    ``half_added``: ``v`` already holds the rounding half (a pipeline added it a stage before), so each call is
    ``sat(v >> s, out_bits)``, and the thresholds +-2^(b-1+s) are powers of two: v >> s saturates iff v's bits
    from b-1+s up are not all equal to its sign, an AND-OR over a registered mask of those bits (a few LUT levels)
    instead of two compares on carry chains as long as ``v``.
    """

    def __init__(self, m: Module, s: Value, in_bits: int, out_bits: int, name: str, *, half_added: bool = False):
        if not 1 <= out_bits < in_bits:
            raise ValueError(f"out_bits must be in 1..in_bits - 1, not {out_bits} (in_bits {in_bits})")
        self.in_bits, self.out_bits, self.s, self.half_added = in_bits, out_bits, s, half_added
        if half_added:
            # bits b-1+s .. in_bits-1 of v (none once b-1+s >= in_bits)
            self.mask = registered(m, (Const((1 << in_bits) - 1, in_bits) << (s + (out_bits - 1)))[:in_bits],
                                   f"{name}_mask")
            return
        top = 1 << (in_bits - 1)           # |v| <= top: a threshold at +-top is never passed
        sm1 = (s - 1)[:len(s)]             # s - 1 for s >= 1 (unused at s = 0)
        self.half = registered(m, Mux(s < in_bits, (Const(1, in_bits) << s)[1:in_bits], 0), f"{name}_half")
        self.zero = registered(m, s >= in_bits, f"{name}_zero")
        hi = Mux(s == 0, 1 << (out_bits - 1), (Const((1 << out_bits) - 1, in_bits + 1) << sm1)[:in_bits + 1])
        lo = Mux(s == 0, 1 << (out_bits - 1), (Const((1 << out_bits) + 1, in_bits + 1) << sm1)[:in_bits + 1])
        self.hi = registered(m, Mux(s >= in_bits - out_bits + 1, top, hi).as_signed(), f"{name}_hi")
        self.lo = registered(m, Mux(s >= in_bits - out_bits, -top, -lo.as_signed()).as_signed(), f"{name}_lo")

    def __call__(self, v: Value) -> Value:
        b = self.out_bits
        v = v.as_signed()
        if self.half_added:
            if len(v) != self.in_bits:
                raise ValueError(f"expected a {self.in_bits}-bit value, got {len(v)} bits")
            negative = v[-1]
            high = ((v.as_unsigned() ^ negative.replicate(self.in_bits)) & self.mask).any()
            above, below = high & ~negative, high & negative
            shifted = (v >> self.s)[:b].as_signed()
        else:
            above, below = v >= self.hi, v < self.lo
            shifted = Mux(self.zero, 0, ((v + self.half) >> self.s)[:b].as_signed())
        return Mux(above, (1 << (b - 1)) - 1, Mux(below, -(1 << (b - 1)), shifted))[:b].as_signed()


def sat(v: Value, bits: int) -> Value:
    """formats.sat: clamp a signed value to ``bits`` bits."""
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    return Mux(v > hi, hi, Mux(v < lo, lo, v))[:bits].as_signed()


def mix_scale(gates, scales) -> Value:
    """formats.mix_scale: ``sat16(rshift_round(sum_e gates[e] * scales[e], GATE_FRAC))`` for one lane.

    ``gates`` are unsigned Q1.15 values, ``scales`` the lane's signed 16-bit expert scales (one per gate).
    """
    return mix_sum(g * s for g, s in zip(gates, scales, strict=True))


def mix_sum(products) -> Value:
    """The second half of :func:`mix_scale`: the rounded, saturated sum of the gate x scale products
    (the pipelined units register the products first)."""
    total = sum(products)
    # 40 bits: E <= 8 products of a 16-bit gate and a 16-bit scale (each below 2^31), plus the rounding half
    return sat(rshift_round(total, Const(F.GATE_FRAC, 4), 40), F.SCALE_BITS)


def registered(m, value: Value, name: str) -> Signal:
    """A register of ``value``'s shape that takes ``value`` every cycle (one pipeline stage)."""
    reg = Signal(value.shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


def registered_masked(m, values: list[Value], keep: Value, name: str) -> list[Signal]:
    """Each of ``values`` registered where its bit of ``keep`` holds, else 0 (a one-bit ``keep`` serves
    all); register i is named ``name.format(i)``.

    Used where the values come straight from a block RAM and the mask changes no result (a lane past K
    adds 0 either way; an invalid line is not written): a register that takes a block RAM's read data
    unchanged is folded by Yosys into the memory's read port (its transparency logic then stays behind
    the block RAM), so whatever reads the register would still hang off the block RAM (docs/fpga.md)."""
    return [registered(m, Mux(keep if len(keep) == 1 else keep[i], v, 0), name.format(i))
            for i, v in enumerate(values)]


def first_max_onehot(m, values: list[Value], name: str) -> Signal:
    """One-hot of the first largest of ``values`` (ties: the lowest index), from all pairwise compares side by
    side: e is it iff v_e > v_j for every j < e and v_e >= v_j for every j > e. One compare deep, then an AND: a
    chain or tree of compare-and-select steps puts one compare per level in series, each feeding the next
    one's operand through a select (the small chip's critical path on an ECP5 twice, docs/fpga.md)."""
    n = len(values)
    greater = {(i, j): values[i] > values[j] for i in range(n) for j in range(i)}
    onehot = Signal(n, name=name)
    m.d.comb += [onehot[e].eq(Cat(*(greater[(e, j)] for j in range(e)),
                                  *(~greater[(j, e)] for j in range(e + 1, n))).all()) for e in range(n)]
    return onehot


def onehot_select(onehot: Value, values: list[Value]) -> Value:
    """The value whose bit of ``onehot`` is set (an AND-OR, no mux chain); 0 if none is."""
    width = max(len(v) for v in values)
    terms = [v & onehot[e].replicate(width) for e, v in enumerate(values)]
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


#: Limb width of :func:`pipelined_product`: a 17-bit unsigned limb is an 18-bit signed DSP operand.
PRODUCT_LIMB_BITS = 17


def _limbs(v: Value) -> list[tuple[int, Value]]:
    """(bit offset, limb) of ``v`` in PRODUCT_LIMB_BITS pieces, low ones unsigned, a signed value's top one signed."""
    v = Value.cast(v)
    n, signed = len(v), v.shape().signed
    out = []
    for lo in range(0, n, PRODUCT_LIMB_BITS):
        hi = min(lo + PRODUCT_LIMB_BITS, n)
        out.append((lo, v[lo:hi].as_signed() if signed and hi == n else v[lo:hi]))
    return out


def pipelined_product(m, a: Value, b: Value, name: str) -> Signal:
    """``a * b`` over two stages, exact: every limb x limb product (one MULT18X18D each) is registered,
    then their shifted sum (the value is out two cycles after its inputs). A wide product in one
    stage is several DSP blocks and an adder tree, the longest path of the scale unit otherwise."""
    terms = [registered(m, la * lb, f"{name}_p{i}_{j}") << (oa + ob)
             for i, (oa, la) in enumerate(_limbs(a)) for j, (ob, lb) in enumerate(_limbs(b))]
    return registered(m, sum(terms[1:], terms[0]), name)


def pipelined_mix_scale(m, gates, scales, name: str) -> Signal:
    """:func:`mix_scale` over two stages: the gate x scale products are registered, then their rounded,
    saturated sum (the value is out two cycles after its inputs)."""
    products = [registered(m, g * s, f"{name}_gs{e}") for e, (g, s) in enumerate(zip(gates, scales, strict=True))]
    return registered(m, mix_sum(products), name)


def signed_lanes(line: Value, count: int, width: int) -> list[Value]:
    """Elements 0..count-1 of a little-endian ``line`` of signed ``width``-bit elements."""
    return [line.word_select(j, width).as_signed() for j in range(count)]


def expert_lanes(line: Value, experts: int, cols: int) -> list[list[Value]]:
    """An SBUF line as ``[e][j]``: expert (or router row) e's int16 for lane j is element ``e*cols + j``."""
    return [signed_lanes(line, experts * cols, F.SCALE_BITS)[e * cols:(e + 1) * cols] for e in range(experts)]


def due_counter_bits(latency: int) -> int:
    """Width of a free-running cycle counter against which an event due at most ``latency`` cycles ahead
    is matched by equality (a store's start in the DMA engine, a read's first beat in the memory model):
    ``2^bits > latency + 1`` makes "the counter equals it" unambiguous."""
    return (latency + 1).bit_length() + 1


class RecordQueue(wiring.Component):
    """First in, first out: up to ``depth`` records of ``layout`` in registers.

    ``w`` takes a record in a cycle with ``w.valid`` and ``w.ready`` (not full); the oldest is on
    ``r.payload`` while ``r.valid`` and leaves in a cycle ``r.ready`` is high. A record written in a
    cycle is readable from the next, as in ``amaranth.lib.fifo.SyncFIFO``, whose pointers are zero
    bits wide at depth 1 (a ``[-1:0]`` wire in the Verilog); these are one bit at least.

    Parameters
    ----------
    layout : data.Layout
    depth : int
    """

    def __init__(self, layout: data.Layout, depth: int):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"a record queue holds at least one record, not {depth!r}")
        self._layout, self._depth = data.Layout.cast(layout), depth
        super().__init__({"w": In(stream.Signature(layout)), "r": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        depth, bits = self._depth, self._layout.size
        entries = Array(Signal(bits, name=f"entry{i}") for i in range(depth))
        head, tail = Signal(max(1, ceil_log2(depth))), Signal(max(1, ceil_log2(depth)))
        level = Signal(range(depth + 1))
        put = self.w.valid & self.w.ready
        take = self.r.valid & self.r.ready
        m.d.comb += [self.w.ready.eq(level != depth), self.r.valid.eq(level != 0),
                     self.r.payload.eq(entries[head])]
        with m.If(put):
            m.d.sync += [entries[tail].eq(self.w.payload), tail.eq(Mux(tail == depth - 1, 0, tail + 1))]
        with m.If(take):
            m.d.sync += head.eq(Mux(head == depth - 1, 0, head + 1))
        with m.If(put & ~take):
            m.d.sync += level.eq(level + 1)
        with m.Elif(take & ~put):
            m.d.sync += level.eq(level - 1)
        return m


class Countdown(wiring.Component):
    """A down-counter whose "is zero" is a register, so a wide zero test is not on the path it gates.

    ``load`` sets the count to ``value``; otherwise a non-zero count goes down by one each cycle.
    ``zero`` is registered with the count (``value == 0`` on a load, ``count == 1`` on a tick).
    """

    def __init__(self, width: int):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"Countdown width must be a positive integer, not {width!r}")
        super().__init__({"load": In(1), "value": In(width), "count": Out(width), "zero": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.load):
            m.d.sync += [self.count.eq(self.value), self.zero.eq(self.value == 0)]
        with m.Elif(~self.zero):
            m.d.sync += [self.count.eq(self.count - 1), self.zero.eq(self.count == 1)]
        return m
