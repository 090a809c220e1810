import pytest
import torch

from bitmos.model.binarize import (BitNetLinear, FBILinear, MoSLinear, OneBitLinear, PBLinear, SignLinear,
                                   TernaryLinear, packed_bytes, rank1_abs, sign_ste)
from bitmos.model.quant import quantize_per_token


def pm1(w):
    return torch.where(w >= 0, 1.0, -1.0)


def test_sign_of_zero_is_plus_one():
    assert torch.equal(sign_ste(torch.tensor([0.0, -0.0, -1e-9, 3.0])), torch.tensor([1.0, 1.0, -1.0, 1.0]))


@pytest.mark.parametrize("mode", ["identity", "clip", "tanh"])
def test_ste_gradients(mode):
    w = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    sign_ste(w, mode).backward(torch.ones(5))
    expect = {"identity": torch.ones(5), "clip": torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]),
              "tanh": 1.001 - torch.tanh(w.detach()) ** 2}[mode]
    assert torch.allclose(w.grad, expect)


def test_rank1_init_is_positive_and_best_rank1():
    w = torch.randn(24, 16)
    a, b = rank1_abs(w)
    assert (a > 0).all() and (b > 0).all()
    u, s, vh = torch.linalg.svd(w.abs())
    best = s[0] * torch.outer(u[:, 0], vh[0])
    assert torch.allclose(torch.outer(a, b), best.abs(), atol=1e-5)


@pytest.mark.parametrize("bits", [None, 8, 4, 1])
def test_sign_forward(bits):
    m = SignLinear(16, 8, bits)
    x = torch.randn(2, 3, 16)
    ref = quantize_per_token(x, bits) @ pm1(m.weight).T * m.weight.abs().mean()
    assert torch.allclose(m(x), ref, atol=1e-6)


@pytest.mark.parametrize("bits", [None, 8])
def test_fbi_forward_matches_alpha_sign_plus_beta(bits):
    m = FBILinear(16, 8, bits)
    w = m.weight.detach()
    assert torch.allclose(m.beta, w.mean(0)) and torch.allclose(m.alpha, (w - w.mean(0)).abs().mean(0))
    x = torch.randn(2, 3, 16)
    if bits is None:   # the paper's form: w = alpha * sign(W) + beta
        ref = x @ (m.alpha * pm1(w) + m.beta).T
    else:
        ref = quantize_per_token(x * m.alpha, bits) @ pm1(w).T + (x @ m.beta)[..., None]
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_onebit_forward_and_svid_init():
    m = OneBitLinear(16, 8, 8)
    x = torch.randn(4, 16)
    ref = quantize_per_token(x * m.g, 8) @ pm1(m.weight).T * m.h
    assert torch.allclose(m(x), ref, atol=1e-6)
    h, g = rank1_abs(m.weight.detach())
    assert torch.allclose(m.g, g) and torch.allclose(m.h, h)


def test_bitnet_forward():
    m = BitNetLinear(16, 8, 8)
    with torch.no_grad():
        m.weight.add_(0.01)   # a non-zero mean, so centring matters
    x = torch.randn(5, 16) * 3 + 1
    w = m.weight.detach()
    ln = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    ref = quantize_per_token(ln, 8) @ pm1(w - w.mean()).T * w.abs().mean()
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_pb_forward():
    m = PBLinear(20, 10, 8, fraction=0.1)
    w = m.weight.detach()
    k = 20
    thresh = w.abs().flatten().sort(descending=True).values[k - 1]
    mask = w.abs() >= thresh
    assert mask.sum() == k and torch.equal(mask, m.salient_mask())
    row = (w * mask).abs().amax(1, keepdim=True) / 127
    row = torch.where(row > 0, row, torch.ones_like(row))
    w_int8 = torch.clamp(torch.round(w * mask / row), -127, 127) * row
    scale = w.abs()[~mask].mean()
    w_eff = w_int8 + (~mask) * scale * pm1(w)
    x = torch.randn(3, 20)
    assert torch.allclose(m(x), quantize_per_token(x, 8) @ w_eff.T, atol=1e-6)
    e = m.export()
    assert e["int8"].dtype == torch.int8 and e["salient"].sum() == k


