"""Throughput and energy of a model shape on one accelerator config.

Backend ``sim`` (used whenever ``bitmos.compiler`` and ``bitmos.sim`` import): compile ONE decoder
layer of the shape (``compile_model(shape with n_layers = 1, cfg, tokens, timing_only=True)``), run each
of its programs in the simulator's timing mode (``Simulator(cfg).run(words, functional=False)``), and
multiply cycles and action counts by ``n_layers``: the layers of a LLaMA-shaped model are identical, and
each layer's programs start from an idle machine, so the whole model's count is exactly n_layers times
one layer's. Energy is ``bitmos.sim.energy_breakdown`` with a named energy table.

Backend ``contract`` (fallback, no compiler/simulator needed): an analytic schedule documented in
docs/dse.md — each linear is ceil(N/C) output tiles whose weights stream through the DMA engine while
the array computes, so cycles = max(compute, transfer) + one transfer latency per layer.

Only the binarized linears run on the accelerator (attention softmax, norms, the LM head are host
work); the figures are the accelerator's.
"""

from __future__ import annotations

import math
from typing import Any

from bitmos.config import AcceleratorConfig
from bitmos.errors import BitmosUserError, ConfigError
from bitmos.semantics import matmul_tile_cycles, quant_token_cycles

DEFAULT_SHAPE = "llama-2-7b"

#: Config fields the "auto buffers" search may grow, keyed by the words the compiler's errors use.
_GROW = (("XBUF", "xbuf_kib"), ("WBUF", "wbuf_kib"), ("SBUF", "sbuf_kib"), ("QBUF", "qbuf_kib"),
         ("OBUF", "obuf_kib"), ("META", "meta_tokens"), ("instruction memory", "imem_words"),
         ("IMEM", "imem_words"), ("beyond the", "ext_mem_mib"))


class Infeasible(BitmosUserError):
    """The model cannot run on this config (a buffer too small, an accumulator too narrow, ...)."""


def resolve_shape(shape: str | dict[str, Any] | None) -> dict[str, Any]:
    """A name from :data:`bitmos.compiler.MODEL_SHAPES`, or a dict of model-config keys (optionally
    ``preset = <name>`` plus overrides), as a dict with ``name``."""
    from bitmos.compiler import MODEL_SHAPES

    if shape is None:
        shape = DEFAULT_SHAPE
    if isinstance(shape, str):
        if shape not in MODEL_SHAPES:
            raise ConfigError(f"unknown model shape {shape!r}; known: {', '.join(MODEL_SHAPES)}")
        return dict(MODEL_SHAPES[shape], name=shape)
    shape = dict(shape)
    if "preset" in shape:
        base = resolve_shape(shape.pop("preset"))
        base.update(shape)
        return base
    for k in ("dim", "hidden_dim", "n_layers", "n_heads"):
        if k not in shape:
            raise ConfigError(f"model shape is missing {k!r} (or give preset = one of {', '.join(MODEL_SHAPES)})")
    return shape


