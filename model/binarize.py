"""Binarized linear layers: sign(W) weights (sign(0) = +1) with straight-through estimators.

Every scheme computes ``y = f(x)`` from a latent float weight ``W`` [d_out, d_in] whose sign is the stored bit.
The scaled matmul input ``v`` is quantized per token by :func:`bitmos.model.quant.quantize_per_token`
(``act_bits``) before the +-1 matmul -- that is the hardware contract:

========  =====================================================  ==========================================
scheme    forward                                                papers
========  =====================================================  ==========================================
sign      v = x;           y = (Q(v) B^T) * mean|W|               XNOR-Net style single scale
fbi       v = alpha*x;     y = Q(v) B^T + (beta . x)              FBI-LLM (Ma et al., 2024)
onebit    v = x*g;         y = (Q(v) B^T) * h                     OneBit (Xu et al., 2024)
bitnet    v = LN(x);       y = (Q(v) sign(W-mean W)^T) * mean|W|  BitNet (Wang et al., 2023)
pb        v = x;           y = Q(v) (m*s_b*B + M*W_int8)^T        PB-LLM (Shang et al., 2023)
mos       v = x*(G S_in);  y = (Q(v) B^T) * (G S_out)             BinaryMoS (Jo et al., 2024)
ternary   v = x;           y = (Q(v) T^T) * mean|W|               BitNet b1.58 (Ma et al., 2024)
========  =====================================================  ==========================================

(B = sign(W); G = softmax(x W_R^T) per token, or 1 when E = 1; M = salient mask (top |W|, or whole
input channels of largest max|W| with ``pb_salient = "channels"``), m = 1 - M;
T = RoundClip(W / (mean|W| + eps), -1, 1) in {-1, 0, +1}: the one scheme whose weight is not +-1.)

Hooks: each layer knows its module path (``.path``, e.g. ``layers.0.attn.q_proj``). If ``.override`` is set to a
callable ``fn(path, module, x) -> y`` the layer returns that instead; ``module.binary_forward(x)`` is always the
float reference. :meth:`BinarizedLinear.export` gives the hardware view (sign bits, scales, router, act_bits;
for ``ternary`` also the trits).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitmos.export import salient_channel_count
from bitmos.model.config import PB_SALIENT  # "weights" (top |W|) or "channels" (whole input columns)
from bitmos.model.quant import quantize_per_token


class _SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; backward ``mode``: identity, clip (|w| < 1) or tanh (OneBit: 1.001 - tanh^2)."""

    @staticmethod
    def forward(ctx, w, mode: str):
        ctx.save_for_backward(w)
        ctx.mode = mode
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        if ctx.mode == "clip":
            g = g * (w.abs() < 1).to(g.dtype)
        elif ctx.mode == "tanh":
            g = g * (1.001 - torch.tanh(w) ** 2)
        return g, None


def sign_ste(w: torch.Tensor, mode: str = "identity") -> torch.Tensor:
    """+-1 with sign(0) = +1 in the forward pass, a straight-through gradient in the backward pass."""
    assert mode in ("identity", "clip", "tanh"), f"unknown STE mode {mode!r}"
    return _SignSTE.apply(w, mode)


