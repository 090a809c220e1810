import pytest
import torch

from bitmos.model.binarize import BinarizedLinear, MoSLinear
from bitmos.model.config import SCHEMES
from bitmos.model.transformer import LINEAR_NAMES, Transformer

from .model_helpers import tiny_config


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_shapes_loss_and_backward(scheme):
    m = Transformer(tiny_config(scheme=scheme, experts=2))
    idx = torch.randint(0, 64, (2, 16))
    logits, loss = m(idx, idx)
    assert logits.shape == (2, 16, 64) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None for n, p in m.named_parameters()), scheme


def test_binarized_linears_are_addressable_and_only_inside_blocks():
    m = Transformer(tiny_config(scheme="mos"))
    paths = [p for p, _ in m.binarized_linears()]
    assert paths == [f"layers.{i}.{n}" for i in range(2) for n in LINEAR_NAMES]
    for p, mod in m.binarized_linears():
        assert mod.path == p and m.get_submodule(p) is mod
    assert not isinstance(m.lm_head, BinarizedLinear)
    assert Transformer(tiny_config()).binarized_linears() == []


def test_hidden_states_and_causality():
    m = Transformer(tiny_config(scheme="mos", act_bits=None))
    idx = torch.randint(0, 64, (1, 12))
    logits, _, hidden = m(idx, return_hidden=True)
    assert len(hidden) == 2 and hidden[0].shape == (1, 12, 32)
    idx2 = idx.clone()
    idx2[0, 8:] = (idx2[0, 8:] + 1) % 64
    logits2, _ = m(idx2)
    assert torch.allclose(logits[0, :8], logits2[0, :8], atol=1e-5)
    assert not torch.allclose(logits[0, 8:], logits2[0, 8:])


def test_linear_override_sees_every_path_and_restores():
    m = Transformer(tiny_config(scheme="mos"))
    idx = torch.randint(0, 64, (1, 8))
    ref, _ = m(idx)
    calls = []

    def golden(path, module, x):
        calls.append(path)
        return module.binary_forward(x)

    out, _ = m(idx, linear_override=golden)
    assert torch.equal(out, ref) and calls == [p for p, _ in m.binarized_linears()]
    assert all(mod.override is None for _, mod in m.binarized_linears())
    zeroed, _ = m(idx, linear_override=lambda p, mod, x: torch.zeros(*x.shape[:-1], mod.out_features))
    assert not torch.allclose(zeroed, ref)


def test_student_from_teacher_copies_full_precision_parts():
    t = Transformer(tiny_config())
    s = Transformer(tiny_config(scheme="mos", experts=4))
    s.load_from_teacher(t)
    assert torch.equal(s.tok_embeddings.weight, t.tok_embeddings.weight)
    assert torch.equal(s.lm_head.weight, t.lm_head.weight)
    q_s, q_t = s.get_submodule("layers.0.attn.q_proj"), t.get_submodule("layers.0.attn.q_proj")
    assert isinstance(q_s, MoSLinear) and torch.equal(q_s.sign_bits(), q_t.weight >= 0)
    # the rank-1 init approximates |W| so the student's linear tracks the teacher's
    x = torch.randn(64, 32)
    cos = torch.nn.functional.cosine_similarity(q_s.binary_forward(x), q_t(x), dim=-1).mean()
    assert cos > 0.5


def test_sequence_too_long_asserts():
    m = Transformer(tiny_config())
    with pytest.raises(AssertionError, match="sequence length 33 > max_seq_len 32"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_generate_greedy_is_deterministic():
    m = Transformer(tiny_config(scheme="sign"))
    idx = torch.zeros(1, 3, dtype=torch.long)
    a = m.generate(idx, 5, temperature=0)
    assert a.shape == (1, 8) and torch.equal(a, m.generate(idx, 5, temperature=0))
    b = m.generate(idx, 5, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert b.shape == (1, 8)
