"""A LLaMA-style decoder (RMSNorm, rotary embeddings, SwiGLU MLP, causal multi-head or grouped-query attention),
nanoGPT style.

The float teacher uses plain ``nn.Linear``; a student (``config.scheme != "float"``) replaces the seven linears
inside each decoder block -- ``layers.<i>.attn.{q,k,v,o}_proj`` and ``layers.<i>.mlp.{gate,up,down}_proj`` -- by a
:class:`~bitmos.model.binarize.BinarizedLinear`. Embeddings, norms and the LM head stay in full precision.
Names and the rotary convention (rotate-half) match Hugging Face ``LlamaForCausalLM``, so its weights load directly.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitmos.model.binarize import BinarizedLinear, make_linear, packed_bytes
from bitmos.model.config import ModelConfig

LINEAR_NAMES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies (head_dim/2,): theta^(-2i/hd), scaled as ``config.rope_scaling`` says -- linear
    position interpolation (all divided by the factor) or Llama 3's (Meta, "The Llama 3 Herd of Models", 2024):
    long wavelengths divided by the factor, short ones kept, the band between interpolated smoothly."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))   # (hd/2,)
    sc = config.rope_scaling
    if sc is None:
        return inv_freq
    factor = sc["factor"]
    if sc["rope_type"] == "linear":
        return inv_freq / factor
    old_len, low, high = sc["original_max_position_embeddings"], sc["low_freq_factor"], sc["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_seq_len, head_dim) in the rotate-half layout of Hugging Face LLaMA."""
    inv_freq = rope_inv_freq(config)                                     # (hd/2,)
    t = torch.arange(config.max_seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)                                     # (T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)                              # (T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x: (B, H, T, hd); cos/sin: (T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Causal attention; grouped-query when ``n_kv_heads < n_heads`` (each k/v head serves ``n_rep`` query heads,
    the KV cache holds the ``n_kv_heads`` heads only)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d, hq, hkv = config.dim, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.q_proj = make_linear(config, d, hq)
        self.k_proj = make_linear(config, d, hkv)
        self.v_proj = make_linear(config, d, hkv)
        self.o_proj = make_linear(config, hq, d)
        # Qwen2's q/k/v biases: float, outside the (binarized) linears, so the host adds them after the chip's output
        self.q_bias = nn.Parameter(torch.zeros(hq)) if config.attn_bias else None
        self.k_bias = nn.Parameter(torch.zeros(hkv)) if config.attn_bias else None
        self.v_bias = nn.Parameter(torch.zeros(hkv)) if config.attn_bias else None

    @staticmethod
    def _biased(y, bias):
        return y if bias is None else y + bias

    def forward(self, x, cos, sin, cache: "KVCache | None" = None, layer: int = 0):
        B, T, C = x.shape
        q = self._biased(self.q_proj(x), self.q_bias).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self._biased(self.k_proj(x), self.k_bias).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self._biased(self.v_proj(x), self.v_bias).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)                                             # (B, Hkv, Tk, hd)
        n_rep = self.n_heads // self.n_kv_heads
        if n_rep > 1:   # query head h reads k/v head h // n_rep (the Hugging Face repeat_kv layout)
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)  # (B, H, Tk, hd)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)               # (B, H, T, hd)
        else:
            Tk = k.size(2)
            # query t sits at absolute position Tk - T + t and sees keys 0 .. Tk - T + t
            mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(diagonal=Tk - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)               # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_heads * self.head_dim)     # (B, T, H * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = make_linear(config, config.dim, config.hidden_dim)
        self.up_proj = make_linear(config, config.dim, config.hidden_dim)
        self.down_proj = make_linear(config, config.hidden_dim, config.dim)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))    # (B, T, hidden) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache: "KVCache | None" = None, layer: int = 0):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        x = x + self.mlp(self.mlp_norm(x))
        return x


