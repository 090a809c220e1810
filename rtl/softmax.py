"""Softmax: router sums -> logits -> gates (``formats.router_logits`` rounding, ``formats.softmax_gates``).

It runs on the sequencer's GATES window of E + 4 cycles, ``step`` 0..E+3 while ``active``:

* step 1: logits l_e = sat16(rshift_round(acc_e, RSHIFT)) (the router's last line was added in step 0);
* steps 2..E+1: for expert e = step - 2, d = min(max(l) - l_e, SOFTMAX_DIFF_MAX) and
  u = rshift_round(d * LOG2E_Q10, LOG2E_FRAC); the exp table is read at u's EXP2_FRAC_BITS fraction bits;
* steps 3..E+2: p_e = table >> (u's integer part), 0 from SOFTMAX_MAX_SHIFT halvings on;
* step E+3: RCP = floor(2^SOFTMAX_RCP_SHIFT / sum p) (a combinational ``//``) and
  g_e = rshift_round(p_e * RCP, GATE_FRAC).
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import check_config, rshift_round, sat
from bitmos.rtl.signatures import LayerRegistersSignature

__all__ = ["Softmax"]


class Softmax(wiring.Component):
    """The hardware softmax over E >= 2 router sums: one exp-table ROM read per expert, one reciprocal.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    acc : In(ArrayLayout(signed(ROUTER_ACC_BITS), E))
        The router sums of the token.
    regs : In(LayerRegistersSignature)
        The softmax reads RSHIFT.
    active, step : In
        The GATES window and the cycle within it (0..E+3; see the module docstring).
    gates : Out(ArrayLayout(unsigned(GATE_BITS), E))
        Q1.15 gates, valid from the cycle after step E+3 until the next token's.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`; ValueError if the config has fewer than 2 experts.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        if cfg.experts < 2:
            raise ValueError(f"a softmax needs at least 2 experts, not {cfg.experts}")
        E = cfg.experts
        super().__init__({
            "acc": In(data.ArrayLayout(signed(F.ROUTER_ACC_BITS), E)), "regs": In(LayerRegistersSignature()),
            "active": In(1), "step": In(range(E + 4)),
            "gates": Out(data.ArrayLayout(unsigned(F.GATE_BITS), E)),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        E, step = self._cfg.experts, self.step
        logits = [Signal(signed(F.LOGIT_BITS), name=f"logit{e}") for e in range(E)]
        p = [Signal(F.GATE_BITS, name=f"p{e}") for e in range(E)]
        # the table holds fractions of 2^15 (GATE_ONE): GATE_BITS wide
        m.submodules.exp2_lut = rom = Memory(shape=F.GATE_BITS, depth=F.EXP2_LUT_SIZE, init=F.EXP2_LUT)
        table = rom.read_port()

        lmax = logits[0]
        for e in range(1, E):
            lmax = Mux(logits[e] > lmax, logits[e], lmax)
        reading = (step - 2)[:max(1, (E - 1).bit_length())]         # expert of this step's table read
        diff = (lmax - Array(logits)[reading])[:F.LOGIT_BITS + 1]   # >= 0
        diff = Mux(diff > F.SOFTMAX_DIFF_MAX, F.SOFTMAX_DIFF_MAX, diff)[:F.SOFTMAX_DIFF_MAX.bit_length()]
        u = Signal(18)   # (2^16 - 1) * LOG2E_Q10 >> LOG2E_FRAC < 2^17
        m.d.comb += [u.eq((diff * F.LOG2E_Q10 + (1 << (F.LOG2E_FRAC - 1))) >> F.LOG2E_FRAC),
                     table.addr.eq(u[:F.EXP2_FRAC_BITS]), table.en.eq(1)]
        halvings = Signal(len(u) - F.EXP2_FRAC_BITS)
        arriving = Signal(range(E))                                 # expert of the table data now
        m.d.sync += [halvings.eq(u >> F.EXP2_FRAC_BITS), arriving.eq((step - 2)[:len(arriving)])]
        psum = sum(p)
        rcp = Signal(32)
        m.d.comb += rcp.eq(Const(1 << F.SOFTMAX_RCP_SHIFT, F.SOFTMAX_RCP_SHIFT + 1) // Mux(psum == 0, 1, psum))

        with m.If(self.active):
            with m.If(step == 1):
                m.d.sync += [logits[e].eq(sat(rshift_round(self.acc[e], self.regs.rshift, F.ROUTER_ACC_BITS + 1),
                                              F.LOGIT_BITS)) for e in range(E)]
            with m.If((step >= 3) & (step <= E + 2)):
                shift = halvings[:ceil_log2(F.SOFTMAX_MAX_SHIFT)]
                with m.Switch(arriving):
                    for e in range(E):
                        with m.Case(e):
                            m.d.sync += p[e].eq(Mux(halvings < F.SOFTMAX_MAX_SHIFT, table.data >> shift, 0))
            with m.If(step == E + 3):
                m.d.sync += [self.gates[e].eq((p[e] * rcp + (1 << (F.GATE_FRAC - 1))) >> F.GATE_FRAC)
                             for e in range(E)]
        return m
