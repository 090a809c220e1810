"""ModelConfig: the shape and the binarization scheme of a bitmos transformer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bitmos.errors import ConfigError

# "float" is the teacher (plain nn.Linear); every other scheme binarizes (ternary: ternarizes) the seven linears of
# each decoder block.
SCHEMES = ("float", "sign", "fbi", "onebit", "bitnet", "pb", "mos", "ternary")
#: how scheme "pb" picks its int8 (salient) weights; see bitmos.model.binarize.PBLinear
PB_SALIENT = ("weights", "channels")


#: RoPE scaling types and the parameters each one needs (Hugging Face ``rope_scaling`` / ``rope_parameters``)
ROPE_SCALING = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def _rope_scaling(d) -> dict:
    """``rope_scaling`` checked and reduced to its type and that type's parameters (ConfigError otherwise)."""
    if not isinstance(d, dict):
        raise ConfigError(f"ModelConfig.rope_scaling must be a dict or None, got {d!r}")
    kind = d.get("rope_type", d.get("type"))
    if kind not in ROPE_SCALING:
        raise ConfigError(f"ModelConfig.rope_scaling: RoPE scaling {kind!r} is not supported "
                          f"(supported: {', '.join(ROPE_SCALING)})")
    out: dict = {"rope_type": kind}
    for key in ROPE_SCALING[kind]:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"ModelConfig.rope_scaling: {kind} needs a positive number {key!r}, got {v!r}")
        out[key] = float(v) if key != "original_max_position_embeddings" else int(v)
    if kind == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ConfigError("ModelConfig.rope_scaling: llama3 needs high_freq_factor > low_freq_factor, got "
                          f"{out['high_freq_factor']} and {out['low_freq_factor']}")
    return out


@dataclass
class ModelConfig:
    vocab_size: int = 256          # byte-level tokenizer by default
    dim: int = 128                 # model (hidden) width; a multiple of 64 maps cleanly onto the array
    n_layers: int = 4
    n_heads: int = 4               # query heads
    hidden_dim: int = 384          # SwiGLU intermediate width (gate/up out, down in)
    max_seq_len: int = 256         # longest context the rotary table covers
    norm_eps: float = 1e-5         # RMSNorm epsilon
    rope_theta: float = 10000.0    # rotary base
    scheme: str = "float"          # one of SCHEMES
    experts: int = 4               # scale experts per linear (scheme "mos"); E=1 means no router
    act_bits: int | None = 8       # per-token activation bits of every binarized matmul; None or 16 = off (W1A16)
    pb_fraction: float = 0.1       # scheme "pb": fraction of weights (by magnitude) kept in 8 bit
    pb_salient: str = "weights"    # scheme "pb": one of PB_SALIENT: "weights" = the paper's unstructured top-|W| set,
                                   # "channels" = round(pb_fraction * d_in) whole input channels (largest max|W|)
    tokenizer: str = "byte"        # "byte", "bpe:<name>" or "hf:<name>" (a non-byte tokenizer travels in the
                                   # checkpoint's metadata; see bitmos.model.data.tokenizer_for)
    # Fields for pretrained LLaMA-family checkpoints; their defaults mean the original bitmos model.
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None = n_heads
    head_dim: int | None = None    # width of one head; None = dim // n_heads
    tie_embeddings: bool = False   # lm_head.weight IS tok_embeddings.weight (one tensor, stored once)
    attn_bias: bool = False        # float biases after q/k/v_proj (Qwen2), added on the host like the norms
    rope_scaling: dict | None = None   # None = plain RoPE; {"rope_type": "linear", "factor": f} or Llama 3's
                                       # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
                                       #  "original_max_position_embeddings"} (see transformer.rope_tables)

    def __post_init__(self):
        def need(ok, field, why):
            if not ok:
                raise ConfigError(f"ModelConfig.{field} {why}, got {getattr(self, field)!r}")

        for f in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_seq_len", "experts"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f, "must be a positive int")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        need(isinstance(self.n_kv_heads, int) and not isinstance(self.n_kv_heads, bool) and self.n_kv_heads >= 1,
             "n_kv_heads", "must be a positive int or None")
        need(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", f"must divide n_heads={self.n_heads}")
        if self.head_dim is None:
            need(self.dim % self.n_heads == 0, "dim", f"must be divisible by n_heads={self.n_heads}")
            need((self.dim // self.n_heads) % 2 == 0, "n_heads", f"must leave an even head_dim (dim={self.dim})")
            self.head_dim = self.dim // self.n_heads
        need(isinstance(self.head_dim, int) and not isinstance(self.head_dim, bool) and self.head_dim >= 2
             and self.head_dim % 2 == 0, "head_dim", "must be an even int >= 2 (rotary pairs) or None")
        need(isinstance(self.tie_embeddings, bool), "tie_embeddings", "must be a bool")
        need(isinstance(self.attn_bias, bool), "attn_bias", "must be a bool")
        if self.rope_scaling is not None:
            self.rope_scaling = _rope_scaling(self.rope_scaling)
        need(isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0, "norm_eps", "must be > 0")
        need(isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.scheme in SCHEMES, "scheme", f"must be one of {SCHEMES}")
        if isinstance(self.act_bits, str) and self.act_bits.lower() in ("off", "none"):
            self.act_bits = None
        need(self.act_bits is None or (isinstance(self.act_bits, int) and not isinstance(self.act_bits, bool)
                                       and 1 <= self.act_bits <= 16),
             "act_bits", "must be an int in 1..16, or None/'off'")
        if self.act_bits == 16:
            self.act_bits = None  # 16 means unquantized (W1A16), stored canonically as None
        need(isinstance(self.pb_fraction, (int, float)) and 0.0 <= self.pb_fraction < 1.0,
             "pb_fraction", "must be in [0, 1)")
        need(self.pb_salient in PB_SALIENT, "pb_salient", f"must be one of {PB_SALIENT}")
        need(isinstance(self.tokenizer, str) and (self.tokenizer == "byte" or self.tokenizer.startswith(("bpe:", "hf:"))),
             "tokenizer", "must be 'byte', 'bpe:<name>' or 'hf:<name>'")

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (1 = multi-head attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def binarized(self) -> bool:
        return self.scheme != "float"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"ModelConfig.from_dict needs a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