class KVCache:
    """Keys and values of every layer for incremental decoding: one prefill, then one token per step."""

    def __init__(self, config: ModelConfig):
        self.k: list[torch.Tensor | None] = [None] * config.n_layers
        self.v: list[torch.Tensor | None] = [None] * config.n_layers
        self.length = 0                                                       # tokens already cached

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's (B, Hkv, T, hd) keys/values of ``layer``; return all of them so far."""
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        assert isinstance(config, ModelConfig), f"config must be a ModelConfig, got {type(config).__name__}"
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight     # one Parameter: one tensor in memory and on disk
        for name, m in self.named_modules():
            if isinstance(m, BinarizedLinear):
                m.path = name
                m.init_from_weight(m.weight.detach().clone())   # scales follow the (re-initialised) latent W

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, BinarizedLinear)) and not getattr(m, "_is_router", False):
            torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
        elif isinstance(m, nn.Embedding):
            torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # -- forward ------------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None, return_hidden: bool = False, linear_override=None,
                cache: "KVCache | None" = None):
        """idx (B, T) int64 -> (logits (B, T, V), loss or None[, hidden]).

        ``return_hidden``: also return the list of each block's output (n_layers tensors (B, T, C)).
        ``linear_override``: callable(path, module, x) -> y used instead of every binarized linear's forward.
        ``cache``: a :class:`KVCache`; idx then continues the cached sequence (incremental decoding).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        assert start + T <= self.config.max_seq_len, \
            f"sequence length {start + T} > max_seq_len {self.config.max_seq_len}"
        ctx = self.overridden(linear_override) if linear_override is not None else contextlib.nullcontext()
        with ctx:
            x = self.tok_embeddings(idx)                                      # (B, T, C)
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]   # (T, hd)
            hidden = []
            for i, block in enumerate(self.layers):
                x = block(x, cos, sin, cache, i)                              # (B, T, C)
                hidden.append(x)
            if cache is not None:
                cache.length += T
            logits = self.lm_head(self.norm(x)).float()                       # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if return_hidden:
            return logits, loss, hidden
        return logits, loss

    @contextlib.contextmanager
    def overridden(self, fn):
        """Within the block, every binarized linear's forward is ``fn(path, module, x)``."""
        mods = [m for _, m in self.binarized_linears()]
        old = [m.override for m in mods]
        for m in mods:
            m.override = fn
        try:
            yield self
        finally:
            for m, o in zip(mods, old):
                m.override = o

    # -- introspection -------------------------------------------------------------------------------------------

    def binarized_linears(self):
        """[(path, BinarizedLinear)] in execution order: layers.0.attn.q_proj, ..., layers.<L-1>.mlp.down_proj."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BinarizedLinear)]

    def block_linears(self):
        """[(path, module)] of the seven projections of every block (nn.Linear for the teacher)."""
        return [(f"layers.{i}.{n}", self.get_submodule(f"layers.{i}.{n}"))
                for i in range(self.config.n_layers) for n in LINEAR_NAMES]

    def tied_keys(self) -> dict[str, str]:
        """{state-dict key: the key it is the same tensor as}; checkpoints store only the latter."""
        return {"lm_head.weight": "tok_embeddings.weight"} if self.config.tie_embeddings else {}

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n

    def packed_bytes(self) -> int:
        """Deployed size: block linears packed (see binarize.packed_bytes), everything else fp16."""
        lin = sum(packed_bytes(m) for _, m in self.block_linears())
        lin_params = sum(p.numel() for _, m in self.block_linears() for p in m.parameters())
        return lin + (sum(p.numel() for p in self.parameters()) - lin_params) * 2

    # -- teacher -> student --------------------------------------------------------------------------------------

    def load_from_teacher(self, teacher: "Transformer") -> None:
        """Copy embeddings, norms and head, and init every block linear from the teacher's float weight."""
        tc, sc = teacher.config, self.config
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim",
                  "tie_embeddings", "tokenizer", "attn_bias", "rope_scaling"):
            assert getattr(tc, f) == getattr(sc, f), f"teacher {f}={getattr(tc, f)} != student {getattr(sc, f)}"
        with torch.no_grad():
            self.tok_embeddings.weight.copy_(teacher.tok_embeddings.weight)
            self.norm.weight.copy_(teacher.norm.weight)
            if not sc.tie_embeddings:
                self.lm_head.weight.copy_(teacher.lm_head.weight)
            for i in range(sc.n_layers):
                self.layers[i].attn_norm.weight.copy_(teacher.layers[i].attn_norm.weight)
                self.layers[i].mlp_norm.weight.copy_(teacher.layers[i].mlp_norm.weight)
                for b in ("q_bias", "k_bias", "v_bias"):
                    if getattr(self.layers[i].attn, b) is not None:
                        getattr(self.layers[i].attn, b).copy_(getattr(teacher.layers[i].attn, b))
            for (path, m), (_, t) in zip(self.block_linears(), teacher.block_linears()):
                if isinstance(m, BinarizedLinear):
                    m.init_from_weight(t.weight.detach())
                else:
                    m.weight.copy_(t.weight)

    # -- training helpers ----------------------------------------------------------------------------------------

    def configure_optimizer(self, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95)):
        """AdamW; weight decay on 2-D weights only (matrices, embeddings), not on norms/scales/experts."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_scale = any(name.endswith(s) for s in (".s_in", ".s_out", ".alpha", ".beta", ".g", ".h"))
            (decay if p.dim() >= 2 and not is_scale else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        """Greedy when temperature == 0, else top-k sampling. idx (B, T) -> (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.max_seq_len:]
            logits, _ = self(ctx)
            logits = logits[:, -1, :]                                         # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
