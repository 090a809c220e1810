"""Number formats of every value that crosses the accelerator, and their reference arithmetic.

Each format is defined here once, with the reason for its choice. The functions in this module are the
*specification*: plain Python integers, written for clarity, not speed. The golden model (PyTorch), the
simulator (NumPy) and the RTL (Amaranth) are independent, fast implementations that tests compare
against these definitions. docs/architecture.md explains the datapath they describe.

Conventions
-----------
* Every buffer line is a little-endian integer; element 0 of a line occupies its least significant bits.
* ``rshift_round(v, s)`` is the only rounding rule: add half an LSB, then arithmetic shift right
  (round half up, toward +inf). Cheap in hardware (one adder), and identical on negative numbers in
  Python, NumPy and Verilog ``>>>``.
* ``sat(v, bits)`` clamps to the signed two's complement range of ``bits``.
"""

from __future__ import annotations

from decimal import Decimal, getcontext

from bitmos.errors import UnsupportedError

# ---- integer helpers ---------------------------------------------------------------------------


def rshift_round(v: int, s: int) -> int:
    """Round-half-up arithmetic right shift: floor((v + 2^(s-1)) / 2^s); identity for s = 0."""
    if s < 0:
        raise ValueError(f"shift must be >= 0, got {s}")
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def sat(v: int, bits: int) -> int:
    """Clamp ``v`` to the signed range of a ``bits``-bit two's complement number."""
    hi = (1 << (bits - 1)) - 1
    return max(-hi - 1, min(hi, v))


def to_unsigned(v: int, bits: int) -> int:
    """Two's complement bit pattern of ``v`` in ``bits`` bits."""
    return v & ((1 << bits) - 1)


def to_signed(u: int, bits: int) -> int:
    """Signed value of a ``bits``-bit two's complement pattern."""
    u &= (1 << bits) - 1
    return u - (1 << bits) if u >> (bits - 1) else u


# ---- formats (width, reason) --------------------------------------------------------------------

#: Layer input x: int16 with ``cfg.x_frac_bits`` fraction bits (Q7.8 by default). 16 bits keep the
#: pre-quantization product x*s_in precise; the per-token quantizer then picks the k-bit scale.
X_BITS = 16
#: Packed sign weights: 1 bit each, 1 -> +1, 0 -> -1; lane l of a word is input c*L + l (LSB first).
#: One bit per weight is the point of the design: decode reads weights once, so bits = traffic.
#: Integer weights (register WBITS = b in 2..cfg.weight_bits; ternary BitNet b1.58 is b = 2, codes
#: 00 = 0, 01 = +1, 11 = -1) are b such planes of 0/1 bits, bit p of the two's complement value, so a
#: weight costs b bits of traffic and b array steps: the bit-serial weight form of BISMO
#: (Umuroglu et al., FPL 2018), beside the bit-serial activations.
WEIGHT_BITS = 1
#: Router weights and scale experts: int16 in SBUF, each tensor with a per-layer power-of-two exponent
#: chosen by the compiler so the largest magnitude uses the full range (the exponent never reaches the
#: hardware: it is folded into RSHIFT / OSHIFT).
SCALE_BITS = 16
#: Router logits: int16 with 8 fraction bits (Q7.8), saturating; a logit difference beyond 128 already
#: gives a gate below 2^-184, far under the gate LSB.
LOGIT_BITS = 16
LOGIT_FRAC = 8
#: Gates: unsigned Q1.15 in 16 bits (1.0 = 32768 fits), normalized so they sum to 32768 within E LSBs.
GATE_BITS = 16
GATE_FRAC = 15
GATE_ONE = 1 << GATE_FRAC
#: Mixed scales s_in, s_out: int16, saturating after the gate-weighted sum.
#: v = x * s_in: 32-bit signed product (|v| <= 2^30).
V_BITS = 32
#: A layer without scales on its input (E = 0: sign, ternary, BitNet, PB-LLM's binary part) quantizes
#: v = x * 2^E0_V_SHIFT, not x: with v = x in Q7.8 units, D ~ max|x| / Q was a small integer (D = 7 for
#: max|x| ~ 3.4 at 8 bits: up to 7 % error per token, +5.5 % perplexity on the shipped ternary student). 14 is
#: the magnitude an E >= 1 layer's s_in has (int16 with one bit of headroom), so every layer quantizes in the
#: same regime (|v| <= 2^29); the shift is wiring in hardware and OSHIFT takes it back.
E0_V_SHIFT = 14
#: D, the per-token dequantization factor ~ max|v| / Q: unsigned 32-bit, in the units of v.
D_BITS = 32
#: Router accumulator: 48-bit signed (|x*w| < 2^30, K < 2^16 terms -> < 2^46).
ROUTER_ACC_BITS = 48
#: Layer output y: int32 with ``cfg.out_frac_bits`` fraction bits (Q15.16 by default), saturating.
OUT_BITS = 32

