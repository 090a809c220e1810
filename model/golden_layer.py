"""The integer golden model of the whole decoder layer: every operation of every layer in the chip's formats.

:mod:`bitmos.model.golden` runs the binarized linears in integers and the rest of the layer in float on the host.
This module moves the rest of the layer across (issue 18's golden part): RMSNorm, rotary embedding, attention
against a block-floating-point KV cache, SiLU and the gate product, the residual adds and the requantization that
feeds each linear (for BitNet, each linear's own LayerNorm instead), each the vectorized twin of one function of
:mod:`bitmos.formats` (the spec, with the formats and their reasons). The host keeps the embedding lookup (its row enters the int32 residual stream) and the LM head
(on the output of the final RMSNorm, also integer). The linears are :class:`~bitmos.model.golden.AcceleratorSide`
unchanged, so this model and the linear-only one differ exactly in the operations moved.

Exactness: int64 tensors throughout; each bound is in the docstring of the formats function mirrored (largest: the
weighted sum of values, < 2^62 for up to 2^16 positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bitmos import formats as F
from bitmos.config import AcceleratorConfig
from bitmos.export import ModelExport
from bitmos.model.export import export_model
from bitmos.model.golden import I64, exp2_weight, from_fixed, golden_sides, rshift_round, sat, to_fixed

_POW2 = torch.tensor([1 << j for j in range(63)], dtype=I64)


# ---- exact integer primitives of the layer (torch int64), each mirroring one function of bitmos.formats ----------


def shift_round(v: torch.Tensor, s: torch.Tensor | int) -> torch.Tensor:
    """``formats.shift_round`` elementwise; ``s`` may be a tensor of shifts (broadcast with v)."""
    s = torch.as_tensor(s, dtype=I64)
    right = s.clamp(min=0)
    half = torch.where(right > 0, torch.ones_like(right) << (right - 1).clamp(min=0), torch.zeros_like(right))
    return torch.where(s >= 0, (v + half) >> right, v << (-s).clamp(min=0))


def bit_length(v: torch.Tensor) -> torch.Tensor:
    """int.bit_length of non-negative int64 values (exact: compares with powers of two, no float log)."""
    return (v.unsqueeze(-1) >= _POW2).sum(-1)


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) of non-negative int64 values < 2^62 (``math.isqrt``): a float64 root, then corrected to
    the exact one (the float root of n < 2^62 is within one of it)."""
    s = torch.sqrt(n.to(torch.float64)).floor().to(I64)
    s = torch.where(s * s > n, s - 1, s)
    return torch.where((s + 1) * (s + 1) <= n, s + 1, s)


def block_quantize(x: torch.Tensor, mant_bits: int = F.HEAD_MANT_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., n] -> (mantissas [..., n], exponents [...]): ``formats.block_quantize`` over the last axis."""
    e = (bit_length(x.abs().amax(-1)) - (mant_bits - 1)).clamp(min=0)
    return sat(shift_round(x, e.unsqueeze(-1)), mant_bits), e


def rms_norm(r: torch.Tensor, gains: torch.Tensor, gexp: int, eps_q: int, out_frac: int) -> torch.Tensor:
    """r [T, K] (int32 values) -> [T, K] int16 values with ``out_frac`` fraction bits (``formats.rms_norm``)."""
    k = r.shape[-1]
    e = (bit_length(r.abs().amax(-1, keepdim=True)) - F.NORM_IN_BITS).clamp(min=0)
    rp = shift_round(r, e)
    ss = (rp * rp).sum(-1, keepdim=True)
    eps_t = shift_round(torch.full_like(e, eps_q), 2 * e).clamp(min=1)
    rsq = isqrt((k << (2 * F.NORM_RSQ_SHIFT)) // (ss + k * eps_t))
    return sat(shift_round(rp * rsq * gains, F.NORM_RSQ_SHIFT + gexp - out_frac), F.X_BITS)


def layer_norm(v: torch.Tensor, eps_q: int, out_frac: int) -> torch.Tensor:
    """v [T, K] (int32 values) -> [T, K] int16 values with ``out_frac`` fraction bits (``formats.layer_norm``)."""
    k = v.shape[-1]
    mu = torch.div(v.sum(-1, keepdim=True) + k // 2, k, rounding_mode="floor")
    unit = torch.full((k,), 1 << F.UNIT_GEXP, dtype=I64)
    return rms_norm(sat(v - mu, F.RESID_BITS), unit, F.UNIT_GEXP, eps_q, out_frac)


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, hd], cos/sin [T, hd/2] (Q1.14) -> [T, H, hd] (``formats.rope_rotate`` per head)."""
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    lo = sat(rshift_round(a * c - b * s, F.ROPE_FRAC), F.RESID_BITS)
    hi = sat(rshift_round(b * c + a * s, F.ROPE_FRAC), F.RESID_BITS)
    return torch.cat([lo, hi], -1)


