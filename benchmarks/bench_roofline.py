"""Decode and prefill against their physical bounds (issue #21), each figure beside its bound, in one run.

For each case, the estimator's timing-only run of the compiled programs (``bitmos.explore.perf.estimate``, the
same as ``bitmos estimate``): LLaMA-2-7B shapes on ``asic32``, BitNet b1.58 2B4T's shapes with ternary weights on
``asic32`` and the shipped student's shape on ``small``. A second table sets decode at contexts of 128 to 32k
(``decode_at_context``: the simulated linears plus the KV cache the whole-layer chip of issue 18 reads and writes per
token, at the memory bound: these configs have no vector unit, so their attention is the host's;
``benchmarks/bench_context.py`` simulates it on the chip) beside bandwidth / (weight bytes + KV bytes).

* decode tokens/s against the memory bound: the external bandwidth over the weight bytes one decode token reads
  (every weight once per token; the estimator's ``decode_bound_tokens_per_s``). Goal >= 0.97.
* decode energy per token against the DRAM floor: the weight bits a token reads, read once at the energy table's
  DRAM read energy (``dram.read_pj_per_bit``), nothing else. Goal <= 1.2 x.
* prefill array utilization (useful binary ops over the array's peak in the prefill's cycles) against 1.
  Goal >= 0.90.

The asic32 cases run twice: with the preset's DMA engine (one transfer in flight, each paying the memory latency)
and with ``dma_queue`` = 8 (``--dma-queue``: up to 8 transfers in flight, their beats back to back, contract
v2.4), so the table shows what the queue is worth in one run.

The bounds count weights only: the scale, router and activation traffic a token also moves is part of the gap
this benchmark shows, not of the bound. To tell the two parts of the gap apart, the table also sets decode
beside the bandwidth over every byte a token actually reads (weights, scales, router, activations): that
ratio is the share of the decode's cycles the DMA engine is reading, the rest is the engine idle.
Exit code 0 whatever the ratios: a measurement, not a test.

    python benchmarks/bench_roofline.py
    python benchmarks/bench_roofline.py --prefill 2048 --decode 128 --json roofline.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GOALS = {"decode_vs_bound": 0.97, "energy_vs_floor": 1.2, "prefill_utilization": 0.90}


def shipped_student_shape() -> dict:
    """The shipped student's shape (its checkpoint header's model config), for the estimator."""
    from bitmos.model.checkpoint import load_shipped

    model, _ = load_shipped("student")
    c = model.config
    return {"name": "shipped student", "dim": c.dim, "hidden_dim": c.hidden_dim, "n_layers": c.n_layers,
            "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim}


def measure(shape, config: str, prefill: int, decode: int, scheme: str | None = None, dma_queue: int = 0) -> dict:
    """One row; ``dma_queue`` >= 2: the config's DMA engine keeps that many transfers in flight (contract v2.4)."""
    import dataclasses

    from bitmos.config import AcceleratorConfig
    from bitmos.explore.perf import context_sweep, estimate
    from bitmos.sim.energy import EnergyTable

    cfg = AcceleratorConfig.load(config)
    if dma_queue:
        cfg = dataclasses.replace(cfg, dma_queue=dma_queue, name=f"{cfg.name} + dma_queue {dma_queue}")
    est = estimate(shape, cfg, prefill=prefill, decode=decode, scheme=scheme)
    sweep = context_sweep(est, shape, KV_CONTEXTS)
    table = EnergyTable.load(est["energy_table"])
    dec, pre = est["decode"], est["prefill"]
    weight_bits = est["model"]["weight_bits"]
    floor_j = weight_bits * table["dram.read_pj_per_bit"] * 1e-12
    bw = cfg.ext_bw_bits / 8 * cfg.clock_mhz * 1e6
    return {
        "model": est["model"]["name"], "config": cfg.name, "energy_table": table.name,
        "prefill_tokens": prefill, "decode_tokens": decode,
        "weight_bytes": weight_bits / 8, "bandwidth_bytes_per_s": bw,
        "decode_tokens_per_s": dec["tokens_per_s"], "decode_bound_tokens_per_s": est["decode_bound_tokens_per_s"],
        "decode_mj_per_token": 1e3 * dec["energy_per_token_j"], "dram_floor_mj_per_token": 1e3 * floor_j,
        "dram_read_pj_per_bit": table["dram.read_pj_per_bit"],
        "decode_ext_bytes_per_token": dec["ext_bytes_read"] / max(1, decode),
        "decode_ext_bytes_written_per_token": dec["ext_bytes_written"] / max(1, decode),
        "prefill_utilization": pre["array_utilization"],
        "prefill_tokens_per_s": pre["tokens_per_s"], "scheme": scheme or "sign",
        "context": sweep, "kv_bytes_per_context_token": sweep[0]["kv_bytes_per_position"],
    }


