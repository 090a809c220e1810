"""Shared helpers for tests/model (tests/model is a package: import with `from .model_helpers import ...`)."""

from bitmos.model.config import ModelConfig


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)
