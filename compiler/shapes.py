"""Model shapes: the named LLaMA-family shapes, the one loader of a shape, and the module walk.

A *shape* is a model config dict in either key set — Hugging Face (``hidden_size``,
``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``) or bitmos (``dim``, ``hidden_dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``,
``head_dim``) — that :func:`llama_linears` walks into binarized linears. :func:`load_shape` is the one
way a command turns what the user names (a built-in name, a ``config.json``, a bitmos model config or
checkpoint header JSON, a dict with ``preset`` plus overrides) into a shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitmos.errors import ConfigError, FormatError, UnsupportedError

#: LLaMA-family shapes for studies of models too big to train here (bitmos model-config keys, as
#: :func:`llama_linears` reads them). The one table ``bitmos estimate``, ``bitmos sweep`` and the
#: benchmarks name models from.
MODEL_SHAPES: dict[str, dict[str, int]] = {
    # vocab_size (the host's LM head): LLaMA 2's tokenizer (Touvron et al., arXiv 2307.09288), which TinyLlama and
    # FBI-LLM (Ma et al., arXiv 2407.07093) reuse
    "llama-2-7b": {"dim": 4096, "hidden_dim": 11008, "n_layers": 32, "n_heads": 32, "vocab_size": 32000},
    "llama-2-13b": {"dim": 5120, "hidden_dim": 13824, "n_layers": 40, "n_heads": 40, "vocab_size": 32000},
    "tinyllama-1.1b": {"dim": 2048, "hidden_dim": 5632, "n_layers": 22, "n_heads": 32, "n_kv_heads": 4,
                       "vocab_size": 32000},
    "fbi-llm-130m": {"dim": 768, "hidden_dim": 2048, "n_layers": 12, "n_heads": 12, "vocab_size": 32000},
    "fbi-llm-1.3b": {"dim": 2048, "hidden_dim": 5632, "n_layers": 24, "n_heads": 32, "vocab_size": 32000},
    "toy": {"dim": 256, "hidden_dim": 688, "n_layers": 2, "n_heads": 4},
    # BitNet b1.58 2B4T (Ma et al., arXiv 2504.12285, the released ternary model): its seven linears per layer
    # (its FFN activation is a squared ReLU, not SiLU; the linears' shapes are what the chip sees); LLaMA 3's
    # tokenizer of 128,256 tokens
    "bitnet-b1.58-2b": {"dim": 2560, "hidden_dim": 6912, "n_layers": 30, "n_heads": 20, "n_kv_heads": 5,
                        "vocab_size": 128256},
    # BitNet b1.58 3B (Ma et al., arXiv 2402.17764; the reproduction 1bitLLM/bitnet_b1_58-3B, its config.json:
    # hidden 3200, intermediate 8640, 26 layers, 32 heads): the 3B ternary LLaMA that 3B 1.58-bit chips cite
    "bitnet-b1.58-3b": {"dim": 3200, "hidden_dim": 8640, "n_layers": 26, "n_heads": 32},
}

_LLAMA_TYPES = ("llama", "mistral", "qwen2", "tinyllama")


def _positive(shape: dict, key: str, src: str) -> int:
    if key not in shape:
        raise ConfigError(f"{src} model config is missing {key!r}", field=key)
    v = shape[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{src} model config field {key!r} must be a positive integer, got {v!r}", field=key)
    return v


def _dims(shape: dict) -> tuple[int, int, int, int, int, int]:
    """(dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim) of a shape in either key set."""
    if "hidden_size" in shape:
        src, keys = "Hugging Face", ("hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "head_dim")
        mt = shape.get("model_type", "llama")
        if mt not in _LLAMA_TYPES:
            raise UnsupportedError(f"model_type {mt!r} is not a LLaMA-family model; the module walk covers "
                                   "q/k/v/o projections and a SwiGLU MLP")
    elif "dim" in shape:
        src, keys = "bitmos", ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim")
    else:
        raise ConfigError("model config has neither 'hidden_size' (Hugging Face) nor 'dim' (bitmos)")
    d, hid, nl, nh = (_positive(shape, k, src) for k in keys[:4])
    kvh = _positive(shape, keys[4], src) if shape.get(keys[4]) else nh
    hd = _positive(shape, keys[5], src) if shape.get(keys[5]) else d // nh
    return d, hid, nl, nh, kvh, hd


def llama_linears(shape: dict) -> list[tuple[str, int, int]]:
    """(module path, d_in, d_out) of every binarized linear, in execution order, from a shape.

    Names follow bitmos' module paths (``layers.<i>.attn.q_proj`` ... ``layers.<i>.mlp.down_proj``);
    grouped-query attention (n_kv_heads < n_heads) narrows k/v, ``head_dim`` overrides dim / n_heads.
    """
    d, hid, nl, nh, kvh, hd = _dims(shape)
    out = []
    for i in range(nl):
        p = f"layers.{i}"
        out += [(f"{p}.attn.q_proj", d, nh * hd), (f"{p}.attn.k_proj", d, kvh * hd),
                (f"{p}.attn.v_proj", d, kvh * hd), (f"{p}.attn.o_proj", nh * hd, d),
                (f"{p}.mlp.gate_proj", d, hid), (f"{p}.mlp.up_proj", d, hid), (f"{p}.mlp.down_proj", hid, d)]
    return out


def vector_ops(shape: dict, layernorms: bool = False, rope: bool = True) -> list[tuple[str, str, int]]:
    """(name, vector-unit operation, K) of every residual add, RMSNorm, rotary embedding and SwiGLU of a shape, in
    execution order (``GoldenLayerModel``'s): per layer the attention norm, the rotary embedding of q and of k
    (K = n_heads and n_kv_heads times head_dim), its residual add, the MLP norm, the gate product (K = hidden_dim),
    its residual add; then the final norm. ``layernorms`` (BitNet): each linear's LayerNorm of
    its input too, and no SwiGLU (its int32 product feeds down_proj's LayerNorm, on the host); ``rope`` False:
    no rotary embeddings (a head dimension the chip's lanes cannot pair, on the host)."""
    d, hid, nl, nh, kvh, hd = _dims(shape)
    lns = {}
    if layernorms:
        for path, K, _ in llama_linears(shape):
            lns.setdefault(path.rsplit(".", 2)[0], []).append((f"{path}.ln", "layernorm", K))
    out = []
    for i in range(nl):
        p = f"layers.{i}"
        attn = [x for x in lns.get(f"{p}", []) if ".attn." in x[0]]
        mlp = [x for x in lns.get(f"{p}", []) if ".mlp." in x[0]]
        ropes = [(f"{p}.attn.q_rope", "rope", nh * hd), (f"{p}.attn.k_rope", "rope", kvh * hd)] if rope else []
        out += [(f"{p}.attn_norm", "rmsnorm", d), *attn[:3], *ropes, *attn[3:], (f"{p}.attn_residual", "resadd", d),
                (f"{p}.mlp_norm", "rmsnorm", d), *(mlp if layernorms else [(f"{p}.mlp.silu", "silu", hid)]),
                (f"{p}.mlp_residual", "resadd", d)]
    return out + [("norm", "rmsnorm", d)]


def scheme_linears(shape: dict, scheme: str, pb_fraction: float = 0.1) -> list[tuple[str, int, int, int]]:
    """(chip layer name, K, N, WBITS) of every chip layer of ``shape`` with its linears in ``scheme``: one per
    linear in the scheme's weight format (:data:`bitmos.compiler.lower.SCHEME_WEIGHT_BITS`), or for a split scheme
    (PB-LLM at salient fraction ``pb_fraction``) its parts, ``<path>.binary`` and ``<path>.salient``, as the export
    makes them (:func:`bitmos.export.split_part_shapes`)."""
    from bitmos.compiler.lower import SCHEME_WEIGHT_BITS
    from bitmos.export import SPLIT_SCHEMES, salient_channel_count, split_part_shapes

    if scheme not in SCHEME_WEIGHT_BITS:
        raise UnsupportedError(f"scheme {scheme!r} has no hardware path; schemes: {', '.join(SCHEME_WEIGHT_BITS)}")
    out = []
    for name, K, N in llama_linears(shape):
        if scheme in SPLIT_SCHEMES:
            out += [(f"{name}.{part}", k, N, bits)
                    for part, k, bits in split_part_shapes(K, salient_channel_count(pb_fraction, K))]
        else:
            out.append((name, K, N, SCHEME_WEIGHT_BITS[scheme]))
    return out


def is_shape_source(source: str | Path) -> bool:
    """Does ``source`` name a shape (a built-in name or a JSON file) rather than an export file?"""
    if str(source) in MODEL_SHAPES:
        return True
    p = Path(source)
    if not p.is_file():
        return False
    if p.suffix.lower() == ".json":
        return True
    with p.open("rb") as fh:
        return fh.read(64).lstrip()[:1] == b"{"


def load_shape(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The shape a user names: a name from :data:`MODEL_SHAPES`; a Hugging Face ``config.json``, a bitmos
    model config or a JSON header with a ``model_config`` table (path or dict); or a dict with
    ``preset = <name>`` plus overrides. Built-in and preset shapes carry their ``name``. The shape is
    checked (every size a positive integer, a LLaMA-family model type) before it is returned."""
    if isinstance(source, dict):
        shape = dict(source)
        if "dim" not in shape and "hidden_size" not in shape and isinstance(shape.get("model_config"), dict):
            shape = dict(shape["model_config"])
        if "preset" in shape:
            base = load_shape(str(shape.pop("preset")))
            if not isinstance(base, dict) or base.get("name") not in MODEL_SHAPES:
                raise ConfigError(f"preset must name a built-in shape ({', '.join(MODEL_SHAPES)})")
            base.update(shape)
            shape = base
    elif str(source) in MODEL_SHAPES:
        shape = dict(MODEL_SHAPES[str(source)], name=str(source))
    else:
        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"model {str(source)!r} is neither a file nor a built-in shape "
                              f"({', '.join(MODEL_SHAPES)})")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"{p}: not a readable JSON model config ({exc})") from None
        if not isinstance(data, dict):
            raise FormatError(f"{p}: expected a JSON object")
        return load_shape(data)
    _dims(shape)
    return shape


def layer_shape(shape: dict[str, Any]) -> dict[str, Any]:
    """The same shape with one decoder layer (layers of a LLaMA-shaped model are identical)."""
    key = "num_hidden_layers" if "hidden_size" in shape else "n_layers"
    return dict(shape, **{key: 1})


def n_layers(shape: dict[str, Any]) -> int:
    return _dims(shape)[2]


def head_dim(shape: dict[str, Any]) -> int:
    return _dims(shape)[5]


def lm_head_shape(shape: dict[str, Any]) -> tuple[int, int] | None:
    """(vocabulary, dim) of the shape's LM head, if the shape names its vocabulary (``vocab_size``)."""
    if shape.get("vocab_size") is None:
        return None
    return _positive(shape, "vocab_size", "model"), _dims(shape)[0]


def attention_dims(shape: dict[str, Any]) -> tuple[int, int, int, int]:
    """(n_layers, n_heads, n_kv_heads, head_dim) of a shape."""
    _, _, nl, nh, kvh, hd = _dims(shape)
    return nl, nh, kvh, hd


def kv_cache_bytes(shape: dict[str, Any]) -> int:
    """Bytes of the whole-layer chip's KV cache per token of context (``formats.kv_cache_bytes_per_token``)."""
    from bitmos.formats import kv_cache_bytes_per_token
    _, _, nl, _, kvh, hd = _dims(shape)
    return kv_cache_bytes_per_token(nl, kvh, hd)


__all__ = ["MODEL_SHAPES", "llama_linears", "vector_ops", "head_dim",
           "load_shape", "is_shape_source", "layer_shape", "n_layers",
           "kv_cache_bytes", "attention_dims", "lm_head_shape"]
