"""Lowering one binarized linear to the accelerator's integer view.

A :class:`LayerSpec` is what the scheduler and the memory packer need from a layer: its shape, the
register values (K, RSHIFT, OSHIFT, SMUL) and, unless the compile is timing-only, the int16 router /
scale tables already mapped onto the hardware's expert count. :func:`lower_linear` builds one from a
:class:`bitmos.export.BinaryLinearExport` and refuses, with :class:`bitmos.errors.UnsupportedError`
naming the module path, everything the hardware cannot compute exactly.

Expert mapping (layer experts E_l, hardware experts E_h):

* E_l == E_h: copied.
* E_l > E_h, or E_h == 0 < E_l: refused (no hardware path).
* 2 <= E_l < E_h: refused (a softmax over duplicated logits does not reproduce the layer's gates
  bit-exactly).
* E_l in {0, 1} < E_h: the router is all zeros, so every logit is 0 and the hardware softmax gives every
  expert the same gate g = softmax_gates([0]*E_h)[e] (= floor(2^15 / E_h)); E_h = 1 gives g = 2^15. For
  each element with layer value t (s_in, s_out; for E_l = 0: s_in = 2^E0_V_SHIFT and s_out = smul
  with exponent smul_exp) the compiler picks an integer S with rshift_round(g*S, 15) == t and splits it
  over the E_h experts (S = sum_e s_e, each s_e int16). Then mix_scale(g, s) = sat16(rshift_round(g*S,
  15)) == t exactly, so v = x*s_in, D, q and y are bit-identical to the layer's reference computation
  (E_l = 0: v = x * 2^E0_V_SHIFT; E_l = 1: gate 2^15 gives mix = t). A value for which no such split fits
  int16 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitmos import formats
from bitmos.config import AcceleratorConfig
from bitmos.errors import UnsupportedError
from bitmos.export import CHIP_SCHEMES, BinaryLinearExport

#: Export schemes with a hardware path: sign (E = 0, one scale), onebit (E = 1), BinaryMoS, ternary
#: (BitNet b1.58: E = 0, one scale, weights as two planes under WBITS = 2; needs cfg.weight_bits >= 2), fbi
#: (FBI-LLM: E = 1 with s_out = 1, its beta . x computed by router row 0 under BIAS = 1; needs cfg.experts >= 2)
#: and bitnet (BitNet: a sign layer, E = 0, one scale, signs of W - mean W; its parameter-free LayerNorm runs on
#: the host before the chip's input, like every norm until the whole decoder layer is on the chip) and pb
#: (structured PB-LLM: two layers per model linear, a sign layer over the non-salient input channels and an int8
#: layer, WBITS = 8, E = 1, over the salient ones; the host gathers their inputs and adds their outputs,
#: :data:`bitmos.export.SPLIT_SCHEMES`; needs cfg.weight_bits = 8).
SUPPORTED_SCHEMES = CHIP_SCHEMES
#: The weight format (register WBITS) each supported scheme's layers run in (pb: its binary part's; its salient
#: part runs in INT_WEIGHT_BITS, :func:`bitmos.export.split_part_shapes`).
SCHEME_WEIGHT_BITS = {"mos": 0, "sign": 0, "onebit": 0, "ternary": 2, "fbi": 0, "bitnet": 0, "pb": 0}
#: Schemes whose layers carry a per-token bias (register BIAS, computed on the router).
BIAS_SCHEMES = ("fbi",)
#: Schemes that exist in the model zoo but have no hardware path (and the reason).
UNSUPPORTED_SCHEMES = {
    "float": "the float teacher has no binarized linears",
}


@dataclass
class LayerSpec:
    """One binarized linear as the hardware sees it (tensors are None in timing-only compiles)."""
    name: str
    d_in: int                 # K
    d_out: int                # N
    layer_experts: int        # E of the export (before mapping)
    rshift: int
    oshift: int
    smul: int
    w_bits: int = 0           # register WBITS: 0 = sign weights, 2 = ternary (two's complement planes)
    bias: bool = False        # register BIAS: router row 0 is FBI-LLM's beta, its sum added to every output
    # Mapped tables, already with the hardware's expert count (None when unused or timing-only).
    weights: np.ndarray | None = None  # int8 [N, K]: +-1 (w_bits = 0) or w_bits-bit integers
    router: np.ndarray | None = None   # int16 [E_h, K] (E_h >= 2)
    s_in: np.ndarray | None = None     # int16 [E_h', K] (E_h >= 1)
    s_out: np.ndarray | None = None    # int16 [E_h', N] (E_h >= 1)
    expert_mapping: str = "direct"

    @property
    def materialized(self) -> bool:
        return self.weights is not None


def _fail(name: str, what: str) -> None:
    raise UnsupportedError(f"layer {name!r}: {what}")


def check_shape(name: str, d_in: int, d_out: int, act_bits: int, cfg: AcceleratorConfig, w_bits: int = 0) -> None:
    """Shape limits that do not depend on the schedule (K range, accumulator width, act_bits, weight format)."""
    if w_bits > cfg.weight_bits or (w_bits and cfg.weight_bits < 2):
        what = "ternary" if w_bits == 2 else "PB-LLM's int8 salient part" if w_bits == 8 else "integer"
        have = "sign weights only" if cfg.weight_bits < 2 else f"integer weights up to {cfg.weight_bits} bits"
        from bitmos.config import PRESETS, preset_config
        wide = [p for p in PRESETS if preset_config(p).weight_bits >= w_bits]
        hint = (f"the preset{'s' if len(wide) > 1 else ''} {', '.join(wide)}, or " if wide else "") + \
            f"a config file with the lines 'weight_bits = {w_bits}' and 'preset = \"NAME\"'"
        _fail(name, f"{w_bits}-bit integer weights ({what}) but the accelerator has weight_bits = "
                    f"{cfg.weight_bits} ({have}); compile for a config with weight_bits >= {w_bits} ({hint})")
    if act_bits != cfg.act_bits:
        _fail(name, f"act_bits = {act_bits} but the accelerator quantizes to act_bits = {cfg.act_bits}; "
                    "re-export the student with matching activation bits")
    if not 1 <= d_in <= 65535:
        _fail(name, f"K = d_in = {d_in} is outside the K register's range 1..65535")
    if d_out < 1:
        _fail(name, f"d_out = {d_out} must be >= 1")
    # |q| <= 2^(k-1) (the sign plane's weight; k = 1: 1) and |w| <= 1 (sign) or 2^(b-1) (b-bit integers)
    qmax = 1 if cfg.act_bits == 1 else 1 << (cfg.act_bits - 1)
    wmax = 1 << (w_bits - 1) if w_bits else 1
    worst = d_in * max((1 << cfg.act_bits) - 1, qmax * wmax)
    limit = (1 << (cfg.acc_bits - 1)) - 1
    if worst > limit:
        _fail(name, f"accumulator could overflow: K = {d_in} inputs of up to {worst // d_in} each = {worst} > "
                    f"2^(acc_bits-1)-1 = {limit} (acc_bits = {cfg.acc_bits}); split the layer or widen acc_bits")


def check_experts(name: str, layer_experts: int, cfg: AcceleratorConfig) -> str:
    """How a layer with ``layer_experts`` maps onto the hardware; raises if it cannot be exact."""
    eh = cfg.experts
    if layer_experts == eh:
        return "direct"
    if layer_experts > eh:
        _fail(name, f"experts = {layer_experts} but the accelerator has experts = {eh}; "
                    "no hardware path for more scale experts than the scale unit holds")
    if layer_experts >= 2:
        _fail(name, f"experts = {layer_experts} < accelerator experts = {eh}: a routed layer cannot be mapped "
                    "bit-exactly onto more experts (the hardware softmax over duplicated logits changes the "
                    "gates); compile for a config with experts = {layer_experts}")
    return "constant-gates" if layer_experts == 1 else "sign-as-experts"


def _split_constant(name: str, what: str, target: np.ndarray, gate: int, eh: int) -> np.ndarray:
    """int16 [eh, n] s with sat16(rshift_round(sum_e gate*s_e, 15)) == target for every column."""
    t = target.astype(np.int64)
    one = 1 << formats.GATE_FRAC
    best = np.full(t.shape, np.iinfo(np.int64).min, dtype=np.int64)
    s0 = np.floor(t * one / gate + 0.5).astype(np.int64)
    for delta in (0, -1, 1, -2, 2):
        s = s0 + delta
        ok = ((gate * s + (one >> 1)) >> formats.GATE_FRAC) == t
        take = ok & (best == np.iinfo(np.int64).min)
        best[take] = s[take]
    bad = best == np.iinfo(np.int64).min
    if bad.any():
        i = int(np.argmax(bad))
        _fail(name, f"cannot map {what}[{i}] = {int(t[i])} exactly onto {eh} equal-gate experts")
    base = np.floor_divide(best, eh)
    rem = best - base * eh
    parts = np.stack([base + (e < rem) for e in range(eh)])  # [eh, n]
    if parts.min() < -32768 or parts.max() > 32767:
        i = int(np.argmax((parts < -32768).any(0) | (parts > 32767).any(0)))
        _fail(name, f"cannot map {what}[{i}] = {int(t[i])} exactly onto {eh} equal-gate experts "
                    "(the expert values would not fit int16)")
    out = parts.astype(np.int16)
    # Verify against the reference definition (sat16 included) on the whole vector.
    mixed = np.clip((gate * out.astype(np.int64).sum(0) + (one >> 1)) >> formats.GATE_FRAC, -32768, 32767)
    assert np.array_equal(mixed, t), f"{name}: internal error mapping {what}"
    return out


def lower_linear(lin: BinaryLinearExport, cfg: AcceleratorConfig, *, materialize: bool = True) -> LayerSpec:
    """Check and map one exported linear onto ``cfg``; see the module docstring for the rules."""
    name = lin.name
    scheme = getattr(lin, "scheme", "mos")
    if scheme in UNSUPPORTED_SCHEMES:
        _fail(name, f"scheme {scheme!r} has no hardware path: {UNSUPPORTED_SCHEMES[scheme]}")
    if scheme not in SUPPORTED_SCHEMES:
        _fail(name, f"unknown scheme {scheme!r}; supported: {', '.join(SUPPORTED_SCHEMES)}")
    has_bias = lin.bias is not None
    if has_bias:   # before the other checks: the router is what such a chip lacks
        check_bias(name, cfg)
    check_shape(name, lin.d_in, lin.d_out, lin.act_bits, cfg, lin.weight_bits)
    mapping = check_experts(name, lin.experts, cfg)
    el, eh = lin.experts, cfg.experts
    rshift, oshift = lin.shifts(cfg)
    spec = LayerSpec(name, lin.d_in, lin.d_out, el, rshift, oshift, lin.smul if el == 0 else 0,
                     w_bits=lin.weight_bits, bias=has_bias, expert_mapping=mapping)
    if not materialize:
        return spec
    spec.weights = lin.weights()
    if mapping == "direct":
        spec.router = None if eh < 2 else np.asarray(lin.router, np.int16)
        spec.s_in = None if eh < 1 else np.asarray(lin.s_in, np.int16)
        spec.s_out = None if eh < 1 else np.asarray(lin.s_out, np.int16)
        return spec
    # E_l in {0, 1} on E_h >= 1 hardware: zero router, equal gates, element-wise exact splits.
    gates = formats.softmax_gates([0] * eh) if eh >= 2 else [formats.GATE_ONE]
    assert len(set(gates)) == 1
    gate = gates[0]
    if el == 0:
        t_in = np.full(lin.d_in, 1 << formats.E0_V_SHIFT, np.int64)
        t_out = np.full(lin.d_out, lin.smul, np.int64)
    else:
        t_in = np.asarray(lin.s_in[0], np.int64)
        t_out = np.asarray(lin.s_out[0], np.int64)
    spec.router = np.zeros((eh, lin.d_in), np.int16) if eh >= 2 else None
    if has_bias:   # under BIAS = 1 the logits are 0 whatever the router holds, so the gates stay equal
        spec.router[0] = lin.bias
    spec.s_in = _split_constant(name, "s_in", t_in, gate, eh)
    spec.s_out = _split_constant(name, "s_out", t_out, gate, eh)
    spec.smul = 0
    return spec


def check_bias(name: str, cfg: AcceleratorConfig) -> None:
    """A layer with a per-token bias (FBI-LLM's beta . x, register BIAS) needs the router that computes it."""
    if cfg.experts < 2:
        _fail(name, f"an FBI-LLM layer's beta . x runs on the router (register BIAS), but the accelerator has "
                    f"experts = {cfg.experts} and no router; compile for a config with experts >= 2 (the presets "
                    "small, medium, asic32)")


def synthetic_spec(name: str, d_in: int, d_out: int, cfg: AcceleratorConfig, *, seed: int,
                   materialize: bool, w_bits: int = 0, bias: bool = False) -> LayerSpec:
    """A layer with seeded random weights / scales in the hardware's own expert count (performance studies):
    signs (``w_bits`` = 0) or ``w_bits``-bit integers, uniform in +-(2^(w_bits-1) - 1) (2: ternary, about a third
    of them zero; 8: int8 codes -127..127 like PB-LLM's salient weights); ``bias``: an
    FBI-LLM layer (register BIAS: router row 0 is beta, its sum added at scale-out).

    Exponents are chosen so RSHIFT and OSHIFT are in range for any config: router/scales ~ +-1.0 with
    12 fraction bits.
    """
    if w_bits != 0 and not 2 <= w_bits <= 8:
        _fail(name, f"weight format w_bits = {w_bits}: synthetic layers are sign (0) or 2..8-bit integers")
    if bias:
        check_bias(name, cfg)
    check_shape(name, d_in, d_out, cfg.act_bits, cfg, w_bits)
    eh = cfg.experts
    exp = 12
    out_exp = max(exp, cfg.out_frac_bits - cfg.x_frac_bits - (exp if eh >= 1 else 0))
    rshift, oshift = formats.layer_shifts(name, cfg, experts=eh, router_exp=max(exp, 8 - cfg.x_frac_bits),
                                          s_in_exp=exp, s_out_exp=out_exp, smul_exp=out_exp)
    spec = LayerSpec(name, d_in, d_out, eh, rshift, oshift, 0, w_bits=w_bits, bias=bias, expert_mapping="synthetic")
    if eh == 0:
        spec.smul = 1 << (out_exp - 1) if out_exp >= 1 else 1
    if not materialize:
        return spec
    rng = np.random.default_rng(seed)
    if w_bits:
        top = (1 << (w_bits - 1)) - 1
        spec.weights = rng.integers(-top, top + 1, size=(d_out, d_in)).astype(np.int8)
    else:
        spec.weights = np.where(rng.random((d_out, d_in)) < 0.5, 1, -1).astype(np.int8)
    if eh >= 2:
        spec.router = rng.integers(-(1 << exp), 1 << exp, size=(eh, d_in)).astype(np.int16)
    if eh >= 1:
        spec.s_in = rng.integers(1 << (exp - 2), 1 << exp, size=(eh, d_in)).astype(np.int16)
        spec.s_out = rng.integers(1 << (exp - 2), 1 << exp, size=(eh, d_out)).astype(np.int16)
    return spec


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["LayerSpec", "lower_linear", "synthetic_spec", "check_shape",
           "check_experts", "check_bias", "SUPPORTED_SCHEMES", "SCHEME_WEIGHT_BITS", "BIAS_SCHEMES", "UNSUPPORTED_SCHEMES", "ceil_div"]
