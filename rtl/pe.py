"""XnorPopcountPE: one processing element of the systolic array.

Each cycle with ``valid`` it forms the +-1-weighted sum of one activation plane over ``lanes`` lanes
(``bitmos.formats.plane_dot``: AND form for k >= 2, XNOR form for k = 1), scales it by the plane's
significance (``formats.plane_weight``: shift left by ``plane``, negated for the sign plane k-1) and
adds it to an ``acc_bits`` two's complement accumulator that wraps. ``first`` starts a new sum.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["XnorPopcountPE", "popcount"]


def popcount(v):
    """Sum of the bits of ``v`` as a balanced adder tree."""
    terms = [v[i] for i in range(len(v))]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


class XnorPopcountPE(wiring.Component):
    """One bit-serial XNOR/AND-popcount processing element.

    Parameters
    ----------
    lanes : int
        L, binary lanes per cycle (>= 1).
    act_bits : int
        k, activation bits (1, 2, 4 or 8); k = 1 selects the XNOR form.
    acc_bits : int
        Accumulator width (16..32); the sum wraps in two's complement.

    Attributes
    ----------
    a, w, mask : In(lanes)
        Activation plane word, weight sign word (1 = +1), lane mask.
    plane : In(ceil_log2(act_bits)) (at least 1 bit)
        Index b of the activation plane.
    valid, first : In(1)
        Accumulate this cycle; ``first`` replaces the accumulator instead of adding to it.
    acc : Out(signed(acc_bits))
        The accumulator.

    Raises
    ------
    TypeError
        A parameter is not an integer.
    ValueError
        A parameter is out of range.
    """

    def __init__(self, *, lanes: int, act_bits: int, acc_bits: int):
        for name, value in (("lanes", lanes), ("act_bits", act_bits), ("acc_bits", acc_bits)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes!r}")
        if act_bits not in (1, 2, 4, 8):
            raise ValueError(f"act_bits must be 1, 2, 4 or 8, not {act_bits!r}")
        if not 16 <= acc_bits <= 32:
            raise ValueError(f"acc_bits must be 16..32, not {acc_bits!r}")
        self._lanes, self._act_bits, self._acc_bits = lanes, act_bits, acc_bits
        super().__init__({
            "a": In(lanes), "w": In(lanes), "mask": In(lanes),
            "plane": In(max(1, ceil_log2(act_bits))), "valid": In(1), "first": In(1),
            "acc": Out(signed(acc_bits)),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def act_bits(self) -> int:
        return self._act_bits

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    def elaborate(self, platform):
        m = Module()
        k = self._act_bits
        if k == 1:  # XNOR form: a bit 1 = +1
            agree = popcount(~(self.a ^ self.w) & self.mask)
            total = popcount(self.mask)
        else:       # AND form on two's complement planes
            agree = popcount(self.a & self.w & self.mask)
            total = popcount(self.a & self.mask)
        dot = Signal(signed(ceil_log2(self._lanes + 1) + 2))
        m.d.comb += dot.eq((agree << 1) - total)
        weighted = Signal(signed(len(dot) + k))
        if k == 1:
            m.d.comb += weighted.eq(dot)
        else:
            shifted = dot << self.plane
            m.d.comb += weighted.eq(Mux(self.plane == k - 1, -shifted, shifted))
        with m.If(self.valid):
            m.d.sync += self.acc.eq(Mux(self.first, 0, self.acc) + weighted)
        return m