def attention(qm, eq, km, ek, vm, ev, q_pos: torch.Tensor, frac: int) -> torch.Tensor:
    """Causal grouped-query attention of T query tokens against Tk cached ones (``formats.attention_head``).

    qm [T, H, hd] / eq [T, H]: block-floating-point queries at absolute positions ``q_pos`` [T]; km, vm
    [Tk, Hkv, hd] / ek, ev [Tk, Hkv]: the cache (positions 0..Tk-1). Query head h reads kv head h // (H / Hkv).
    Returns [T, H, hd] int32 values with ``frac`` fraction bits."""
    T, H, hd = qm.shape
    rep = H // km.shape[1]
    km, ek, vm, ev = (t.repeat_interleave(rep, dim=1) for t in (km, ek, vm, ev))     # [Tk, H, ...]
    dot = torch.einsum("thi,khi->htk", qm, km) * F.attention_scale(hd)              # [H, T, Tk], |.| < 2^35
    shift = 2 * frac + F.ATT_SCALE_FRAC - F.SCORE_FRAC - eq.T.unsqueeze(-1) - ek.T.unsqueeze(1)
    top_bit = F.SCORE_BITS - 1     # a left shift saturates past 2^31: clipped first, it stays in int64
    dot = torch.where(shift < 0, dot.clamp(-(1 << top_bit), 1 << top_bit), dot)
    scores = sat(shift_round(dot, shift.clamp(min=-top_bit)), F.SCORE_BITS)
    visible = torch.arange(km.shape[0]).unsqueeze(0) <= q_pos.unsqueeze(1)          # [T, Tk]
    floor = -(1 << top_bit)
    top = torch.where(visible, scores, torch.full_like(scores, floor)).amax(-1, keepdim=True)
    p = torch.where(visible, exp2_weight(top - scores), torch.zeros_like(scores))
    rcp = (1 << F.ATT_RCP_SHIFT) // p.sum(-1, keepdim=True)                          # sum >= 2^15
    w = rshift_round(p * rcp, F.ATT_RCP_SHIFT - F.ATT_WEIGHT_FRAC)                   # [H, T, Tk] Q.30
    values = (vm << ev.unsqueeze(-1)).transpose(0, 1)                               # [H, Tk, hd], |.| <= 2^31
    out = sat(rshift_round(w @ values, F.ATT_WEIGHT_FRAC), F.RESID_BITS)             # [H, T, hd]
    return out.transpose(0, 1)


_SIGMOID = torch.tensor(F.SIGMOID_LUT, dtype=I64)


def silu_gate(gate: torch.Tensor, up: torch.Tensor, frac: int) -> torch.Tensor:
    """silu(gate) * up on int32 values with ``frac`` fraction bits (``formats.silu_gate``)."""
    i = shift_round(gate, frac - F.SILU_IN_FRAC).clamp(-F.SILU_LUT_HALF, F.SILU_LUT_HALF - 1) + F.SILU_LUT_HALF
    h = sat(rshift_round(gate * _SIGMOID[i], F.GATE_FRAC), F.RESID_BITS)
    return sat(rshift_round(h * up, frac), F.RESID_BITS)


def requantize(v: torch.Tensor, from_frac: int, to_frac: int, bits: int = F.X_BITS) -> torch.Tensor:
    """``formats.requantize`` elementwise."""
    return sat(shift_round(v, from_frac - to_frac), bits)


# ---- the layer's constants, from the export ----------------------------------------------------------------------


@dataclass
class Norm:
    """One RMSNorm's integer gains: G (int16 values) and GEXP (g ~ G * 2^-GEXP)."""
    gains: torch.Tensor
    gexp: int

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "Norm":
        w = weight.detach().double().tolist()
        gexp = F.gain_exponent(w)
        return cls(torch.tensor([F.float_to_fixed(v, gexp, F.GAIN_BITS) for v in w], dtype=I64), gexp)


