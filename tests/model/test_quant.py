import torch

from bitmos.model.quant import act_quant_params, quantize_per_token


def test_8bit_exact():
    v = torch.tensor([[1.0, -0.5, 0.25, 0.0], [2.0, 1.0, -2.0, 0.01]])
    out = quantize_per_token(v, 8)
    d0, d1 = 1.0 / 127, 2.0 / 127
    q0 = torch.tensor([127.0, -64.0, 32.0, 0.0])   # -63.5 -> -64 (half to even), 31.75 -> 32
    q1 = torch.tensor([127.0, 64.0, -127.0, 1.0])  # 63.5 -> 64, 0.635 -> 1
    assert torch.allclose(out[0], q0 * d0) and torch.allclose(out[1], q1 * d1)


def test_4bit_and_2bit_exact():
    v = torch.tensor([[0.7, -0.35, 0.1, -0.05]])
    # k=4: Q=7, delta=0.1 -> q = [7, -3.5->-4, 1, -0.5->-0]
    assert torch.allclose(quantize_per_token(v, 4), torch.tensor([[0.7, -0.4, 0.1, 0.0]]))
    # k=2: Q=1, delta=0.7 -> q = [1, -0.5->-0, 0.14->0, 0]
    assert torch.allclose(quantize_per_token(v, 2), torch.tensor([[0.7, 0.0, 0.0, 0.0]]))


def test_1bit_sign_with_zero_positive():
    v = torch.tensor([[0.5, -2.0, 0.0, 1.0]])
    assert torch.equal(quantize_per_token(v, 1), torch.tensor([[2.0, -2.0, 2.0, 2.0]]))
    q, d = act_quant_params(v, 1)
    assert torch.equal(q, torch.tensor([[1.0, -1.0, 1.0, 1.0]])) and d.item() == 2.0


def test_all_zero_token_gives_zero():
    v = torch.zeros(2, 3, 5)
    for k in (1, 2, 4, 8):
        out = quantize_per_token(v, k)
        assert torch.equal(out, torch.zeros_like(v)), k
    _, d = act_quant_params(v, 8)
    assert torch.equal(d, torch.zeros(2, 3, 1))


def test_off_is_identity_and_ste_passes_gradient():
    v = torch.randn(3, 7, requires_grad=True)
    assert quantize_per_token(v, None) is v and quantize_per_token(v, 16) is v
    out = quantize_per_token(v, 4)
    g = torch.randn(3, 7)
    out.backward(g)
    assert torch.equal(v.grad, g)


def test_per_token_codes_in_range():
    v = torch.randn(4, 9, 33) * torch.rand(4, 9, 1) * 10
    for k in (2, 3, 4, 8):
        q, d = act_quant_params(v, k)
        Q = 2 ** (k - 1) - 1
        assert q.abs().max() <= Q and torch.equal(q, q.round())
        assert torch.allclose(quantize_per_token(v, k), q * d)
        assert ((q.abs() == Q).any(-1)).all()   # the max |v| element maps to +-Q