#: log2(e) in Q.10 for the softmax approximation: 1477 / 1024 = 1.44238 (true 1.44270, -0.02 %).
LOG2E_Q10 = 1477
LOG2E_FRAC = 10
#: Softmax exponent u = d * log2(e) in Q.8: its fraction indexes the exp table, its integer part shifts.
EXP2_FRAC_BITS = 8
#: Entries of the exp table (one per fraction value of u).
EXP2_LUT_SIZE = 1 << EXP2_FRAC_BITS
#: The logit difference d is clamped to 16 bits before the multiply by log2(e).
SOFTMAX_DIFF_MAX = 0xFFFF
#: Past this many halvings every table entry (< 2^16) shifts to zero.
SOFTMAX_MAX_SHIFT = 16
#: The softmax reciprocal RCP = floor(2^30 / sum p): sum p >= 2^15 keeps RCP <= 2^15 (16 bits).
SOFTMAX_RCP_SHIFT = 30
#: The quantizer's reciprocal RQ = floor(Q * 2^32 / max|v|): 32 fraction bits make round(v * Q / m)
#: exact for every |v| <= m < 2^31.
RQ_SHIFT = 32
#: INVQ_k = round(2^16 / Q) and D = rshift_round(m * INVQ_k, 16).
INVQ_SHIFT = 16


def _q15_rom(fn, n: int) -> tuple[int, ...]:
    """round(2^15 * fn(i)) for i in 0..n-1, half up, in exact decimal arithmetic: every platform builds the same
    table (no libm rounding). ``fn`` maps a Decimal index to a Decimal."""
    getcontext().prec = 40
    return tuple(int((Decimal(GATE_ONE) * fn(Decimal(i))).to_integral_value(rounding="ROUND_HALF_UP"))
                 for i in range(n))


def _exp2_table() -> tuple[int, ...]:
    return _q15_rom(lambda f: Decimal(2) ** (-f / EXP2_LUT_SIZE), EXP2_LUT_SIZE)


#: EXP2_LUT[f] = round(2^15 * 2^(-f/256)): the fraction part of 2^(-u) for u in Q.8; 256 x 16-bit ROM.
EXP2_LUT: tuple[int, ...] = _exp2_table()


