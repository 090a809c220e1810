"""Hugging Face LLaMA as a teacher: convert ``LlamaForCausalLM`` weights into a bitmos :class:`Transformer`.

Needs the optional ``transformers`` package (``pip install 'bitmos[hf]'``), imported lazily. Supported: plain
multi-head LLaMA (num_key_value_heads == num_attention_heads), SiLU MLP, no biases, default RoPE (no scaling).
The converted float model is then used as the teacher, and a student can start from its weights.
"""

from __future__ import annotations

import torch

from bitmos.errors import BitmosUserError, UnsupportedError
from bitmos.model.config import ModelConfig
from bitmos.model.transformer import LINEAR_NAMES, Transformer

_HF_LINEAR = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
              "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
              "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj"}


def _rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if theta is None:
        theta = params.get("rope_theta", 10000.0)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise UnsupportedError(f"HF LLaMA rope type {rope_type!r} is not supported (only default RoPE)")
    return float(theta)


def config_from_hf(cfg) -> ModelConfig:
    """ModelConfig (scheme float) of a ``transformers.LlamaConfig``."""
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    if kv != heads:
        raise UnsupportedError(f"HF LLaMA with grouped-query attention ({kv} kv heads, {heads} heads)")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UnsupportedError(f"HF LLaMA hidden_act {cfg.hidden_act!r} (only silu)")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise UnsupportedError("HF LLaMA with attention or MLP biases")
    hd = getattr(cfg, "head_dim", None)
    if hd is not None and hd != cfg.hidden_size // heads:
        raise UnsupportedError(f"HF LLaMA head_dim {hd} != hidden_size / heads")
    return ModelConfig(vocab_size=cfg.vocab_size, dim=cfg.hidden_size, n_layers=cfg.num_hidden_layers,
                       n_heads=heads, hidden_dim=cfg.intermediate_size,
                       max_seq_len=cfg.max_position_embeddings, norm_eps=float(cfg.rms_norm_eps),
                       rope_theta=_rope_theta(cfg), scheme="float")


@torch.no_grad()
def convert_hf_llama(hf_model) -> Transformer:
    """A float :class:`Transformer` with the weights of a ``LlamaForCausalLM`` (same logits up to fp error)."""
    config = config_from_hf(hf_model.config)
    sd = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    model = Transformer(config)
    model.tok_embeddings.weight.copy_(sd["model.embed_tokens.weight"])
    model.norm.weight.copy_(sd["model.norm.weight"])
    model.lm_head.weight.copy_(sd.get("lm_head.weight", sd["model.embed_tokens.weight"]))
    for i, block in enumerate(model.layers):
        pre = f"model.layers.{i}."
        block.attn_norm.weight.copy_(sd[pre + "input_layernorm.weight"])
        block.mlp_norm.weight.copy_(sd[pre + "post_attention_layernorm.weight"])
        for name in LINEAR_NAMES:
            block.get_submodule(name).weight.copy_(sd[pre + _HF_LINEAR[name] + ".weight"])
    model.eval()
    return model


def load_hf_llama(path) -> Transformer:
    """Load a local Hugging Face LLaMA directory (no download) and convert it."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as exc:
        raise BitmosUserError("an HF teacher needs the 'transformers' package: pip install 'bitmos[hf]'") from exc
    try:
        hf = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise BitmosUserError(f"cannot load a Hugging Face LLaMA from {path}: {exc}") from exc
    return convert_hf_llama(hf)
