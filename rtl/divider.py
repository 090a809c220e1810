"""SequentialDivider: floor(dividend / divisor), one quotient bit per cycle (long division).

A combinational ``//`` of 40 bits is ~40 carry chains in series, which held the whole accelerator
at 4.7 MHz on an ECP5 (docs/fpga.md); this divider's longest path is one (divisor_bits + 1)-bit
subtract. Its cycle count is fixed, so the contract can give it a constant (``bitmos.semantics``
``rq_cycles`` and ``GATES_FIXED``).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SequentialDivider"]


class SequentialDivider(wiring.Component):
    """Unsigned restoring long division with a fixed latency.

    With ``start`` high in cycle s, ``dividend`` and ``divisor`` are sampled at the end of cycle s;
    cycles s+1 .. s+Nq each make one quotient bit, and ``quotient`` holds the result from cycle
    s+Nq+1 until the next start: ``Nq + 1`` cycles, the start cycle included. The caller guarantees
    ``dividend < divisor * 2^Nq`` (the quotient fits Nq bits); the top ``dividend_bits - Nq`` bits are
    then the first partial remainder. A zero divisor gives an all-ones quotient.

    Parameters
    ----------
    dividend_bits, divisor_bits, quotient_bits : int
        Operand widths and Nq, the quotient bits (1 <= Nq <= dividend_bits).

    Attributes
    ----------
    start : In(1)
    dividend : In(dividend_bits)
    divisor : In(divisor_bits)
    quotient : Out(quotient_bits)
    done : Out(1)
        No division in progress (``quotient`` is the last result).

    Raises
    ------
    TypeError
        A parameter is not an integer.
    ValueError
        A width is below 1 or ``quotient_bits`` exceeds ``dividend_bits``.
    """

    def __init__(self, *, dividend_bits: int, divisor_bits: int, quotient_bits: int):
        for name, value in (("dividend_bits", dividend_bits), ("divisor_bits", divisor_bits),
                            ("quotient_bits", quotient_bits)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value!r}")
        if quotient_bits > dividend_bits:
            raise ValueError(f"quotient_bits ({quotient_bits}) cannot exceed dividend_bits ({dividend_bits})")
        self._n, self._dividend_bits, self._divisor_bits = quotient_bits, dividend_bits, divisor_bits
        super().__init__({"start": In(1), "dividend": In(dividend_bits), "divisor": In(divisor_bits),
                          "quotient": Out(quotient_bits), "done": Out(1)})

    @property
    def cycles(self) -> int:
        """Cycles of one division, the start cycle included."""
        return self._n + 1

    def elaborate(self, platform):
        m = Module()
        n, db = self._n, self._divisor_bits
        rem = Signal(db + 1)                 # partial remainder, < divisor after every step
        quo = Signal(n)                      # dividend bits still to bring down, then quotient bits
        den = Signal(db)
        left = Signal(range(n + 1))          # quotient bits still to make
        m.d.comb += [self.quotient.eq(quo), self.done.eq(left == 0)]

        trial = Cat(quo[-1], rem[:db])        # remainder * 2 + the next dividend bit
        fits = trial >= den
        with m.If(self.start):
            m.d.sync += [rem.eq(self.dividend >> n), quo.eq(self.dividend[:n]), den.eq(self.divisor),
                         left.eq(n)]
        with m.Elif(left != 0):
            m.d.sync += [rem.eq(Mux(fits, trial - den, trial)), quo.eq(Cat(fits, quo[:-1])), left.eq(left - 1)]
        return m
