"""The one estimator: whole-model prefill and decode figures of a model shape on one config.

Every binarized linear of the shape (:func:`bitmos.compiler.shapes.llama_linears`) is compiled
timing-only and run in the simulator's timing-only mode; linears of one (K, N) share one compile and
one run (:func:`simulate_linears`: timing and action counts do not depend on where data sits). Decode
runs every linear on one token (a KV-cached step), so M decode tokens are M identical steps. Energy is
:func:`bitmos.sim.energy.energy_breakdown` with a cited table (default by memory bandwidth,
:func:`bitmos.sim.energy.default_table`).

:func:`estimate` returns the result schema documented in docs/simulator.md ("Estimates"), used by
``bitmos estimate``; :func:`evaluate` flattens it into the sweep's row (``decode_tokens_per_s``, ...).
Only the binarized linears run on the accelerator (attention, norms, the LM head are host work).
:func:`decode_at_context` adds what a decode token at a given context also moves, its KV cache, at the memory
bound (issue 18's whole-layer chip: its attention instructions are not in the contract yet).
"""

from __future__ import annotations

import time
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError

DEFAULT_SHAPE = "llama-2-7b"

#: Config fields the "auto buffers" search may grow when the compiler's error names one of them.
GROWABLE = ("xbuf_kib", "wbuf_kib", "sbuf_kib", "qbuf_kib", "obuf_kib", "meta_tokens", "imem_words",
            "ext_mem_mib")


class Infeasible(BitmosUserError):
    """The model cannot run on this config (a buffer too small, an accumulator too narrow, ...)."""


def resolve_shape(shape: str | dict[str, Any] | None) -> dict[str, Any]:
    """:func:`bitmos.compiler.shapes.load_shape` of ``shape`` (default :data:`DEFAULT_SHAPE`)."""
    from bitmos.compiler.shapes import load_shape
    return load_shape(DEFAULT_SHAPE if shape is None else shape)


# ---- sim backend -----------------------------------------------------------------------------------

def _timing_runs(sim, programs, what: str) -> list[Any]:
    """The timing-mode results of ``programs`` on ``sim``; :class:`Infeasible` naming ``what`` if one faults."""
    runs = [sim.run(p.words, None, functional=False) for p in programs]
    for r in runs:
        if r.error:
            raise Infeasible(f"{what}: the simulator stopped with {r.cause_name}: {r.error_message}")
    return runs


def simulate_linears(cfg: AcceleratorConfig, linears: list[tuple[str, int, int, int]], tokens: int,
                     bias: bool = False) -> list[list[Any]]:
    """For each (name, K, N, WBITS) of ``linears``: the timing-mode results of its programs for ``tokens`` tokens,
    with weights in format WBITS (0 = sign, 2 = ternary, 8 = int8) and, with ``bias``, FBI-LLM's per-token bias
    on the router (register BIAS).

    Each distinct (K, N, WBITS) is compiled once (``compile_spec`` of a timing-only ``synthetic_spec``) and
    simulated once; linears of the same shape share those results (q/k/v/o of LLaMA-2-7B are one shape,
    gate/up another): a linear's timing and action counts do not depend on where its data sits in
    external memory. Raises :class:`Infeasible` naming the linear when a program faults.
    """
    from bitmos.compiler import compile_spec, synthetic_spec
    from bitmos.sim import Simulator

    sim = Simulator(cfg)
    by_shape: dict[tuple[int, int, int], list[Any]] = {}
    out = []
    for name, K, N, w_bits in linears:
        if (K, N, w_bits) not in by_shape:
            spec = synthetic_spec(name, K, N, cfg, seed=len(by_shape), materialize=False, w_bits=w_bits, bias=bias)
            by_shape[(K, N, w_bits)] = _timing_runs(sim, compile_spec(spec, cfg, tokens).programs,
                                                    f"{name} ({K}x{N})")
        out.append(by_shape[(K, N, w_bits)])
    return out