def act_qmax(bits: int) -> int:
    """Q, the largest quantized activation magnitude: 2^(k-1)-1 for k >= 2 (symmetric), 1 for k = 1."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"activation bits must be 1, 2, 4 or 8, got {bits}")
    return 1 if bits == 1 else (1 << (bits - 1)) - 1


def inv_q(bits: int) -> int:
    """INVQ_k = round(2^16 / Q): turns max|v| into D ~ max|v| / Q with one multiply."""
    q = act_qmax(bits)
    return (2 * (1 << INVQ_SHIFT) + q) // (2 * q)  # round half up of 2^16 / q


# ---- the per-layer shift registers ---------------------------------------------------------------


def layer_shifts(name: str, cfg, *, experts: int, router_exp: int, s_in_exp: int, s_out_exp: int,
                 smul_exp: int, bias_exp: int | None = None, x_frac: int | None = None) -> tuple[int, int]:
    """(RSHIFT, OSHIFT) of a layer: its tensors' power-of-two exponents folded into the two shifts.

    RSHIFT = x_frac_bits + router_exp - LOGIT_FRAC (the router's product back to Q7.8 logits; only used
    when the layer has a router, else 0); a layer with a bias (FBI-LLM, ``bias_exp`` given; no router of its
    own) uses the router for beta . x instead: RSHIFT = x_frac_bits + bias_exp - out_frac_bits (the product
    into output units). OSHIFT = x_frac_bits + s_in_exp + s_out_exp - out_frac_bits
    (E >= 1) or x_frac_bits + E0_V_SHIFT + smul_exp - out_frac_bits (E = 0). ``x_frac`` is the layer's own input format
    when it has one (a per-layer exponent chosen from calibration), else the config's ``x_frac_bits``: the chip
    never sees it, only the shifts. Raises UnsupportedError naming the layer when one falls outside 0..63.
    """
    xf = cfg.x_frac_bits if x_frac is None else x_frac
    rshift = 0
    if bias_exp is not None:
        rshift = xf + bias_exp - cfg.out_frac_bits
        if not 0 <= rshift <= 63:
            raise UnsupportedError(f"layer {name!r}: RSHIFT = x_frac_bits + bias_exp - out_frac_bits = "
                                   f"{xf} + {bias_exp} - {cfg.out_frac_bits} = {rshift} is outside 0..63")
    elif experts >= 2:
        rshift = xf + router_exp - LOGIT_FRAC
        if not 0 <= rshift <= 63:
            raise UnsupportedError(f"layer {name!r}: RSHIFT = x_frac_bits + router_exp - {LOGIT_FRAC} = "
                                   f"{xf} + {router_exp} - {LOGIT_FRAC} = {rshift} is outside 0..63")
    if experts >= 1:
        oshift = xf + s_in_exp + s_out_exp - cfg.out_frac_bits
        how = (f"x_frac_bits + s_in_exp + s_out_exp - out_frac_bits = {xf} + {s_in_exp} + "
               f"{s_out_exp} - {cfg.out_frac_bits}")
    else:
        oshift = xf + E0_V_SHIFT + smul_exp - cfg.out_frac_bits
        how = (f"x_frac_bits + E0_V_SHIFT + smul_exp - out_frac_bits = {xf} + {E0_V_SHIFT} + {smul_exp} - "
               f"{cfg.out_frac_bits}")
    if not 0 <= oshift <= 63:
        raise UnsupportedError(f"layer {name!r}: OSHIFT = {how} = {oshift} is outside 0..63")
    return rshift, oshift


# ---- the scale-expert unit, per token ------------------------------------------------------------


def router_logits(x: list[int], router: list[list[int]], rshift: int) -> list[int]:
    """l_e = sat16(rshift_round(sum_i x_i * WR[e][i], RSHIFT)) in Q7.8."""
    out = []
    for row in router:
        acc = sum(xi * wi for xi, wi in zip(x, row, strict=True))
        out.append(sat(rshift_round(acc, rshift), LOGIT_BITS))
    return out


def exp2_weight(d: int) -> int:
    """The softmax's unnormalized weight of a logit ``d`` (Q.8, >= 0) below the maximum: ~2^15 * e^(-d / 256).

    d is clamped to 16 bits; u = rshift_round(d * LOG2E_Q10, 10) (Q.8 of d * log2 e); the weight is
    EXP2_LUT[u & 255] >> (u >> 8), zero past 15 halvings. The maximum itself (d = 0) weighs exactly 2^15.
    """
    u = rshift_round(min(d, SOFTMAX_DIFF_MAX) * LOG2E_Q10, LOG2E_FRAC)
    n, f = u >> EXP2_FRAC_BITS, u & (EXP2_LUT_SIZE - 1)
    return EXP2_LUT[f] >> n if n < SOFTMAX_MAX_SHIFT else 0


def softmax_gates(logits: list[int]) -> list[int]:
    """The hardware softmax: base-2 exponent from a 256-entry table, one reciprocal per token.

    d_e = max(l) - l_e (clamped to 16 bits); u_e = rshift_round(d_e * LOG2E_Q10, 10) (Q.8 of
    d_e * log2 e); p_e = EXP2_LUT[u_e & 255] >> (u_e >> 8) (zero past 15 shifts);
    RCP = floor(2^30 / sum p); g_e = rshift_round(p_e * RCP, 15). The largest gate's p is exactly
    2^15, so sum p >= 2^15 and RCP <= 2^15; each g_e <= 2^15 and the gates sum to 2^15 within E LSBs.
    """
    m = max(logits)
    p = [exp2_weight(m - l) for l in logits]
    rcp = (1 << SOFTMAX_RCP_SHIFT) // sum(p)
    return [rshift_round(pe * rcp, GATE_FRAC) for pe in p]


def mix_scale(gates: list[int], experts: list[int]) -> int:
    """s = sat16(rshift_round(sum_e g_e * S_e, 15)): one element of s_in or s_out."""
    return sat(rshift_round(sum(g * s for g, s in zip(gates, experts, strict=True)), GATE_FRAC), SCALE_BITS)


def quant_input(x: list[int], s_in: list[int] | None) -> list[int]:
    """v, what the per-token quantizer takes: x * s_in (E >= 1) or, with no input scales (E = 0),
    x * 2^E0_V_SHIFT."""
    if s_in is None:
        return [xi << E0_V_SHIFT for xi in x]
    return [xi * si for xi, si in zip(x, s_in)]


def quantize_token(v: list[int], bits: int) -> tuple[list[int], int]:
    """Per-token symmetric quantization of v (int32) to k bits; returns (q, D).

    m = max|v|. If m = 0: q = 0, D = 0. Otherwise RQ = floor(Q * 2^32 / m) and
    k >= 2: q_i = clamp(rshift_round(v_i * RQ, 32), -Q, Q)   (round half up of v_i * Q / m)
    k = 1 : q_i = +1 if v_i >= 0 else -1
    D = rshift_round(m * INVQ_k, 16)  (~ m / Q, so that q_i * D ~ v_i).
    """
    q_max = act_qmax(bits)
    m = max((abs(t) for t in v), default=0)
    if m == 0:
        return ([1] * len(v) if bits == 1 else [0] * len(v)), 0
    d = rshift_round(m * inv_q(bits), INVQ_SHIFT)
    if bits == 1:
        return [1 if t >= 0 else -1 for t in v], d
    rq = (q_max << RQ_SHIFT) // m
    return [max(-q_max, min(q_max, rshift_round(t * rq, RQ_SHIFT))) for t in v], d


def scale_output(acc: int, d: int, s_out: int, oshift: int, bias: int = 0) -> int:
    """y = sat32(rshift_round(acc * D * s_out, OSHIFT) + bias): the output stage, per element; ``bias`` is the
    token's (:func:`bias_term`; 0 unless register BIAS was set when the token was quantized)."""
    return sat(rshift_round(acc * d * s_out, oshift) + bias, OUT_BITS)


