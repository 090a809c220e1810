import random

import pytest
from hypothesis import given, settings, strategies as st

from bitmos import formats as F


def test_rshift_round_is_round_half_up():
    assert [F.rshift_round(v, 1) for v in (-3, -2, -1, 0, 1, 2, 3)] == [-1, -1, 0, 0, 1, 1, 2]
    assert F.rshift_round(5, 0) == 5
    with pytest.raises(ValueError, match="shift must be >= 0"):
        F.rshift_round(1, -1)


def test_sat_and_twos_complement():
    assert F.sat(40000, 16) == 32767 and F.sat(-40000, 16) == -32768
    assert F.to_signed(F.to_unsigned(-5, 8), 8) == -5
    assert F.to_unsigned(-1, 4) == 15


def test_exp2_table_is_exact_and_monotone():
    assert len(F.EXP2_LUT) == 256
    assert F.EXP2_LUT[0] == 32768
    assert F.EXP2_LUT[128] == 23170  # 2^15 / sqrt(2) = 23170.48
    assert all(a > b for a, b in zip(F.EXP2_LUT, F.EXP2_LUT[1:]))
    assert F.EXP2_LUT[255] > 16384


def test_inv_q():
    assert [F.inv_q(k) for k in (1, 2, 4, 8)] == [65536, 65536, 9362, 516]
    with pytest.raises(ValueError, match="activation bits must be 1, 2, 4 or 8, got 3"):
        F.act_qmax(3)


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=8))
def test_gates_are_normalized(logits):
    g = F.softmax_gates(logits)
    assert all(0 <= x <= 32768 for x in g)
    assert abs(sum(g) - 32768) <= len(g)
    assert g[logits.index(max(logits))] == max(g)


def test_gates_match_softmax_closely():
    import math
    logits = [256, 0, -128, 512]  # Q7.8: 1.0, 0, -0.5, 2.0
    g = F.softmax_gates(logits)
    real = [math.exp(l / 256) for l in logits]
    for gi, ri in zip(g, real):
        assert abs(gi / 32768 - ri / sum(real)) < 2e-3


def test_single_expert_mixing_is_identity():
    assert F.mix_scale([32768], [1234]) == 1234
    assert F.mix_scale([8192] * 4, [-77] * 4) == -77
    assert F.mix_scale([32768, 0], [32767, 5]) == 32767


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_token_multi_bit(bits):
    q_max = F.act_qmax(bits)
    v = [1000, -1000, 0, 499, 500, -501, 7]
    q, d = F.quantize_token(v, bits)
    assert max(abs(t) for t in q) == q_max
    assert q[0] == q_max and q[1] == -q_max and q[2] == 0
    for vi, qi in zip(v, q):  # round-to-nearest of v * Q / m within half an LSB (+ RQ truncation)
        assert abs(qi - vi * q_max / 1000) <= 0.5 + 1e-6
    assert d == F.rshift_round(1000 * F.inv_q(bits), 16)


def test_quantize_token_binary_and_zero():
    q, d = F.quantize_token([3, -4, 0], 1)
    assert q == [1, -1, 1] and d == 4
    assert F.quantize_token([0, 0], 8) == ([0, 0], 0)
    assert F.quantize_token([0, 0], 1) == ([1, 1], 0)


def test_quantize_saturating_extremes():
    v = [-(1 << 30), 1 << 30, -(1 << 30) + 1]
    q, d = F.quantize_token(v, 8)
    assert q == [-127, 127, -127]
    assert d == F.rshift_round((1 << 30) * 516, 16)


@settings(max_examples=200)
@given(st.sampled_from([1, 2, 4, 8]), st.data())
def test_binary_dot_identity(bits, data):
    n = data.draw(st.integers(1, 80))
    q_max = F.act_qmax(bits)
    vals = st.sampled_from([-1, 1]) if bits == 1 else st.integers(-q_max, q_max)
    q = data.draw(st.lists(vals, min_size=n, max_size=n))
    s = data.draw(st.lists(st.sampled_from([-1, 1]), min_size=n, max_size=n))
    assert F.binary_dot(q, s, bits) == sum(a * b for a, b in zip(q, s))


def test_binary_dot_all_plus_and_minus():
    for bits in (2, 4, 8):
        q_max = F.act_qmax(bits)
        q = [q_max] * 33
        assert F.binary_dot(q, [1] * 33, bits) == 33 * q_max
        assert F.binary_dot(q, [-1] * 33, bits) == -33 * q_max
        q = [-q_max] * 33
        assert F.binary_dot(q, [-1] * 33, bits) == 33 * q_max


def test_plane_weight():
    assert [F.plane_weight(b, 4) for b in range(4)] == [1, 2, 4, -8]
    assert F.plane_weight(0, 1) == 1


def test_scale_output_saturates():
    assert F.scale_output(1 << 20, 1 << 30, 32767, 0) == (1 << 31) - 1
    assert F.scale_output(-(1 << 20), 1 << 30, 32767, 0) == -(1 << 31)
    assert F.scale_output(3, 5, 7, 2) == F.rshift_round(105, 2)


def test_float_to_fixed():
    assert F.float_to_fixed(1.5, 8, 16) == 384
    assert F.float_to_fixed(-1000.0, 8, 16) == -32768
    assert F.float_to_fixed(-0.001953125, 8, 16) == 0  # -0.5 LSB rounds up
    r = random.Random(0)
    for _ in range(100):
        x = r.uniform(-100, 100)
        assert abs(F.fixed_to_float(F.float_to_fixed(x, 8, 16), 8) - x) <= 1 / 512
