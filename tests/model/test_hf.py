"""A tiny randomly initialised Hugging Face LLaMA as teacher (skipped without transformers)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bitmos.errors import BitmosUserError, UnsupportedError  # noqa: E402
from bitmos.model.distill import make_student  # noqa: E402
from bitmos.model.hf import config_from_hf, convert_hf_llama, load_hf_llama  # noqa: E402


def tiny_llama(**kw):
    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=False)
    cfg.update(kw)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()


def test_converted_llama_matches_logits():
    hf = tiny_llama()
    ours = convert_hf_llama(hf)
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref = hf(idx).logits
    got, _ = ours(idx)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    student = make_student(ours, "mos", experts=4)
    assert len(student.binarized_linears()) == 14


def test_save_and_load_local_directory(tmp_path):
    from tokenizers import Tokenizer, models
    hf = tiny_llama()
    hf.save_pretrained(tmp_path)
    with pytest.raises(BitmosUserError, match="no tokenizer.json"):   # a model comes in with its own tokenizer
        load_hf_llama(tmp_path)
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0")).save(str(tmp_path / "tokenizer.json"))
    ours = load_hf_llama(tmp_path)
    assert ours.config.tokenizer == f"hf:{tmp_path.name}" and ours.tokenizer.vocab_size == 64
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], hf(idx).logits, atol=1e-4)


def test_grouped_query_attention_supported_dynamic_rope_scaling_refused():
    c = config_from_hf(transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2))
    assert (c.n_heads, c.n_kv_heads, c.head_dim) == (4, 2, 8)
    with pytest.raises(UnsupportedError, match="RoPE scaling 'dynamic'"):
        config_from_hf({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 64,
                        "num_hidden_layers": 1, "intermediate_size": 64,
                        "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(UnsupportedError, match="model_type 'gemma'"):
        config_from_hf({"model_type": "gemma"})