def bias_term(x: list[int], beta: list[int], rshift: int) -> int:
    """FBI-LLM's per-token shift beta . x in output units: sat32(rshift_round(sum_i x_i * beta_i, RSHIFT)).

    On the chip it is router row 0's sum when register BIAS = 1 (that layer's logits are then all 0, so its
    gates are equal), with RSHIFT = x_frac_bits + bias_exp - out_frac_bits (:func:`layer_shifts`)."""
    return sat(rshift_round(sum(xi * bi for xi, bi in zip(x, beta, strict=True)), rshift), OUT_BITS)


# ---- the XNOR-popcount PE ------------------------------------------------------------------------


def plane_weight(b: int, bits: int) -> int:
    """Significance of activation plane b: -2^(k-1) for the two's complement sign plane, else 2^b."""
    if bits == 1:
        return 1
    return -(1 << b) if b == bits - 1 else (1 << b)


def plane_dot(a_word: int, w_word: int, mask: int, bits: int, w_bits: int = 0) -> int:
    """One PE step over one lanes-wide word: the weighted sum of one activation plane.

    Sign weights (``w_bits`` = 0, a bit 1 = +1, 0 = -1):
    k >= 2 (AND form, bits of a two's complement plane): 2*popcount(a & w & m) - popcount(a & m).
    k = 1  (XNOR form, a bit 1 = +1):                 2*popcount(~(a ^ w) & m) - popcount(m).
    One plane of integer weights (``w_bits`` >= 2, k >= 2): popcount(a & w & m), both planes 0/1 bits.
    """
    if w_bits:
        assert bits >= 2, "integer weight planes need k >= 2 (AcceleratorConfig refuses the rest)"
        return bin(a_word & w_word & mask).count("1")
    if bits == 1:
        return 2 * bin(~(a_word ^ w_word) & mask).count("1") - bin(mask).count("1")
    return 2 * bin(a_word & w_word & mask).count("1") - bin(a_word & mask).count("1")


def step_weight(b: int, p: int, bits: int, w_bits: int) -> int:
    """Significance of the step of activation plane b and weight plane p: plane_weight(b, k), times
    plane_weight(p, WBITS) for integer weights (the product of two sign planes is positive)."""
    return plane_weight(b, bits) * (plane_weight(p, w_bits) if w_bits else 1)


