"""ScaleOut: the ``scaleout`` datapath, y = sat32(rshift_round(acc * D * s_out, OSHIFT)) (``formats.scale_output``).

Stage 1 takes the OBUF line, the token's META record and the SBUF line of the output scale experts
that arrive this cycle (``valid``, for OBUF line ``line``) and registers the C results; stage 2 writes
them back to that line. s_out = mix_scale(META gates, S_out) for E >= 1, SMUL for E = 0.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.rtl.common import addr_bits, check_config, expert_lanes, mix_scale, rshift_round, sat, signed_lanes
from bitmos.rtl.layouts import meta_layout
from bitmos.rtl.signatures import LayerRegistersSignature

__all__ = ["ScaleOut"]

#: Width of the OBUF line number the sequencer tracks (o + n*R + t fits in 24 bits).
LINE_BITS = 24


class ScaleOut(wiring.Component):
    """Output scaling of C lanes per cycle, two stages (multiply, write-back).

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
        s_out_experts = expert_lanes(self.scales, E, C)
        gates = [self.meta.gates[e] for e in range(E)] if E else []
        outs = []
        for j, acc in enumerate(signed_lanes(self.acc_line, C, F.OUT_BITS)):
            s_out = mix_scale(gates, [s[j] for s in s_out_experts]) if E >= 1 else self.regs.smul
            # acc * D * s_out is 32 + 33 + 16 = 81 bits signed; 84 leave room for the rounding half
            outs.append(sat(rshift_round(acc * self.meta.d * s_out, self.regs.oshift, 84), F.OUT_BITS))
        valid, line, result = Signal(), Signal(LINE_BITS), Signal(len(self.acc_line))
        m.d.sync += [valid.eq(self.valid), line.eq(self.line), result.eq(Cat(outs))]
        m.d.comb += [self.obuf_w.addr.eq(line), self.obuf_w.data.eq(result), self.obuf_w.en.eq(valid)]
        return m
