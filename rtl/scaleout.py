"""ScaleOut: the ``scaleout`` datapath, y = sat32(rshift_round(acc * D * s_out, OSHIFT) + bias) (``formats.scale_output``).

Eight register stages from the cycle the OBUF line, the token's META record and the SBUF line of the
output scale experts arrive (``valid``, for OBUF line ``line``): s0 the line, D, the SBUF line and the
gates registered, s1 the gate x scale products and the limb products of acc * D, s2 s_out and their sum, s3 the limb
products of acc * D * s_out, s4 their sum, s5 the rounding half added, s6 the shift clamped to 34 bits
(``ShiftSaturation``: its compares beside the shift), s7 the
saturation (E >= 2: of the sum with the token's META bias, which travels beside the line); the cycle after, the C results are written back to that line
(``bitmos.semantics.SCALEOUT_PIPELINE`` = 9 counts the read
too). s_out = mix_scale(META gates, S_out) for E >= 1, SMUL for E = 0.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In

from bitmos import formats as F
from bitmos import semantics as sem
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import (ShiftSaturation, addr_bits, check_config, expert_lanes, pipelined_mix_scale,
                               pipelined_product, registered, registered_masked, rounding_half, sat, signed_lanes)
from bitmos.rtl.layouts import meta_layout
from bitmos.rtl.signatures import LayerRegistersSignature

__all__ = ["ScaleOut"]

#: Width of the OBUF line number the sequencer tracks (o + n*R + t fits in 24 bits).
LINE_BITS = 24


class ScaleOut(wiring.Component):
    """Output scaling of C lanes per cycle, eight stages and the write-back.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    acc_line : In(obuf_line_bits)
        The OBUF line (C int32 accumulators).
    meta : In(meta_layout(cfg))
        The token's META record (D and the gates).
    scales : In(sbuf_line_bits)
        The SBUF line of the output scale experts (expert e, lane j at element ``e*C + j``).
    regs : In(LayerRegistersSignature)
        ScaleOut reads OSHIFT and, for E = 0, SMUL.
    valid, line : In
        The data above belongs to OBUF line ``line`` and is to be scaled.
    obuf_w : In(WritePort.Signature)
        The OBUF write-back port.

    Raises
    ------
    TypeError, ValueError
        See :func:`bitmos.rtl.common.check_config`.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg = check_config(cfg)
        super().__init__({
            "acc_line": In(cfg.obuf_line_bits), "meta": In(meta_layout(cfg)), "scales": In(cfg.sbuf_line_bits),
            "regs": In(LayerRegistersSignature()), "valid": In(1), "line": In(LINE_BITS),
            "obuf_w": In(WritePort.Signature(addr_width=addr_bits(cfg.depth("O")), shape=cfg.obuf_line_bits)),
        })

    @property
    def cfg(self) -> AcceleratorConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        C, E = self._cfg.cols, self._cfg.experts

        def reg(value, name):
            return registered(m, value, name)

        # the SBUF line and the META gates come straight from block RAMs: registered before their products,
        # masked by ``valid`` (only valid lines are written; the mask keeps the registers out of the read ports)
        s_out_experts = [registered_masked(m, lanes, self.valid, f"s_out{e}_{{}}_s0")
                         for e, lanes in enumerate(expert_lanes(self.scales, E, C))] if E else []
        gates_s0 = registered_masked(m, [self.meta.gates[e] for e in range(E)], self.valid, "gate{}_s0")

        # layer-register terms every lane shares, registered once
        half = reg(rounding_half(self.regs.oshift), "round_half")
        smul = reg(reg(reg(self.regs.smul, "smul_s0"), "smul_s1"), "smul_s2") if E == 0 else None
        bias = None
        if E >= 2:   # the token's bias, shared by the lanes, beside the line until the saturation stage
            bias = self.meta.bias
            for s in range(sem.SCALEOUT_PIPELINE - 2):
                bias = reg(bias, f"bias_s{s}")
        results, clamp = [], None
        for j, acc in enumerate(signed_lanes(self.acc_line, C, F.OUT_BITS)):
            # the line comes straight from a block RAM (and OBUF's bank select): registered first
            acc_d = pipelined_product(m, reg(acc, f"acc{j}"), reg(self.meta.d, f"d{j}"), f"acc_d{j}")  # s0-s2
            if E >= 1:   # s0 the SBUF line and the gates registered, s1 their products, s2 s_out
                s_out = pipelined_mix_scale(m, gates_s0, [s[j] for s in s_out_experts], f"s_out{j}")
            else:
                s_out = smul
            scaled = pipelined_product(m, acc_d, s_out, f"scaled{j}")                          # s3, s4
            # acc * D * s_out is 32 + 33 + 16 = 81 bits signed, plus the rounding half
            total = reg(scaled + half, f"rounded{j}_sum")                                      # s5
            if clamp is None:   # OSHIFT's thresholds, shared by the lanes
                clamp = ShiftSaturation(m, self.regs.oshift, len(total), F.OUT_BITS + 2, "round_clamp",
                                        half_added=True)
            # the shift clamped to 34 bits, which cannot change sat32(. + bias) (|bias| < 2^31): the saturation's
            # compares on the 82-bit sum run beside the shift, and s7 is a 34-bit add and compare
            rounded = reg(clamp(total), f"rounded{j}")                                          # s6
            if bias is not None:
                rounded = rounded + bias
            results.append(reg(sat(rounded, F.OUT_BITS), f"y{j}"))                             # s7
        valid, line = self.valid, self.line
        for s in range(sem.SCALEOUT_PIPELINE - 1):
            valid, line = reg(valid, f"valid_s{s}"), reg(line, f"line_s{s}")
        m.d.comb += [self.obuf_w.addr.eq(line), self.obuf_w.data.eq(Cat(results)), self.obuf_w.en.eq(valid)]
        return m