def weight_planes(w: list[int], w_bits: int) -> list[int]:
    """The planes a weight row is stored as (element i -> bit i): sign weights (w_bits = 0) one plane,
    bit = (w > 0); integer weights bit p of the w_bits-bit two's complement, for p < w_bits."""
    if not w_bits:
        return [sum(1 << i for i, s in enumerate(w) if s > 0)]
    lo, hi = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1
    assert all(lo <= t <= hi for t in w), f"a weight is outside {w_bits}-bit two's complement"
    return [sum(((to_unsigned(t, w_bits) >> p) & 1) << i for i, t in enumerate(w)) for p in range(w_bits)]


def activation_planes(q: list[int], bits: int) -> list[int]:
    """Bit b of every element as one integer per plane (element i -> bit i). k = 1: bit = (q == +1)."""
    if bits == 1:
        return [sum(1 << i for i, t in enumerate(q) if t > 0)]
    return [sum(((to_unsigned(t, bits) >> b) & 1) << i for i, t in enumerate(q)) for b in range(bits)]


def binary_dot(q: list[int], weights: list[int], bits: int, w_bits: int = 0) -> int:
    """Reference dot product of k-bit activations with +-1 weights (``w_bits`` = 0) or ``w_bits``-bit
    integer weights, via planes and popcounts.

    Equal to sum(q_i * w_i) exactly; this is the identity the PE relies on.
    """
    mask = (1 << len(q)) - 1
    planes = activation_planes(q, bits)
    return sum(step_weight(b, p, bits, w_bits) * plane_dot(a, w, mask, bits, w_bits)
               for p, w in enumerate(weight_planes(weights, w_bits)) for b, a in enumerate(planes))


# ---- host <-> accelerator conversions -------------------------------------------------------------


def float_to_fixed(value: float, frac_bits: int, bits: int) -> int:
    """Host-side conversion of a float to a saturating fixed-point integer: round half up."""
    import math
    return sat(math.floor(value * (1 << frac_bits) + 0.5), bits)


def fixed_to_float(value: int, frac_bits: int) -> float:
    return value / (1 << frac_bits)


# ---- the whole decoder layer (issue 18: the integer definitions; the instructions come later) -------------------
#
# One LLaMA decoder layer in integers, from the residual stream to the residual stream:
#   x  = rmsnorm(r, g_attn) -> q, k, v = linears(x) (+ biases) -> rope(q), rope(k) -> block-quantize q, k, v
#   (k, v appended to the KV cache) -> attention(q, cache) -> o_proj(requant(o)) -> r += ;
#   x  = rmsnorm(r, g_mlp) -> gate, up = linears(x) -> silu_gate(gate, up) -> down_proj(requant(.)) -> r += .
# The host keeps the embedding lookup (its row enters as ``r``) and the LM head (after the final rmsnorm).

