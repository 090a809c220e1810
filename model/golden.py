"""The integer golden model: exactly what the accelerator computes, in PyTorch int64 arithmetic.

Two sides, one boundary:

* :class:`AcceleratorSide` runs every binarized linear as the accelerator does (docs/isa.md, ``quant`` ->
  ``matmul`` -> ``scaleout``), on integers only: x (int16, ``x_frac_bits``) -> router logits (Q7.8) -> softmax gates
  (EXP2_LUT, Q1.15) -> mixed s_in -> v = x * s_in -> per-token k-bit quantization (RQ, D, INVQ) -> +-1 dot product ->
  wrap to ``acc_bits`` -> mixed s_out (or SMUL) -> ``scale_output`` with OSHIFT -> y (int32, ``out_frac_bits``), plus,
  for FBI-LLM layers, the per-token bias beta . x of the unscaled x (``bias_term``) added before the saturation.
  :func:`golden_linear` is the per-layer entry point the compiler, simulator and RTL tests call.
* :class:`HostSide` runs everything else in float on the host (embedding, RMSNorm, rotary, attention, SiLU, residuals,
  LM head): the model engineer's :class:`~bitmos.model.transformer.Transformer` rebuilt from the export's config and
  host tensors, with every binarized linear routed through the boundary (its ``linear_override`` hook). Moving an
  operation on-chip later means moving it from HostSide to AcceleratorSide.
* The boundary: ``HostSide.to_accelerator`` (float -> int16, ``float_to_fixed``: round half up, saturate) and
  ``HostSide.from_accelerator`` (int32 -> float, y / 2^out_frac_bits).

Exactness. Every value is an int64 tensor and every operation is exact integer arithmetic with the floor semantics of
``bitmos.formats`` (torch ``>>`` on int64 is an arithmetic shift, i.e. floor division by 2^s, also for negatives; ``//``
is used on positive operands only). Bounds (|x| <= 2^15, |router|, |S| <= 2^15, K < 2^16, E <= 8):
router accumulator < 2^46; g*S sums < 2^34; |v| <= 2^30; D <= 2^30; acc sign-extended from acc_bits <= 32. The two
products that exceed int64 -- v*RQ (up to 2^69) and acc*D*s_out (up to 2^76) -- go through :func:`mul_shift_round`,
which splits one factor into 24-bit limbs (proof in its docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bitmos.config import AcceleratorConfig
from bitmos.errors import FormatError
from bitmos import formats as F
from bitmos.export import BinaryLinearExport, ModelExport
from bitmos.formats import (EXP2_LUT, GATE_FRAC, GATE_ONE, LOG2E_Q10, LOGIT_BITS, OUT_BITS, SCALE_BITS,
                            X_BITS, act_qmax, inv_q)
from bitmos.model.export import accel_from_export, export_model, resolve_accel

I64 = torch.int64
_EXP2 = torch.tensor(EXP2_LUT, dtype=I64)
_LIMB = 24
_LIMB_MASK = (1 << _LIMB) - 1
#: limits under which :func:`mul_shift_round` is exact (|a| < 2^32, |b| < 2^50, result exact when < 2^36)
_MSR_A, _MSR_B, _MSR_OUT = 1 << 32, 1 << 50, 1 << 36

# ---- exact integer primitives (torch int64), each mirroring one function of bitmos.formats ------------------------


def rshift_round(v: torch.Tensor, s: int) -> torch.Tensor:
    """floor((v + 2^(s-1)) / 2^s); identity for s = 0 (``formats.rshift_round``). Caller keeps v + 2^(s-1) < 2^63."""
    if s < 0:
        raise ValueError(f"shift must be >= 0, got {s}")
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def sat(v: torch.Tensor, bits: int) -> torch.Tensor:
    """Clamp to the signed range of ``bits`` bits (``formats.sat``)."""
    return v.clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def wrap(v: torch.Tensor, bits: int) -> torch.Tensor:
    """Two's complement wrap to ``bits`` bits, sign-extended (``formats.to_signed(to_unsigned(v))``)."""
    half = 1 << (bits - 1)
    return ((v + half) & ((1 << bits) - 1)) - half