def simulate_vector_ops(cfg: AcceleratorConfig, ops: list[tuple[str, str, int]], tokens: int,
                        head_dim: int = 0) -> list[list[Any]]:
    """For each (name, operation, K) of ``ops`` (:func:`bitmos.compiler.shapes.vector_ops`): the timing-mode results
    of its vector-unit programs (:func:`bitmos.compiler.vector.compile_vector`; a rotary embedding's heads of
    ``head_dim``) for ``tokens`` tokens; each distinct (operation, K) compiled and simulated once, as
    :func:`simulate_linears` does for the linears."""
    from bitmos.compiler.vector import compile_vector
    from bitmos.sim import Simulator

    sim = Simulator(cfg)
    by_shape: dict[tuple[str, int], list[Any]] = {}
    out = []
    for name, op, K in ops:
        if (op, K) not in by_shape:
            cv = compile_vector(op, cfg, tokens, K, head_dim=head_dim, timing_only=True)
            by_shape[(op, K)] = _timing_runs(sim, cv.programs, f"{name} ({op}, K = {K})")
        out.append(by_shape[(op, K)])
    return out


def simulate_attention(cfg: AcceleratorConfig, shape: dict[str, Any], tokens: int, pos0: int,
                       positions: int) -> tuple[list[Any], Any]:
    """The timing-mode results of one layer's attention programs (:func:`bitmos.compiler.attention.compile_attention`)
    for ``tokens`` tokens at positions ``pos0``.. against a KV cache that holds ``positions`` positions, and the
    compiled programs (``kv_bytes``: the cache's bytes they read and write; ``plans``: whole or tiled); every layer's are the same (timing never depends on data or on where the
    cache sits). Raises UnsupportedError (its field naming the buffer) when the buffers cannot hold a tiled pass."""
    from bitmos.compiler.attention import compile_attention, kv_positions
    from bitmos.compiler.shapes import attention_dims
    from bitmos.sim import Simulator

    _, nh, kvh, hd = attention_dims(shape)
    ca = compile_attention(cfg, tokens, pos0, n_heads=nh, n_kv_heads=kvh, head_dim=hd,
                           kv_max=kv_positions(cfg, positions), xfrac=cfg.x_frac_bits)
    return _timing_runs(Simulator(cfg), ca.programs, f"attention of {tokens} token(s) at position {pos0}"), ca


def attention_on_chip(cfg: AcceleratorConfig, shape: dict[str, Any], scheme: str | None) -> bool:
    """Does the estimate run attention on ``cfg``'s vector unit: the unit is there, its head dimension pairs in the
    lanes (``rope_fits``), and the layer feeds o_proj int16 (not BitNet's int32 into a LayerNorm)."""
    from bitmos.compiler.shapes import head_dim
    return bool(cfg.vector_unit) and rope_fits(cfg, head_dim(shape)) and scheme != "bitnet"


def rope_fits(cfg: AcceleratorConfig, head_dim: int) -> bool:
    """Can the vector unit's rope take heads of ``head_dim`` (register HDIM's legality, ``semantics.rope_unaligned``)."""
    from bitmos.semantics import rope_unaligned
    return not rope_unaligned(cfg, head_dim)


def _grow_buffers(cfg: AcceleratorConfig, fn, max_steps: int = 24):
    """Call fn(cfg); on a 'buffer too small' UnsupportedError double the named buffer and retry."""
    from bitmos.errors import UnsupportedError

    grown: dict[str, int] = {}
    for _ in range(max_steps):
        try:
            return cfg, fn(cfg), grown
        except UnsupportedError as exc:
            msg, field = str(exc), exc.field
            if field not in GROWABLE:
                raise Infeasible(msg) from None
            data = cfg.to_dict()
            data[field] = data[field] * 2
            try:
                cfg = AcceleratorConfig.from_dict(data)
            except ConfigError as cexc:
                raise Infeasible(f"{msg}; growing {field} failed: {cexc}") from None
            grown[field] = data[field]
    raise Infeasible(f"buffers still too small after {max_steps} doublings")


# ---- the estimate ------------------------------------------------------------------------------

