"""XnorPopcountPE: one processing element of the systolic array.

A PE holds only what depends on both its activation and its weight word: the popcount of the lanes
where they agree, scaled by the plane's significance. The terms that depend on the activation alone
(the active-lane count ``total`` of ``dot = 2*agree - total`` and the sign plane's two's complement
correction) are the same for every PE of a row, so the array computes them once per row (its "row
term", ``bitmos.rtl.array``) and adds them at the drain. Per valid step the accumulator adds

* AND form (k >= 2; ``a`` already masked): ``x = popcount(a & w) << (plane + 1)``, and for the sign
  plane k-1 its ones' complement ``~x = -x - 1`` (the row term adds ``total << plane`` and the 1 back);
* XNOR form (k = 1): ``x = popcount(~(a ^ w) & mask) << 1`` (the row term adds ``-total``);
* integer weights (``weight_bits`` >= 2, a step with ``wint``; ``w`` is weight plane ``wplane`` of
  0/1 bits): ``x = popcount(a & w) << (plane + wplane)``, its ones' complement when exactly one of
  the two is a sign plane (``plane = k-1``, ``wneg``); the row term adds the 1 back and no total.

Row term plus accumulator is then ``formats.plane_weight(plane, k) * formats.plane_dot(a, w, mask, k)``
summed over the steps, modulo 2**acc_bits. Pipeline (``bitmos.semantics.ARRAY_PE_PIPELINE`` = 2): the
popcount tree is registered halfway and at its end, the accumulator adds it two cycles after the step. ``clear`` zeroes the accumulator
(the array clears a row as it drains it), so no step needs a "first" flag.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos.semantics import ARRAY_PE_PIPELINE

__all__ = ["XnorPopcountPE", "popcount", "popcount_levels", "popcount_split"]


def _column_heights(heights: list[int]) -> list[int]:
    """One level of :func:`popcount`'s reduction, counted: of each weight's ``n`` bits, every three
    become a sum (same weight) and a carry (next weight); ``n % 3`` pass through."""
    nxt = [0] * (len(heights) + 1)
    for w, n in enumerate(heights):
        nxt[w] += n // 3 + n % 3
        nxt[w + 1] += n // 3
    while nxt and not nxt[-1]:
        nxt.pop()
    return nxt


def popcount_levels(n: int) -> int:
    """Full-adder levels of :func:`popcount` for ``n`` bits."""
    heights, level = [n], 0
    while any(h > 2 for h in heights):
        heights, level = _column_heights(heights), level + 1
    return level


def popcount(m, bits, name="pop", register_at=None):
    """Number of set bits of ``bits`` (a Value or a list of 1-bit Values), as a compressor tree
    whose full adders are added to module ``m``.

    Bits of equal weight are reduced with full adders (3:2 compressors, one LUT4 per output) until
    every weight holds at most two bits (a Dadda-style reduction, no carry chain); the two remaining
    rows are added once, which Yosys maps to one CCU2C carry chain. A balanced tree of ``+`` (the
    previous form) puts a carry chain on every level, wasting most of each chain on 1- and 2-bit sums.
    With ``register_at = n`` the bits left after n levels are registered (``m.d.sync``), so the
    result comes one cycle later.

    The full adders of one weight and level are one vector operation: a column of n bits (a signal)
    is cut into three slices of ``n // 3`` bits, ``sum = a ^ b ^ c`` and ``carry = majority(a, b, c)``
    bit by bit (the same full adders, as many per level as :func:`popcount_levels` counts, one LUT4
    per output bit), and the next level's column is one signal again (sums, the bits left over, the
    carries of the weight below). The hardware is the same as with one signal per full adder; the
    Verilator model computes each column and level with a few word operations instead of a dozen bit
    operations per full adder (docs/rtl.md, "Speed").
    """
    if not isinstance(bits, list):
        v = Signal(len(bits), name=f"{name}_in")
        m.d.comb += v.eq(bits)
        bits = [v[i] for i in range(len(v))]
    if not bits:
        return Const(0, 1)
    cols = [Cat(*bits)]                      # cols[w]: the bits of weight 2**w, one Value
    level = 0
    while True:
        if level == register_at:
            regs = []
            for w, col in enumerate(cols):
                r = Signal(len(col), name=f"{name}_r{level}_w{w}")
                m.d.sync += r.eq(col)
                regs.append(r)
            cols = regs
        if not any(len(c) > 2 for c in cols):
            break
        parts = [[] for _ in range(len(cols) + 1)]
        for w, col in enumerate(cols):
            n = len(col)
            k = n // 3
            if k:
                a, b, c = col[:k], col[k:2 * k], col[2 * k:3 * k]
                s, cy = Signal(k, name=f"{name}_l{level}_w{w}_s"), Signal(k, name=f"{name}_l{level}_w{w}_c")
                m.d.comb += [s.eq(a ^ b ^ c), cy.eq((a & b) | (a & c) | (b & c))]
                parts[w].append(s)
                parts[w + 1].append(cy)
            if n > 3 * k:
                parts[w].append(col[3 * k:])
        while parts and not parts[-1]:
            parts.pop()
        level += 1
        cols = []
        for w, ps in enumerate(parts):
            col = Signal(sum(len(p) for p in ps), name=f"{name}_v{level}_w{w}")
            m.d.comb += col.eq(Cat(*ps))
            cols.append(col)
    assert register_at is None or level >= register_at
    assert level == popcount_levels(len(bits))
    row0 = Cat(*(c[0] if len(c) > 0 else Const(0, 1) for c in cols))
    row1 = Cat(*(c[1] if len(c) > 1 else Const(0, 1) for c in cols))
    if all(len(c) < 2 for c in cols):
        return row0
    return row0 + row1


def popcount_split(n: int) -> int:
    """Where the pipelined PE registers its popcount tree of ``n`` bits: after half its levels."""
    return (popcount_levels(n) + 1) // 2


class XnorPopcountPE(wiring.Component):
    """One bit-serial XNOR/AND-popcount processing element (see the module docstring).

    Parameters
    ----------
    lanes : int
        L, binary lanes per cycle (>= 1).
    act_bits : int
        k, activation bits (1, 2, 4 or 8); k = 1 selects the XNOR form.
    acc_bits : int
        Accumulator width (16..32); the sum wraps in two's complement.
    weight_bits : int
        Widest integer weight (1 = sign weights only, the default; 2..8 add the integer form and
        needs act_bits >= 2).

    Attributes
    ----------
    a, w : In(lanes)
        Activation plane word (AND form: already masked by the chunk's lane mask), weight sign word
        (1 = +1).
    mask : In(lanes)
        Lane mask; used by the XNOR form only (the AND form gets ``a`` masked).
    plane : In(ceil_log2(act_bits)) (at least 1 bit)
        Index b of the activation plane.
    wint, wplane, wneg : In(1), In(ceil_log2(weight_bits)), In(1) (``weight_bits`` >= 2 only)
        This step is one plane of integer weights; its index p; it is the weight's sign plane.
    valid : In(1)
        Accumulate this step (the add happens ``LATENCY`` cycles later).
    clear : In(1)
        Zero the accumulator this cycle (takes priority over an add).
    acc : Out(signed(acc_bits))
        The accumulator.

    Raises
    ------
    TypeError
        A parameter is not an integer.
    ValueError
        A parameter is out of range.
    """

    #: Cycles between a step at the inputs and the accumulator add (its two popcount registers).
    LATENCY = ARRAY_PE_PIPELINE

    def __init__(self, *, lanes: int, act_bits: int, acc_bits: int, weight_bits: int = 1):
        for name, value in (("lanes", lanes), ("act_bits", act_bits), ("acc_bits", acc_bits),
                            ("weight_bits", weight_bits)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes!r}")
        if act_bits not in (1, 2, 4, 8):
            raise ValueError(f"act_bits must be 1, 2, 4 or 8, not {act_bits!r}")
        if not 16 <= acc_bits <= 32:
            raise ValueError(f"acc_bits must be 16..32, not {acc_bits!r}")
        if not 1 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be 1..8, not {weight_bits!r}")
        if weight_bits >= 2 and act_bits == 1:
            raise ValueError(f"weight_bits = {weight_bits!r} needs act_bits >= 2 (integer weights use the AND form)")
        self._lanes, self._act_bits, self._acc_bits, self._weight_bits = lanes, act_bits, acc_bits, weight_bits
        ports = {
            "a": In(lanes), "w": In(lanes), "mask": In(lanes),
            "plane": In(max(1, ceil_log2(act_bits))), "valid": In(1), "clear": In(1),
            "acc": Out(signed(acc_bits)),
        }
        if weight_bits >= 2:
            ports.update(wint=In(1), wplane=In(max(1, ceil_log2(weight_bits))), wneg=In(1))
        super().__init__(ports)

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def act_bits(self) -> int:
        return self._act_bits

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def weight_bits(self) -> int:
        return self._weight_bits

    def elaborate(self, platform):
        assert self.LATENCY == 2, "the RTL below registers the popcount tree halfway and at its end"
        m = Module()
        L, k = self._lanes, self._act_bits
        split = popcount_split(L)
        if k == 1:  # XNOR form: a bit 1 = +1
            agree_now = popcount(m, ~(self.a ^ self.w) & self.mask, register_at=split)
        else:       # AND form on two's complement planes; a arrives masked
            agree_now = popcount(m, self.a & self.w, register_at=split)
        # stage 1: halfway through the tree (inside popcount); stage 2: the popcount register
        agree = Signal(ceil_log2(L + 1))
        plane_mid, plane = Signal.like(self.plane), Signal.like(self.plane)
        valid_mid, valid = Signal(), Signal()
        m.d.sync += [plane_mid.eq(self.plane), valid_mid.eq(self.valid),
                     agree.eq(agree_now), plane.eq(plane_mid), valid.eq(valid_mid)]
        # stage 2: scale and accumulate
        if self._weight_bits >= 2:
            x = self._integer_step(m, agree, plane)
        elif k == 1:
            x = Signal(signed(len(agree) + k + 1))
            m.d.comb += x.eq(agree << 1)
        else:
            x = Signal(signed(len(agree) + k + 1))
            shifted = Signal(len(agree) + k)            # agree << (plane + 1), non-negative
            m.d.comb += shifted.eq((agree << plane) << 1)
            # ~ of the zero-extended value is -shifted - 1, the ones' complement (no carry-in needed)
            m.d.comb += x.eq(Mux(plane == k - 1, ~Cat(shifted, Const(0, 1)).as_signed(),
                                 Cat(shifted, Const(0, 1)).as_signed()))
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Elif(valid):
            m.d.sync += self.acc.eq(self.acc + x)
        return m

    def _integer_step(self, m, agree, plane):
        """Stage 2 of a PE that also takes integer weight planes: the step's shift is plane + 1 (sign
        weights) or plane + wplane (integer), and its ones' complement is taken when the step's
        significance is negative: the activation sign plane, XOR (integer steps) the weight sign plane."""
        k = self._act_bits
        # wint is held for a whole MATMUL by the array; wplane and wneg travel with the step
        wplane_mid, wplane = Signal.like(self.wplane), Signal.like(self.wplane)
        wneg_mid, wneg = Signal(), Signal()
        m.d.sync += [wplane_mid.eq(self.wplane), wplane.eq(wplane_mid), wneg_mid.eq(self.wneg), wneg.eq(wneg_mid)]
        top = max(k, (k - 1) + (self._weight_bits - 1))        # the largest shift
        shift = Signal(range(top + 1))
        m.d.comb += shift.eq(Mux(self.wint, plane + wplane, plane + 1))
        shifted = Signal(len(agree) + top)
        m.d.comb += shifted.eq(agree << shift)
        negative = (plane == k - 1) ^ (self.wint & wneg)
        x = Signal(signed(len(shifted) + 1))
        m.d.comb += x.eq(Mux(negative, ~Cat(shifted, Const(0, 1)).as_signed(), Cat(shifted, Const(0, 1)).as_signed()))
        return x