def render(rows: list[dict]) -> str:
    lines = ["| model on config | decode tok/s | bound | ratio (goal >= 0.97) | bound of the bytes read | ratio | "
             "decode mJ/token | DRAM floor | ratio (goal <= 1.2) | prefill array utilization (goal >= 0.90) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        read_bound = r["bandwidth_bytes_per_s"] / r["decode_ext_bytes_per_token"]
        lines.append(
            f"| {r['model']} on {r['config']} | {r['decode_tokens_per_s']:,.1f} | {r['decode_bound_tokens_per_s']:,.1f} "
            f"| {r['decode_tokens_per_s'] / r['decode_bound_tokens_per_s']:.3f} | {read_bound:,.1f} | "
            f"{r['decode_tokens_per_s'] / read_bound:.3f} | {r['decode_mj_per_token']:.4g} | "
            f"{r['dram_floor_mj_per_token']:.4g} | {r['decode_mj_per_token'] / r['dram_floor_mj_per_token']:.2f} | "
            f"{r['prefill_utilization']:.3f} ({r['prefill_tokens']} tokens) |")
    lines.append("")
    for r in rows:
        lines.append(
            f"{r['model']} on {r['config']}: decode bound = bandwidth / weight bytes per token = "
            f"{r['bandwidth_bytes_per_s'] / 1e9:.4g} GB/s / {r['weight_bytes'] / 1e6:.4g} MB = "
            f"{r['decode_bound_tokens_per_s']:,.1f} tokens/s (a token reads {r['decode_ext_bytes_per_token'] / 1e6:.4g} "
            f"MB: weights plus scales, router and activations; bandwidth over those bytes is the second bound, "
            f"and its ratio is the share of the decode's cycles the DMA engine spends reading); DRAM floor = weight bits x "
            f"{r['dram_read_pj_per_bit']} pJ/bit ({r['energy_table']}) = {r['dram_floor_mj_per_token']:.4g} mJ/token.")
    lines += ["", "Decode at a context (issue 18's whole-layer chip; `bitmos estimate --context N`, "
              "`bitmos.explore.perf.decode_at_context`): a decode token also reads the KV cache of its context and "
              "writes its own, in the format of `bitmos/formats.py` (int8 mantissas plus one exponent byte per kv "
              "head). Estimate = the simulated linears plus that traffic at the full bandwidth (these configs have no "
              "vector unit, so the attention is the host's and this part its memory bound; "
              "benchmarks/bench_context.py simulates it on the chip); bound = bandwidth / "
              "(weight bytes + KV bytes); MB per token = everything the token reads and writes externally.", "",
              "| model on config (weights) | KV bytes per position | context | tok/s | bound | ratio | mJ/token | "
              "KV share of mJ | external MB/token | KV share of bytes |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lin_bytes = r["decode_ext_bytes_per_token"] + r["decode_ext_bytes_written_per_token"]
        for c in r["context"]:
            kv_bytes = c["kv_read_bytes"] + c["kv_write_bytes"]
            e = c["energy_per_token_j"]
            lines.append(
                f"| {r['model']} on {r['config']} ({r['scheme']}) | {r['kv_bytes_per_context_token']:,} | "
                f"{c['context']:,} | "
                f"{c['tokens_per_s']:,.1f} | {c['bound_tokens_per_s']:,.1f} | "
                f"{c['tokens_per_s'] / c['bound_tokens_per_s']:.3f} | {e * 1e3:.4g} | "
                f"{c['components']['kv_cache']['energy_j'] / e:.0%} | {(lin_bytes + kv_bytes) / 1e6:,.4g} | "
                f"{kv_bytes / (lin_bytes + kv_bytes):.0%} |")
    return "\n".join(lines)


#: Context lengths of the KV-cache bound (issue 18: 128 .. 32k)
KV_CONTEXTS = (128, 2048, 8192, 32768)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=2048, help="prefill tokens of the LLaMA-2-7B case (default 2048)")
    ap.add_argument("--decode", type=int, default=128, help="decode tokens of every case (default 128)")
    ap.add_argument("--student-prefill", type=int, default=256,
                    help="prefill tokens of the shipped student's case (default 256, its context)")
    ap.add_argument("--dma-queue", type=int, default=8,
                    help="the asic32 cases again with this many transfers in flight (config dma_queue; 0: not)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    from bitmos.errors import BitmosUserError
    try:
        queues = [0] + ([args.dma_queue] if args.dma_queue >= 2 else [])
        rows = [measure("llama-2-7b", "asic32", args.prefill, args.decode, dma_queue=q) for q in queues]
        rows += [measure("bitnet-b1.58-2b", "asic32", args.prefill, args.decode, scheme="ternary", dma_queue=q)
                 for q in queues]
        rows.append(measure(shipped_student_shape(), "small", args.student_prefill, args.decode))
    except BitmosUserError as exc:
        print(f"bench_roofline: error: {exc}", file=sys.stderr)
        return 2
    print(render(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