def _phases(cfg: AcceleratorConfig, walk: list[tuple[str, int, int, int]], prefill: int, decode: int,
            table, bias: bool = False, vector_walk: list[tuple[str, str, int]] | None = None,
            head_dim: int = 0, attention_shape: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each phase's summary; with ``vector_walk`` (a config with the vector unit) the residual adds, RMSNorms and
    SwiGLU run too, and ``components`` splits cycles and energy into ``linears`` and ``vector_unit``; with
    ``attention_shape`` every layer's attention too (component ``attention``): the prefill's over its tokens, the
    decode step's at the middle of the decode (position prefill + decode // 2), against a KV cache that holds
    prefill + decode positions."""
    from bitmos.compiler.shapes import n_layers
    from bitmos.sim.report import summarize

    out: dict[str, Any] = {}
    for phase, tokens in (("prefill", prefill), ("decode", 1 if decode else 0)):
        if not tokens:
            continue
        parts: dict[str, tuple[list, list]] = {"linears": ([], [])}
        for (name, *_), layer_runs in zip(walk, simulate_linears(cfg, walk, tokens, bias)):
            parts["linears"][0].extend(layer_runs)
            parts["linears"][1].extend([name] * len(layer_runs))
        if vector_walk:
            parts["vector_unit"] = ([], [])
            for (name, op, _), op_runs in zip(vector_walk, simulate_vector_ops(cfg, vector_walk, tokens, head_dim)):
                parts["vector_unit"][0].extend(op_runs)
                parts["vector_unit"][1].extend([f"{name} {op}"] * len(op_runs))
        if attention_shape is not None:
            pos0 = 0 if phase == "prefill" else prefill + decode // 2
            layer_runs, _ = simulate_attention(cfg, attention_shape, tokens, pos0, prefill + decode)
            parts["attention"] = ([], [])
            for i in range(n_layers(attention_shape)):
                parts["attention"][0].extend(layer_runs)
                parts["attention"][1].extend([f"layers.{i}.attn attn"] * len(layer_runs))
        runs = [r for rs, _ in parts.values() for r in rs]
        names = [n for _, ns in parts.values() for n in ns]
        steps = decode if phase == "decode" else 1   # identical one-token steps: summed, not replayed
        s = summarize(runs, table, tokens=tokens * steps, repeat=steps)
        s.pop("per_run", None)
        s["per_layer"] = [{"name": n, "cycles": r.cycles, "stall_cycles": r.stall_cycles}
                          for n, r in zip(names, runs)]
        if attention_shape is not None:
            s["attention_position"] = pos0
        if vector_walk:
            s["components"] = {}
            for part, (rs, _) in parts.items():
                ps = summarize(rs, table, tokens=tokens * steps, repeat=steps)
                s["components"][part] = {"cycles": ps["cycles"], "energy_j": ps["energy_j"],
                                         "ext_bytes": ps["ext_bytes_read"] + ps["ext_bytes_written"]}
        out[phase] = s
    return out


#: Most decode steps an estimate scales its one simulated step to (beyond it the figures mean nothing).
MAX_DECODE_TOKENS = 10 ** 12
#: Default budget of :func:`prefill_work` for ``bitmos estimate`` (about 20 s of compile and simulation here;
#: LLaMA-2-7B on asic32 then takes a prompt of up to about 10,000 tokens).
DEFAULT_MAX_WORK = 1 << 24


def prefill_work(walk: list[tuple[str, int, int, int]], cfg: AcceleratorConfig, tokens: int) -> int:
    """Array tile steps the prefill of ``tokens`` tokens compiles and simulates: per distinct (K, N, WBITS) of
    the walk (each is compiled and simulated once), weight planes x token tiles x column tiles x lane chunks.
    The estimate's time
    grows with it (3.3 M tile steps, LLaMA-2-7B at 2048 tokens on asic32, take about 4 s)."""
    rows = cfg.rows
    from bitmos.semantics import weight_planes

    return sum(weight_planes(cfg, w_bits) * -(-tokens // rows) * -(-N // cfg.cols) * -(-K // cfg.lanes)
               for K, N, w_bits in {(K, N, w_bits) for _, K, N, w_bits in walk})


#: Config fields of the on-chip buffers: a layer that fits none of them is refused with the presets that hold it.
BUFFER_FIELDS = ("xbuf_kib", "wbuf_kib", "sbuf_kib", "qbuf_kib", "obuf_kib")


def presets_holding(walk: list[tuple[str, int, int, int]]) -> list[str]:
    """The presets on whose buffers every (K, N, WBITS) of ``walk`` has a tiling (one token, plane mode, which
    needs the least; larger prompts stream through the same buffers)."""
    from bitmos.compiler import make_tiling, synthetic_spec
    from bitmos.config import presets_where

    shapes = sorted({(K, N, w_bits) for _, K, N, w_bits in walk})

    def holds(p: AcceleratorConfig) -> None:
        for K, N, w_bits in shapes:
            make_tiling(synthetic_spec(f"K{K}_N{N}", K, N, p, seed=0, materialize=False, w_bits=w_bits), p, 1,
                        "plane")
    return presets_where(holds)


def estimate(shape: str | dict[str, Any] | None, cfg: AcceleratorConfig, *, prefill: int, decode: int,
             energy_table: str | None = None, auto_buffers: bool = False,
             max_work: int | None = None, w_bits: int = 0, bias: bool = False, scheme: str | None = None,
             pb_fraction: float = 0.1) -> dict[str, Any]:
    """Prefill (``prefill`` tokens, one pass) and decode (``decode`` one-token steps) of ``shape`` on ``cfg``,
    its weights in format ``w_bits`` (0 = sign, 1 bit each; 2 = ternary, two planes); ``bias``: FBI-LLM layers
    (beta . x on the router, register BIAS), refused by the compiler on a config without a router. ``scheme``
    (instead of the two): the scheme's chip layers (:func:`bitmos.compiler.shapes.scheme_linears`: its weight
    format and bias; PB-LLM's two parts per linear at ``pb_fraction``).

    Keys: ``model`` (name, layers, binary_weights), ``config`` (grown when ``auto_buffers``), ``grown``,
    ``energy_table``, ``prefill`` / ``decode`` (:func:`bitmos.sim.report.summarize` of the phase plus
    ``per_layer``), ``decode_bound_tokens_per_s`` (bandwidth / weight bits per token), ``wall_seconds``.
    """
    from bitmos.compiler.shapes import head_dim, llama_linears, vector_ops
    from bitmos.sim.energy import EnergyTable, default_table

    if prefill < 0 or decode < 0 or prefill + decode == 0:
        raise ConfigError(f"--prefill ({prefill}) and --decode ({decode}) must be >= 0 and not both 0")
    if decode > MAX_DECODE_TOKENS:
        raise ConfigError(f"--decode {decode} is beyond the limit of {MAX_DECODE_TOKENS:,} decode steps the "
                          "estimate scales its simulated step to", field="decode")
    shape = resolve_shape(shape)
    if scheme is not None:
        from bitmos.compiler.lower import BIAS_SCHEMES
        from bitmos.compiler.shapes import scheme_linears
        walk = scheme_linears(shape, scheme, pb_fraction)
        bias = scheme in BIAS_SCHEMES
    else:
        walk = [(name, K, N, w_bits) for name, K, N in llama_linears(shape)]
    if bias:   # the compiler's refusal, before any estimate runs
        from bitmos.compiler.lower import check_bias
        check_bias(walk[0][0], cfg)
    if max_work is not None and prefill and prefill_work(walk, cfg, prefill) > max_work:
        from bitmos.compiler import synthetic_spec
        from bitmos.compiler.api import check_fits_memory
        if not auto_buffers:   # a prompt that cannot fit at all says so, rather than that it would be slow
            for i, (name, K, N, bits) in enumerate(walk):
                check_fits_memory(synthetic_spec(name, K, N, cfg, seed=i, materialize=False, w_bits=bits),
                                  cfg, prefill)
        raise ConfigError(f"--prefill {prefill} on {shape.get('name', 'this model')} and config {cfg.name} is "
                          f"{prefill_work(walk, cfg, prefill):,} array tile steps to compile and simulate, beyond "
                          f"the limit of {max_work:,} (--max-work, about 20 s here); lower --prefill or raise "
                          "--max-work", field="prefill")
    t0 = time.perf_counter()
    hd = head_dim(shape)

    def run(c: AcceleratorConfig) -> dict[str, Any]:
        table = EnergyTable.load(energy_table or default_table(c))
        vector_walk = (vector_ops(shape, layernorms=scheme == "bitnet", rope=rope_fits(c, hd)) if c.vector_unit
                       else None)
        att = shape if attention_on_chip(c, shape, scheme) else None
        return dict(_phases(c, walk, prefill, decode, table, bias, vector_walk, hd, att), energy_table=table.name)

    if auto_buffers:
        cfg, phases, grown = _grow_buffers(cfg, run)
    else:
        from bitmos.errors import UnsupportedError
        try:
            phases, grown = run(cfg), {}
        except UnsupportedError as exc:
            if exc.field not in BUFFER_FIELDS:
                raise
            holding = presets_holding(walk)
            hint = (f"; the presets whose buffers hold every layer of this model: {', '.join(holding)}" if holding
                    else "; no preset's buffers hold every layer of this model (grow the named field)")
            raise UnsupportedError(f"{exc}{hint}", field=exc.field) from None
    from bitmos.semantics import weight_planes

    weights = sum(K * N for _, K, N, _ in walk)
    bits = sum(K * N * weight_planes(cfg, b) for _, K, N, b in walk)   # weight bits a token reads: one per plane
    out: dict[str, Any] = {"model": {"name": shape.get("name", "custom"), "layers": len(walk),
                                     "binary_weights": weights, "weight_bits": bits,
                                     "w_bits": max(b for *_, b in walk), "scheme": scheme},
                           "config": cfg.to_dict(), "grown": grown}
    out.update(phases)
    # the decoder layer's work the chip does not do here (the estimate counts none of it)
    out["host_ops"] = (([] if attention_on_chip(cfg, shape, scheme) else ["attention"])
                       + ([] if rope_fits(cfg, hd) else ["rotary"]) + (["SwiGLU"] if scheme == "bitnet" else [])
                       if cfg.vector_unit else ["norms", "rotary", "softmax", "SiLU", "residual adds"])
    out["decode_bound_tokens_per_s"] = cfg.clock_mhz * 1e6 * cfg.ext_bw_bits / bits
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def evaluate(cfg: AcceleratorConfig, shape: str | dict[str, Any] | None = None, *, prefill_tokens: int = 128,
             energy_table: str | None = None, backend: str | None = None,
             auto_buffers: bool = False, w_bits: int = 0, scheme: str | None = None,
             pb_fraction: float = 0.1) -> dict[str, Any]:
    """The sweep's flat row of :func:`estimate` (one decode token, ``prefill_tokens`` of prefill), the weights in
    format ``w_bits`` (0 = sign; 2 = ternary, ``bitmos.compiler.lower.SCHEME_WEIGHT_BITS``) or a ``scheme``'s chip
    layers (:func:`estimate`):
    ``decode_tokens_per_s``, ``decode_uj_per_token``, ``prefill_tokens_per_s``, ``prefill_uj_per_token``,
    cycles, stall fraction, achieved DRAM bandwidth fraction, array use, the energy breakdown of a
    decode token, and ``config`` (grown when ``auto_buffers``)."""
    pick_backend(backend)
    from bitmos.errors import UnsupportedError

    try:
        est = estimate(shape, cfg, prefill=prefill_tokens, decode=1, energy_table=energy_table,
                       auto_buffers=auto_buffers, w_bits=w_bits, scheme=scheme, pb_fraction=pb_fraction)
    except UnsupportedError as exc:
        raise Infeasible(str(exc)) from None
    return flat_row(est, prefill_tokens)


def flat_row(est: dict[str, Any], prefill_tokens: int) -> dict[str, Any]:
    """:func:`evaluate`'s flat row of an estimate-shaped dict (``config``, ``grown``, ``energy_table``,
    ``model.name``, ``decode`` of one token, ``prefill`` of ``prefill_tokens``, ``decode_bound_tokens_per_s``);
    shared with the co-design sweep, whose student programs are compiled from a checkpoint, not a shape."""
    cfg = AcceleratorConfig.from_dict(est["config"])
    hz = cfg.clock_mhz * 1e6
    out: dict[str, Any] = {"backend": "sim", "energy_table": est["energy_table"], "model": est["model"]["name"],
                           "prefill_tokens": prefill_tokens, "grown": est["grown"]}
    for name, ntok in (("decode", 1), ("prefill", prefill_tokens)):
        s = est[name]
        cycles, counts, br = s["cycles"], s["counts"], s["energy_breakdown_pj"]
        pj = sum(br.values())
        out[f"{name}_cycles"] = cycles
        out[f"{name}_tokens_per_s"] = ntok * hz / cycles
        out[f"{name}_uj_per_token"] = pj / ntok * 1e-6
        out[f"{name}_stall_frac"] = s["stall_cycles"] / cycles if cycles else 0.0
        ext_bits = counts.get("ext_read_bits", 0) + counts.get("ext_write_bits", 0)
        out[f"{name}_bw_frac"] = ext_bits / (cycles * cfg.ext_bw_bits) if cycles else 0.0
        if "lane_ops" in counts and cycles:
            out[f"{name}_array_util"] = counts["lane_ops"] / (cycles * cfg.rows * cfg.cols * cfg.lanes)
        if name == "decode":
            out["decode_energy_breakdown_uj"] = {k: v * 1e-6 for k, v in br.items()}
    out["decode_bound_tokens_per_s"] = est["decode_bound_tokens_per_s"]
    out["config"] = cfg.to_dict()
    return out


def pick_backend(backend: str | None) -> str:
    """The timing backend: the compiled programs in the simulator's timing-only mode (the only one)."""
    if backend not in (None, "auto", "sim"):
        raise ConfigError(f"unknown backend {backend!r}; the estimate always times the compiled programs "
                          "in the simulator (backend 'sim' or 'auto')", field="backend")
    return "sim"