def mul_shift_round(a: torch.Tensor, b: torch.Tensor, s: int) -> torch.Tensor:
    """floor((a*b + 2^(s-1)) / 2^s) (no rounding term when s = 0) without forming a*b, which may exceed int64.

    Preconditions: |a| < 2^32, |b| < 2^50, 0 <= s <= 63 (checked). The result is exact whenever the true value has
    |.| < 2^36; otherwise it has the true value's sign and |.| > 2^32, so a later saturation to <= 32 bits (or a clamp
    to +-Q) gives exactly the saturated true value.

    Proof. Split b = b1*2^24 + b0 with b0 = b & (2^24-1) in [0, 2^24), b1 = b >> 24 (floor), |b1| <= 2^26. Then
    X = a*b1 (|X| < 2^58) and Y = a*b0 (|Y| < 2^56) fit int64 and a*b = X*2^24 + Y. With H = X + (Y >> 24) and
    L = Y & (2^24-1) in [0, 2^24): a*b = H*2^24 + L exactly (Y = (Y >> 24)*2^24 + L). Let r = 2^(s-1) (0 if s = 0).
    * s >= 24: write L + r = c*2^24 + l' with c = (L + r) >> 24, l' in [0, 2^24). Then a*b + r = (H + c)*2^24 + l'
      and floor(((H + c)*2^24 + l') / 2^s) = floor((H + c) / 2^(s-24)) because 0 <= l' < 2^24 cannot carry past the
      2^24 boundary (floor(floor(z / 2^24) / 2^t) = floor(z / 2^(24+t))). |H + c| < 2^59, no overflow.
    * s < 24: a*b + r = H*2^24 + (L + r), and H*2^24 / 2^s = H*2^(24-s) is an integer, so the floor splits:
      the result is H*2^(24-s) + ((L + r) >> s) exactly. To stay in int64, H is clamped to +-2^36 first: when |H| <= 2^36 nothing changes (|H*2^(24-s)| <= 2^60); when it is clamped, the
      computed and the true value are both beyond 2^37 - 2^25 > 2^32 in magnitude, with the same sign.
    """
    if not 0 <= s <= 63:
        raise ValueError(f"shift must be in 0..63, got {s}")
    if a.numel() and int(a.abs().max()) >= _MSR_A:
        raise OverflowError(f"mul_shift_round: |a| = {int(a.abs().max())} >= 2^32")
    if b.numel() and int(b.abs().max()) >= _MSR_B:
        raise OverflowError(f"mul_shift_round: |b| = {int(b.abs().max())} >= 2^50")
    b0 = b & _LIMB_MASK
    b1 = b >> _LIMB
    x = a * b1
    y = a * b0
    h = x + (y >> _LIMB)
    lo = y & _LIMB_MASK
    r = (1 << (s - 1)) if s > 0 else 0
    if s >= _LIMB:
        return (h + ((lo + r) >> _LIMB)) >> (s - _LIMB)
    h = h.clamp(-_MSR_OUT, _MSR_OUT)
    return h * (1 << (_LIMB - s)) + ((lo + r) >> s)


def router_logits(x: torch.Tensor, router: torch.Tensor, rshift: int) -> torch.Tensor:
    """x [T, K], router [E, K] -> Q7.8 logits [T, E] = sat16(rshift_round(x . WR_e, RSHIFT)); |acc| < 2^46."""
    return sat(rshift_round(x @ router.T, rshift), LOGIT_BITS)


def exp2_weight(d: torch.Tensor) -> torch.Tensor:
    """``formats.exp2_weight`` elementwise: Q.8 distances below the maximum (>= 0) -> weights ~ 2^15 e^(-d/256)."""
    u = rshift_round(d.clamp(max=F.SOFTMAX_DIFF_MAX) * LOG2E_Q10, F.LOG2E_FRAC)
    n, f = u >> F.EXP2_FRAC_BITS, u & (F.EXP2_LUT_SIZE - 1)
    return torch.where(n < F.SOFTMAX_MAX_SHIFT, _EXP2[f] >> n.clamp(max=F.SOFTMAX_MAX_SHIFT - 1), torch.zeros_like(u))