@pytest.mark.parametrize("experts", [1, 2, 4])
def test_mos_forward_reference(experts):
    torch.manual_seed(experts)
    m = MoSLinear(16, 8, 8, experts)
    with torch.no_grad():   # distinct experts, so the mixing matters
        m.s_in.mul_(torch.rand(experts, 16) + 0.5)
        m.s_out.mul_(torch.rand(experts, 8) + 0.5)
    x = torch.randn(2, 5, 16)
    if experts == 1:
        assert m.router is None
        s_in, s_out = m.s_in[0], m.s_out[0]
    else:
        g = torch.softmax(x @ m.router.weight.T, -1)                      # (2, 5, E)
        s_in = torch.einsum("bte,ed->btd", g, m.s_in)
        s_out = torch.einsum("bte,ed->btd", g, m.s_out)
    ref = quantize_per_token(x * s_in, 8) @ pm1(m.weight).T * s_out
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_mos_router_mixes_per_token():
    m = MoSLinear(4, 3, None, experts=2)
    with torch.no_grad():
        m.router.weight.copy_(torch.tensor([[10.0, 0, 0, 0], [-10.0, 0, 0, 0]]))
        m.s_in.copy_(torch.tensor([[1.0] * 4, [2.0] * 4]))
        m.s_out.copy_(torch.tensor([[1.0] * 3, [3.0] * 3]))
        m.weight.fill_(0.5)   # all +1
    x = torch.tensor([[1.0, 1, 1, 1], [-1.0, 1, 1, 1], [0.0, 1, 1, 1]])
    g = m.gates(x)
    assert g[0, 0] > 0.999 and g[1, 1] > 0.999 and torch.allclose(g[2], torch.tensor([0.5, 0.5]))
    y = m(x)
    # token 0 -> expert 0: sum(x*1) * 1 = 4; token 1 -> expert 1: sum(x*2) * 3 = 12; token 2 -> mean: 4.5 * 2
    assert torch.allclose(y[:, 0], torch.tensor([4.0, 12.0, 9.0]), atol=1e-3)


def test_mos_init_same_for_all_experts_and_clip_ste():
    m = MoSLinear(16, 8, 8, experts=4)
    assert torch.equal(m.s_in, m.s_in[:1].expand(4, -1)) and (m.s_in > 0).all() and (m.s_out > 0).all()
    with torch.no_grad():
        m.weight[0, 0] = 1.5
    m(torch.randn(3, 16)).sum().backward()
    assert m.weight.grad[0, 0] == 0 and m.weight.grad[0, 1] != 0
    assert m.router.weight.grad is not None and m.s_in.grad is not None


def test_override_hook_and_export():
    m = SignLinear(8, 4, 8)
    m.path = "layers.0.attn.q_proj"
    seen = []
    m.override = lambda path, mod, x: (seen.append(path), mod.binary_forward(x) * 0 + 7)[1]
    assert torch.equal(m(torch.randn(2, 8)), torch.full((2, 4), 7.0)) and seen == ["layers.0.attn.q_proj"]
    e = m.export()
    assert e["sign"].dtype == torch.bool and e["sign"].shape == (4, 8) and e["act_bits"] == 8


def test_packed_bytes_counts_one_bit_per_weight():
    assert packed_bytes(SignLinear(64, 128)) == 64 * 128 // 8 + 2
    m = MoSLinear(64, 128, experts=4)
    assert packed_bytes(m) == 64 * 128 // 8 + (4 * 64 + 4 * 64 + 4 * 128) * 2
    assert packed_bytes(torch.nn.Linear(64, 128, bias=False)) == 64 * 128 * 2


# ---- ternary (BitNet b1.58) ----------------------------------------------------------------------------------------

def _hand_ternary(act_bits=None):
    """A hand-made 2x4 weight: mean|W| = 1.8 / 8 = 0.225, so the trit thresholds sit at +-0.1125 (and +-0.3375
    for the clip): 0.4 -> 1.78 -> +1, -0.05 -> -0.22 -> 0, 0.1 -> 0.44 -> 0, -0.3 -> -1.33 -> -1, 0.0 -> 0,
    0.2 -> 0.89 -> +1, -0.15 -> -0.67 -> -1, 0.6 -> 2.67 -> clipped to +1."""
    m = TernaryLinear(4, 2, act_bits)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.4, -0.05, 0.1, -0.3], [0.0, 0.2, -0.15, 0.6]]))
    return m


def test_ternary_trits_and_scale_on_a_hand_made_weight():
    m = _hand_ternary()
    assert m.scale().item() == pytest.approx(0.225, abs=1e-7)
    assert torch.equal(m.trits(), torch.tensor([[1.0, 0, 0, -1], [0, 1, -1, 1]]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]])
    # W1A16: y = (x T^T) * gamma = [1 - 4, 2 - 3 + 4] * 0.225 and [-1 - 2, 0.5 + 2] * 0.225
    expect = torch.tensor([[-3.0, 3.0], [-3.0, 2.5]]) * 0.225
    assert torch.allclose(m(x), expect, atol=1e-6)