@dataclass
class KVCacheBFP:
    """The chip's KV cache: per layer, keys and values of every cached position as int8 mantissas [Tk, Hkv, hd] and
    exponents [Tk, Hkv] (``formats.HEAD_MANT_BITS``); ``length`` positions so far."""
    layers: list[dict] = field(default_factory=list)
    length: int = 0

    def append(self, layer: int, km, ek, vm, ev):
        while len(self.layers) <= layer:
            self.layers.append({})
        c = self.layers[layer]
        for name, t in (("km", km), ("ek", ek), ("vm", vm), ("ev", ev)):
            c[name] = t if name not in c else torch.cat([c[name], t], 0)
        return c["km"], c["ek"], c["vm"], c["ev"]

    def bytes(self) -> int:
        """Bytes the cache holds: one per mantissa and one per exponent (``formats.kv_cache_bytes_per_token`` per
        token of context)."""
        return sum(sum(t.numel() for t in c.values()) for c in self.layers)


# ---- the whole model ---------------------------------------------------------------------------------------------


class GoldenLayerModel(nn.Module):
    """Whole-model integer forward with every decoder-layer operation in the chip's formats.

    ``model(idx) -> (logits, loss)`` like the Transformer (so ``compare_on_windows`` and ``train.evaluate`` work),
    ``model(idx, cache=KVCacheBFP())`` continues a cached sequence, :meth:`generate` decodes greedily with the
    cache (one prefill, then one token per step, as the chip will)."""

    def __init__(self, export: ModelExport, accel: AcceleratorConfig | str | None = None):
        super().__init__()
        self.export = export
        self.accel_cfg, self.host, self.accelerator = golden_sides(export, accel)
        self.config = c = self.host.config
        t = self.host.transformer
        self.frac = self.accel_cfg.out_frac_bits
        self.eps_q = round(c.norm_eps * (1 << (2 * self.frac)))
        #: BitNet: each linear's parameter-free LayerNorm epsilon (its input's own norm, ``formats.layer_norm``)
        self.ln_eps = {path: m.ln_eps for path, m in t.binarized_linears() if c.scheme == "bitnet"}
        self.norms = [(Norm.from_float(b.attn_norm.weight), Norm.from_float(b.mlp_norm.weight)) for b in t.layers]
        self.final_norm = Norm.from_float(t.norm.weight)
        from bitmos.model.transformer import rope_inv_freq
        cos, sin = F.rope_table(rope_inv_freq(c).double().tolist(), c.max_seq_len)
        self.rope_cos, self.rope_sin = torch.tensor(cos, dtype=I64), torch.tensor(sin, dtype=I64)
        self.biases = [{n: None if getattr(b.attn, f"{n}_bias") is None else
                        to_fixed(getattr(b.attn, f"{n}_bias"), self.frac, F.RESID_BITS) for n in "qkv"}
                       for b in t.layers]
        #: residual adds: values written and values that saturated int32
        self.residual_stats = {"values": 0, "saturated": 0}
        #: where the linears run: ``fn(chip layer name, int16 x [T, K]) -> int32 y [T, N]`` (the golden accelerator
        #: side by default; ``bitmos demo --layer-ops`` passes the simulated chip, which checks each one itself)
        self.linear_fn = self.accelerator
        #: where the vector unit's operations run (None: here, in the torch twins): ``fn(op, name, operands,
        #: **params) -> result`` with op one of ``bitmos.compiler.vector.VECTOR_OPS`` or ``attn``; every result
        #: is compared with the twin's, and a difference is recorded in ``vector_mismatches``; a None result
        #: means the operation stayed on the host (the twin's result is used)
        self.vector_fn = None
        self.vector_mismatches: list[str] = []

    @classmethod
    def from_model(cls, model, accel: AcceleratorConfig | str | None = None) -> "GoldenLayerModel":
        return cls(export_model(model, accel), accel)

    # -- one layer ------------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per chip layer counters, as :meth:`GoldenModel.stats` (x_saturated: inputs at the int16 limits)."""
        return {k: dict(vars(v)) for k, v in self.accelerator.stats.items()}

    def _linear(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """Model linear ``path`` on the golden accelerator: int16 x [T, K] -> int32 y [T, N]."""
        st = self.accelerator.stats[self.host.parts[path][0].name]
        st.x_values += x.numel()
        st.x_saturated += int(((x == (1 << (F.X_BITS - 1)) - 1) | (x == -(1 << (F.X_BITS - 1)))).sum())
        return sat(self.host.run_linear(path, x, self.linear_fn), F.RESID_BITS)

    def _vector(self, want: torch.Tensor, op: str, name: str, *operands: torch.Tensor, **params) -> torch.Tensor:
        """The golden result ``want`` of a vector-unit operation, or, with ``vector_fn``, the chip's (checked)."""
        if self.vector_fn is None:
            return want
        got = self.vector_fn(op, name, *operands, **params)
        if got is None:
            return want
        if not torch.equal(got, want):
            bad = int((got != want).sum())
            self.vector_mismatches.append(f"{name} {op} (T={want.shape[0]}): {bad} of {want.numel()} values differ "
                                          "from golden")
        return got

    def _rms_norm(self, r: torch.Tensor, norm: Norm, out_frac: int, name: str) -> torch.Tensor:
        return self._vector(rms_norm(r, norm.gains, norm.gexp, self.eps_q, out_frac), "rmsnorm", name, r,
                            gains=norm.gains, gexp=norm.gexp, eps_q=self.eps_q, xfrac=out_frac)

    def _chip_input(self, path: str, v: torch.Tensor, v_frac: int) -> torch.Tensor:
        """Linear ``path``'s int16 input from values ``v`` with ``v_frac`` fraction bits: requantized to its
        calibrated x_frac, or for BitNet through its LayerNorm (``formats.layer_norm``, eps in v^2 units)."""
        xf = self.host.x_frac[path]
        if path in self.ln_eps:
            eps_q = round(self.ln_eps[path] * (1 << (2 * v_frac)))
            return self._vector(layer_norm(v, eps_q, xf), "layernorm", path + ".ln", v, eps_q=eps_q, xfrac=xf)
        return requantize(v, v_frac, xf)

    def _norm_linears(self, r, norm: Norm, paths: list[str], name: str) -> list[torch.Tensor]:
        """The norm of r at each consumer's input format (each linear has its calibrated x_frac), then the linears.
        BitNet's linears each normalize again (their LayerNorm), so their RMSNorm is computed once, in int16 at the
        config's x_frac_bits, and each takes its LayerNorm of that."""
        if self.ln_eps:
            xn = self._rms_norm(r, norm, self.accel_cfg.x_frac_bits, name)
            return [self._linear(p, self._chip_input(p, xn, self.accel_cfg.x_frac_bits)) for p in paths]
        by_frac: dict[int, torch.Tensor] = {}
        out = []
        for p in paths:
            xf = self.host.x_frac[p]
            if xf not in by_frac:
                by_frac[xf] = self._rms_norm(r, norm, xf, name)
            out.append(self._linear(p, by_frac[xf]))
        return out

    def _residual(self, r, y, name: str):
        s = self._vector(sat(r + y, F.RESID_BITS), "resadd", name, r, y)
        self.residual_stats["values"] += s.numel()
        self.residual_stats["saturated"] += int((s != r + y).sum())
        return s

    def layer(self, i: int, r: torch.Tensor, pos: torch.Tensor, cache: KVCacheBFP) -> torch.Tensor:
        """Decoder layer ``i`` on one sequence's tokens: r [T, C] (int32 values) at positions ``pos`` [T]."""
        return self.mlp_half(i, self.attention_half(i, r, pos, cache))

    def attention_half(self, i: int, r: torch.Tensor, pos: torch.Tensor, cache: KVCacheBFP) -> torch.Tensor:
        """r + o_proj(attention(rope(q), rope(k), v of rms_norm(r))), the KV cache grown by these tokens."""
        c, pre = self.config, f"layers.{i}."
        q, k, v = self._norm_linears(r, self.norms[i][0],
                                     [pre + "attn.q_proj", pre + "attn.k_proj", pre + "attn.v_proj"], pre + "attn_norm")
        b = self.biases[i]
        q, k, v = (y if b[n] is None else sat(y + b[n], F.RESID_BITS) for n, y in zip("qkv", (q, k, v)))
        T = r.shape[0]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        q, k = (self._vector(rope_rotate(y.view(T, heads, c.head_dim), cos, sin).reshape(T, -1), "rope",
                             pre + f"attn.{n}_rope", y, cos=cos, sin=sin, head_dim=c.head_dim).view(T, heads, -1)
                for n, y, heads in (("q", q, c.n_heads), ("k", k, c.n_kv_heads)))
        qm, eq = block_quantize(q)
        km, ek, vm, ev = cache.append(i, *block_quantize(k), *block_quantize(v.view(T, c.n_kv_heads, c.head_dim)))
        o = attention(qm, eq, km, ek, vm, ev, pos, self.frac).reshape(T, -1)
        o_path = pre + "attn.o_proj"
        x = self._chip_input(o_path, o, self.frac)
        if o_path not in self.ln_eps:   # attention and the requantization to o_proj's input: one instruction
            x = self._vector(x, "attn", pre + "attn", q.reshape(T, -1), k.reshape(T, -1), v, layer=i,
                             pos0=int(pos[0]), xfrac=self.host.x_frac[o_path], n_heads=c.n_heads,
                             n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, cache=(km, ek, vm, ev))
        return self._residual(r, self._linear(o_path, x), pre + "attn_residual")

    def mlp_half(self, i: int, r: torch.Tensor) -> torch.Tensor:
        """r + down_proj(silu(gate_proj(x)) * up_proj(x)) with x = rms_norm(r)."""
        pre = f"layers.{i}."
        gate, up = self._norm_linears(r, self.norms[i][1], [pre + "mlp.gate_proj", pre + "mlp.up_proj"],
                                      pre + "mlp_norm")
        d_path = pre + "mlp.down_proj"
        h = self._chip_input(d_path, silu_gate(gate, up, self.frac), self.frac)
        if d_path not in self.ln_eps:    # silu and the requantization to down's input: one instruction
            h = self._vector(h, "silu", pre + "mlp.silu", gate, up, xfrac=self.host.x_frac[d_path])
        return self._residual(r, self._linear(d_path, h), pre + "mlp_residual")

    # -- the model ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def final_norm_output(self, idx: torch.Tensor, caches: list[KVCacheBFP] | None = None) -> torch.Tensor:
        """idx (B, T) -> (B, T, C): the final RMSNorm's int16 output (``x_frac_bits`` fraction bits), what the chip
        hands the host's LM head; ``caches``: one KVCacheBFP per batch row, which idx continues (fresh when None)."""
        t = self.host.transformer
        B, T = idx.shape
        caches = caches if caches is not None else [KVCacheBFP() for _ in range(B)]
        outs = []
        for b in range(B):
            cache = caches[b]
            start = cache.length
            if start + T > self.config.max_seq_len:
                raise ValueError(f"sequence length {start + T} > max_seq_len {self.config.max_seq_len}")
            pos = torch.arange(start, start + T)
            r = to_fixed(t.tok_embeddings(idx[b]), self.frac, F.RESID_BITS)    # the host's embedding row
            for i in range(self.config.n_layers):
                r = self.layer(i, r, pos, cache)
            cache.length += T
            outs.append(self._rms_norm(r, self.final_norm, self.accel_cfg.x_frac_bits, "norm"))
        return torch.stack(outs)

    @torch.no_grad()
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, caches: list[KVCacheBFP] | None = None):
        """idx (B, T) -> (logits (B, T, V) float, loss or None): :meth:`final_norm_output`, then the host's LM head."""
        xn = self.final_norm_output(idx, caches)
        logits = self.host.transformer.lm_head(from_fixed(xn, self.accel_cfg.x_frac_bits)).float()
        loss = None
        if targets is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with the KV cache: idx (B, P) -> (B, P + max_new_tokens)."""
        if idx.shape[1] + max_new_tokens - 1 > self.config.max_seq_len:
            raise ValueError(f"{idx.shape[1]} prompt + {max_new_tokens} new tokens need a KV cache beyond "
                             f"max_seq_len {self.config.max_seq_len}")
        caches = [KVCacheBFP() for _ in range(idx.shape[0])]
        logits, _ = self(idx, caches=caches)
        for step in range(max_new_tokens):
            nxt = logits[:, -1, :].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
            if step < max_new_tokens - 1:
                logits, _ = self(nxt, caches=caches)
        return idx