#: The residual stream r: int32 with ``cfg.out_frac_bits`` fraction bits (Q15.16 by default), saturating: the
#: format every linear already writes, so a residual add is one saturating 32-bit add and nothing is rescaled.
RESID_BITS = 32
#: RMSNorm input block: r is shifted right by a per-token e until max|r| fits NORM_IN_BITS bits, so each square
#: fits 2 * NORM_IN_BITS bits and a sum over K < 2^16 features fits 40 bits. RMSNorm is scale-invariant, so the
#: shift costs only the bits below the token's largest value (11-12 significant bits, beyond the 8-bit
#: activations the linears quantize to).
NORM_IN_BITS = 12
#: RSQ = isqrt(floor(K * 2^(2 * NORM_RSQ_SHIFT) / (ss + K * eps))) ~ 2^23 / rms: K * 2^46 < 2^62 for K < 2^16
#: (64-bit dividend), and RSQ keeps >= 11 significant bits because max|r'| < 2^12 bounds the rms.
NORM_RSQ_SHIFT = 23
#: Norm gains: int16 per feature with a per-tensor exponent GEXP (g ~ G * 2^-GEXP), chosen by the exporter so the
#: largest magnitude uses 15 bits, as for the scale experts.
GAIN_BITS = 16
#: Rotary table: cos and sin of every (position, frequency) in Q1.14 int16 (|value| <= 2^14 fits); the exporter
#: computes it in float64 from the model's rotary parameters (scaling included) and every implementation reads the
#: same table, so no implementation evaluates cos/sin.
ROPE_FRAC = 14
#: q, k and v of one head of one token as a block-floating-point vector: int8 mantissas and one shared
#: power-of-two exponent e in 0..25 (x ~ m * 2^e in r's units; |m * 2^e| <= 2^31). The KV cache stores exactly this: head_dim bytes
#: plus one exponent byte per (token, kv head), half of an fp16 cache; per-token dynamic like the per-token
#: activation quantizer, so it needs no calibration, and a power of two costs shifters, not multipliers.
HEAD_MANT_BITS = 8
#: The largest exponent block_quantize gives int32 values (32 - HEAD_MANT_BITS + 1). The attention unit reads a
#: cache exponent byte above it (which only a cache not written by kvpack can hold) as KV_EXP_MAX, so its shifts
#: and products stay bounded whatever the bytes.
KV_EXP_MAX = 32 - HEAD_MANT_BITS + 1
#: Attention logits: int32 in Q.8 (the softmax's logit format, widened: a raw score may exceed the Q7.8 range
#: before the maximum is subtracted).
SCORE_BITS = 32
SCORE_FRAC = 8
#: 1/sqrt(head_dim) in Q.15: ATT_SCALE = isqrt(floor(2^30 / head_dim)).
ATT_SCALE_FRAC = 15
#: Attention weights after normalization: unsigned Q.30 (2^46 // sum p in 31 bits, times p <= 2^15, >> 16);
#: the weighted sum of values then fits 62 bits for up to 2^16 positions.
ATT_WEIGHT_FRAC = 30
ATT_RCP_SHIFT = 46
#: SiLU: the sigmoid from a 1,024-entry table over g in [-8, 8) in steps of 1/64 (Q1.15 entries); beyond the
#: table's ends sigmoid is within 3.4e-4 of its limit.
SILU_IN_FRAC = 6
SILU_LUT_HALF = 512


def _sigmoid_table() -> tuple[int, ...]:
    return _q15_rom(lambda i: 1 / (1 + (-(i - SILU_LUT_HALF) / (1 << SILU_IN_FRAC)).exp()), 2 * SILU_LUT_HALF)


#: SIGMOID_LUT[i] = round(2^15 * sigmoid((i - 512) / 64)): 1,024 x 16-bit ROM (exact decimal arithmetic).
SIGMOID_LUT: tuple[int, ...] = _sigmoid_table()


def shift_round(v: int, s: int) -> int:
    """rshift_round for s >= 0, an exact left shift for s < 0 (a fixed-point rescale either way)."""
    return rshift_round(v, s) if s >= 0 else v << -s


def requantize(v: int, from_frac: int, to_frac: int, bits: int) -> int:
    """A fixed-point value with ``from_frac`` fraction bits rescaled to ``to_frac`` and saturated to ``bits``."""
    return sat(shift_round(v, from_frac - to_frac), bits)


def residual_add(r: int, y: int) -> int:
    """r + y in the residual stream's format, saturating."""
    return sat(r + y, RESID_BITS)


def block_exponent(values: list[int], mant_bits: int) -> int:
    """The smallest e >= 0 with max|v| < 2^(mant_bits - 1 + e): the shared exponent of a block."""
    m = max((abs(v) for v in values), default=0)
    return max(0, m.bit_length() - (mant_bits - 1))


def block_quantize(values: list[int], mant_bits: int = HEAD_MANT_BITS) -> tuple[list[int], int]:
    """Block floating point: (mantissas sat(rshift_round(v, e), mant_bits), e) with e = block_exponent."""
    e = block_exponent(values, mant_bits)
    return [sat(rshift_round(v, e), mant_bits) for v in values], e