def test_ternary_rounding_is_half_to_even_at_the_threshold():
    m = TernaryLinear(4, 1, None)
    m.eps = 0.0   # exact arithmetic: mean|W| = 1, W / gamma = W
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.5, -0.5, 1.5, 1.5]]))   # mean|W| = 1; round(+-0.5) = 0, round(1.5) = 2 -> 1
    assert torch.equal(m.trits(), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_ternary_forward_uses_the_per_token_quantizer(bits):
    m = _hand_ternary(bits)
    x = torch.randn(2, 3, 4)
    ref = quantize_per_token(x, bits) @ m.trits().T * 0.225
    assert torch.allclose(m(x), ref, atol=1e-6)
    if bits < 8:   # the quantizer is really in the path: the float product differs
        assert not torch.allclose(m(x), x @ m.trits().T * 0.225, atol=1e-3)


def test_ternary_all_zero_weight_is_finite():
    m = TernaryLinear(4, 2, 8)
    with torch.no_grad():
        m.weight.zero_()
    y = m(torch.randn(3, 4))
    y.sum().backward()
    assert torch.equal(y, torch.zeros(3, 2)) and torch.isfinite(m.weight.grad).all()


def test_ternary_ste_gradient_reaches_the_latent_weight():
    m = _hand_ternary(None)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]])
    gy = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    m(x).backward(gy)
    gamma = 0.225
    # straight through RoundClip (no clipping mask: the clipped 0.6 and the zero trits get gradient too):
    # dL/dW = gamma / (gamma + eps) * gy^T x
    expect = gamma / (gamma + m.eps) * gy.T @ x
    assert torch.allclose(m.weight.grad, expect, atol=1e-6)
    assert (m.weight.grad != 0).all()


def test_ternary_init_from_teacher_is_absmean_quantization():
    torch.manual_seed(3)
    w = torch.randn(8, 16) * 0.05
    m = TernaryLinear(16, 8, 8)
    m.init_from_weight(w)
    gamma = w.abs().mean()
    assert torch.equal(m.weight.detach(), w) and m.scale().item() == pytest.approx(gamma.item())
    assert torch.equal(m.trits(), torch.clamp(torch.round(w / (gamma + 1e-5)), -1, 1))
    assert 0 < (m.trits() == 0).float().mean() < 1   # a real ternary weight, not a sign weight


def test_ternary_export_keys_and_values():
    m = _hand_ternary(8)
    e = m.export()
    assert set(e) == {"scheme", "in_features", "out_features", "act_bits", "sign", "trit", "nonzero", "scale"}
    assert (e["scheme"], e["in_features"], e["out_features"], e["act_bits"]) == ("ternary", 4, 2, 8)
    assert e["trit"].dtype == torch.int8 and torch.equal(e["trit"], torch.tensor([[1, 0, 0, -1], [0, 1, -1, 1]],
                                                                                  dtype=torch.int8))
    assert e["nonzero"].dtype == torch.bool and torch.equal(e["nonzero"], e["trit"] != 0)
    assert e["sign"].dtype == torch.bool and torch.equal(e["sign"], e["trit"] >= 0)   # zero trit: sign True
    assert e["scale"] == pytest.approx(0.225, abs=1e-7)
    rebuilt = e["nonzero"].to(torch.int8) * (2 * e["sign"].to(torch.int8) - 1)
    assert torch.equal(rebuilt, e["trit"])
    pos, neg = e["sign"] & e["nonzero"], ~e["sign"] & e["nonzero"]
    p = torch.tensor([[True, False, True, True]])   # one bit plane of an activation
    popcount_form = (p & pos).sum(-1) - (p & neg).sum(-1)           # the PE form for w in {-1, 0, +1}
    assert torch.equal(popcount_form, (p.to(torch.int64) @ e["trit"].to(torch.int64).T).squeeze(0))


def test_ternary_packed_bytes_two_bits_per_weight_plus_scale():
    assert packed_bytes(TernaryLinear(64, 128)) == 64 * 128 * 2 // 8 + 2
    assert packed_bytes(TernaryLinear(3, 3)) == 3 + 2   # 18 bits -> 3 bytes, rounded up
