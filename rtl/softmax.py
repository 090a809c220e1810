"""Softmax: router sums -> logits -> gates (``formats.router_logits`` rounding, ``formats.softmax_gates``).

It runs on the sequencer's GATES window of E + GATES_FIXED cycles (``bitmos.semantics``), ``step``
0..E+GATES_FIXED-1 while ``active``; every step registers its result, so no path holds more than one
multiply. With D = ``ROUTER_DRAIN`` (3):

* steps 0..D-1: the router takes its last line (registered, its products registered, their add);
* step D: logits l_e = sat16(rshift_round(acc_e, RSHIFT)); under register BIAS every l_e = 0 instead (equal
  gates) and ``bias`` = sat32(rshift_round(acc_0, RSHIFT)), FBI-LLM's beta . x (else 0): the same shifter.
  The router's sums start from ``rounding``, RSHIFT's rounding half (2^(s-1), at most 2^46: for s >= 47 every
  sum plus 2^46 is in [0, 2^47), which any such shift takes to 0, as rshift_round does), so the step is the
  variable shift and the saturation's AND-OR over a registered mask of the sum's high bits
  (:class:`ShiftSaturation` ``half_added``), not a 48-bit rounding add, the shift and the compares in series
  (the small chip's critical path at 68.5 MHz, 14.6 ns; at 55.1 MHz before the thresholds were registers,
  docs/fpga.md);
* step D+1: the index of the first max(l) (all pairwise compares at once), and every logit scaled,
  c_e = l_e * LOG2E_Q10, also with the rounding half added, h_e = c_e + 2^(LOG2E_FRAC-1);
* steps D+2..E+D+1: for expert e = step - D - 2, u = (h_max - c_e) >> LOG2E_FRAC, which is
  rshift_round(d * LOG2E_Q10, LOG2E_FRAC) with d = max(l) - l_e: one subtract in front of the exp table's
  address (it is read at u's EXP2_FRAC_BITS fraction bits), not a subtract, a multiply and a rounding
  add in one cycle (the small chip's critical path, 24.3 ns, when it was so). The golden model clamps d
  to SOFTMAX_DIFF_MAX first; the hardware need not: a d beyond it has u >> EXP2_FRAC_BITS >= 369, so
  p_e = 0 either way (and with 16-bit logits d <= 2^16 - 1 = SOFTMAX_DIFF_MAX anyway);
* steps D+3..E+D+2: p_e = table >> (u's integer part), 0 from SOFTMAX_MAX_SHIFT halvings on;
* step E+D+3: the :class:`~bitmos.rtl.divider.SequentialDivider` starts on sum p; RCP =
  floor(2^SOFTMAX_RCP_SHIFT / sum p) is ready RCP_QUOTIENT_BITS + 1 cycles later, at the last step;
* step E+GATES_FIXED-1: g_e = rshift_round(p_e * RCP, GATE_FRAC).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from bitmos import formats as F
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import ShiftSaturation, check_config, first_max_onehot
from bitmos.rtl.divider import SequentialDivider
from bitmos.rtl.signatures import LayerRegistersSignature

__all__ = ["Softmax"]


class Softmax(wiring.Component):
    """The hardware softmax over E >= 2 router sums: one exp-table ROM read per expert, one sequential reciprocal.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    acc : In(ArrayLayout(signed(ROUTER_ACC_BITS), E))
        The router sums of the token, each started from ``rounding``.
    rounding : Out(signed(ROUTER_ACC_BITS))
        RSHIFT's rounding half, the value the router's sums start from.
    regs : In(LayerRegistersSignature)
        The softmax reads RSHIFT.
    active, step : In
        The GATES window and the cycle within it (0..E+GATES_FIXED-1; see the module docstring).
    gates : Out(ArrayLayout(unsigned(GATE_BITS), E))
        Q1.15 gates, valid from the cycle after the window's last step until the next token's.

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
            "rounding": Out(signed(F.ROUTER_ACC_BITS)),
            "active": In(1), "step": In(range(E + sem.GATES_FIXED)),
            "gates": Out(data.ArrayLayout(unsigned(F.GATE_BITS), E)), "bias": Out(signed(F.OUT_BITS)),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        E, step = self._cfg.experts, self.step
        D = sem.ROUTER_DRAIN                                        # the logits' step
        last = E + sem.GATES_FIXED - 1                              # the gate products' step
        logits = [Signal(signed(F.LOGIT_BITS), name=f"logit{e}") for e in range(E)]
        p = [Signal(F.GATE_BITS, name=f"p{e}") for e in range(E)]
        # the table holds fractions of 2^15 (GATE_ONE): GATE_BITS wide
        m.submodules.exp2_lut = rom = Memory(shape=F.GATE_BITS, depth=F.EXP2_LUT_SIZE, init=F.EXP2_LUT)
        table = rom.read_port()
        # sum p <= E * 2^15; 2^30 // sum p <= 2^15 since sum p >= 2^15 (the largest logit's p is 2^15)
        m.submodules.reciprocal = rcp = SequentialDivider(
            dividend_bits=F.SOFTMAX_RCP_SHIFT + 1, divisor_bits=F.GATE_BITS + ceil_log2(E) + 1,
            quotient_bits=sem.RCP_QUOTIENT_BITS)
        rcp_start = last - rcp.cycles
        assert rcp_start == E + D + 3, "GATES_FIXED does not match the softmax schedule"

        # RSHIFT is a layer register, steady from its SETR to the logit step, which comes cycles after the QUANT
        rshift = self.regs.rshift
        top = F.ROUTER_ACC_BITS - 2                                 # 2^46: the largest half that keeps 48 bits
        m.d.comb += self.rounding.eq(Mux(rshift == 0, 0, Mux(rshift > top, 1 << top,
                                                              (Const(1, F.ROUTER_ACC_BITS) << rshift) >> 1)))
        logit_sat = ShiftSaturation(m, rshift, F.ROUTER_ACC_BITS, F.LOGIT_BITS, "logit", half_added=True)
        bias_sat = ShiftSaturation(m, rshift, F.ROUTER_ACC_BITS, F.OUT_BITS, "bias", half_added=True)

        # c_e and h_e in registers per expert (step D+1), so the table's address is one subtract from registers
        scaled_bits = F.LOGIT_BITS + F.LOG2E_Q10.bit_length() + 1
        scaled = [Signal(signed(scaled_bits), name=f"scaled{e}") for e in range(E)]
        rounded = [Signal(signed(scaled_bits), name=f"rounded{e}") for e in range(E)]
        top = Signal(range(E))                                      # index of max(l), from step D+1
        reading = Signal(range(E))                                  # expert of this step's table read
        u = Signal(scaled_bits + 1)   # h_max - c_e >= 2^(LOG2E_FRAC-1) > 0
        m.d.comb += [u.eq(Array(rounded)[top] - Array(scaled)[reading]),
                     table.addr.eq(u[F.LOG2E_FRAC:F.LOG2E_FRAC + F.EXP2_FRAC_BITS]), table.en.eq(1)]
        halvings = Signal(len(u) - F.LOG2E_FRAC - F.EXP2_FRAC_BITS)
        arriving = Signal(range(E))                                 # expert of the table data now
        m.d.sync += [halvings.eq(u >> (F.LOG2E_FRAC + F.EXP2_FRAC_BITS)), arriving.eq(reading),
                     reading.eq(Mux(self.active & (step >= D + 2), reading + 1, 0))]
        m.d.comb += [rcp.dividend.eq(1 << F.SOFTMAX_RCP_SHIFT), rcp.divisor.eq(sum(p)),
                     rcp.start.eq(self.active & (step == rcp_start))]

        with m.If(self.active):
            with m.If(step == D):
                on = self.regs.bias
                m.d.sync += [logits[e].eq(Mux(on, 0, logit_sat(self.acc[e]))) for e in range(E)]
                m.d.sync += self.bias.eq(Mux(on, bias_sat(self.acc[0]), 0))
            with m.If(step == D + 1):
                m.d.sync += top.eq(self._first_max_index(m, logits))
                for e in range(E):
                    product = logits[e] * F.LOG2E_Q10
                    m.d.sync += [scaled[e].eq(product), rounded[e].eq(product + (1 << (F.LOG2E_FRAC - 1)))]
            with m.If((step >= D + 3) & (step <= E + D + 2)):
                shift = halvings[:ceil_log2(F.SOFTMAX_MAX_SHIFT)]
                with m.Switch(arriving):
                    for e in range(E):
                        with m.Case(e):
                            m.d.sync += p[e].eq(Mux(halvings < F.SOFTMAX_MAX_SHIFT, table.data >> shift, 0))
            with m.If(step == last):
                m.d.sync += [self.gates[e].eq((p[e] * rcp.quotient + (1 << (F.GATE_FRAC - 1))) >> F.GATE_FRAC)
                             for e in range(E)]
        return m

    @staticmethod
    def _first_max_index(m, logits):
        """The index of the first largest logit, as ``formats.softmax_gates`` takes it: the pairwise compares
        of :func:`~bitmos.rtl.common.first_max_onehot`, then an encoder (a chain of E - 1 compare-and-select
        steps was the small chip's critical path on an ECP5, docs/fpga.md)."""
        E = len(logits)
        is_top = first_max_onehot(m, logits, "is_top")
        index = Signal(range(E), name="top_index")
        m.d.comb += [index[b].eq(Cat(is_top[e] for e in range(E) if e >> b & 1).any()) for b in range(len(index))]
        return index