#: Context lengths of ``bitmos estimate --context``'s sweep and plot (issue 18: 128 .. 32k).
CONTEXT_SWEEP = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def decode_at_context(est: dict[str, Any], shape: str | dict[str, Any] | None, context: int) -> dict[str, Any]:
    """One decode token of :func:`estimate`'s ``est`` at a context of ``context`` tokens, by component.

    * ``linears``: the estimate's simulated decode step (every binarized linear, its weights, scales and
      activations), per token.
    * ``vector_unit`` (a config with ``vector_unit = 1``): the step's simulated residual adds, RMSNorms, rotary
      embeddings and SwiGLU gate products.
    * ``attention`` (where the estimate runs attention on the chip, :func:`attention_on_chip`): every layer's
      attention of one token at position ``context`` - 1, simulated (``bitmos.compiler.attention``: the KV cache's
      pages loaded kv head by kv head, the new rows packed and stored, the attention unit's passes), against a
      cache of ``context`` positions: staged whole in WBUF where it fits, else read tile by tile (the scores in
      OBUF between the key and the value pass). Where even that does not fit (a block's own pages and a tile in
      WBUF, one query head's scores in OBUF), the refusal is kept in ``attention_refused`` and the next item stands
      in.
    * ``kv_cache`` (attention on the host, or refused above): the token reads the K and V of its whole context and
      writes its own, ``compiler.shapes.kv_cache_bytes`` per position (int8 mantissas plus one exponent per kv
      head), counted at the memory bound: its bytes at the full external bandwidth (cycles) and at the table's
      DRAM energy per bit plus the leakage of those cycles; the attention arithmetic is not counted.

    Not counted: the embedding lookup and the LM head (the host's; ``host``, where the shape names its vocabulary:
    the LM head's float16 weight bytes and multiply-adds per token, beside the chip's figures), and without the
    vector unit the norms, rotary embedding, SiLU and residual adds. Keys: ``context``, ``kv_bytes_per_position``, ``kv_read_bytes``,
    ``kv_write_bytes`` (the cache's, as the programs move it or at the bound), ``components`` ({name: {cycles,
    energy_j, ext_bytes}}), ``cycles``, ``tokens_per_s``, ``energy_per_token_j``, ``ext_bytes_per_token``,
    ``bound_tokens_per_s`` (bandwidth / (weight bytes + KV bytes per token)), ``attention_simulated``,
    ``attention_tiled`` (its cache read tile by tile),
    ``attention_refused``, ``ext_bytes`` (the external memory the weights and the KV cache occupy). Raises
    ConfigError if ``context`` < 1, the estimate has no decode, or weights and KV cache do not fit the external
    memory.
    """
    from bitmos.compiler.shapes import kv_cache_bytes, lm_head_shape, n_layers
    from bitmos.sim.energy import EnergyTable, dram_pj, leakage_pj

    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"--context must be a whole number of tokens >= 1, not {context!r}", field="context")
    if "decode" not in est:
        raise ConfigError("--context needs a decode phase (--decode >= 1)", field="context")
    cfg = AcceleratorConfig.from_dict(est["config"])
    table = EnergyTable.load(est["energy_table"])
    shape = resolve_shape(shape)
    per_position = kv_cache_bytes(shape)
    weight_bytes = est["model"]["weight_bits"] / 8
    held = weight_bytes + per_position * context
    if held > cfg.ext_mem_bytes:
        raise ConfigError(f"--context {context:,}: the weights ({weight_bytes / 2**30:.3g} GiB) and the KV cache "
                          f"({per_position * context / 2**30:.3g} GiB, {per_position:,} bytes per position) exceed "
                          f"the external memory of {cfg.ext_mem_mib} MiB (ext_mem_mib)", field="ext_mem_mib")
    dec = est["decode"]
    host_ops = est.get("host_ops", [])
    read, write = per_position * context, per_position
    parts = dec.get("components") or {"linears": {"cycles": dec["cycles"], "energy_j": dec["energy_j"],
                                                  "ext_bytes": dec["ext_bytes_read"] + dec["ext_bytes_written"]}}
    components = {name: {k: p[k] / dec["tokens"] for k in ("cycles", "energy_j", "ext_bytes")}
                  for name, p in parts.items() if name != "attention"}
    simulated, why, tiled = "attention" in parts, None, False
    if simulated:   # the attention of one decode token at this context, simulated on every layer
        from bitmos.errors import UnsupportedError
        from bitmos.sim.report import summarize
        try:
            runs, ca = simulate_attention(cfg, shape, 1, context - 1, context)
            kv, tiled = ca.kv_bytes, ca.plans[0].tiled
        except UnsupportedError as exc:
            simulated, why = False, str(exc)
        else:
            att = summarize(runs * n_layers(shape), table, tokens=1)
            components["attention"] = {"cycles": att["cycles"], "energy_j": att["energy_j"],
                                       "ext_bytes": att["ext_bytes_read"] + att["ext_bytes_written"]}
            read, write = kv["read"] * n_layers(shape), kv["written"] * n_layers(shape)
    if not simulated:   # the KV cache's bytes at the memory bound (attention's arithmetic on the host)
        kv_cycles = -(-(read + write) * 8 // cfg.ext_bw_bits)
        kv_pj = dram_pj(read * 8, write * 8, table) + leakage_pj(kv_cycles, cfg, table)
        components["kv_cache"] = {"cycles": kv_cycles, "energy_j": kv_pj * 1e-12, "ext_bytes": read + write}
    cycles = sum(c["cycles"] for c in components.values())
    hz = cfg.clock_mhz * 1e6
    head = lm_head_shape(shape)
    host_work = None if head is None else {"vocab_size": head[0], "lm_head_bytes": 2 * head[0] * head[1],
                                           "lm_head_macs": head[0] * head[1]}
    return {"context": context, "kv_bytes_per_position": per_position, "kv_read_bytes": read, "host": host_work,
            "kv_write_bytes": write, "components": components, "cycles": cycles, "tokens_per_s": hz / cycles,
            "energy_per_token_j": sum(c["energy_j"] for c in components.values()),
            "ext_bytes_per_token": sum(c["ext_bytes"] for c in components.values()),
            "bound_tokens_per_s": hz * cfg.ext_bw_bits / 8 / (weight_bytes + per_position * context),
            "ext_bytes": held, "attention_simulated": simulated, "attention_refused": why, "attention_tiled": tiled,
            "not_counted": [op for op in host_ops if op != "attention"]}


def context_sweep(est: dict[str, Any], shape: str | dict[str, Any] | None, contexts=CONTEXT_SWEEP) -> list[dict[str, Any]]:
    """:func:`decode_at_context` at each of ``contexts`` whose KV cache fits the external memory."""
    out = []
    for c in contexts:
        try:
            out.append(decode_at_context(est, shape, c))
        except ConfigError as exc:
            if exc.field != "ext_mem_mib":
                raise
    return out