def softmax_gates(logits: torch.Tensor) -> torch.Tensor:
    """[T, E] Q7.8 logits -> [T, E] unsigned Q1.15 gates (``formats.softmax_gates``, vectorized)."""
    p = exp2_weight(logits.amax(-1, keepdim=True) - logits)
    rcp = (1 << F.SOFTMAX_RCP_SHIFT) // p.sum(-1, keepdim=True)  # sum p >= 2^15 > 0: floor division of positives
    return rshift_round(p * rcp, GATE_FRAC)


def mix_scale(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """gates [T, E], experts [E, N] -> [T, N] = sat16(rshift_round(sum_e g_e * S_e, 15)); sums < 2^34."""
    return sat(rshift_round(gates @ experts, GATE_FRAC), SCALE_BITS)


def quantize_token(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v [T, K] (|v| <= 2^30) -> (q [T, K], D [T]) (``formats.quantize_token``, per token)."""
    qmax = act_qmax(bits)
    m = v.abs().amax(-1)                                       # [T]
    d = rshift_round(m * inv_q(bits), F.INVQ_SHIFT)            # m = 0 -> D = 0
    if bits == 1:
        return torch.where(v >= 0, 1, -1).to(I64), d          # m = 0: v = 0 -> q = +1
    rq = (qmax << F.RQ_SHIFT) // m.clamp(min=1)                # RQ < 2^39; m = 0 rows have v = 0 -> q = 0
    q = mul_shift_round(v, rq[:, None], F.RQ_SHIFT).clamp(-qmax, qmax)
    return q, d


def scale_output(acc: torch.Tensor, d: torch.Tensor, s_out: torch.Tensor, oshift: int,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = sat32(rshift_round(acc * D * s_out, OSHIFT) + bias): acc [T, N], D [T], s_out [T, N] or [1, N], bias [T].

    The shifted product is first clamped to 34 bits: with |bias| < 2^31 that cannot change the saturated sum (a
    value past +-(2^33 - 1) stays past +-2^31 after any bias), and it keeps the sum inside int64."""
    y = mul_shift_round(acc, d[:, None] * s_out, oshift)
    if bias is not None:
        y = y.clamp(-(1 << 33), (1 << 33) - 1) + bias[:, None]
    return sat(y, OUT_BITS)


def bias_term(x: torch.Tensor, beta: torch.Tensor, rshift: int) -> torch.Tensor:
    """x [T, K], beta [K] -> [T] = sat32(rshift_round(x . beta, RSHIFT)) (``formats.bias_term``); |x . beta| < 2^46."""
    return sat(rshift_round(x @ beta, rshift), OUT_BITS)


# ---- one binarized linear ----------------------------------------------------------------------------------------


def layer_shifts(lin: BinaryLinearExport, cfg: AcceleratorConfig) -> tuple[int, int]:
    """(RSHIFT, OSHIFT) of an exported layer (:func:`bitmos.formats.layer_shifts`)."""
    return lin.shifts(cfg)


class GoldenLinear:
    """One exported binarized linear, its tensors prepared once as int64; call with x_int16 [T, K]."""

    def __init__(self, lin: BinaryLinearExport, cfg: AcceleratorConfig):
        lin.validate()
        self.lin, self.cfg, self.name = lin, cfg, lin.name
        self.experts, self.bits = lin.experts, lin.act_bits
        act_qmax(self.bits)  # validates 1/2/4/8
        self.rshift, self.oshift = layer_shifts(lin, cfg)
        t = lambda a: torch.from_numpy(np.asarray(a).astype(np.int64))  # noqa: E731
        self.w_int = torch.from_numpy(lin.weights().astype(np.int64).T.copy())    # [K, N] +-1 or {-1, 0, +1}
        self.router = t(lin.router) if lin.experts >= 2 else None                             # [E, K]
        self.s_in = t(lin.s_in) if lin.experts >= 1 else None                                 # [E, K]
        self.s_out = t(lin.s_out) if lin.experts >= 1 else None                               # [E, N]
        self.smul = torch.tensor([[int(lin.smul)]], dtype=I64)                                # [1, 1]
        self.bias = t(lin.bias) if lin.bias is not None else None                             # [K] (fbi)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"layer {self.name!r}: x must be an integer tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 2 or x.shape[1] != self.lin.d_in:
            raise ValueError(f"layer {self.name!r}: x must be [T, {self.lin.d_in}], got {tuple(x.shape)}")
        x = x.to(I64)
        if x.numel() and (int(x.max()) > 32767 or int(x.min()) < -32768):
            raise ValueError(f"layer {self.name!r}: x is outside int16")
        return x

    def trace(self, x_int16: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate of ``quant``/``matmul``/``scaleout`` for tokens x_int16 [T, K] (all int64).

        Keys: x, logits [T,E] and gates [T,E] (E >= 2; gates also for E = 1), s_in [T,K] (E >= 1), v, q, D [T],
        acc [T,N] (after the acc_bits wrap), s_out [T,N] (or [1,N] = SMUL), y [T,N] (int32 range, out_frac_bits).
        """
        x = self._check(x_int16)
        tr: dict[str, torch.Tensor] = {"x": x}
        T, E = x.shape[0], self.experts
        if E >= 2:
            tr["logits"] = router_logits(x, self.router, self.rshift)
            tr["gates"] = softmax_gates(tr["logits"])
        elif E == 1:
            tr["gates"] = torch.full((T, 1), GATE_ONE, dtype=I64)
        if E >= 1:
            tr["s_in"] = mix_scale(tr["gates"], self.s_in)
            v = x * tr["s_in"]
        else:
            v = x << F.E0_V_SHIFT
        tr["v"] = v
        q, d = quantize_token(v, self.bits)
        tr["q"], tr["D"] = q, d
        acc_full = q @ self.w_int                         # exact: |acc| <= K*Q < 2^23, integer matmul
        tr["acc_unwrapped"] = acc_full
        tr["acc"] = wrap(acc_full, self.cfg.acc_bits)
        tr["s_out"] = mix_scale(tr["gates"], self.s_out) if E >= 1 else self.smul.expand(1, self.lin.d_out)
        if self.bias is not None:
            tr["bias"] = bias_term(x, self.bias, self.rshift)
        tr["y"] = scale_output(tr["acc"], d, tr["s_out"], self.oshift, tr.get("bias"))
        return tr

    def __call__(self, x_int16: torch.Tensor) -> torch.Tensor:
        return self.trace(x_int16)["y"]


def golden_linear(lin: BinaryLinearExport, x_int16: torch.Tensor, cfg: AcceleratorConfig) -> torch.Tensor:
    """The accelerator's output for one binarized linear: x_int16 [T, K] (integer) -> y [T, N] int64 holding int32
    values with ``cfg.out_frac_bits`` fraction bits. Uses ``lin.act_bits`` and ``lin.experts`` (the layer as
    exported) and ``cfg.x_frac_bits``/``out_frac_bits``/``acc_bits``."""
    return GoldenLinear(lin, cfg)(x_int16)


def golden_linear_trace(lin: BinaryLinearExport, x_int16: torch.Tensor, cfg: AcceleratorConfig) -> dict:
    """Like :func:`golden_linear` but returns every intermediate (see :meth:`GoldenLinear.trace`)."""
    return GoldenLinear(lin, cfg).trace(x_int16)


# ---- the boundary and the two sides ------------------------------------------------------------------------------


def to_fixed(x: torch.Tensor, frac_bits: int, bits: int = X_BITS) -> torch.Tensor:
    """Host float -> saturating fixed point, round half up: ``formats.float_to_fixed`` elementwise (float64 math,
    identical to Python's: x*2^f is exact in float64 and the +0.5 is the same IEEE addition)."""
    xd = x.detach().to(torch.float64)
    if torch.isnan(xd).any():
        raise ValueError("NaN at the host -> accelerator boundary")
    lim = 1 << (bits - 1)
    return torch.floor(xd * (1 << frac_bits) + 0.5).clamp(-lim, lim - 1).to(I64)


def from_fixed(y: torch.Tensor, frac_bits: int, dtype=torch.float32) -> torch.Tensor:
    """Accelerator fixed point -> host float: y / 2^frac_bits (``formats.fixed_to_float``)."""
    return (y.to(torch.float64) / (1 << frac_bits)).to(dtype)


def check_parts(path: str, parts: list[BinaryLinearExport], d_in: int, cfg: AcceleratorConfig) -> None:
    """The chip layers of model linear ``path`` (``d_in`` inputs) fit together: one layer of the whole input, or
    parts of one split scheme whose channels are disjoint, inside the input, cover it, and share one input format."""
    if len(parts) == 1 and not parts[0].source:
        if parts[0].d_in != d_in:
            raise FormatError(f"layer {path!r}: d_in = {parts[0].d_in}, the model's linear takes {d_in}")
        return
    if any(not lin.source for lin in parts):
        raise FormatError(f"layer {path!r}: a layer and parts of it at once")
    taken = np.concatenate([lin.channels for lin in parts]).astype(np.int64)
    if taken.size and (int(taken.max()) >= d_in or np.unique(taken).size != taken.size or taken.size != d_in):
        raise FormatError(f"layer {path!r}: its parts' channels must split its {d_in} inputs exactly once each")
    if len({lin.input_frac(cfg) for lin in parts}) != 1 or len({lin.d_out for lin in parts}) != 1:
        raise FormatError(f"layer {path!r}: its parts differ in input format or output width")
    if len(parts) > 1 and any(not lin.absmax_pads for lin in parts):
        raise FormatError(f"layer {path!r}: a part without absmax pads would quantize with its own absmax")


def part_input(lin: BinaryLinearExport, x: torch.Tensor) -> torch.Tensor:
    """The chip input of layer ``lin`` from its model linear's int16 input x [T, K]: x itself, or for a part of a
    split linear x's ``channels`` followed by ``absmax_pads`` columns of -max|x| per token (-m fits int16 even
    for m = 32768; the quantizer takes |.|, so the sign does not matter)."""
    if not lin.source:
        return x
    cols = x[:, torch.from_numpy(lin.channels.astype(np.int64))]
    pad = (-x.abs().amax(-1, keepdim=True)).expand(x.shape[0], lin.absmax_pads)
    return torch.cat([cols, pad], 1)


@dataclass
class LinearStats:
    """Per-layer counters of the integer path (for reports): tokens, saturated inputs/outputs, accumulator wraps."""
    tokens: int = 0
    x_values: int = 0
    x_saturated: int = 0
    y_values: int = 0
    y_saturated: int = 0
    acc_wrapped: int = 0


class AcceleratorSide:
    """Every binarized linear of the export, run as the accelerator runs it (integers in, integers out)."""

    def __init__(self, export: ModelExport, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.layers = {lin.name: GoldenLinear(lin, cfg) for lin in export.linears}
        self.stats = {name: LinearStats() for name in self.layers}

    def __call__(self, name: str, x_int16: torch.Tensor) -> torch.Tensor:
        tr = self.layers[name].trace(x_int16)
        st = self.stats[name]
        st.tokens += tr["x"].shape[0]
        y = tr["y"]
        st.y_values += y.numel()
        st.y_saturated += int(((y == (1 << 31) - 1) | (y == -(1 << 31))).sum())
        st.acc_wrapped += int((tr["acc"] != tr["acc_unwrapped"]).sum())
        return y

    def reset_stats(self) -> None:
        self.stats = {name: LinearStats() for name in self.layers}


class HostSide(nn.Module):
    """The float part that stays on the host: the Transformer skeleton with the export's host tensors.

    Its binarized linears hold no weights (their latent parameters are NaN, so any float use would show); they are
    reached only through the boundary (``to_accelerator`` / ``from_accelerator``).
    """

    def __init__(self, export: ModelExport, cfg: AcceleratorConfig):
        super().__init__()
        from bitmos.model.config import ModelConfig
        from bitmos.model.transformer import Transformer

        self.cfg = cfg
        self.config = ModelConfig.from_dict(dict(export.model_config))
        self.transformer = Transformer(self.config)
        modules = dict(self.transformer.binarized_linears())
        #: model linear path -> its chip layers (one, or the parts of a split scheme, in export order)
        self.parts: dict[str, list[BinaryLinearExport]] = {}
        for lin in export.linears:
            self.parts.setdefault(lin.model_linear, []).append(lin)
        names, exported = set(modules), set(self.parts)
        if names != exported:
            raise FormatError(f"export's binarized linears {sorted(exported - names)[:4]} / model's "
                              f"{sorted(names - exported)[:4]} do not match the model config")
        for path, parts in self.parts.items():
            check_parts(path, parts, modules[path].in_features, cfg)
        #: each model linear's input format (its parts share it: they take one conversion of one input)
        self.x_frac = {path: parts[0].input_frac(cfg) for path, parts in self.parts.items()}
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy()) for k, v in export.host.items()}
        missing, unexpected = self.transformer.load_state_dict(state, strict=False)
        bad_missing = [k for k in missing if not any(k.startswith(n + ".") for n in names)]
        if bad_missing or unexpected:
            raise FormatError(f"export host tensors do not match the model: missing {bad_missing[:5]}, "
                              f"unexpected {list(unexpected)[:5]}")
        with torch.no_grad():
            for _, m in self.transformer.binarized_linears():
                for p in m.parameters():
                    p.fill_(float("nan"))
        self.transformer.eval()

    def to_accelerator(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """float [T, K] -> int16 values (int64 tensor) with layer ``path``'s input fraction bits (its calibrated
        ``x_frac``, else the config's ``x_frac_bits``)."""
        return to_fixed(x, self.x_frac[path])

    def run_linear(self, path: str, x_int: torch.Tensor, accel_fn) -> torch.Tensor:
        """Model linear ``path`` on the chip: x_int [T, K] (int16 values) -> y [T, N] (int64; int32 values, or for a
        split linear the exact sum of its parts' int32 outputs), each chip layer through ``accel_fn``."""
        y = None
        for lin in self.parts[path]:
            part = accel_fn(lin.name, part_input(lin, x_int))
            y = part if y is None else y + part.to(I64)
        return y

    def from_accelerator(self, y: torch.Tensor) -> torch.Tensor:
        """int32 values with out_frac_bits fraction bits -> float32."""
        return from_fixed(y, self.cfg.out_frac_bits)

    def linear_hook(self, accel_fn, on_input=None):
        """A ``linear_override`` hook (see ``Transformer.forward``) that runs every binarized linear on an
        accelerator: float x (..., K) -> :meth:`to_accelerator` -> ``accel_fn(path, x_int [T, K]) -> y_int
        [T, N]`` -> :meth:`from_accelerator`. ``accel_fn`` is the golden :class:`AcceleratorSide`, the
        simulator or the RTL (``bitmos demo`` / ``verify``); ``on_input(path, v)``, if given, sees each layer's
        float input after its host part (the golden model counts the values that saturate int16)."""
        def hook(path: str, module, x: torch.Tensor) -> torch.Tensor:
            x = module.host_input(x)    # the layer's host part (BitNet's LayerNorm), then the chip's input
            if on_input is not None:
                on_input(path, x)
            lead, k = x.shape[:-1], x.shape[-1]
            y = self.run_linear(path, self.to_accelerator(x.reshape(-1, k), path), accel_fn)
            return self.from_accelerator(y).reshape(*lead, y.shape[-1])
        return hook


def golden_sides(export: ModelExport, accel: AcceleratorConfig | str | None) -> tuple[AcceleratorConfig, HostSide,
                                                                                     AcceleratorSide]:
    """The accelerator config (``accel``, else the export's own, else the default) and the two sides on it."""
    cfg = resolve_accel(accel) if accel is not None else (accel_from_export(export) or AcceleratorConfig())
    return cfg, HostSide(export, cfg), AcceleratorSide(export, cfg)


class GoldenModel(nn.Module):
    """Whole-model integer golden forward: ``model(idx) -> (logits, loss)`` like the Transformer, so
    ``bitmos.model.train.evaluate(golden, ...)`` works unchanged; :meth:`generate` is greedy decoding."""

    def __init__(self, export: ModelExport, accel: AcceleratorConfig | str | None = None):
        super().__init__()
        self.export = export
        self.accel_cfg, self.host, self.accelerator = golden_sides(export, accel)
        self.config = self.host.config
        self._to_golden = self.host.linear_hook(self.accelerator, on_input=self._count_input)

    @classmethod
    def from_model(cls, model, accel: AcceleratorConfig | str | None = None) -> "GoldenModel":
        """Export a float student (Transformer) and wrap the export."""
        return cls(export_model(model, accel), accel)

    @classmethod
    def load(cls, path: str | Path, accel: AcceleratorConfig | str | None = None) -> "GoldenModel":
        """From an export file (``ModelExport.save``) or a student checkpoint."""
        return cls(load_export_or_checkpoint(path, accel), accel)

    def boundary(self, path: str, module, x: torch.Tensor) -> torch.Tensor:
        """The linear_override hook: :meth:`HostSide.linear_hook` over the golden accelerator, counting
        the inputs that saturate int16 on the way (:meth:`_count_input`)."""
        return self._to_golden(path, module, x)

    def _count_input(self, path: str, v: torch.Tensor) -> None:
        """Count layer ``path``'s chip input values (after its host part) and those beyond int16 at its format."""
        st = self.accelerator.stats[self.host.parts[path][0].name]   # a split linear's input: its first part's
        lim = 1 << (X_BITS - 1)
        st.x_values += v.numel()
        raw = torch.floor(v.detach().double() * (1 << self.host.x_frac[path]) + 0.5)
        st.x_saturated += int(((raw > lim - 1) | (raw < -lim)).sum())

    @torch.no_grad()
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.host.transformer(idx, targets, linear_override=self.boundary)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding (argmax at every step), full recompute: idx (B, T) -> (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.max_seq_len:])
            idx = torch.cat([idx, logits[:, -1, :].argmax(-1, keepdim=True)], dim=1)
        return idx

    def stats(self) -> dict[str, dict[str, int]]:
        return {k: dict(vars(v)) for k, v in self.accelerator.stats.items()}


# ---- loading, evaluation ------------------------------------------------------------------------------------------


def _is_export_file(path: Path) -> bool:
    import json
    import struct
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("__metadata__", {}) or {}
    except (OSError, ValueError, struct.error):
        return False
    return "bitmos_export" in meta


def load_export_or_checkpoint(path: str | Path, accel: AcceleratorConfig | str | None = None) -> ModelExport:
    p = Path(path)
    if _is_export_file(p):
        return ModelExport.load(p)
    from bitmos.model.checkpoint import load_checkpoint
    model, meta = load_checkpoint(p)
    return export_model(model, accel, info={"source": str(p), "step": meta.get("step", 0)})


@torch.no_grad()
def compare_on_windows(golden: GoldenModel, student, tokens: torch.Tensor, seq_len: int,
                       max_tokens: int | None = 32768, batch_size: int = 16, bytes_per_token: float = 1.0) -> dict:
    """Teacher-forced evaluation of the golden model (and the float student, if given) on the same windows:
    loss, perplexity, bits per byte, next-token accuracy, and the argmax agreement between the two."""
    from bitmos.model.data import eval_windows

    x, y = eval_windows(tokens, seq_len, max_tokens)
    F = torch.nn.functional
    acc = {"golden": [0.0, 0, 0], "float": [0.0, 0, 0]}
    agree = 0
    for i in range(0, x.size(0), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        outs = {"golden": golden(xb)[0]}
        if student is not None:
            was = student.training
            student.eval()
            outs["float"] = student(xb)[0]
            student.train(was)
            agree += int((outs["float"].argmax(-1) == outs["golden"].argmax(-1)).sum())
        for k, lg in outs.items():
            a = acc[k]
            a[0] += F.cross_entropy(lg.reshape(-1, lg.size(-1)), yb.reshape(-1), reduction="sum").item()
            a[1] += int((lg.argmax(-1) == yb).sum())
            a[2] += yb.numel()
    res: dict[str, Any] = {}
    for k, (nll, correct, n) in acc.items():
        if n:
            loss = nll / n
            res[k] = {"loss": loss, "ppl": math.exp(loss), "bpb": loss / math.log(2) / bytes_per_token,
                      "acc": correct / n, "tokens": n}
    if "float" in res:
        res["ppl_rel_diff"] = res["golden"]["ppl"] / res["float"]["ppl"] - 1.0
        res["argmax_agreement"] = agree / res["golden"]["tokens"]
    return res


@torch.no_grad()
def greedy_agreement(golden: GoldenModel, student, prompts: torch.Tensor, max_new_tokens: int = 32) -> dict:
    """Greedy generation from the same prompts (B, P) by both models. ``token_agreement``: fraction of generated
    positions with the same token; ``prefix_agreement``: mean fraction generated identically before the first
    divergence; ``exact``: fraction of prompts whose whole continuation is identical; ``forced_agreement``: on the
    float student's own greedy sequences, the fraction of generated positions where the golden model's argmax is
    the same token (per-step agreement, free of the compounding after a first divergence)."""
    student.eval()
    P = prompts.size(1)
    full_s = student.generate(prompts, max_new_tokens, temperature=0)
    out_s = full_s[:, P:]
    out_g = golden.generate(prompts, max_new_tokens)[:, P:]
    forced = golden(full_s[:, :-1][:, -golden.config.max_seq_len:])[0][:, -max_new_tokens:].argmax(-1)
    same = out_s == out_g
    first = torch.where(same.all(1), torch.full((same.size(0),), max_new_tokens),
                        (~same).int().argmax(1))
    return {"prompts": prompts.size(0), "prompt_len": prompts.size(1), "new_tokens": max_new_tokens,
            "token_agreement": same.float().mean().item(), "prefix_agreement": (first.float() / max_new_tokens).mean().item(),
            "exact": same.all(1).float().mean().item(),
            "forced_agreement": (forced == out_s).float().mean().item()}


def evaluate_golden(source, accel: AcceleratorConfig | str | None = None, *, corpus: str = "builtin",
                    cache_dir=None, seq_len: int = 128, max_tokens: int | None = 32768, batch_size: int = 16,
                    student=None, tokens: torch.Tensor | None = None, bytes_per_token: float | None = None,
                    compare_float: bool = True, scope: str = "linears") -> dict:
    """Validation figures of the integer golden model beside the float student's.

    ``source``: a student Transformer, a ModelExport, or a path (student checkpoint or export file). The float
    student is compared when it is available (``source`` is a model or a checkpoint, or ``student`` is given); an
    export alone gives the golden figures only (as does ``compare_float=False``). ``tokens``/``bytes_per_token``:
    an already encoded validation stream (else ``corpus`` is loaded and encoded). ``scope``: ``"linears"`` (the
    binarized linears in integers, the rest of each layer in float on the host) or ``"layer"`` (every decoder-layer
    operation in integers: :class:`bitmos.model.golden_layer.GoldenLayerModel`). Returns ``{"golden": {loss, ppl, bpb, acc, tokens}, "float": {...},
    "ppl_rel_diff", "argmax_agreement", "accelerator", "saturation": {...}}``.
    """
    from bitmos.model.checkpoint import load_checkpoint
    from bitmos.model.data import encode_corpus, get_tokenizer, load_corpus

    directory = None
    if isinstance(source, ModelExport):
        export = source
    elif isinstance(source, nn.Module):
        student = source if student is None else student
        export = export_model(source, accel)
    else:
        p = Path(source)
        directory = p.parent
        if _is_export_file(p):
            export = ModelExport.load(p)
        else:
            model, meta = load_checkpoint(p)
            student = model if student is None else student
            export = export_model(model, accel, info={"source": str(p), "step": meta.get("step", 0)})
    if scope == "layer":
        from bitmos.model.golden_layer import GoldenLayerModel
        golden = GoldenLayerModel(export, accel)
    elif scope == "linears":
        golden = GoldenModel(export, accel)
    else:
        raise ValueError(f"scope must be 'linears' or 'layer', got {scope!r}")
    if not compare_float:
        student = None
    if tokens is None:
        _, val_text = load_corpus(corpus, cache_dir)
        tok = get_tokenizer(golden.config.tokenizer, directory)
        tokens = encode_corpus(val_text, tok)
        if bytes_per_token is None:
            bytes_per_token = len(val_text.encode("utf-8")) / max(1, tokens.numel())
    seq = min(seq_len, golden.config.max_seq_len)
    res = compare_on_windows(golden, student, tokens, seq, max_tokens, batch_size, bytes_per_token or 1.0)
    res["scope"] = scope
    res["accelerator"] = golden.accel_cfg.name
    if scope == "layer":
        res["residual"] = dict(golden.residual_stats)
    st = golden.stats()
    res["number_formats"] = {k: getattr(golden.accel_cfg, k) for k in ("x_frac_bits", "out_frac_bits", "acc_bits")}
    res["saturation"] = {k: sum(s[k] for s in st.values())
                         for k in ("x_values", "x_saturated", "y_values", "y_saturated", "acc_wrapped")}
    return res