def rank1_abs(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 SVD of |W| [d_out, d_in]: returns positive (out_vec * sqrt(s1), in_vec * sqrt(s1))."""
    u, s, vh = torch.linalg.svd(w.detach().abs().float(), full_matrices=False)
    a, b = u[:, 0] * s[0].sqrt(), vh[0] * s[0].sqrt()       # (d_out,), (d_in,)
    if a.sum() < 0:                                          # |W| >= 0: the Perron vector is one-signed
        a, b = -a, -b
    return a.clamp_min(1e-8), b.clamp_min(1e-8)


class BinarizedLinear(nn.Module):
    """Base class: a latent weight [d_out, d_in], the activation bits, the path and the override hook."""

    scheme = "?"
    ste = "identity"
    bf16_keeps_bits = True   # rounding the latent W to bfloat16 keeps the stored bits (a sign survives rounding);
                             # False makes ``save_checkpoint(compact=True)`` keep W in float32

    def __init__(self, in_features: int, out_features: int, act_bits: int | None = 8):
        super().__init__()
        assert in_features >= 1 and out_features >= 1, f"bad shape {out_features}x{in_features}"
        self.in_features, self.out_features, self.act_bits = in_features, out_features, act_bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.02)
        self.path = ""          # filled in by the Transformer: "layers.<i>.attn.q_proj" ...
        self.override = None    # callable(path, module, x) -> y replacing this layer's forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.override is not None:
            return self.override(self.path, self, x)
        return self.binary_forward(x)

    def sign_weight(self) -> torch.Tensor:
        """+-1 weights [d_out, d_in] as used by the matmul (with the STE attached)."""
        return sign_ste(self.weight, self.ste)

    def sign_bits(self) -> torch.Tensor:
        """bool [d_out, d_in]: True where the weight is +1 (latent >= 0)."""
        return (self.weight.detach() >= 0)

    def init_from_weight(self, w: torch.Tensor) -> None:
        """Start from a float weight (teacher's, or a random one): set latent W and the scheme's scales."""
        assert w.shape == self.weight.shape, f"{self.path}: weight {tuple(w.shape)} != {tuple(self.weight.shape)}"
        with torch.no_grad():
            self.weight.copy_(w)

    def host_input(self, x: torch.Tensor) -> torch.Tensor:
        """The part of the layer that runs on the host before the chip takes its input: nothing, except
        BitNet's parameter-free LayerNorm (a norm, and norms run on the host like every RMSNorm today)."""
        return x

    def binary_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export(self) -> dict:
        """Hardware view: float32/bool tensors and plain values, no autograd. Keys common to all schemes:
        ``scheme, in_features, out_features, act_bits, sign`` (bool [d_out, d_in], True = +1)."""
        return {"scheme": self.scheme, "in_features": self.in_features, "out_features": self.out_features,
                "act_bits": self.act_bits, "sign": self.sign_bits().clone()}

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, scheme={self.scheme}, act_bits={self.act_bits}"


class SignLinear(BinarizedLinear):
    """One per-layer scale: y = (Q(x) sign(W)^T) * mean|W|."""

    scheme = "sign"

    def scale(self) -> torch.Tensor:
        return self.weight.abs().mean()

    def binary_forward(self, x):
        v = quantize_per_token(x, self.act_bits)                             # (B, T, d_in)
        return F.linear(v, self.sign_weight()) * self.scale()                # (B, T, d_out)

    def export(self):
        return {**super().export(), "scale": float(self.scale().detach())}


class FBILinear(BinarizedLinear):
    """FBI-LLM: w = alpha * sign(W) + beta (per input column) = sign(W)(alpha * x) + (beta . x) on every output."""

    scheme = "fbi"

    def __init__(self, in_features, out_features, act_bits=8):
        super().__init__(in_features, out_features, act_bits)
        self.alpha = nn.Parameter(torch.ones(in_features))
        self.beta = nn.Parameter(torch.zeros(in_features))
        self.init_from_weight(self.weight.detach().clone())

    def init_from_weight(self, w):
        super().init_from_weight(w)
        with torch.no_grad():
            self.beta.copy_(w.mean(0))                                       # column mean
            self.alpha.copy_((w - w.mean(0)).abs().mean(0))                  # column mean absolute deviation

    def binary_forward(self, x):
        v = quantize_per_token(x * self.alpha, self.act_bits)                # (B, T, d_in)
        shift = (x * self.beta).sum(-1, keepdim=True)                        # (B, T, 1), full precision
        return F.linear(v, self.sign_weight()) + shift                       # (B, T, d_out)

    def export(self):
        return {**super().export(), "alpha": self.alpha.detach().clone(), "beta": self.beta.detach().clone()}


class OneBitLinear(BinarizedLinear):
    """OneBit: y = ((x * g) sign(W)^T) * h, g and h from the rank-1 SVD of |W| (SVID)."""

    scheme = "onebit"
    ste = "tanh"

    def __init__(self, in_features, out_features, act_bits=8):
        super().__init__(in_features, out_features, act_bits)
        self.g = nn.Parameter(torch.ones(in_features))
        self.h = nn.Parameter(torch.ones(out_features))
        self.init_from_weight(self.weight.detach().clone())

    def init_from_weight(self, w):
        super().init_from_weight(w)
        h, g = rank1_abs(w)
        with torch.no_grad():
            self.g.copy_(g)
            self.h.copy_(h)

    def binary_forward(self, x):
        v = quantize_per_token(x * self.g, self.act_bits)                    # (B, T, d_in)
        return F.linear(v, self.sign_weight()) * self.h                      # (B, T, d_out)

    def export(self):
        return {**super().export(), "s_in": self.g.detach().clone(), "s_out": self.h.detach().clone()}


class BitNetLinear(BinarizedLinear):
    """BitNet BitLinear: parameter-free LayerNorm, absmax per-token activations, sign(W - mean W) * mean|W|."""

    bf16_keeps_bits = False  # sign(W - mean W): bfloat16 rounding moves weights near the mean across it

    scheme = "bitnet"
    ln_eps = 1e-5

    def sign_weight(self):
        return sign_ste(self.weight - self.weight.mean(), self.ste)

    def sign_bits(self):
        w = self.weight.detach()
        return (w - w.mean()) >= 0

    def scale(self):
        return self.weight.abs().mean()

    def host_input(self, x):
        return F.layer_norm(x, (self.in_features,), eps=self.ln_eps)         # (B, T, d_in), no affine

    def binary_forward(self, x):
        v = quantize_per_token(self.host_input(x), self.act_bits)
        return F.linear(v, self.sign_weight()) * self.scale()                # (B, T, d_out)

    def export(self):
        return {**super().export(), "scale": float(self.scale().detach()), "layernorm_eps": self.ln_eps}


class PBLinear(BinarizedLinear):
    """PB-LLM: a ``fraction`` of W kept as per-row absmax int8, the rest sign(W) * mean|W_rest|.

    ``salient="weights"`` (the paper's set, Shang et al., arXiv:2310.00034): the top ``fraction`` of |W| anywhere in
    the matrix. ``salient="channels"`` (structured): the round(fraction * d_in) input channels (columns) with the
    largest infinity norm (max |W| over the column), every weight of them int8. The two differ only in
    :meth:`salient_mask`. Why the infinity norm: the paper's set is the largest single weights, which the one binary
    scale fits worst; the columns holding the largest single weights are its structured counterpart. Measured
    (docs/model.md, 300 distillation steps at pb_fraction 0.1): trained ppl 3.810 against 3.881 (L2) and 3.888 (L1).
    """

    bf16_keeps_bits = False  # the salient set (top |W| or the column norms' order) and its int8 values move under
                             # bfloat16 rounding

    scheme = "pb"

    def __init__(self, in_features, out_features, act_bits=8, fraction=0.1, salient="weights"):
        super().__init__(in_features, out_features, act_bits)
        assert 0.0 <= fraction < 1.0, f"pb fraction must be in [0, 1), got {fraction!r}"
        assert salient in PB_SALIENT, f"pb salient must be one of {PB_SALIENT}, got {salient!r}"
        self.fraction = fraction
        self.salient = salient

    def salient_channels(self) -> torch.Tensor:
        """int64 (k,), ascending: the k = round(fraction * d_in) input channels (columns of W) with the largest
        max |W|; equal maxima go to the lower index (a stable sort), so the choice is deterministic."""
        k = salient_channel_count(self.fraction, self.in_features)
        norms = self.weight.detach().float().abs().amax(0)                   # (d_in,) column infinity norms
        order = torch.sort(norms, descending=True, stable=True).indices
        return order[:k].sort().values

    def salient_mask(self) -> torch.Tensor:
        """bool [d_out, d_in]: "weights": the ``fraction`` largest-magnitude weights (ties broken by kthvalue);
        "channels": every weight of :meth:`salient_channels`."""
        if self.salient == "channels":
            mask = torch.zeros_like(self.weight, dtype=torch.bool)
            mask[:, self.salient_channels()] = True
            return mask
        w = self.weight.detach().abs().flatten()
        k = int(round(self.fraction * w.numel()))
        if k == 0:
            return torch.zeros_like(self.weight, dtype=torch.bool)
        thresh = torch.kthvalue(w, w.numel() - k + 1).values
        return self.weight.detach().abs() >= thresh

    def parts(self):
        """(mask, int8 codes, row scales, binary scale): W_eff = mask * codes * row_scale + ~mask * scale * B."""
        mask = self.salient_mask()
        ws = self.weight * mask                                              # salient part
        row = ws.detach().abs().amax(1, keepdim=True) / 127                  # (d_out, 1)
        row = torch.where(row > 0, row, torch.ones_like(row))
        codes = torch.clamp(torch.round(ws.detach() / row), -127, 127)
        rest = (~mask).to(self.weight.dtype)
        scale = (self.weight.abs() * rest).sum() / rest.sum().clamp_min(1)  # optimal scale of the binary part
        return mask, codes, row, scale

    def binary_forward(self, x):
        mask, codes, row, scale = self.parts()
        w_int8 = self.weight * mask + (codes * row - self.weight * mask).detach()   # STE through round
        w_eff = w_int8 + (~mask) * scale * self.sign_weight()                # (d_out, d_in)
        v = quantize_per_token(x, self.act_bits)
        return F.linear(v, w_eff)

    def export(self):
        mask, codes, row, scale = self.parts()
        out = {**super().export(), "scale": float(scale.detach()), "salient": mask.clone(),
               "int8": codes.to(torch.int8), "row_scale": row.squeeze(1).detach().clone()}
        if self.salient == "channels":   # the structured set: also the channel list (the int8 pass's K indices)
            out["salient_channels"] = self.salient_channels()
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fraction={self.fraction}, salient={self.salient}"


class MoSLinear(BinarizedLinear):
    """BinaryMoS: per-token mixture of E scale experts. y = ((x * G S_in) sign(W)^T) * (G S_out)."""

    scheme = "mos"
    ste = "clip"

    def __init__(self, in_features, out_features, act_bits=8, experts=4):
        super().__init__(in_features, out_features, act_bits)
        assert experts >= 1, f"experts must be >= 1, got {experts!r}"
        self.experts = experts
        self.router = nn.Linear(in_features, experts, bias=False) if experts > 1 else None
        if self.router is not None:
            self.router._is_router = True   # keeps nn.Linear's default init (Transformer._init_weights skips it)
        self.s_in = nn.Parameter(torch.ones(experts, in_features))
        self.s_out = nn.Parameter(torch.ones(experts, out_features))
        self.init_from_weight(self.weight.detach().clone())

    def init_from_weight(self, w):
        super().init_from_weight(w)
        s_out, s_in = rank1_abs(w)
        with torch.no_grad():
            self.s_in.copy_(s_in.expand(self.experts, -1))
            self.s_out.copy_(s_out.expand(self.experts, -1))

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) softmax mixing weights per token (float, from the unquantized input)."""
        if self.router is None:
            return x.new_ones(*x.shape[:-1], 1)
        return F.softmax(self.router(x), dim=-1)

    def binary_forward(self, x):
        g = self.gates(x)                                                    # (B, T, E)
        s_in, s_out = g @ self.s_in, g @ self.s_out                          # (B, T, d_in), (B, T, d_out)
        v = quantize_per_token(x * s_in, self.act_bits)                      # (B, T, d_in)
        return F.linear(v, self.sign_weight()) * s_out                       # (B, T, d_out)

    def export(self):
        return {**super().export(), "experts": self.experts,
                "router": None if self.router is None else self.router.weight.detach().clone(),   # (E, d_in)
                "s_in": self.s_in.detach().clone(), "s_out": self.s_out.detach().clone()}         # (E, d_*)


class TernaryLinear(BinarizedLinear):
    """BitNet b1.58 (Ma et al., 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
    arXiv:2402.17764): ternary weights with one absmean scale per tensor.

    gamma = mean|W| (per tensor), T = RoundClip(W / (gamma + eps), -1, 1) in {-1, 0, +1} with
    RoundClip(u, a, b) = max(a, min(b, round(u))) (``torch.round``: half to even), y = (Q(x) T^T) * gamma, Q the
    per-token absmax quantizer at ``act_bits`` (:func:`~bitmos.model.quant.quantize_per_token`, as every scheme).

    Backward: straight through RoundClip (identity, no clipping mask, as the authors' ``w + (quant(w) - w).detach()``);
    gamma is not differentiated. So dL/dW = gamma / (gamma + eps) * dL/dW_eff with W_eff = gamma * T.
    Init from a float weight (the teacher's): the latent W is that weight, so the first T is the paper's absmean
    quantization of it. The stored bit of :meth:`sign_bits` is T >= 0 (a zero trit has sign bit True, like
    sign(0) = +1 elsewhere); which trits are zero is a second plane, ``export()["nonzero"]``.
    Deviations from the authors' released training code (the paper's FAQ): it normalizes the input inside
    BitLinear (here the input is the block's own, RMSNorm before q/k/v/gate/up, so the hardware contract Q(x) is
    unchanged) and clamps mean|W| at 1e-5 where the paper's formula, used here, adds eps.
    """

    scheme = "ternary"
    bf16_keeps_bits = False  # a trit depends on |W| against 0.5 * mean|W|, which bfloat16 rounding can cross
    eps = 1e-5   # the paper's small epsilon in W / (gamma + eps): an all-zero weight gives T = 0, not NaN

    def scale(self) -> torch.Tensor:
        """gamma = mean|W| (no gradient: the STE treats it as a constant)."""
        return self.weight.detach().abs().mean()

    def trits(self) -> torch.Tensor:
        """float {-1, 0, +1} [d_out, d_in], no gradient."""
        u = self.weight.detach() / (self.scale() + self.eps)
        return torch.clamp(torch.round(u), -1, 1)

    def trit_weight(self) -> torch.Tensor:
        """The trits as used by the matmul, with the straight-through gradient to the latent weight."""
        u = self.weight / (self.scale() + self.eps)                          # (d_out, d_in)
        return u + (torch.clamp(torch.round(u.detach()), -1, 1) - u).detach()

    def sign_weight(self):
        """The matmul's weights: for this scheme {-1, 0, +1}, not +-1 (see :meth:`trit_weight`)."""
        return self.trit_weight()

    def sign_bits(self):
        """bool [d_out, d_in]: True where the trit is >= 0 (+1 or 0); the zeros are ``trits() == 0``."""
        return self.trits() >= 0

    def binary_forward(self, x):
        v = quantize_per_token(x, self.act_bits)                             # (B, T, d_in)
        return F.linear(v, self.trit_weight()) * self.scale()                # (B, T, d_out)

    def export(self):
        """Common keys plus ``trit`` (int8 [d_out, d_in] in {-1, 0, +1}), ``nonzero`` (bool, True where the trit
        is +-1) and ``scale`` (gamma, float). ``sign`` is True where trit >= 0, so a zero trit has sign True:
        trit = nonzero * (2 * sign - 1); the chip's two planes are pos = sign & nonzero, neg = ~sign & nonzero."""
        t = self.trits()
        return {**super().export(), "trit": t.to(torch.int8), "nonzero": t != 0,
                "scale": float(self.scale())}


def make_linear(config, in_features: int, out_features: int) -> nn.Module:
    """The linear for one decoder-block projection under ``config.scheme`` (nn.Linear for the float teacher)."""
    s, a = config.scheme, config.act_bits
    if s == "float":
        return nn.Linear(in_features, out_features, bias=False)
    if s == "sign":
        return SignLinear(in_features, out_features, a)
    if s == "fbi":
        return FBILinear(in_features, out_features, a)
    if s == "onebit":
        return OneBitLinear(in_features, out_features, a)
    if s == "bitnet":
        return BitNetLinear(in_features, out_features, a)
    if s == "pb":
        return PBLinear(in_features, out_features, a, config.pb_fraction, config.pb_salient)
    if s == "mos":
        return MoSLinear(in_features, out_features, a, config.experts)
    if s == "ternary":
        return TernaryLinear(in_features, out_features, a)
    raise AssertionError(f"unknown scheme {s!r}")  # ModelConfig validates the scheme


def packed_bytes(module: nn.Module) -> int:
    """Bytes to store a linear on the accelerator: 1 bit per sign weight, fp16 per float parameter,
    int8 + 2 index bytes per PB-LLM salient weight, or for structured PB-LLM (``salient="channels"``) int8 per
    weight of the salient columns + 2 index bytes per column (either way the binary plane kept dense, and fp16 per-row
    int8 scales); ternary (BitNet b1.58):
    2 bits per weight -- the sign plane and the nonzero plane, as the chip will store them (not the 1.58-bit
    entropy bound; denser packings such as 5 trits per byte need a decoder) -- plus the fp16 scale."""
    if isinstance(module, nn.Linear):
        return module.weight.numel() * 2
    assert isinstance(module, BinarizedLinear), f"not a linear: {type(module).__name__}"
    bits_per_weight = 2 if isinstance(module, TernaryLinear) else 1
    n = math.ceil(module.weight.numel() * bits_per_weight / 8)
    extra = [p for name, p in module.named_parameters() if name != "weight"]
    n += sum(p.numel() for p in extra) * 2
    if isinstance(module, PBLinear):
        if module.salient == "channels":   # int8 per weight of the salient columns + a 2-byte index per column
            k = int(module.salient_channels().numel())
            n += module.out_features * k + k * 2 + module.out_features * 2
        else:                              # int8 + a 2-byte index per salient weight
            n += int(module.salient_mask().sum()) * 3 + module.out_features * 2
    if isinstance(module, (SignLinear, BitNetLinear, PBLinear, TernaryLinear)):
        n += 2  # the per-layer scale
    return n
