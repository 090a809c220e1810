"""Router: the E multiply-accumulators whose sums become the router logits (``formats.router_logits``).

One XBUF line and one SBUF router line per ``accumulate`` cycle: each expert's 48-bit sum gains
sum_j x_j * WR[e][j] over the C lanes, lanes at or past K counting 0. ``clear`` starts a token: the sums start
from ``rounding``, the rounding half of the logits' shift by RSHIFT (``formats.router_logits``' rshift_round), so
that the logit step after them is a shift alone, not an add on a 48-bit carry chain and a shift in one cycle (the
small chip's critical path at 68.5 MHz, docs/fpga.md). |sum| < 2^46 and the half is at most 2^46, so the start
value costs no bit.
Three stages: the lines are registered as they arrive from their block RAMs (so no multiplier hangs off
a block RAM's output), then the C x E products, then their add: a line's products are in ``acc``
``bitmos.semantics.ROUTER_DRAIN`` = 3 cycles after its ``accumulate`` cycle.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import check_config, expert_lanes, registered, registered_masked, signed_lanes

__all__ = ["Router"]


class Router(wiring.Component):
    """E router multiply-accumulators of C lanes each (only built for E >= 2).

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    x : In(C*16)
        The XBUF line (C int16 lanes).
    lane_valid : In(C)
        Lane j is inside K (a lane outside adds 0).
    weights : In(sbuf_line_bits)
        The SBUF router line: row e's weight for lane j is element ``e*C + j``.
    accumulate : In(1)
        Add this cycle's line to the sums.
    clear : In(1)
        Start the sums from ``rounding`` (a new token); wins over ``accumulate``.
    rounding : In(signed(ROUTER_ACC_BITS))
        The value the sums start from.
    acc : Out(ArrayLayout(signed(ROUTER_ACC_BITS), E))

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`; ValueError if the config has fewer than 2 experts
        (E <= 1 needs no router).
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        if cfg.experts < 2:
            raise ValueError(f"a router needs at least 2 experts, not {cfg.experts}")
        super().__init__({
            "x": In(cfg.xbuf_line_bits), "lane_valid": In(cfg.cols), "weights": In(cfg.sbuf_line_bits),
            "accumulate": In(1), "clear": In(1), "rounding": In(signed(F.ROUTER_ACC_BITS)),
            "acc": Out(data.ArrayLayout(signed(F.ROUTER_ACC_BITS), cfg.experts)),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        C, E = self._cfg.cols, self._cfg.experts
        # the arriving lines registered (lanes outside K as 0), then the C x E products, then their add
        x = registered_masked(m, signed_lanes(self.x, C, F.X_BITS), self.lane_valid, "x{}")
        # the weights masked too (a lane past K adds 0 either way; the mask keeps the register out of
        # the SBUF's read port)
        w = [registered_masked(m, lanes, self.lane_valid, f"w{e}_{{}}")
             for e, lanes in enumerate(expert_lanes(self.weights, E, C))]
        products = [[Signal(signed(2 * F.X_BITS), name=f"p{e}_{j}") for j in range(C)] for e in range(E)]
        adding = registered(m, registered(m, self.accumulate, "accumulate_s0"), "adding")
        m.d.sync += [products[e][j].eq(x[j] * w[e][j]) for e in range(E) for j in range(C)]
        with m.If(adding):
            m.d.sync += [self.acc[e].eq(self.acc[e] + sum(products[e])) for e in range(E)]
        with m.If(self.clear):
            m.d.sync += [self.acc[e].eq(self.rounding) for e in range(E)]
        return m