def kv_cache_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int) -> int:
    """Bytes the KV cache holds (and a decode step reads) per token of context: keys and values of every layer and
    kv head, each head_dim mantissas of HEAD_MANT_BITS plus one exponent byte."""
    return n_layers * 2 * n_kv_heads * (head_dim * HEAD_MANT_BITS // 8 + 1)


def kv_page_bytes(page: int, head_dim: int) -> int:
    """Bytes of one page of a half (keys or values) of a kv head's KV-cache region: ``page`` positions' rows and
    exponents, page (head_dim + 1)."""
    return page * (head_dim + 1)


def kv_offsets(p, head_dim: int, page: int):
    """Byte offsets of position ``p``'s row (head_dim mantissas) and exponent in one half of a kv head's KV-cache
    region (ints, or NumPy arrays of positions: the same arithmetic), counted from the half's first position.

    A kv head's region of M positions (M a whole number of pages) is two halves, the keys' then the values' (the
    values' half starts M (head_dim + 1) bytes in), the same bytes in external memory and in WBUF (a load copies it
    line for line). A half is pages of ``page`` positions, each [mantissa rows page x head_dim int8][exponents page
    uint8]; the chip's page is a WBUF line's bytes, so every part of a page starts on a line and the first n
    positions of a half are its first ceil(n / page) pages.

    Why this format: a position's key (value) row is :func:`block_quantize` of the head's values, HEAD_MANT_BITS
    mantissas and one exponent, so a decode step reads head_dim + 1 bytes per position and head, the fewest an
    8-bit cache can (the int32 keys would be four times that; int8 with a float scale per row the same bytes but a
    multiplier per row). Mantissas sit apart from exponents so that a row is whole bytes of a line and a cache of
    any length costs no padding per row; pages make the positions a step reads one contiguous transfer; and keys
    apart from values make a tile of positions of either one transfer, so a cache longer than WBUF holds is read
    tile by tile, its keys in the score pass and its values in the value pass, each byte once.
    """
    base, i = (p // page) * kv_page_bytes(page, head_dim), p % page
    return base + i * head_dim, base + page * head_dim + i


def rms_norm(r: list[int], gains: list[int], gexp: int, eps_q: int, out_frac: int) -> list[int]:
    """One token's RMSNorm: r (int32, F = out_frac_bits fraction bits) -> int16 with ``out_frac`` fraction bits.

    e = block_exponent(r, NORM_IN_BITS + 1) (so |r'| <= 2^NORM_IN_BITS), r' = rshift_round(r, e); ss = sum r'^2;
    eps' = max(1, rshift_round(eps_q, 2e)) with eps_q = round(eps * 2^(2F)) (the model's epsilon in r^2 units, so
    a zero token divides by K, not 0); RSQ = isqrt(floor(K * 2^46 / (ss + K * eps'))) ~ 2^23 / rms(r');
    x_i = sat16(shift_round(r'_i * RSQ * G_i, 23 + GEXP - out_frac)). |r' * RSQ * G| < 2^12 * 2^23 * 2^15 = 2^50.
    """
    import math
    k = len(r)
    e = block_exponent(r, NORM_IN_BITS + 1)
    rp = [rshift_round(v, e) for v in r]
    ss = sum(v * v for v in rp)
    eps_t = max(1, rshift_round(eps_q, 2 * e))
    rsq = math.isqrt((k << (2 * NORM_RSQ_SHIFT)) // (ss + k * eps_t))
    s = NORM_RSQ_SHIFT + gexp - out_frac
    return [sat(shift_round(v * rsq * g, s), X_BITS) for v, g in zip(rp, gains)]


#: BitNet's parameter-free LayerNorm as an RMSNorm of the centred values with unit gains: G = 2^UNIT_GEXP.
UNIT_GEXP = GAIN_BITS - 2


def layer_norm(v: list[int], eps_q: int, out_frac: int) -> list[int]:
    """One token's parameter-free LayerNorm (BitNet's, before each of its linears): v (int32, any fraction bits
    F_v) -> int16 with ``out_frac`` fraction bits.

    mu = floor((sum v + floor(K / 2)) / K) (the mean, rounded); c_i = sat32(v_i - mu); then
    :func:`rms_norm` (c, unit gains 2^UNIT_GEXP, GEXP = UNIT_GEXP, eps_q, out_frac): the rms of the centred
    values is the standard deviation, so this is (v - mean) / sqrt(var + eps) with ``eps_q`` = round(eps *
    2^(2 F_v)) in v^2 units. A constant token (zero variance) maps to zeros.
    """
    k = len(v)
    mu = (sum(v) + k // 2) // k
    return rms_norm([sat(x - mu, RESID_BITS) for x in v], [1 << UNIT_GEXP] * k, UNIT_GEXP, eps_q, out_frac)


def rope_rotate(x: list[int], cos: list[int], sin: list[int]) -> list[int]:
    """Rotate-half rotary embedding of one head (Hugging Face LLaMA's layout) with Q1.14 cos/sin of its position.

    For j < h = head_dim / 2: y_j = x_j * c_j - x_{j+h} * s_j, y_{j+h} = x_{j+h} * c_j + x_j * s_j, each
    sat32(rshift_round(., 14)); ``cos``/``sin`` hold the h distinct frequencies of the position.
    """
    h = len(x) // 2
    lo = [sat(rshift_round(x[j] * cos[j] - x[j + h] * sin[j], ROPE_FRAC), RESID_BITS) for j in range(h)]
    hi = [sat(rshift_round(x[j + h] * cos[j] + x[j] * sin[j], ROPE_FRAC), RESID_BITS) for j in range(h)]
    return lo + hi


def attention_scale(head_dim: int) -> int:
    """ATT_SCALE = isqrt(floor(2^30 / head_dim)) ~ 2^15 / sqrt(head_dim)."""
    import math
    return math.isqrt((1 << (2 * ATT_SCALE_FRAC)) // head_dim)


def attention_head(q: tuple[list[int], int], keys: list[tuple[list[int], int]], values: list[tuple[list[int], int]],
                   frac: int) -> list[int]:
    """One query head of one token against the cached positions it may see (the causal mask is the caller's
    choice of ``keys``/``values``): block-floating-point q, k, v -> the head's output (int32, ``frac`` bits).

    score_t = sat32(shift_round(sum_i qm_i * km_ti * ATT_SCALE, 2 * frac + 15 - 8 - eq - ek_t)) (Q.8);
    p_t = exp2_weight(max score - score_t); P = sum p (>= 2^15: the maximum weighs 2^15);
    w_t = rshift_round(p_t * floor(2^46 / P), 16) (Q.30); o_i = sat32(rshift_round(sum_t w_t * (vm_ti << ev_t), 30)).
    """
    qm, eq = q
    sc = attention_scale(len(qm))
    scores = [sat(shift_round(sum(a * b for a, b in zip(qm, km)) * sc,
                              2 * frac + ATT_SCALE_FRAC - SCORE_FRAC - eq - ek), SCORE_BITS) for km, ek in keys]
    top = max(scores)
    p = [exp2_weight(top - s) for s in scores]
    rcp = (1 << ATT_RCP_SHIFT) // sum(p)
    w = [rshift_round(pt * rcp, ATT_RCP_SHIFT - ATT_WEIGHT_FRAC) for pt in p]
    out = []
    for i in range(len(qm)):
        acc = sum(wt * (vm[i] << ev) for wt, (vm, ev) in zip(w, values))
        out.append(sat(rshift_round(acc, ATT_WEIGHT_FRAC), RESID_BITS))
    return out


def silu_gate(gate: list[int], up: list[int], frac: int) -> list[int]:
    """SwiGLU's silu(gate) * up on int32 values with ``frac`` fraction bits -> int32, ``frac`` bits.

    i = clamp(rshift_round(g, frac - 6), -512, 511) + 512; h = sat32(rshift_round(g * SIGMOID_LUT[i], 15));
    y = sat32(rshift_round(h * u, frac)).
    """
    out = []
    for g, u in zip(gate, up):
        i = max(-SILU_LUT_HALF, min(SILU_LUT_HALF - 1, shift_round(g, frac - SILU_IN_FRAC))) + SILU_LUT_HALF
        h = sat(rshift_round(g * SIGMOID_LUT[i], GATE_FRAC), RESID_BITS)
        out.append(sat(rshift_round(h * u, frac), RESID_BITS))
    return out


def gain_exponent(values: list[float]) -> int:
    """GEXP of a norm's gains: the largest magnitude lands in [2^14, 2^15) (all-zero gains: 0)."""
    import math
    m = max((abs(v) for v in values), default=0.0)
    if m == 0:
        return 0
    return (GAIN_BITS - 2) - math.floor(math.log2(m))


def rope_table(inv_freq: list[float], positions: int) -> tuple[list[list[int]], list[list[int]]]:
    """(cos, sin) tables [positions][head_dim / 2] in Q1.14 from the model's rotary inverse frequencies."""
    import math
    cos = [[float_to_fixed(math.cos(t * f), ROPE_FRAC, 16) for f in inv_freq] for t in range(positions)]
    sin = [[float_to_fixed(math.sin(t * f), ROPE_FRAC, 16) for f in inv_freq] for t in range(positions)]
    return cos, sin