def linears(shape: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(name, K, N) of the binarized linears of ONE decoder layer (the compiler's module walk)."""
    from bitmos.compiler import llama_linears
    return [(path.rsplit(".", 1)[1], k, n) for path, k, n in llama_linears(dict(shape, n_layers=1))]


def weight_bits_per_token(shape: dict[str, Any]) -> int:
    return shape["n_layers"] * sum(k * n for _, k, n in linears(shape))


def available_backends() -> list[str]:
    out = []
    try:
        import bitmos.compiler  # noqa: F401
        import bitmos.sim  # noqa: F401
        out.append("sim")
    except ImportError:
        pass
    out.append("contract")
    return out


def pick_backend(backend: str | None) -> str:
    if backend in (None, "auto"):
        return available_backends()[0]
    if backend not in ("sim", "contract"):
        raise ConfigError(f"unknown backend {backend!r}; choose auto, sim or contract")
    if backend == "sim" and "sim" not in available_backends():
        raise ConfigError("backend 'sim' needs bitmos.compiler and bitmos.sim, which are not importable")
    return backend


# ---- sim backend -----------------------------------------------------------------------------------

def simulate_linears(cfg: AcceleratorConfig, linears: list[tuple[str, int, int]], tokens: int) -> list[list[Any]]:
    """For each (name, K, N) of ``linears``: the timing-mode results of its programs for ``tokens`` tokens.

    Each distinct (K, N) is compiled once (``compile_spec`` of a timing-only ``synthetic_spec``) and
    simulated once; linears of the same shape share those results (q/k/v/o of LLaMA-2-7B are one shape,
    gate/up another): a linear's timing and action counts do not depend on where its data sits in
    external memory. Raises :class:`Infeasible` naming the linear when a program faults.
    """
    from bitmos.compiler import compile_spec, synthetic_spec
    from bitmos.sim import Simulator

    sim = Simulator(cfg)
    by_shape: dict[tuple[int, int], list[Any]] = {}
    out = []
    for name, K, N in linears:
        if (K, N) not in by_shape:
            spec = synthetic_spec(name, K, N, cfg, seed=len(by_shape), materialize=False)
            runs = [sim.run(p.words, None, functional=False) for p in compile_spec(spec, cfg, tokens).programs]
            for r in runs:
                if r.error:
                    raise Infeasible(f"{name} ({K}x{N}): the simulator stopped with {r.cause_name}: "
                                     f"{r.error_message}")
            by_shape[(K, N)] = runs
        out.append(by_shape[(K, N)])
    return out


def _sim_phase(cfg: AcceleratorConfig, shape: dict[str, Any], tokens: int) -> tuple[int, dict[str, int], int]:
    """(cycles, action counts, stall cycles) of ONE decoder layer for ``tokens`` tokens."""
    cycles = stalls = 0
    counts: dict[str, int] = {}
    for runs in simulate_linears(cfg, linears(shape), tokens):
        for r in runs:
            cycles += r.cycles
            stalls += r.stall_cycles
            for k, v in r.counts.items():
                counts[k] = counts.get(k, 0) + int(v)
    return cycles, counts, stalls


def _grow_buffers(cfg: AcceleratorConfig, fn, max_steps: int = 24):
    """Call fn(cfg); on a 'buffer too small' UnsupportedError double the named buffer and retry."""
    from bitmos.errors import UnsupportedError

    grown: dict[str, int] = {}
    for _ in range(max_steps):
        try:
            return cfg, fn(cfg), grown
        except UnsupportedError as exc:
            msg = str(exc)
            field = next((f for word, f in _GROW if word in msg), None)
            if field is None:
                raise Infeasible(msg) from None
            data = cfg.to_dict()
            data[field] = data[field] * 2
            try:
                cfg = AcceleratorConfig.from_dict(data)
            except ConfigError as cexc:
                raise Infeasible(f"{msg}; growing {field} failed: {cexc}") from None
            grown[field] = data[field]
    raise Infeasible(f"buffers still too small after {max_steps} doublings")


# ---- contract backend (analytic) ------------------------------------------------------------------

def _contract_phase(cfg: AcceleratorConfig, shape: dict[str, Any], tokens: int) -> tuple[int, dict[str, int], int]:
    plane = tokens == 1
    mode = 1 if plane else 0
    total = 0
    stalls = 0
    counts = {"lane_ops": 0, "ext_read_bits": 0, "ext_write_bits": 0, "w_read_bits": 0, "w_write_bits": 0}
    for _, K, N in linears(shape):
        nch = cfg.nchunks(K)
        tiles = math.ceil(N / cfg.cols)
        groups = 1 if plane else math.ceil(tokens / cfg.rows)
        ntok = 1 if plane else min(tokens, cfg.rows)
        compute = groups * (1 + ntok * quant_token_cycles(cfg, K, mode)) \
            + groups * tiles * matmul_tile_cycles(cfg, K, mode) \
            + groups * tiles * ntok + 2 * groups
        wbits = tiles * nch * cfg.cols * cfg.lanes
        xbits = tokens * cfg.xlines(K) * cfg.xbuf_line_bits
        sbits = (2 * cfg.xlines(K) // max(1, cfg.cols // cfg.cols) + tiles) * cfg.sbuf_line_bits \
            if cfg.experts else 0
        obits = tokens * tiles * cfg.obuf_line_bits
        half = max(1, cfg.depth("W") // 2 // nch)       # tiles per WBUF half
        blocks = math.ceil(tiles / half)
        # weights are streamed once per group when the layer's weights do not fit WBUF at once
        reloads = 1 if blocks == 1 else groups
        transfer = (reloads * wbits + xbits + sbits + obits) / cfg.ext_bw_bits + (reloads * blocks + 3) * cfg.ext_latency
        cyc = int(max(compute, transfer)) + cfg.ext_latency
        stalls += max(0, int(transfer - compute))
        total += cyc
        steps = nch * (cfg.act_bits if not plane else cfg.planes_per_row)
        counts["lane_ops"] += groups * tiles * steps * cfg.lanes * cfg.cols * (cfg.rows if not plane else cfg.plane_rows)
        counts["ext_read_bits"] += reloads * wbits + xbits + sbits
        counts["ext_write_bits"] += obits
        counts["w_write_bits"] += reloads * wbits
        counts["w_read_bits"] += groups * wbits
    return total, counts, stalls


def _contract_energy(counts: dict[str, int], cycles: int, cfg: AcceleratorConfig, table) -> dict[str, float]:
    t = table.values
    return {"array": counts["lane_ops"] * t["compute"]["lane_op_pj"],
            "wbuf": (counts["w_read_bits"] + counts["w_write_bits"]) * table.sram_pj_per_bit(cfg.wbuf_kib),
            "dram": counts["ext_read_bits"] * t["dram"]["read_pj_per_bit"]
            + counts["ext_write_bits"] * t["dram"]["write_pj_per_bit"]}


# ---- the evaluation ------------------------------------------------------------------------------

def evaluate(cfg: AcceleratorConfig, shape: str | dict[str, Any] | None = None, *, prefill_tokens: int = 128,
             energy_table: str | None = None, backend: str | None = None,
             auto_buffers: bool = False) -> dict[str, Any]:
    """Decode and prefill throughput and energy of the model ``shape`` on ``cfg``.

    Returns a flat dict: ``decode_tokens_per_s``, ``decode_uj_per_token``, ``prefill_tokens_per_s``,
    ``prefill_uj_per_token``, cycles, stall fraction, achieved DRAM bandwidth fraction, the energy
    breakdown of a decode token, and ``config`` (grown when ``auto_buffers``).
    """
    shape = resolve_shape(shape)
    backend = pick_backend(backend)
    from bitmos.sim import EnergyTable  # the tables are data; the contract backend reads them too
    from bitmos.sim.energy import DEFAULT_TABLE, energy_breakdown

    table = EnergyTable.load(energy_table or DEFAULT_TABLE)
    phase = _sim_phase if backend == "sim" else _contract_phase
    nl = shape["n_layers"]

    def both(c: AcceleratorConfig):
        return phase(c, shape, 1), phase(c, shape, prefill_tokens)

    if auto_buffers:
        cfg, (dec, pre), grown = _grow_buffers(cfg, both)
    else:
        from bitmos.errors import UnsupportedError

        try:
            dec, pre = both(cfg)
        except UnsupportedError as exc:
            raise Infeasible(str(exc)) from None
        grown = {}
    hz = cfg.clock_mhz * 1e6
    out: dict[str, Any] = {"backend": backend, "energy_table": table.name, "model": shape.get("name", "custom"),
                           "prefill_tokens": prefill_tokens, "grown": grown}
    for name, (cyc1, counts1, stall1), ntok in (("decode", dec, 1), ("prefill", pre, prefill_tokens)):
        cycles = cyc1 * nl
        counts = {k: v * nl for k, v in counts1.items()}
        if backend == "sim":
            br = energy_breakdown(counts, cycles, cfg, table)
        else:
            br = _contract_energy(counts, cycles, cfg, table)
        pj = sum(br.values())
        out[f"{name}_cycles"] = cycles
        out[f"{name}_tokens_per_s"] = ntok * hz / cycles
        out[f"{name}_uj_per_token"] = pj / ntok * 1e-6
        out[f"{name}_stall_frac"] = stall1 / cyc1 if cyc1 else 0.0
        ext_bits = counts.get("ext_read_bits", 0) + counts.get("ext_write_bits", 0)
        out[f"{name}_bw_frac"] = ext_bits / (cycles * cfg.ext_bw_bits) if cycles else 0.0
        if "lane_ops" in counts and cycles:
            out[f"{name}_array_util"] = counts["lane_ops"] / (cycles * cfg.rows * cfg.cols * cfg.lanes)
        if name == "decode":
            out["decode_energy_breakdown_uj"] = {k: v * 1e-6 for k, v in br.items()}
    out["decode_bound_tokens_per_s"] = hz * cfg.ext_bw_bits / weight_bits_per_token(shape)
    out["config"] = cfg.to_dict()
    return out
