import torch

from bitmos.model.config import ModelConfig
from bitmos.model.transformer import KVCache, Transformer


def _model(scheme):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_seq_len=32,
                      scheme=scheme, experts=4, act_bits=8)
    return Transformer(cfg).eval()


def test_incremental_decoding_equals_full_forward():
    for scheme in ("float", "mos"):
        m = _model(scheme)
        idx = torch.randint(0, 64, (2, 12))
        with torch.no_grad():
            full, _ = m(idx)
            cache = KVCache(m.config)
            first, _ = m(idx[:, :7], cache=cache)           # prefill
            steps = [m(idx[:, t:t + 1], cache=cache)[0] for t in range(7, 10)]
            chunk, _ = m(idx[:, 10:], cache=cache)           # a multi-token continuation
        assert cache.length == 12
        got = torch.cat([first] + steps + [chunk], dim=1)
        assert torch.allclose(got, full, atol=1e-4), (scheme, (got - full).abs().max())


def test_cache_respects_context_length():
    m = _model("float")
    cache = KVCache(m.config)
    with torch.no_grad():
        m(torch.zeros(1, 30, dtype=torch.long), cache=cache)
        try:
            m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        except AssertionError as exc:
            assert "sequence length 33 > max_seq_len 32" in str(exc)
        else:
            raise AssertionError("expected the context limit to be enforced")
